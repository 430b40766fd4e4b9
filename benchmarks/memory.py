"""Peak memory of ``streamsgd fit`` does not grow with the data: a check with numbers.

Trains one epoch on N rows and on 8N rows of the same shape, each in a fresh process
(``streamsgd fit ... --epochs 1 --memory-limit 256MB --json``), and reads the peak RSS
that process reports in its JSON summary (``peak_rss_bytes``, Linux's VmHWM). Also
measures the idle footprint: the peak RSS of the same ``fit`` on a 1,000-row file, i.e.
what any run pays (interpreter, pyarrow, numba, every code path) before holding data. Prints, next to them, what full-batch gradient descent would
need to hold the data in memory: N*(d+1)*4 bytes of float32 rows plus N*8 of margins.

Each data set is fitted ``--runs`` times (alternating small and big). Two checks, and the
exit status is 1 if either fails:
  * median big / median small peak RSS <= 1.10 (memory is flat in the number of rows);
  * the highest peak RSS of any run <= memory limit + idle footprint (the limit is honoured).

Usage:
  python benchmarks/memory.py            # 1,000,000 and 8,000,000 rows x 50 features, 256MB
  python benchmarks/memory.py --quick    # 600,000 and 4,800,000 rows x 20 features, 64MB (make bench)

Both sizes exceed three shuffle windows (one window is 2/9 of the limit), so both runs hold
a full budget of windows: the comparison is "full budget" vs "full budget", as it would be
for data of any size beyond that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import provenance  # benchmarks/ is on sys.path when a script there runs
from streamsgd.config import parse_bytes
from streamsgd.metrics import peak_rss_bytes

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROW_GROUP_ROWS = 65536
MAX_RATIO = 1.10
SEED = 0

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="N, the small data set (the big one is 8N)")
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--memory-limit", default=None, help="passed to streamsgd fit (default 256MB, 64MB with --quick)")
    p.add_argument("--runs", type=int, default=3, help="fits per data set; the median is reported (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="100,000 and 800,000 rows x 20 features with --memory-limit 32MB")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the data files and the JSON")
    p.add_argument("--regenerate", action="store_true", help="rewrite the data files even if matching ones exist")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.features = 600_000, 20
    if args.memory_limit is None:
        # 64MB: the smallest round limit that pays for decoding 65536-row groups of 20 features
        # while keeping the quick data sets several windows long.
        args.memory_limit = "64MB" if args.quick else "256MB"
    if min(args.rows, args.features, args.runs) < 1:
        p.error("--rows, --features and --runs must be >= 1")
    return args


def streamsgd_command() -> str:
    """The ``streamsgd`` script next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "streamsgd"
    found = str(here) if here.exists() else shutil.which("streamsgd")
    if found is None:
        sys.exit("memory.py: cannot find the streamsgd command; run with the project's .venv/bin/python")
    return found


def ensure_file(command: str, path: Path, rows: int, features: int, regenerate: bool) -> bool:
    """Write an uncompressed logistic file unless one with this shape is already there.

    The file is written by ``streamsgd generate`` in a child process, never in this one: a
    child started by ``subprocess`` reports getrusage's peak RSS *including this process's
    peak* (the kernel carries it over the vfork+exec), so this process must stay small
    for the children's ``peak_rss_bytes`` to mean anything. See ``check_parent``.
    """
    if path.exists() and not regenerate:
        try:
            meta = pq.read_metadata(path)
            if (meta.num_rows == rows and meta.num_columns == features + 1
                    and meta.row_group(0).num_rows == min(rows, ROW_GROUP_ROWS)
                    and meta.row_group(0).column(0).compression == "UNCOMPRESSED"):
                return False
        except Exception:
            pass
    subprocess.run([command, "generate", str(path), "--rows", str(rows), "--features", str(features),
                    "--task", "logistic", "--seed", str(SEED), "--row-group-rows", str(ROW_GROUP_ROWS),
                    "--compression", "none"], check=True, capture_output=True)
    return True


def check_parent(idle: int) -> int:
    """This process's peak RSS; stop if it could have leaked into the children's figures."""
    parent = peak_rss_bytes()
    if parent >= idle:
        sys.exit(f"memory.py: this process peaked at {mib(parent)}, not below the idle footprint "
                 f"{mib(idle)}; children would report its peak as theirs, so the figures are void")
    return parent


def idle_footprint(command: str, tiny: Path, model: Path, memory_limit: str, runs: int = 3) -> int:
    """Peak RSS of ``streamsgd fit`` on a 1,000-row file with the same options: the process's
    own footprint (interpreter, pyarrow, numba, every kernel and code path of a fit) with
    negligible data. Median of ``runs`` processes.
    """
    return int(statistics.median(fit_peak(command, tiny, model, memory_limit)["peak_rss_bytes"]
                                 for _ in range(runs)))


def fit_peak(command: str, data: Path, model: Path, memory_limit: str) -> dict[str, Any]:
    """Run ``streamsgd fit`` in its own process; returns its JSON summary and wall time."""
    argv = [command, "fit", str(data), "--model", "logistic", "--epochs", "1",
            "--memory-limit", memory_limit, "-o", str(model), "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"memory.py: {' '.join(argv)} failed ({out.returncode}):\n{out.stderr}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {**summary, "wall_seconds": seconds, "argv": argv}


def full_batch_bytes(rows: int, features: int) -> int:
    """What full-batch GD holds: float32 features + target per row, and one float64 margin."""
    return rows * (features + 1) * 4 + rows * 8


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]  # other work on a shared machine skews timings; record it
    args.out.mkdir(parents=True, exist_ok=True)
    limit = parse_bytes(args.memory_limit)
    command = streamsgd_command()
    sizes = {"small": args.rows, "big": 8 * args.rows}
    files = {k: args.out / f"mem-{n}x{args.features}.parquet" for k, n in sizes.items()}

    t0 = time.perf_counter()
    for key, path in files.items():
        ensure_file(command, path, sizes[key], args.features, args.regenerate)
    warm = args.out / f"mem-warmup-{args.features}.parquet"
    ensure_file(command, warm, 1000, args.features, args.regenerate)
    print(f"data ready in {time.perf_counter() - t0:.1f} s")

    # Untimed warm-up so no measured run pays for compiling the Numba kernels (their
    # on-disk cache is filled here), which would inflate its peak RSS.
    model = args.out / "mem-model.npz"
    fit_peak(command, warm, model, args.memory_limit)
    idle = idle_footprint(command, warm, model, args.memory_limit)
    parent = check_parent(idle)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in sizes}
    for _ in range(args.runs):  # alternate small and big, so drift hits both alike
        for key, path in files.items():
            runs[key].append(fit_peak(command, path, model, args.memory_limit))
    peaks = {k: [r["peak_rss_bytes"] for r in v] for k, v in runs.items()}
    median = {k: statistics.median(v) for k, v in peaks.items()}
    worst = {k: max(v) for k, v in peaks.items()}
    seconds = {k: statistics.median(r["wall_seconds"] for r in v) for k, v in runs.items()}

    # Flatness compares typical runs (medians); the limit is a bound, so the worst run counts.
    budget = limit + idle
    ratio = median["big"] / median["small"]
    flat_ok = ratio <= MAX_RATIO
    limit_ok = all(p <= budget for p in worst.values())

    print(f"\nstreamsgd fit --epochs 1 --memory-limit {args.memory_limit} ({mib(limit)}), {args.features} features, "
          f"row groups of {ROW_GROUP_ROWS:,}, uncompressed; peak RSS median (max) of {args.runs} run(s)")
    print(f"{'data set':<26}{'rows':>12}{'file':>11}{'peak RSS':>11}{'(max)':>10}{'full batch':>12}"
          f"{'full/peak':>11}{'fit s':>8}")
    print(f"{'idle (fit of 1,000 rows)':<26}{'':>12}{'':>11}{mib(idle):>11}")
    for key, n in sizes.items():
        full = full_batch_bytes(n, args.features)
        print(f"{key + (' (N)' if key == 'small' else ' (8N)'):<26}{n:>12,}{mib(files[key].stat().st_size):>11}"
              f"{mib(median[key]):>11}{mib(worst[key]):>10}{mib(full):>12}{full / median[key]:>11.2f}"
              f"{seconds[key]:>8.1f}")
    print(f"peak RSS big/small: {ratio:.3f} (must be <= {MAX_RATIO:.2f}) -> {'ok' if flat_ok else 'FAIL'}")
    print(f"peak RSS <= memory limit + idle = {mib(budget)}: "
          + ", ".join(f"{k} {mib(p)} ({p / budget:.2f})" for k, p in worst.items())
          + f" -> {'ok' if limit_ok else 'FAIL'}")

    report = {
        "benchmark": "memory",
        "quick": args.quick,
        "features": args.features, "row_group_rows": ROW_GROUP_ROWS, "runs": args.runs,
        "memory_limit": args.memory_limit, "memory_limit_bytes": limit,
        "idle_peak_rss_bytes": idle, "parent_peak_rss_bytes": parent,
        "sets": {k: {"rows": sizes[k], "file_bytes": files[k].stat().st_size,
                     "full_batch_bytes": full_batch_bytes(sizes[k], args.features),
                     "peak_rss_bytes_median": median[k], "peak_rss_bytes_max": worst[k],
                     "wall_seconds_median": seconds[k], "runs": runs[k]} for k in sizes},
        "ratio_big_over_small": ratio, "max_ratio": MAX_RATIO, "flat_ok": flat_ok,
        "budget_bytes": budget, "limit_ok": limit_ok,
        "machine": provenance.machine(),
        "total_seconds": time.perf_counter() - started,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }
    json_path = args.out / ("memory-quick.json" if args.quick else "memory.json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {json_path} (total {report['total_seconds']:.0f} s; 1-min load average "
          f"{load_start:.1f} at start, {report['load_average_1min']['end']:.1f} at end)")
    return 0 if flat_ok and limit_ok else 1


if __name__ == "__main__":
    sys.exit(main())
