"""Peak memory of ``streamsgd fit`` does not grow with the data: 10^5 to 10^8 rows, one limit.

Trains one epoch on N = 10^5, 10^6, 10^7 (and, opt-in with ``--max-rows 100000000``, 10^8)
rows of d = 100 float32 features, each in a fresh process
(``streamsgd fit DATA --epochs 1 --memory-limit 256MB --json``), and reads the peak RSS that
process reports (``peak_rss_bytes``: Linux's VmHWM). The idle footprint is the same ``fit`` on
a 1,000-row file: the interpreter, pyarrow, numba and every code path of a fit, with
negligible data. Next to each figure: what in-memory full-batch gradient descent would hold,
N*(d+1)*4 bytes of float32 rows plus N*8 of float64 margins, and the machine's RAM.

The 10^8-row file is about 40 GB, more than this machine's RAM: that run is the
larger-than-RAM proof (it must finish with peak RSS under 1 GiB). It runs once, and files
over 5 GB that the script wrote or read are deleted after their run unless ``--keep-files``.

It also trains, at the default --memory-limit, a file written the way most Parquet files
are: ``pyarrow.parquet.write_table(table, path)`` with every default (snappy, dictionary
encoding, 1,048,576-row groups), 2M x 100 float64 (400,000 rows with ``--quick``, one row
group), against the idle footprint of a 1,000-row file written the same way.

Checks (exit status 1 if any fails):
  * flat: the median peak RSS of every size >= 10^6 is within 10% of that of 10^6;
  * bounded: every run's peak RSS <= memory limit + idle footprint;
  * the largest run (when it is >= 10^8 rows) peaks under 1 GiB;
  * the writer-defaults file trains at the default limit within limit + its idle footprint.

Usage:
  python benchmarks/memory.py                          # 1e5, 1e6, 1e7 rows x 100, 256MB, 3 runs (1e7: 4 GB file)
  python benchmarks/memory.py --max-rows 100000000     # also 1e8 (a 40 GB file, once; ~30 min to write)
  python benchmarks/memory.py --quick                  # 1e5, 1e6, 3e6 rows x 20, 64MB, 1 run (make bench)

Sizes of 10^6 rows and more exceed three shuffle windows (one window is 2/9 of the limit), so
they all hold a full budget of windows: the comparison is "full budget" vs "full budget", as it
would be for data of any size beyond that. 10^5 rows is below that and peaks lower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance
from streamsgd.config import parse_bytes
from streamsgd.train.metrics import peak_rss_bytes

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
FIGURES = Path(__file__).resolve().parent / "figures"
ROW_GROUP_ROWS = 65536
MAX_RATIO = 1.10
BIG_RUN_ROWS = 10**8  # from here on a run is the larger-than-RAM proof
BIG_RUN_MAX_RSS = 2**30
DELETE_OVER = 5 * 10**9
SEED = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-rows", type=int, default=10**7,
                   help="largest N; powers of ten from 10^5 up to it (default 10^7; 10^8 for the 40 GB run)")
    p.add_argument("--sizes", default=None, help="comma-separated row counts instead of powers of ten")
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--memory-limit", default=None, help="passed to streamsgd fit (default 256MB, 64MB with --quick)")
    p.add_argument("--runs", type=int, default=3,
                   help="fits per size below 10^8 rows, round-robin; the median is reported (default 3)")
    p.add_argument("--quick", action="store_true", help="1e5, 1e6, 3e6 rows x 20 features, 64MB, 1 run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the data files and the JSON")
    p.add_argument("--figure", type=Path, default=None, help="PNG to write (default benchmarks/figures/memory.png; "
                   "none with --quick)")
    p.add_argument("--keep-files", action="store_true", help="keep data files over 5 GB after their run")
    p.add_argument("--regenerate", action="store_true", help="rewrite the data files even if matching ones exist")
    args = p.parse_args(argv)
    if args.quick:
        args.features, args.runs = 20, 1
        args.sizes = args.sizes or "100000,1000000,3000000"
    if args.sizes:
        args.sizes = sorted(int(s) for s in args.sizes.split(","))
    else:
        args.sizes = [10**k for k in range(5, 13) if 10**k <= args.max_rows]
    if args.memory_limit is None:
        # 64MB: the smallest round limit that pays for decoding 65536-row groups of 20 features
        args.memory_limit = "64MB" if args.quick else "256MB"
    if args.figure is None and not args.quick:
        args.figure = FIGURES / "memory.png"
    if not args.sizes or min(args.sizes + [args.features, args.runs]) < 1:
        p.error("--sizes/--max-rows, --features and --runs must be >= 1")
    return args


def ensure_file(command: str, path: Path, rows: int, features: int, regenerate: bool) -> bool:
    """Write an uncompressed logistic file unless one with this shape is already there.

    The file is written by ``streamsgd generate`` in a child process, never in this one: a
    child started by ``subprocess`` reports getrusage's peak RSS *including this process's
    peak* (the kernel carries it over the vfork+exec), so this process must stay small
    for the children's ``peak_rss_bytes`` to mean anything. See ``check_parent``.
    """
    if path.exists() and not regenerate and _common.is_uncompressed(path, rows, features, ROW_GROUP_ROWS):
        return False
    _common.write_uncompressed(path, rows, features, ROW_GROUP_ROWS, seed=SEED, child=command)
    return True


def check_parent(idle: int) -> int:
    """This process's peak RSS; stop if it could have leaked into the children's figures."""
    parent = peak_rss_bytes()
    if parent >= idle:
        sys.exit(f"memory.py: this process peaked at {_common.mib(parent)}, not below the idle footprint "
                 f"{_common.mib(idle)}; children would report its peak as theirs, so the figures are void")
    return parent


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


WRITE_DEFAULTS = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
path, rows, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
X = rng.standard_normal((rows, d))
y = (X @ rng.standard_normal(d) / 10 + rng.logistic(size=rows) > 0).astype(np.int64)
pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(d)}, "y": y}), path)  # every default
"""


def writer_defaults(args: argparse.Namespace, command: str, model: Path) -> dict[str, Any]:
    """Peak RSS of a fit at the default limit on a file written with pyarrow's defaults."""
    from streamsgd.config import DEFAULT_MEMORY_LIMIT

    rows = 400_000 if args.quick else 2_000_000
    limit = f"{DEFAULT_MEMORY_LIMIT}"
    files = {n: args.out / f"pa-defaults-{n}x100.parquet" for n in (1000, rows)}
    for n, path in files.items():  # written in a child: this process must stay small (see ensure_file)
        if args.regenerate or not path.exists() or pq.read_metadata(path).num_rows != n:
            subprocess.run([sys.executable, "-c", WRITE_DEFAULTS, str(path), str(n), "100"], check=True)
    meta = pq.read_metadata(files[rows])
    fit_peak(command, files[1000], model, limit)  # warm-up: compiles nothing in the measured runs
    idle = int(statistics.median(fit_peak(command, files[1000], model, limit)["peak_rss_bytes"] for _ in range(3)))
    peaks = [fit_peak(command, files[rows], model, limit)["peak_rss_bytes"] for _ in range(args.runs)]
    peak = int(statistics.median(peaks))
    ok = max(peaks) <= DEFAULT_MEMORY_LIMIT + idle
    print(f"pyarrow write_table defaults, {rows:,} x 100 float64, {meta.num_row_groups} row group(s) of "
          f"{meta.row_group(0).num_rows:,} rows ({_common.human(files[rows].stat().st_size)}), default --memory-limit "
          f"{_common.mib(DEFAULT_MEMORY_LIMIT)}: peak RSS {_common.mib(peak)} (max {_common.mib(max(peaks))}), idle {_common.mib(idle)}, "
          f"limit + idle {_common.mib(DEFAULT_MEMORY_LIMIT + idle)}: {'ok' if ok else 'FAIL'}")
    return {"rows": rows, "row_groups": meta.num_row_groups, "row_group_rows": meta.row_group(0).num_rows,
            "file_bytes": files[rows].stat().st_size, "memory_limit_bytes": DEFAULT_MEMORY_LIMIT,
            "idle_peak_rss_bytes": idle, "peak_rss_bytes": peaks, "ok": ok}


def full_batch_bytes(rows: int, features: int) -> int:
    """What full-batch GD holds: float32 features + target per row, and one float64 margin."""
    return rows * (features + 1) * 4 + rows * 8


def ram_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def plot(path: Path, sets: dict[int, dict[str, Any]], features: int, idle: int, limit: int, ram: int,
         memory_limit: str) -> None:
    from matplotlib.figure import Figure

    rows = sorted(sets)
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot()
    lo, hi = rows[0] / 2, rows[-1] * 20
    grid = [lo, hi]
    ax.plot(grid, [full_batch_bytes(int(n), features) / 2**20 for n in grid], "--", color="tab:red",
            label=f"in-memory full batch: N·({features}+1)·4 + N·8")
    ax.plot(rows, [sets[n]["peak_rss_bytes_median"] / 2**20 for n in rows], "o-", color="tab:blue",
            label=f"streamsgd fit peak RSS (--memory-limit {memory_limit})")
    ax.axhline(ram / 2**20, color="black", lw=1, label=f"this machine's RAM ({_common.human(ram)})")
    ax.axhline((limit + idle) / 2**20, color="tab:blue", lw=0.8, ls=":", label="memory limit + idle footprint")
    for n in rows:
        ax.annotate(f"{sets[n]['peak_rss_bytes_median'] / 2**20:,.0f} MiB", (n, sets[n]["peak_rss_bytes_median"] / 2**20),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8, color="tab:blue")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("rows N (d = %d float32 features)" % features)
    ax.set_ylabel("peak RSS / bytes needed (MiB)")
    ax.set_title("Memory of one epoch: streamed vs in-memory full batch", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = _common.begin(args.out)
    limit = parse_bytes(args.memory_limit)
    command = _common.command(script="memory.py")
    ram = ram_bytes()
    files = {n: args.out / f"mem-{n}x{args.features}.parquet" for n in args.sizes}

    warm = args.out / f"mem-warmup-{args.features}.parquet"
    ensure_file(command, warm, 1000, args.features, args.regenerate)
    # Untimed warm-up so no measured run pays for compiling the Numba kernels (their
    # on-disk cache is filled here), which would inflate its peak RSS.
    model = args.out / "mem-model.npz"
    fit_peak(command, warm, model, args.memory_limit)
    idle_runs = [fit_peak(command, warm, model, args.memory_limit)["peak_rss_bytes"] for _ in range(3)]
    idle = int(statistics.median(idle_runs))
    parent = check_parent(idle)

    small = [n for n in args.sizes if n < BIG_RUN_ROWS]
    big = [n for n in args.sizes if n >= BIG_RUN_ROWS]
    t0 = time.perf_counter()
    generated = {}
    for n in small:
        generated[n] = ensure_file(command, files[n], n, args.features, args.regenerate)
    print(f"data ready in {time.perf_counter() - t0:.1f} s", flush=True)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    file_bytes = {n: files[n].stat().st_size for n in small}
    for r in range(args.runs):  # round-robin over the sizes, so drift hits all alike
        for n in small:
            runs[n].append(fit_peak(command, files[n], model, args.memory_limit))
            print(f"run {r + 1}/{args.runs}: {n:,} rows, peak RSS {_common.mib(runs[n][-1]['peak_rss_bytes'])}, "
                  f"{runs[n][-1]['wall_seconds']:.1f} s", flush=True)
    deleted = []
    for n in small:
        if file_bytes[n] > DELETE_OVER and not args.keep_files:
            files[n].unlink()
            deleted.append(str(files[n]))
    for n in big:  # the larger-than-RAM runs: once each, then the file goes
        t0 = time.perf_counter()
        generated[n] = ensure_file(command, files[n], n, args.features, args.regenerate)
        file_bytes[n] = files[n].stat().st_size
        print(f"{files[n]}: {_common.human(file_bytes[n])} ({'written' if generated[n] else 'reused'} in "
              f"{time.perf_counter() - t0:.0f} s; RAM {_common.human(ram)})", flush=True)
        runs[n].append(fit_peak(command, files[n], model, args.memory_limit))
        print(f"{n:,} rows: peak RSS {_common.mib(runs[n][-1]['peak_rss_bytes'])}, {runs[n][-1]['wall_seconds']:.0f} s",
              flush=True)
        if file_bytes[n] > DELETE_OVER and not args.keep_files:
            files[n].unlink()
            deleted.append(str(files[n]))

    sets: dict[int, dict[str, Any]] = {}
    for n in args.sizes:
        peaks = [r["peak_rss_bytes"] for r in runs[n]]
        sets[n] = {"rows": n, "file_bytes": file_bytes[n], "full_batch_bytes": full_batch_bytes(n, args.features),
                   "peak_rss_bytes_median": statistics.median(peaks), "peak_rss_bytes_max": max(peaks),
                   "wall_seconds_median": statistics.median(r["wall_seconds"] for r in runs[n]),
                   "rows_per_second_median": statistics.median(n / r["wall_seconds"] for r in runs[n]),
                   "larger_than_ram": file_bytes[n] > ram, "runs": runs[n]}

    budget = limit + idle
    flat_base = next((n for n in args.sizes if n >= 10**6), None)
    ratios = {n: sets[n]["peak_rss_bytes_median"] / sets[flat_base]["peak_rss_bytes_median"]
              for n in args.sizes if flat_base and n >= flat_base}
    flat_ok = all(r <= MAX_RATIO and r >= 1 / MAX_RATIO for r in ratios.values())
    limit_ok = all(s["peak_rss_bytes_max"] <= budget for s in sets.values())
    big_ok = all(sets[n]["peak_rss_bytes_max"] < BIG_RUN_MAX_RSS for n in big)

    print(f"\nstreamsgd fit --model logistic --epochs 1 --memory-limit {args.memory_limit} ({_common.mib(limit)}), "
          f"{args.features} float32 features, row groups of {ROW_GROUP_ROWS:,}, uncompressed; "
          f"peak RSS median (max) of {args.runs} run(s) below 10^8 rows, 1 run from 10^8; RAM {_common.human(ram)}")
    head = (f"{'rows':>13}{'file':>11}{'full batch':>12}{'peak RSS':>11}{'(max)':>10}{'peak-idle':>11}"
            f"{'/limit':>8}{'vs 1e6':>8}{'fit s':>8}")
    print(head)
    print(f"{'idle (1,000)':>13}{'':>11}{'':>12}{_common.mib(idle):>11}")
    for n, s in sets.items():
        over = s["peak_rss_bytes_median"] - idle
        ratio = f"{ratios[n]:.3f}" if n in ratios else ""
        print(f"{n:>13,}{_common.human(s['file_bytes']):>11}{_common.human(s['full_batch_bytes']):>12}"
              f"{_common.mib(s['peak_rss_bytes_median']):>11}{_common.mib(s['peak_rss_bytes_max']):>10}{_common.mib(over):>11}"
              f"{over / limit:>8.2f}{ratio:>8}{s['wall_seconds_median']:>8.1f}")
    print(f"flat from {flat_base:,} rows within {MAX_RATIO - 1:.0%}: {'ok' if flat_ok else 'FAIL'}" if flat_base
          else "flat: no size >= 10^6 rows, not checked")
    print(f"every peak <= limit + idle = {_common.mib(budget)}: {'ok' if limit_ok else 'FAIL'}")
    if big:
        print(f"larger-than-RAM run(s) under 1 GiB peak RSS: {'ok' if big_ok else 'FAIL'}")
    if deleted:
        print("deleted after measuring: " + ", ".join(deleted))
    defaults = writer_defaults(args, command, model)

    if args.figure:
        plot(args.figure, sets, args.features, idle, limit, ram, args.memory_limit)
        print(f"wrote {args.figure}")
    report = {
        "benchmark": "memory",
        "quick": args.quick,
        "features": args.features, "row_group_rows": ROW_GROUP_ROWS, "runs": args.runs,
        "memory_limit": args.memory_limit, "memory_limit_bytes": limit, "ram_bytes": ram,
        "idle_peak_rss_bytes": idle, "idle_runs": idle_runs, "parent_peak_rss_bytes": parent,
        "sets": {str(n): s for n, s in sets.items()},
        "ratio_vs_1e6": {str(n): r for n, r in ratios.items()}, "max_ratio": MAX_RATIO, "flat_ok": flat_ok,
        "budget_bytes": budget, "limit_ok": limit_ok, "larger_than_ram_ok": big_ok if big else None,
        "deleted_files": deleted, "writer_defaults": defaults,
        "machine": provenance.machine(),
    }
    name = "memory-quick.json" if args.quick else ("memory-1e8.json" if big else "memory.json")
    provenance.write_report(args.out / name, report, started, load_start)
    return 0 if flat_ok and limit_ok and big_ok and defaults["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
