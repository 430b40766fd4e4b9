"""Shuffled mini-batches from a Parquet file: streamsgd.batches against the loaders a user would
pick instead, by speed, memory and shuffle quality, in one run.

The file: ``--rows`` rows of ``--features`` float32 features, uncompressed, 65,536-row groups,
with the target ``y`` = the row's position in the file, so every loader's stream of targets
is the order it visits rows in. Methods, each in a fresh process (its peak RSS is its own):

  (a) decode only: pyarrow reads every row group's columns. Nothing that reads the file is
      faster: "the limit".
  (s) ``streamsgd.batches`` at ``--memory-limit`` (one epoch, batch 512, shuffled).
  (r) record batches shuffled within: ``ParquetFile.iter_batches(65_536)`` → a row-major
      float32 matrix → a permutation of its rows → slices of 512. The loop of
      benchmarks/throughput.py's PyTorch peer, without the model.
  (b) a shuffle buffer (tf.data's ``shuffle(buffer_size)``, torchdata's ``Shuffler``):
      rows enter a buffer as large as the memory limit allows, each batch takes random
      rows out of it and the next rows in, as those libraries do.
  (t) (r) as a PyTorch ``IterableDataset`` under a ``DataLoader`` with 2 workers, row groups
      dealt between them: the parallel version users write (when torch is installed).
  (m) MosaicML Streaming (``StreamingDataset`` over an MDS copy of the same rows, written
      beforehand, outside the timing; its default shuffle ``py1e``), when installed.

Figures per method (median of ``--runs``, methods run round-robin): rows/s, peak RSS, and
two shuffle measures over the epoch's order of rows: |Spearman ρ| between position in the
stream and position in the file (0 for a uniform shuffle, 1 for file order), and the spread
of a batch, the mean standard deviation of the file positions within a batch over that of a
uniform batch (1 for a uniform shuffle; a buffer that holds a small part of the file
gives batches of nearby rows, well below 1).

Usage:
  python benchmarks/loaders.py                  # 2M rows x 20 features, 3 runs
  python benchmarks/loaders.py --quick          # 300k rows, 1 run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BATCH = 512
GROUP_ROWS = 65_536
METHODS = ("a", "s", "r", "b", "t", "m")


def write_file(path: Path, rows: int, features: int) -> None:
    if path.exists() and pq.read_metadata(path).num_rows == rows:
        return
    rng = np.random.default_rng(0)
    writer = None
    for lo in range(0, rows, GROUP_ROWS):
        n = min(GROUP_ROWS, rows - lo)
        table = pa.table({**{f"x{j}": rng.normal(size=n).astype(np.float32) for j in range(features)},
                          "y": np.arange(lo, lo + n, dtype=np.float64)})
        writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table, row_group_size=GROUP_ROWS)
    assert writer is not None
    writer.close()


def matrix(batch: pa.RecordBatch, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    X = np.empty((batch.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        X[:, j] = batch.column(name).to_numpy()
    return X, batch.column("y").to_numpy()


def decode_only(path: str, names: list[str], memory_limit: int):
    pf = pq.ParquetFile(path)
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=names + ["y"])
        yield table.column("y").to_numpy()


def streamsgd_batches(path: str, names: list[str], memory_limit: int):
    import streamsgd

    with streamsgd.batches(path, batch=BATCH, seed=1, memory_limit=memory_limit) as stream:
        for batch in stream:
            yield batch.y


def record_batches(path: str, names: list[str], memory_limit: int, groups=None):
    pf = pq.ParquetFile(path)
    rng = np.random.default_rng(1)
    for rb in pf.iter_batches(GROUP_ROWS, row_groups=groups, columns=names + ["y"]):
        X, y = matrix(rb, names)
        order = rng.permutation(len(y))
        X, y = X[order], y[order]
        for lo in range(0, len(y), BATCH):
            yield y[lo:lo + BATCH]


def shuffle_buffer(path: str, names: list[str], memory_limit: int):
    """A buffer of as many rows as half the limit holds (the rest for decoding), filled
    first, then each batch drawn at random from it and replaced by the next rows."""
    rng = np.random.default_rng(1)
    size = max(BATCH, memory_limit // 2 // (4 * len(names) + 8))
    bx, by, filled = np.empty((size, len(names)), np.float32), np.empty(size), 0
    for rb in pq.ParquetFile(path).iter_batches(8_192, columns=names + ["y"]):
        X, y = matrix(rb, names)
        pos = 0
        while pos < len(y):
            take = min(size - filled, len(y) - pos)
            bx[filled:filled + take], by[filled:filled + take] = X[pos:pos + take], y[pos:pos + take]
            filled, pos = filled + take, pos + take
            if filled == size:
                pick = rng.choice(size, BATCH, replace=False)
                out = by[pick].copy()
                taken = np.zeros(size, bool)
                taken[pick] = True
                holes = pick[pick < size - BATCH]  # refilled by the unpicked rows of the tail
                tail = np.flatnonzero(~taken[size - BATCH:]) + size - BATCH
                bx[holes], by[holes] = bx[tail], by[tail]
                filled -= BATCH
                yield out
    left = rng.permutation(filled)
    for lo in range(0, filled, BATCH):
        yield by[left[lo:lo + BATCH]]


def torch_loader(path: str, names: list[str], memory_limit: int):
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    torch.set_num_threads(1)

    class Groups(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            w, n = (0, 1) if info is None else (info.id, info.num_workers)
            groups = list(range(pq.ParquetFile(path).num_row_groups))[w::n]
            for y in record_batches(path, names, memory_limit, groups):
                yield torch.from_numpy(y)

    for y in DataLoader(Groups(), batch_size=None, num_workers=2):
        yield y.numpy()


def mosaic_stream(path: str, names: list[str], memory_limit: int):
    from streaming import StreamingDataset

    local = str(Path(path).with_suffix(".mds"))
    dataset = StreamingDataset(local=local, shuffle=True, shuffle_seed=1, batch_size=BATCH)
    buffer = []
    for sample in dataset:
        buffer.append(sample["y"])
        if len(buffer) == BATCH:
            yield np.array(buffer)
            buffer = []
    if buffer:
        yield np.array(buffer)


def write_mds(path: Path, names: list[str]) -> bool:
    try:
        from streaming import MDSWriter
    except ImportError:
        return False
    out = path.with_suffix(".mds")
    if (out / "index.json").exists():
        return True
    columns = {"x": "ndarray:float32", "y": "float64"}
    with MDSWriter(out=str(out), columns=columns) as writer:
        for rb in pq.ParquetFile(path).iter_batches(GROUP_ROWS, columns=names + ["y"]):
            X, y = matrix(rb, names)
            for i in range(len(y)):
                writer.write({"x": X[i], "y": float(y[i])})
    return True


RUNNERS = {"a": decode_only, "s": streamsgd_batches, "r": record_batches, "b": shuffle_buffer, "t": torch_loader,
           "m": mosaic_stream}


def measure(method: str, path: str, memory_limit: int) -> dict:
    """One method in this process: rows/s, peak RSS, and the shuffle measures of its order."""
    names = [n for n in pq.read_schema(path).names if n != "y"]
    module = {"s": "streamsgd.api", "t": "torch", "m": "streaming"}.get(method)
    if module:  # imported before the clock starts: a user's program has imported it already
        __import__(module)
    start = time.perf_counter()
    ids = [np.asarray(y) for y in RUNNERS[method](path, names, memory_limit)]
    seconds = time.perf_counter() - start
    order = np.concatenate(ids).astype(np.int64)
    n = order.size
    record = {"rows": n, "rows_per_s": n / seconds, "peak_rss": peak_rss()}
    if method != "a":
        assert np.array_equal(np.sort(order), np.arange(n)), f"{method}: not every row once"
        rank = np.empty(n)
        rank[order] = np.arange(n)
        record["spearman"] = abs(float(np.corrcoef(rank, np.arange(n))[0, 1]))
        spread = np.mean([b.std() for b in ids if b.size == BATCH])
        record["spread"] = float(spread / (n / np.sqrt(12)))
    return record


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; getrusage's ru_maxrss would carry over the
    parent's peak across the exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def available(method: str) -> bool:
    module = {"t": "torch", "m": "streaming"}.get(method)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="256MiB")
    parser.add_argument("--dir", default=".bench/loaders")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # one method, in a child process
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from streamsgd.config import parse_bytes

    limit = parse_bytes(args.memory_limit)
    if args.method:
        print(json.dumps(measure(args.method, args.file, limit)))
        return
    if args.quick:
        args.rows, args.runs = 300_000, 1
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rows{args.rows}_d{args.features}.parquet"
    write_file(path, args.rows, args.features)
    methods = [m for m in METHODS if available(m) and (m != "m" or write_mds(path, [f"x{j}" for j in
                                                                                  range(args.features)]))]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(args.runs):
        for m in methods:
            out = subprocess.run([sys.executable, __file__, "--method", m, "--file", str(path),
                                  "--memory-limit", str(limit)], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            if out.returncode:
                print(f"{m}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(runs, args, limit)


def report(runs: dict[str, list[dict]], args: argparse.Namespace, limit: int) -> None:
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items() if rs}
    print(f"{args.rows:,} rows x {args.features} features, batch {BATCH}, memory limit {limit / 2**20:.0f} MiB, "
          f"median of {args.runs}")
    print(f"{'method':8} {'rows/s':>12} {'/limit':>7} {'peak MiB':>9} {'|rho|':>7} {'spread':>7}")
    for m, r in med.items():
        ratio = r["rows_per_s"] / med["a"]["rows_per_s"] if "a" in med else float("nan")
        print(f"{m:8} {r['rows_per_s']:12,.0f} {ratio:7.2f} {r['peak_rss'] / 2**20:9.0f} "
              f"{r.get('spearman', float('nan')):7.3f} {r.get('spread', float('nan')):7.3f}")
    if "s" in med:
        peers = {m: r for m, r in med.items() if m not in ("a", "s")}
        if peers:
            best = max(peers, key=lambda m: peers[m]["rows_per_s"])
            print(f"streamsgd vs the fastest peer ({best}): {med['s']['rows_per_s'] / peers[best]['rows_per_s']:.2f}x")


if __name__ == "__main__":
    main()
