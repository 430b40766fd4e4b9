"""Does a categorical column cost O(nnz) per update, whatever the size of the hash table?

One command: ``.venv/bin/python benchmarks/categorical.py [--rows 300000] [--runs 3] [--quick]``.
A table of ``--rows`` rows: 8 numeric columns and 4 string columns (Zipf(1.1) draws from 20,000
values each, pyarrow's default writer), a logistic target from both. ``streamsgd fit --epochs 5
--batch 512 --json`` trains it at ``--hash-bits`` 12, 18 and 24 (4 Ki, 256 Ki and 16 Mi
weights), and, as the reference, on the 8 numeric columns alone (``--exclude`` the strings).
Runs go round-robin; each figure is the median of ``--runs``: rows trained per second of the
whole run (the summary's ``seconds``: setup, reading, hashing and training, not the process
start; its ``rows_per_second`` disagreed with the whole-run times between these runs, see
benchmarks/README.md) and peak RSS.

If an update cost O(2^bits), 24 bits would be ~4,000x slower than 12 bits; O(nnz) means the
three agree up to cache misses on the larger table. Writes benchmarks/out/categorical.json.
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

import provenance  # benchmarks/ is on sys.path when a script there runs
from _common import command

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
SEED = 20261206
TEXT = [f"c{j}" for j in range(4)]
BITS = (12, 18, 24)


def write_table(path: Path, rows: int) -> None:
    """8 numeric and 4 string columns; y from a linear score of both (a hidden weight per value)."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((rows, 8))
    score = X @ rng.standard_normal(8) * 0.3
    columns = {f"x{j}": X[:, j] for j in range(8)}
    for name in TEXT:
        values = np.array([f"{name}-{v}" for v in range(20_000)], dtype=object)
        codes = np.minimum(rng.zipf(1.1, rows) - 1, values.size - 1)
        columns[name] = pa.array(values[codes], pa.string())
        score += rng.standard_normal(values.size)[codes] * 0.5
    columns["y"] = (rng.random(rows) < 1 / (1 + np.exp(-score))).astype(np.int64)
    pq.write_table(pa.table(columns), path, row_group_size=65_536)


def fit(path: Path, out: Path, extra: list[str]) -> dict:
    proc = subprocess.run([command(script="categorical"), "fit", str(path), "--epochs", "5", "--batch", "512",
                           "--json", "--quiet", "-o", str(out / "m.npz"), *extra], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="30,000 rows, one run (a smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows, runs = (30_000, 1) if args.quick else (args.rows, args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"categorical-{rows}.parquet"
    if not path.exists():
        write_table(path, rows)
    methods = {"numeric only": ["--exclude", ",".join(TEXT)],
               **{f"{b} bits": ["--hash-bits", str(b), "--memory-limit", "2GiB"] for b in BITS}}
    times: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, list[float]] = {m: [] for m in methods}
    started, load = time.perf_counter(), os.getloadavg()[0]
    for _ in range(runs):
        for name, extra in methods.items():
            summary = fit(path, args.out, extra)
            times[name].append(summary["rows_seen"] / summary["seconds"])
            rss[name].append(summary["peak_rss_bytes"])
    report = {name: {"rows_per_second": statistics.median(times[name]),
                     "peak_rss_mib": statistics.median(rss[name]) / 2**20} for name in methods}
    base = report["12 bits"]["rows_per_second"]
    for name in methods:
        report[name]["vs_12_bits"] = report[name]["rows_per_second"] / base
        print(f"{name:>14}: {report[name]['rows_per_second']:>12,.0f} rows/s  ({report[name]['vs_12_bits']:.2f}x "
              f"12 bits)  peak RSS {report[name]['peak_rss_mib']:,.0f} MiB")
    name = "categorical-quick.json" if args.quick else "categorical.json"
    provenance.write_report(args.out / name, {"rows": rows, "runs": runs, "results": report,
                                              "machine": provenance.machine(pyarrow=pa.__version__)},
                            started, load)


if __name__ == "__main__":
    sys.exit(main())
