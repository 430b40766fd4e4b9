"""``streamsgd shuffle`` at scale: wall time, peak RSS against the limit, and whether the
output trains as well as data in random order.

Writes N label-sorted rows (``generate --sorted``, logistic, d features), the same rows in
generator order (random with respect to the label), and a held-out file (same true
weights, other samples). Then:

* shuffles the sorted file at ``--memory-limit`` in a fresh process, reading that
  process's VmHWM; the idle footprint is the same shuffle of a 1,000-row file;
* checks the output is a permutation: row count and an order-independent checksum (the
  sum mod 2**64 of a hash of every row), streamed over both;
* trains one epoch of ``streamsgd fit --no-shuffle`` on the shuffled output, on the
  random-order copy and on the sorted file, and evaluates each model's held-out loss.

Checks (exit status 1 if any fails): a permutation; peak RSS <= limit + idle; held-out loss
on the shuffled output within 1 % of the random-order copy's.

Usage:
  python benchmarks/shuffle.py                      # 10^7 rows x 10, 256MB
  python benchmarks/shuffle.py --rows 2000000       # a shorter run
  python benchmarks/shuffle.py --quick              # 200,000 rows at 32MB: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq

import provenance  # benchmarks/ is on sys.path when a script there runs

DEFAULT_OUT = Path(__file__).resolve().parent / "out"

#: The measuring child: one shuffle, then its own peak RSS (VmHWM: this process image's
#: high-water mark; ru_maxrss would carry the parent's across fork and exec).
CHILD = """
import sys, time
from streamsgd.config import parse_bytes
from streamsgd.tools.shuffle import shuffle
start = time.perf_counter()
shuffle([sys.argv[1]], sys.argv[2], memory_limit=parse_bytes(sys.argv[3]), seed=0)
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(hwm, seconds)
"""


def shuffle_run(data: Path, out: Path, limit: str) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of one shuffle in a fresh process, as the CLI runs it."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), limit], capture_output=True,
                          text=True, env=env, check=True)
    peak, seconds = proc.stdout.split()
    return int(peak), float(seconds)


def checksum(paths: list[Path]) -> tuple[int, int]:
    """Rows and the order-independent checksum of the files, streamed in batches."""
    rows, total = 0, 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 18):
            hashes = pd.util.hash_pandas_object(batch.to_pandas(), index=False).to_numpy(np.uint64)
            total = (total + int(hashes.sum(dtype=np.uint64))) % 2**64  # an array sum wraps silently
            rows += batch.num_rows
    return rows, total


def fit_loss(data: Path, test: Path, work: Path, limit: str) -> float:
    """Held-out log loss after one epoch of logistic SGD in the file's own order."""
    model = work / f"{data.name}.npz"
    subprocess.run([sys.executable, "-m", "streamsgd", "fit", str(data), "--target", "y", "--model", "logistic",
                    "--epochs", "1", "--no-shuffle", "--seed", "0", "--memory-limit", limit, "-o", str(model),
                    "--json"], capture_output=True, text=True, check=True)
    result = subprocess.run([sys.executable, "-m", "streamsgd", "evaluate", str(model), str(test), "--json"],
                            capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout)["loss"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--memory-limit", default="256MB")
    parser.add_argument("--quick", action="store_true", help="200,000 rows at 32MB")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the JSON report")
    args = parser.parse_args()
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    if args.quick:
        args.rows, args.memory_limit = 200_000, "32MB"
    from streamsgd.tools.generate import generate

    work = Path(args.dir or tempfile.mkdtemp(prefix="streamsgd-shuffle-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        files = {name: work / f"{name}.parquet" for name in ("sorted", "random", "test", "tiny")}
        common = {"features": args.features, "task": "logistic", "seed": 1}
        start = time.perf_counter()
        generate(str(files["sorted"]), rows=args.rows, sorted_by_label=True, **common)
        generate(str(files["random"]), rows=args.rows, **common)
        generate(str(files["test"]), rows=min(args.rows, 200_000), sample_seed=99, **common)
        generate(str(files["tiny"]), rows=1000, **common)
        print(f"generated in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        idle, _ = shuffle_run(files["tiny"], work / "tiny-out", args.memory_limit)
        peak, seconds = shuffle_run(files["sorted"], work / "shuffled", args.memory_limit)
        parts = sorted((work / "shuffled").glob("part-*.parquet"))
        same = checksum([files["sorted"]]) == checksum(parts)
        losses = {name: fit_loss(path, files["test"], work, args.memory_limit)
                  for name, path in (("shuffled", work / "shuffled"), ("random", files["random"]),
                                     ("sorted", files["sorted"]))}
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    from streamsgd.config import parse_bytes

    limit = parse_bytes(args.memory_limit)
    gap = losses["shuffled"] / losses["random"] - 1
    report = {"rows": args.rows, "features": args.features, "memory_limit": args.memory_limit,
              "shuffle_seconds": round(seconds, 1), "rows_per_second": round(args.rows / seconds),
              "peak_rss_mib": round(peak / 2**20, 1), "idle_rss_mib": round(idle / 2**20, 1),
              "peak_minus_idle_over_limit": round((peak - idle) / limit, 3), "parts": len(parts),
              "permutation": same, "heldout_loss": {k: round(v, 5) for k, v in losses.items()},
              "shuffled_vs_random": round(gap, 4), "machine": provenance.machine(pyarrow=pyarrow.__version__)}
    print(json.dumps(report, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_report(args.out / f"shuffle{'-quick' if args.quick else ''}.json", report, started, load_start)
    checks = {"permutation": same, "peak <= limit + idle": peak <= limit + idle, "loss within 1 %": abs(gap) <= 0.01}
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}", file=sys.stderr)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
