"""Shuffled mini-batches from a Parquet file: streamsgd.batches against the loaders a user would
pick instead, by speed, memory and shuffle quality, in one run on one file (issue 18).

The file: ``--rows`` rows of ``--features`` float32 features ``x0 …``, a float32 column ``row``
(the row's position in the file) and a 0/1 ``label``, **sorted by label** (the first half 0,
the rest 1; the classes are Gaussians of unit variance whose means lie 2 apart, so logistic
regression is the right model), uncompressed and plain-encoded, in row groups of
``--group-rows`` (65,536). Every loader reads the
features, ``row`` and ``label`` and hands out batches of 512; the consumer touches each batch
(it keeps the batch's ``row`` and ``label`` columns and sums ``x0``), so the run records the
order each loader visits rows in and checks that every row came once with its own label.
Methods, each in a fresh process (its peak RSS, VmHWM, is its own), round-robin:

  (a)  decode only: pyarrow reads every row group's columns. Nothing that reads the file is
       faster: "the limit".
  (s)  ``streamsgd.batches(..., target="label", model="logistic")`` at ``--memory-limit``.
  (r)  record batches shuffled within: ``ParquetFile.iter_batches(65_536)`` → a row-major
       float32 matrix → a permutation of its rows → slices of 512 (benchmarks/throughput.py's
       PyTorch peer without the model). Fast, and no shuffle beyond one record batch.
  (b)  a shuffle buffer written in NumPy (tf.data's ``shuffle(buffer_size)``, vectorised):
       as many rows as half the limit holds; each batch takes random rows out, the next in.
  (t0) a PyTorch ``DataLoader(batch_size=512)`` over a Parquet ``IterableDataset`` with a
       shuffle buffer, as users write it: record batches of 8,192 rows → one row at a time
       into a buffer of as many rows as half the limit holds → a random row out per row in
       (torchdata's ``Shuffler``); the default collate stacks the rows; ``num_workers=0``.
  (t2) (t0) with ``num_workers=2``: row groups dealt between the workers, each with a buffer
       of half the size (the same memory in all).
  (m0) MosaicML Streaming: ``StreamingDataset(local=MDS copy, shuffle=True, batch_size=512)``
       (its default shuffle ``py1e``) under ``DataLoader(batch_size=512, num_workers=0)``,
       as its documentation writes it. The MDS shards (``MDSWriter``, 64 MiB each) are written
       from the same file beforehand, outside the timing. Only when mosaicml-streaming is
       installed (the ``bench`` extra; see benchmarks/README.md).
  (m2) (m0) with ``num_workers=2``.
  (x)  streamsgd's own prepared copy, the peer of (m)'s MDS copy: ``streamsgd shuffle`` rewrites
       the file once in a uniformly random order (beforehand, outside the timing, at
       ``--shuffle-limit``; README "Data sorted by time or label"), then ``streamsgd.batches``
       reads that copy as (s) reads the file. The two conversions' times are printed apart.

Figures per method (median of ``--runs``): rows/s, peak RSS, and three shuffle measures over
the epoch's order of rows: |Spearman ρ| between position in the stream and in the file (0 for
a uniform shuffle, 1 for file order); the spread of a batch (the mean standard deviation of
the file positions within a batch over that of a uniform batch: 1 for a uniform shuffle, near
0 for batches of neighbouring rows); and the held-out log loss after one epoch of logistic SGD
(batch as the loader cut it, learning rate 0.1, from zero) fed the loader's rows in the
loader's order, next to the same SGD fed the same rows in uniformly random order (``random``)
and in file order (``unshuffled``). On label-sorted rows a poor shuffle feeds SGD long runs
of one class, and its loss shows it. The SGD runs after the timing, in this process, on the
rows each loader handed out (the file's rows at the positions it reported, their labels
checked).

``--scale 8`` (the default) also measures the memory bound: ``streamsgd.batches`` at the same
limit on a file of 8x the rows, its peak RSS against the limit plus the idle footprint (the
same stream over a 1,000-row file: the interpreter, numpy, pyarrow, numba and every code path
of the stream, with negligible data).

Usage:
  python benchmarks/loaders.py                  # 1M rows x 100 features, 256MiB, 3 runs, 8x rows
  python benchmarks/loaders.py --quick          # 100k rows x 100 features, 256MiB, 1 run, 8x (make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance

BATCH = 512
GROUP_ROWS = 65_536
SEPARATION = 2.0  # distance between the two classes' means
LR = 0.1          # SGD step: below 2 / the largest curvature (0.25 * (1 + SEPARATION**2 / 4))
HELD_OUT = 100_000
METHODS = ("a", "s", "r", "b", "t0", "t2", "m0", "m2", "x")
IDLE_ROWS = 1_000
Batches = Iterator[tuple[np.ndarray, np.ndarray]]


# -- the data ---------------------------------------------------------------------------------
def direction(features: int) -> np.ndarray:
    """The unit vector along which the classes' means differ (fixed by the seed)."""
    u = np.random.default_rng(12).normal(size=features)
    return u / np.linalg.norm(u)


def draw(rng: np.random.Generator, label: np.ndarray, features: int) -> np.ndarray:
    """Rows of class ``label``: N(0, I) shifted by ±SEPARATION/2 along :func:`direction`."""
    X = rng.normal(size=(label.size, features)).astype(np.float32)
    X += ((label - 0.5) * SEPARATION)[:, None].astype(np.float32) * direction(features).astype(np.float32)
    return X


def write_file(path: Path, rows: int, features: int, group_rows: int = GROUP_ROWS, dictionary: bool = False,
               compression: str = "none") -> None:
    """The label-sorted file (see the module), drawn GROUP_ROWS rows at a time (the same rows
    whatever the layout), in row groups of ``group_rows``, plain-encoded unless ``dictionary``
    (pyarrow's default: dictionary pages first, plain once a column's dictionary is full), pages
    compressed with ``compression`` (pyarrow's default is snappy)."""
    if rows >= 2**24:
        raise SystemExit(f"loaders.py: --rows {rows}: the float32 column 'row' is exact below 2**24 rows only")
    names = [f"x{j}" for j in range(features)]
    if path.exists() and pq.read_metadata(path).num_rows == rows and pq.read_schema(path).names == \
            names + ["row", "label"]:
        return
    tmp, writer, pending = path.with_suffix(".tmp"), None, []
    for g, lo in enumerate(range(0, rows, GROUP_ROWS)):
        n = min(GROUP_ROWS, rows - lo)
        label = (np.arange(lo, lo + n) >= rows // 2).astype(np.float64)
        X = draw(np.random.default_rng([0, g]), label, features)
        pending.append(pa.table({**{name: X[:, j] for j, name in enumerate(names)},
                                 "row": np.arange(lo, lo + n, dtype=np.float32), "label": label}))
        held = sum(t.num_rows for t in pending)
        if held >= group_rows or lo + n == rows:  # whole groups out, the rest held for the next
            table = pa.concat_tables(pending)
            cut = held if lo + n == rows else held - held % group_rows
            writer = writer or pq.ParquetWriter(tmp, table.schema, compression=compression, use_dictionary=dictionary)
            writer.write_table(table.slice(0, cut), row_group_size=group_rows)
            pending = [table.slice(cut)] if cut < held else []
    assert writer is not None
    writer.close()
    tmp.replace(path)


def file_name(rows: int, features: int, group_rows: int, dictionary: bool, compression: str = "none") -> str:
    tail = ("" if group_rows == GROUP_ROWS else f"_g{group_rows}") + ("_dict" if dictionary else "")
    tail += "" if compression == "none" else f"_{compression}"
    return f"sorted{rows}_d{features}{tail}.parquet"


def columns(path: str) -> list[str]:
    """The columns every loader reads, ``row`` last among the features: x0 …, row."""
    return [n for n in pq.read_schema(path).names if n != "label"]


def matrix(batch: pa.RecordBatch | pa.Table, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The batch's features (and ``row``) as a row-major float32 matrix, and its labels."""
    X = np.empty((batch.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        X[:, j] = batch.column(name).to_numpy()
    return X, batch.column("label").to_numpy()


# -- the loaders ------------------------------------------------------------------------------
def decode_only(path: str, names: list[str], memory_limit: int) -> Batches:
    pf = pq.ParquetFile(path)
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=names + ["label"])
        yield np.empty((0, 0), np.float32), table.column("label").to_numpy()


def streamsgd_batches(path: str, names: list[str], memory_limit: int) -> Batches:
    import streamsgd

    with streamsgd.batches(path, batch=BATCH, seed=1, memory_limit=memory_limit, target="label",
                           features=names, model="logistic") as stream:
        for batch in stream:
            yield batch.X, batch.y


def record_batches(path: str, names: list[str], memory_limit: int, groups: list[int] | None = None) -> Batches:
    pf = pq.ParquetFile(path)
    rng = np.random.default_rng(1)
    for rb in pf.iter_batches(GROUP_ROWS, row_groups=groups, columns=names + ["label"]):
        X, y = matrix(rb, names)
        order = rng.permutation(len(y))
        X, y = X[order], y[order]
        for lo in range(0, len(y), BATCH):
            yield X[lo:lo + BATCH], y[lo:lo + BATCH]


def buffer_rows(memory_limit: int, names: list[str]) -> int:
    """Rows of a shuffle buffer that fills half the memory limit (the rest for decoding)."""
    return max(BATCH, memory_limit // 2 // (4 * len(names) + 8))


def shuffle_buffer(path: str, names: list[str], memory_limit: int) -> Batches:
    """A buffer of :func:`buffer_rows` rows, filled first, then each batch drawn at random
    from it and replaced by the next rows."""
    rng = np.random.default_rng(1)
    size = buffer_rows(memory_limit, names)
    bx, by, filled = np.empty((size, len(names)), np.float32), np.empty(size), 0
    for rb in pq.ParquetFile(path).iter_batches(8_192, columns=names + ["label"]):
        X, y = matrix(rb, names)
        pos = 0
        while pos < len(y):
            take = min(size - filled, len(y) - pos)
            bx[filled:filled + take], by[filled:filled + take] = X[pos:pos + take], y[pos:pos + take]
            filled, pos = filled + take, pos + take
            if filled == size:
                pick = rng.choice(size, BATCH, replace=False)
                out = bx[pick], by[pick]
                taken = np.zeros(size, bool)
                taken[pick] = True
                holes = pick[pick < size - BATCH]  # refilled by the unpicked rows of the tail
                tail = np.flatnonzero(~taken[size - BATCH:]) + size - BATCH
                bx[holes], by[holes] = bx[tail], by[tail]
                filled -= BATCH
                yield out
    left = rng.permutation(filled)
    for lo in range(0, filled, BATCH):
        yield bx[left[lo:lo + BATCH]], by[left[lo:lo + BATCH]]


def torch_loader(path: str, names: list[str], memory_limit: int, workers: int) -> Batches:
    """A Parquet ``IterableDataset`` through a row-at-a-time shuffle buffer, under a DataLoader."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    torch.set_num_threads(1)
    size = buffer_rows(memory_limit, names) // max(1, workers)

    class ParquetRows(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            w, n = (0, 1) if info is None else (info.id, info.num_workers)
            pf = pq.ParquetFile(path)
            rng = np.random.default_rng([1, w])
            buffer: list[tuple[np.ndarray, float]] = []
            for rb in pf.iter_batches(8_192, row_groups=list(range(pf.num_row_groups))[w::n],
                                      columns=names + ["label"]):
                X, y = matrix(rb, names)
                for i in range(len(y)):
                    row = (X[i].copy(), float(y[i]))  # a copy: a view would keep its whole batch alive
                    if len(buffer) < size:
                        buffer.append(row)
                        continue
                    k = int(rng.integers(size))
                    yield buffer[k]
                    buffer[k] = row
            rng.shuffle(buffer)  # type: ignore[arg-type]
            yield from buffer

    for X, y in DataLoader(ParquetRows(), batch_size=BATCH, num_workers=workers):
        yield X.numpy(), y.numpy()


def mosaic_stream(path: str, names: list[str], memory_limit: int, workers: int) -> Batches:
    """MosaicML Streaming's StreamingDataset over the MDS copy, under a DataLoader."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()  # a killed earlier run leaves its shared memory behind
    dataset = StreamingDataset(local=str(mds_dir(path)), shuffle=True, shuffle_seed=1, batch_size=BATCH)
    for sample in DataLoader(dataset, batch_size=BATCH, num_workers=workers):
        yield sample["x"].numpy(), sample["label"].numpy()


def mds_dir(path: str | Path) -> Path:
    return Path(path).with_suffix(".mds")


def shuffled_dir(path: str | Path) -> Path:
    return Path(path).with_suffix(".shuffled")


def prepared_copy(path: str, names: list[str], memory_limit: int) -> Batches:
    """(x): streamsgd.batches over the ``streamsgd shuffle`` copy of the file."""
    yield from streamsgd_batches(str(shuffled_dir(path)), names, memory_limit)


def write_shuffled(path: Path, memory_limit: int) -> float:
    """The ``streamsgd shuffle`` copy of ``path`` for (x), written once; its seconds (0 when
    it was there already)."""
    from streamsgd.tools.shuffle import shuffle

    out = shuffled_dir(path)
    if (out / "_manifest.json").exists():
        return 0.0
    start = time.perf_counter()
    shuffle([str(path)], str(out), memory_limit, seed=0)
    return time.perf_counter() - start


def write_mds(path: Path, names: list[str]) -> float:
    """The MDS copy of ``path`` for (m0)/(m2), written once (one sample a row, as MDS stores
    them); its seconds (0 when it was there already)."""
    from streaming import MDSWriter

    out = mds_dir(path)
    if (out / "index.json").exists():
        return 0.0
    start = time.perf_counter()
    spec = {"x": f"ndarray:float32:{len(names)}", "label": "float64"}
    with MDSWriter(out=str(out), columns=spec) as writer:
        for rb in pq.ParquetFile(path).iter_batches(GROUP_ROWS, columns=names + ["label"]):
            X, y = matrix(rb, names)
            for i in range(len(y)):
                writer.write({"x": X[i], "label": float(y[i])})
    return time.perf_counter() - start


RUNNERS = {"a": decode_only, "s": streamsgd_batches, "r": record_batches, "b": shuffle_buffer,
           "t0": lambda p, n, m: torch_loader(p, n, m, 0), "t2": lambda p, n, m: torch_loader(p, n, m, 2),
           "m0": lambda p, n, m: mosaic_stream(p, n, m, 0), "m2": lambda p, n, m: mosaic_stream(p, n, m, 2),
           "x": prepared_copy}
WORKERS = ("t2", "m2")  # the methods with worker processes
MODULES = {"s": "streamsgd.api", "x": "streamsgd.api", "t0": "torch", "t2": "torch", "m0": "streaming", "m2": "streaming"}


# -- one method in one process ----------------------------------------------------------------
def measure(method: str, path: str, memory_limit: int, order_out: str | None) -> dict:
    """One method in this process: rows/s and peak RSS of one epoch with the touching consumer;
    with ``order_out``, the epoch's row positions and batch sizes saved there (``.npz``)."""
    names = columns(path)
    if method in MODULES:  # imported before the clock starts: a user's program has imported it already
        __import__(MODULES[method])
    rows, check, ids, sizes = 0, 0.0, [], []
    start_rss = rss()
    tree = TreeMemory() if method in WORKERS else None
    start = time.perf_counter()
    for X, y in RUNNERS[method](path, names, memory_limit):
        rows += len(y)
        if method == "a":
            continue
        check += float(X[:, 0].sum(dtype=np.float64))
        if order_out:
            ids.append(np.stack([X[:, -1], y]))
            sizes.append(len(y))
    seconds = time.perf_counter() - start
    record = {"rows": rows, "rows_per_s": rows / seconds, "peak_rss": peak_rss(), "start_rss": start_rss,
              "x0_sum": check}
    if tree is not None:  # the workers' memory too: the peak of the whole tree's PSS
        record["peak_rss"] = max(record["peak_rss"], tree.stop())
    if order_out and method != "a":
        both = np.concatenate(ids, axis=1)
        np.savez(order_out, row=both[0].astype(np.int64), label=both[1], sizes=np.array(sizes))
    return record


class TreeMemory:
    """The peak of the summed proportional set size (PSS) of this process and its descendants,
    sampled every 20 ms by a thread: the memory of a loader with worker processes, whose own
    VmHWM counts the main process only. PSS splits the pages the forked workers share with
    it, so the sum counts each page once; a peak shorter than 20 ms can be missed."""

    def __init__(self) -> None:
        import threading

        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(0.02):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:  # a worker that exited between the listing and the read
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def peak_rss(field: str = "VmHWM") -> int:
    """This process's peak resident set (VmHWM; getrusage's ru_maxrss would carry over the
    parent's peak across the exec), or another field of /proc/self/status in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def rss() -> int:
    """This process's resident set now: after the imports, before the loader starts."""
    return peak_rss("VmRSS")


def available(method: str) -> bool:
    module = MODULES.get(method)
    if module is None or method in ("s", "x"):
        return True
    try:
        __import__(module)
    except Exception as error:  # not installed, or installed broken (torchvision built for another torch)
        print(f"{method}: skipped: import {module}: {type(error).__name__}: {error}", file=sys.stderr)
        return False
    return True


def child(method: str, path: Path, limit: int, order_out: Path | None) -> dict | None:
    """Run ``method`` in a fresh process; its record, or None (with a note) when it failed."""
    command = [sys.executable, __file__, "--method", method, "--file", str(path), "--memory-limit", str(limit)]
    if order_out is not None:
        command += ["--order-out", str(order_out)]
    out = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if out.returncode:
        print(f"{method}: failed: {out.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- shuffle quality, in the parent after the timing -------------------------------------------
def held_out(features: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of both classes at random (the file's distribution, another seed)."""
    rng = np.random.default_rng(99)
    label = (rng.random(HELD_OUT) < 0.5).astype(np.float64)
    return draw(rng, label, features), label


def sgd_loss(X: np.ndarray, y: np.ndarray, order: np.ndarray, sizes: np.ndarray,
             test: tuple[np.ndarray, np.ndarray]) -> float:
    """Held-out log loss after one epoch of logistic SGD over ``X[order]`` in batches of ``sizes``."""
    w, b, lo = np.zeros(X.shape[1]), 0.0, 0
    for n in sizes:
        rows = order[lo:lo + n]
        lo += n
        Xb = X[rows].astype(np.float64)
        g = 1.0 / (1.0 + np.exp(-(Xb @ w + b))) - y[rows]
        w -= LR * (Xb.T @ g) / n
        b -= LR * float(g.mean())
    z = test[0].astype(np.float64) @ w + b
    return float(np.mean(np.logaddexp(0.0, z) - test[1] * z))


def quality(saved: Path, X: np.ndarray, y: np.ndarray, x0_sum: float, record: dict,
            test: tuple[np.ndarray, np.ndarray]) -> dict:
    """The shuffle measures of one run's saved order, after checking it is every row once
    with its own label and its own features (the x0 sum)."""
    got = np.load(saved)
    order, sizes, n = got["row"], got["sizes"], y.size
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise SystemExit(f"loaders.py: {saved.name}: the loader did not hand out every row once")
    if not np.array_equal(got["label"], y[order]):
        raise SystemExit(f"loaders.py: {saved.name}: a row came with another row's label")
    if abs(record["x0_sum"] - x0_sum) > 1e-6 * float(np.abs(X[:, 0]).sum()):
        raise SystemExit(f"loaders.py: {saved.name}: the x0 column does not sum to the file's")
    rank = np.empty(n)
    rank[order] = np.arange(n)
    bounds = np.cumsum(sizes)[:-1]
    spread = np.mean([b.std() for b in np.split(order, bounds) if b.size == BATCH])
    return {"spearman": abs(float(np.corrcoef(rank, np.arange(n))[0, 1])),
            "spread": float(spread / (n / np.sqrt(12))), "loss": sgd_loss(X, y, order, sizes, test)}


def references(X: np.ndarray, y: np.ndarray, test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """The same SGD on the same rows in uniformly random order (median of 3 permutations) and in
    file order, and the held-out loss of the model the data was drawn from (the floor)."""
    n = y.size
    sizes = np.full(-(-n // BATCH), BATCH)
    sizes[-1] = n - BATCH * (sizes.size - 1)
    shuffled = [sgd_loss(X, y, np.random.default_rng([7, k]).permutation(n), sizes, test) for k in range(3)]
    z = test[0].astype(np.float64) @ (SEPARATION * direction(X.shape[1]))
    return {"random": statistics.median(shuffled), "unshuffled": sgd_loss(X, y, np.arange(n), sizes, test),
            "floor": float(np.mean(np.logaddexp(0.0, z) - test[1] * z))}


def load_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The file's features (without ``row``) and labels, in memory, for the SGD replay."""
    names = [n for n in columns(str(path)) if n != "row"]
    X, y = matrix(pq.read_table(path, columns=names + ["label"]), names)
    return X, y


# -- the run ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows of the file (default 1,000,000; 100,000 --quick)")
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--group-rows", type=int, default=GROUP_ROWS, help="rows per row group of the file "
                        f"(default {GROUP_ROWS:,})")
    parser.add_argument("--runs", type=int, default=None, help="runs of every method, round-robin (3; 1 --quick)")
    parser.add_argument("--memory-limit", default=None, help="the limit of s and x (and the buffers of b, t0, t2): "
                        "256MiB")
    parser.add_argument("--methods", default=",".join(METHODS), help="which methods (comma-separated)")
    parser.add_argument("--dictionary", action="store_true", help="write the file with pyarrow's default "
                        "dictionary encoding (plain without)")
    parser.add_argument("--snappy", action="store_true", help="compress the pages with snappy (pyarrow's default; "
                        "uncompressed without): --dictionary --group-rows 1048576 --snappy is the file "
                        "pyarrow.parquet.write_table writes by default")
    parser.add_argument("--shuffle-limit", default="512MiB", help="the --memory-limit of the one-off "
                        "`streamsgd shuffle` that prepares (x)'s copy (default 512MiB)")
    parser.add_argument("--scale", type=int, default=8, help="also streamsgd's peak RSS on this many times the "
                        "rows (0: not)")
    parser.add_argument("--dir", default="benchmarks/out/loaders", help="the files (reused when they match)")
    parser.add_argument("--keep-files", action="store_true", help="keep the --scale file after its run")
    parser.add_argument("--json", help="the JSON report (default DIR/loaders.json, loaders-quick.json --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # one method, in a child process
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--order-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.memory_limit = args.memory_limit or "256MiB"
    args.compression = "snappy" if args.snappy else "none"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from streamsgd.config import parse_bytes

    limit = parse_bytes(args.memory_limit)
    if args.method:
        print(json.dumps(measure(args.method, args.file, limit, args.order_out)))
        return
    folder = Path(args.dir)
    started, load_start = _common.begin(folder)
    path = folder / file_name(args.rows, args.features, args.group_rows, args.dictionary, args.compression)
    write_file(path, args.rows, args.features, args.group_rows, args.dictionary, args.compression)
    wanted = [m for m in args.methods.split(",") if m]
    if unknown := sorted(set(wanted) - set(METHODS)):
        raise SystemExit(f"loaders.py: --methods: unknown {unknown}; the methods are {','.join(METHODS)}")
    methods = [m for m in wanted if available(m)]
    prep = {"mds": write_mds(path, columns(str(path))) if "m0" in methods or "m2" in methods else None,
            "shuffle": write_shuffled(path, parse_bytes(args.shuffle_limit)) if "x" in methods else None}
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for run in range(args.runs):
        for m in methods:
            record = child(m, path, limit, None if m == "a" else folder / f"order_{m}_{run}.npz")
            if record is not None:
                runs[m].append({**record, "run": run})
    X, y = load_rows(path)
    test = held_out(X.shape[1])
    x0_sum = float(X[:, 0].sum(dtype=np.float64))
    for m, records in runs.items():
        for r in records:
            if m != "a":
                r.update(quality(folder / f"order_{m}_{r['run']}.npz", X, y, x0_sum, r, test))
    refs = references(X, y, test)
    del X, y
    scale = scaled(args, folder, limit) if args.scale else None
    report(runs, refs, scale, prep, args, limit)
    out = Path(args.json) if args.json else folder / ("loaders-quick.json" if args.quick else "loaders.json")
    provenance.write_report(out, {"runs": runs, "references": refs, "scale": scale, "prep": prep,
                                  "rows": args.rows, "features": args.features, "group_rows": args.group_rows,
                                  "dictionary": args.dictionary, "compression": args.compression,
                                  "limit": limit, "machine": provenance.machine(**versions())}, started, load_start)


def versions() -> dict[str, str]:
    """The installed versions of the measured libraries (without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("numpy", "pyarrow", "numba", "torch", "mosaicml-streaming", "streamsgd"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def scaled(args: argparse.Namespace, folder: Path, limit: int) -> dict:
    """streamsgd.batches' peak RSS at ``limit`` on ``--scale`` times the rows, and the idle
    footprint (the same stream on 1,000 rows), each the median of ``--runs`` fresh processes."""
    big = folder / file_name(args.rows * args.scale, args.features, args.group_rows, args.dictionary, args.compression)
    idle_file = folder / file_name(IDLE_ROWS, args.features, args.group_rows, args.dictionary, args.compression)
    write_file(big, args.rows * args.scale, args.features, args.group_rows, args.dictionary, args.compression)
    write_file(idle_file, IDLE_ROWS, args.features, args.group_rows, args.dictionary, args.compression)
    peaks, idles, speeds = [], [], []
    for _ in range(args.runs):
        for file, into in ((idle_file, idles), (big, peaks)):
            record = child("s", file, limit, None)
            if record is None:
                raise SystemExit(f"loaders.py: streamsgd.batches failed on {file}")
            into.append(record["peak_rss"])
            if file == big:
                speeds.append(record["rows_per_s"])
    if not args.keep_files:
        big.unlink()
    idle = statistics.median(idles)
    return {"rows": args.rows * args.scale, "peak_rss": peaks, "idle_rss": idles, "rows_per_s": speeds,
            "bound": limit + idle, "ok": max(peaks) <= limit + idle}


def report(runs: dict[str, list[dict]], refs: dict[str, float], scale: dict | None, prep: dict,
           args: argparse.Namespace, limit: int) -> None:
    """The table (medians), streamsgd's speed over each peer's, and the memory check."""
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items() if rs}
    print(f"{args.rows:,} label-sorted rows x {args.features} features in {args.group_rows:,}-row groups"
          f"{' (dictionary-encoded)' if args.dictionary else ''}{' (snappy)' if args.snappy else ''}, "
          f"batch {BATCH}, memory limit "
          f"{limit / 2**20:.0f} MiB, median of {args.runs}, load {os.getloadavg()[0]:.1f}")
    print(f"{'method':10} {'rows/s':>10} {'/decode':>8} {'s/this':>7} {'peak MiB':>9} {'start':>6} {'|rho|':>6} "
          f"{'spread':>7} {'loss':>7} {'-random':>8}")
    nan = float("nan")
    for m, r in med.items():
        decode = r["rows_per_s"] / med["a"]["rows_per_s"] if "a" in med else nan
        vs = med["s"]["rows_per_s"] / r["rows_per_s"] if "s" in med else nan
        loss = r.get("loss", nan)
        print(f"{m:10} {r['rows_per_s']:10,.0f} {decode:8.2f} {vs:7.2f} {r['peak_rss'] / 2**20:9.0f} "
              f"{r['start_rss'] / 2**20:6.0f} {r.get('spearman', nan):6.3f} {r.get('spread', nan):7.3f} {loss:7.4f} {loss - refs['random']:8.4f}")
    for name in ("random", "unshuffled", "floor"):
        print(f"{name:10} {'':>10} {'':>8} {'':>7} {'':>9} {'':>6} {'':>6} {'':>7} {refs[name]:7.4f} "
              f"{refs[name] - refs['random']:8.4f}")
    for name, secs in prep.items():
        if secs is not None:
            print(f"prepared copy, {name}: " + (f"{secs:.1f} s to write" if secs else "written by an earlier run"))
    loaders = {m: r for m, r in med.items() if "loss" in r}
    if loaders:
        print(f"best shuffle quality (lowest held-out loss): {min(loaders, key=lambda m: loaders[m]['loss'])}")
    if scale is not None:
        print(f"streamsgd on {scale['rows']:,} rows ({args.scale}x): peak RSS "
              f"{statistics.median(scale['peak_rss']) / 2**20:.0f} MiB (max {max(scale['peak_rss']) / 2**20:.0f}), "
              f"idle {statistics.median(scale['idle_rss']) / 2**20:.0f} MiB, limit + idle "
              f"{scale['bound'] / 2**20:.0f} MiB: {'within' if scale['ok'] else 'OVER'}; "
              f"{statistics.median(scale['rows_per_s']):,.0f} rows/s")


if __name__ == "__main__":
    main()
