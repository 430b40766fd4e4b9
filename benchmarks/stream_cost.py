"""What one open stream of a big Parquet row group holds: the fixed cost a lane pays.

A row group too big to decode at once is read in slices through one streaming read
(``ParquetFile.iter_batches`` over that row group, as ``sources.parquet._Cursor`` opens it:
``pre_buffer=False``, a read buffer of ``--buffer`` bytes per column, one thread). Whatever
the slice, each column of an open stream holds its reader's state: for a dictionary-encoded
column its decoded dictionary and the decompression buffer its dictionary page needed. This
opens one such stream on row group 0 of FILE, reads its first batch, and prints what Arrow's
memory pool (the system allocator, as ``streamsgd`` sets it) and the process's RSS grew by,
then again further in, beside the memory plan's estimate (``_Group.fixed``). Each case runs in
a fresh process.

Usage:
  python benchmarks/stream_cost.py FILE                       # batches of 8192, 64 KiB buffers, all columns
  python benchmarks/stream_cost.py FILE --batch 1024 --columns 50 --buffer 0
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--batch", type=int, default=8192, help="rows a batch of the stream (default 8192)")
    p.add_argument("--columns", type=int, default=0, help="the first this many columns (default: all)")
    p.add_argument("--buffer", type=int, default=64 << 10, help="read buffer per column, bytes (default 64 KiB)")
    p.add_argument("--further", type=int, default=400_000, help="rows to read on before the second figure")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> None:
    """One stream, in this process (started with Arrow's system pool)."""
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streamsgd.sources.parquet import _group_size

    meta = pq.read_metadata(args.file)
    names = meta.schema.to_arrow_schema().names[: args.columns or None]
    estimate = _group_size(meta, 0, 0, set(names), args.buffer).fixed
    proc, pool = psutil.Process(), pa.default_memory_pool()
    gc.collect()
    rss0, pool0 = proc.memory_info().rss, pool.bytes_allocated()
    pf = pq.ParquetFile(pa.OSFile(args.file), metadata=meta, pre_buffer=False, buffer_size=args.buffer)
    batches = pf.iter_batches(batch_size=args.batch, row_groups=[0], columns=names, use_threads=False)
    batch = next(batches)
    rows, first = batch.num_rows, batch.nbytes
    del batch
    mb = 1e6
    print(f"{len(names)} columns, batches of {args.batch:,}, buffer {args.buffer:,} B: after the first batch "
          f"pool +{(pool.bytes_allocated() - pool0) / mb:.1f} MB, RSS +{(proc.memory_info().rss - rss0) / mb:.1f} MB "
          f"(the batch itself {first / mb:.1f} MB, dropped); the plan's estimate {estimate / mb:.1f} MB")
    while rows < args.further and (batch := next(batches, None)) is not None:
        rows += batch.num_rows
        del batch
    print(f"  at row {rows:,}: pool +{(pool.bytes_allocated() - pool0) / mb:.1f} MB, "
          f"RSS +{(proc.memory_info().rss - rss0) / mb:.1f} MB, pool peak {pool.max_memory() / mb:.1f} MB")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        measure(args)
        return
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}  # read when pyarrow loads: a fresh process
    subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child"],
                   env=env, check=True)


if __name__ == "__main__":
    main()
