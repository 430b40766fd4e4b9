"""How close to the decode limit ``fit`` can get on this machine: each stage timed alone.

One command: ``.venv/bin/python benchmarks/ceiling.py [--features 10,100] [--quick]``. For
each d, on the same uncompressed Parquet file as ``throughput.py`` (written if missing):

  limit    pyarrow decode-only wall time, its own thread pool: throughput.py's (a).
  mapped   the same from a memory-mapped file (how ``fit`` opens local files).
  decode   CPU time of the mapped decode on one thread (``use_threads=False``), each
           table dropped before the next is decoded, as a reader does.
  copy     CPU time of copying the decoded columns into row-major float32 window rows,
           each row into its slot of the plan's order (``fill.fill_columns`` with the rows,
           the reader's copy; a reused buffer, so no page faults): each shuffle window of
           the default memory plan permuted.
  copy, file order       the same copy into consecutive rows: what the scatter costs.
  kernel   CPU time of the logistic gradient kernel over the window in sequence, cut into
           batches of 512 (``kernels.accumulate_weighted``, what the training loop calls):
           the rows arrive in the plan's order, already shuffled by the copy.
  kernel, gathering      the same kernel gathering the rows by the plan's permutation: the
           design before the shuffle moved into the copy (random reads on the trainer).
  kernel, column-major   the same kernel, gathering, over a column-major copy of the window:
           what reading the decoded columns in place, without the row-major copy, would cost.
  together CPU time of the same three stages run at once, free of any ordering between
           them: two threads decode and copy half the row groups each (into a second
           buffer, scattering) while a third runs the kernel over the first.
  fit      ``train.fit``, one epoch, end to end (as throughput.py's (c)).

Every row must pass through all three stages, and this machine has ``os.cpu_count()``
cores, so even with perfect overlap and no contention between stages

  fit wall >= (decode + copy + kernel) / cores     (the CPU ceiling)
  fit wall >= kernel                               (the trainer is one thread)

and fit/limit cannot exceed limit / max(those). Stages that overlap slow each other down
(they share memory bandwidth), which "together" measures: with the stages' CPU cost under
each other's load, fit wall >= together / cores for any pipeline that overlaps them (the
contended ceiling, an estimate: the slowdown depends somewhat on how they overlap). The
script prints the ceilings beside the measured ratio and issue 4's target for that d.
Medians of ``--runs`` runs, stages alternated; writes benchmarks/out/ceiling.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance
import throughput
import streamsgd
from streamsgd.config import FitConfig
from streamsgd.sources.rows import fill_columns
from streamsgd.compute.losses import LOSSES, accumulate_weighted
from streamsgd.plan.shuffle import group_windows, row_order
from streamsgd.sources.cast import arrow_values
from streamsgd.train.setup import plan_memory

BATCH = 512
TARGETS = {10: 0.5, 100: 0.65}  # issue 4's fit/decode targets


def decode(pf: pq.ParquetFile, group: int, threads: bool = False) -> pa.Table:
    return pf.read_row_group(group, use_threads=threads)


def decode_all(pf: pq.ParquetFile, threads: bool) -> None:
    for g in range(pf.num_row_groups):
        decode(pf, g, threads)


def cpu(fn: Callable[[], Any]) -> float:
    """CPU seconds of the calling thread spent in ``fn()``."""
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def kernel_pass(X: np.ndarray, y: np.ndarray, order: np.ndarray) -> None:
    d = X.shape[1]
    w, gw, cw = np.full(d, 0.01), np.zeros(d), np.ones(2)
    for s in range(0, order.size, BATCH):
        accumulate_weighted(LOSSES["logistic"], 0.0, cw, X, y, order[s:s + BATCH], w, 0.0, gw)


def plan_order(path: Path) -> np.ndarray:
    """Row positions in file order, each default-plan window permuted as ``fit`` permutes it
    (the windows taken in file order: which chunks share a window does not change the cost)."""
    source = streamsgd.open_source(str(path))
    plan = plan_memory(source, FitConfig())
    starts = np.concatenate([[0], np.cumsum(source.chunk_rows)])
    parts = []
    for w, chunks in enumerate(group_windows(source.chunk_rows, np.arange(len(source.chunk_rows)), plan.window_rows)):
        first, rows = int(starts[chunks[0]]), int(sum(source.chunk_rows[c] for c in chunks))
        parts.append(first + row_order(rows, 0, 0, w))
    return np.concatenate(parts)


def run_one(path: Path, runs: int) -> dict[str, Any]:
    pf = pq.ParquetFile(pa.memory_map(str(path)), pre_buffer=False)
    names = [n for n in pf.schema_arrow.names if n != "y"]
    n, d = pf.metadata.num_rows, len(names)
    X = np.empty((n, d), np.float32)
    y = np.empty(n, np.float32)

    order = plan_order(path)
    slots = np.empty(n, dtype=np.int64)
    slots[order] = np.arange(n)  # where the plan puts each row of the file

    def copy_all(scatter: bool = True) -> float:
        """Decode each group (untimed), then time its copy into the window rows."""
        spent, pos = 0.0, 0
        for g in range(pf.num_row_groups):
            t = decode(pf, g)
            cols = [arrow_values(t.column(c).chunks[0]) for c in names]
            if scatter:
                spent += cpu(lambda: fill_columns(cols, X, slots[pos:pos + t.num_rows]))
            else:
                spent += cpu(lambda: fill_columns(cols, X[pos:pos + t.num_rows]))
            y[pos:pos + t.num_rows] = arrow_values(t.column("y").chunks[0])
            pos += t.num_rows
        return spent

    X2 = np.zeros_like(X)  # its pages in place before the timing, as X's are

    def together() -> float:
        """CPU seconds of decode + copy (two threads, into a second window) and the kernel
        (a third thread) when all run at once: each stage's cost under the others' load."""
        spent = [0.0, 0.0, 0.0]

        def read(part: int) -> None:
            t0 = time.thread_time()
            for g in range(part, pf.num_row_groups, 2):
                t = decode(pf, g)
                pos = g * pf.metadata.row_group(0).num_rows
                fill_columns([arrow_values(t.column(c).chunks[0]) for c in names], X2, slots[pos:pos + t.num_rows])
            spent[part] = time.thread_time() - t0

        def train() -> None:
            spent[2] = cpu(lambda: kernel_pass(X, y, in_order))

        threads = [threading.Thread(target=read, args=(0,)), threading.Thread(target=read, args=(1,)),
                   threading.Thread(target=train)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(spent)

    in_order = np.arange(n)
    copy_all(False)  # compile both ways; the scattered copy last, so X is laid out as fit's windows are
    copy_all()
    XF = np.asfortranarray(X)
    kernel_pass(X, y, order[:BATCH])
    kernel_pass(XF, y, order[:BATCH])
    throughput.streamsgd_fit(path)

    keys = ("limit", "mapped", "decode", "copy", "copy_sequential", "kernel", "kernel_gather", "kernel_columns",
            "together", "fit")
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(runs):
        t0 = time.perf_counter()
        throughput.decode_only(path)
        times["limit"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decode_all(pf, True)
        times["mapped"].append(time.perf_counter() - t0)
        times["decode"].append(cpu(lambda: decode_all(pf, False)))
        times["copy_sequential"].append(copy_all(False))
        times["copy"].append(copy_all())
        times["kernel"].append(cpu(lambda: kernel_pass(X, y, in_order)))
        times["kernel_gather"].append(cpu(lambda: kernel_pass(X, y, order)))
        times["kernel_columns"].append(cpu(lambda: kernel_pass(XF, y, order)))
        times["together"].append(together())
        t0 = time.perf_counter()
        throughput.streamsgd_fit(path)
        times["fit"].append(time.perf_counter() - t0)

    med = _common.medians(times)
    cores = os.cpu_count() or 1
    cpu_floor = (med["decode"] + med["copy"] + med["kernel"]) / cores
    ceiling = med["limit"] / max(cpu_floor, med["kernel"], med["together"] / cores)
    return {
        "rows": n, "features": d, "median_seconds": med,
        "ns_per_row": {k: 1e9 * v / n for k, v in med.items()},
        "cpu_ceiling": med["limit"] / cpu_floor, "trainer_ceiling": med["limit"] / med["kernel"],
        "contended_ceiling": med["limit"] / (med["together"] / cores),
        "ceiling": ceiling, "fit_ratio": med["limit"] / med["fit"],
        "column_major_kernel_slowdown": med["kernel_columns"] / med["kernel_gather"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", default="10,100")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="200,000 rows x 20 features, 1 run (make bench)")
    p.add_argument("--out", type=Path, default=throughput.DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.features, args.runs = 200_000, "20", 1
    started, load_start = _common.begin(args.out)
    tables = {}
    for d in (int(f) for f in args.features.split(",")):
        path = args.out / f"train-{args.rows}x{d}.parquet"
        throughput.ensure_file(path, args.rows, d, throughput.TRAIN_SAMPLE_SEED, False)
        t = tables[str(d)] = run_one(path, args.runs)
        ns = t["ns_per_row"]
        print(f"\n== d = {d}, {t['rows']:,} rows; ns per row (median of {args.runs}):")
        print(f"  limit (decode-only wall, pyarrow's threads) {ns['limit']:7.0f}")
        print(f"  the same, memory-mapped                     {ns['mapped']:7.0f}")
        print(f"  decode, CPU on one thread                   {ns['decode']:7.0f}")
        print(f"  copy into the plan's slots, CPU             {ns['copy']:7.0f}")
        print(f"  copy into consecutive rows, CPU             {ns['copy_sequential']:7.0f}")
        print(f"  kernel over the window in sequence, CPU     {ns['kernel']:7.0f}")
        print(f"  kernel gathering by the plan's order, CPU   {ns['kernel_gather']:7.0f}")
        print(f"  kernel on a column-major window, CPU        {ns['kernel_columns']:7.0f}"
              f"  ({t['column_major_kernel_slowdown']:.1f}x the row-major gathering kernel)")
        print(f"  the three stages at once, CPU               {ns['together']:7.0f}")
        print(f"  fit, wall                                   {ns['fit']:7.0f}")
        target = TARGETS.get(d)
        print(f"  fit/limit: measured {t['fit_ratio']:.2f}; ceiling {t['ceiling']:.2f} (CPU {t['cpu_ceiling']:.2f}, "
              f"trainer {t['trainer_ceiling']:.2f}, contended {t['contended_ceiling']:.2f})"
              + (f"; issue 4's target {target}" if target else ""))
    report = {"benchmark": "ceiling", "quick": args.quick, "runs": args.runs, "batch": BATCH, "tables": tables,
              "machine": provenance.machine(pyarrow=pa.__version__, numpy=np.__version__)}
    provenance.write_report(args.out / ("ceiling-quick.json" if args.quick else "ceiling.json"), report, started,
                            load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
