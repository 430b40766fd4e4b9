"""Start-up cost of ``streamsgd fit``: cold (Numba cache empty) and warm (cache filled) wall time.

Each run is a fresh process: ``streamsgd fit TINY --epochs 1 -o model.npz --json`` on a
1,000-row Parquet file (20 float32 features), so the wall time is almost all start-up:
interpreter, imports, loading (or compiling) the Numba kernels, opening the file, writing
the model. ``--epochs 1`` keeps the training itself negligible (without it ``fit`` makes
20,000 updates, which is training, not start-up).

  cold: ``NUMBA_CACHE_DIR`` points at a new empty directory: the first run ever, every
        kernel is compiled;
  warm: a second run with the same directory: every kernel comes from the on-disk cache;
  warm, runtime dependencies only: the same from a virtualenv holding streamsgd and its
        runtime dependencies alone (``--runtime-venv``, made with pip when missing): the
        project's .venv has the test extras, whose scipy Numba imports as it starts;
  import: ``python -c "import streamsgd.cli"`` (the import share of a warm run);
  help: ``streamsgd --help``.

Methods run round-robin (cold, warm, import, help, cold, ...) and each figure is the median
of ``--runs``. Then, once: ``python -X importtime`` of ``streamsgd.cli`` (the top offenders,
cumulative and self), and a cProfile of one warm ``fit`` call after the imports (where the
rest of the time goes: cache loading, compilation, I/O).

Done when: warm start under 1.5 s.

Usage:
  python benchmarks/startup.py            # 3 runs of each, then the import and fit profiles
  python benchmarks/startup.py --quick    # warm, import, help once; no cold run, no profile (make bench)
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
from typing import Any

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
TARGET_WARM_SECONDS = 1.5
ROWS, FEATURES = 1000, 20

PROFILE = r"""
import cProfile, io, json, pstats, sys, threading, time
from streamsgd.cli import main
import numba.core.dispatcher as nd
# every Numba dispatch that loads (or compiles) a kernel, with its thread: cProfile sees only
# the main thread, and the readers load their kernels in the background
loads = []
_compile = nd.Dispatcher.compile
def timed_compile(self, sig):
    t0 = time.perf_counter()
    try:
        return _compile(self, sig)
    finally:
        loads.append({"function": self.py_func.__module__ + "." + self.py_func.__qualname__,
                      "thread": threading.current_thread().name, "seconds": time.perf_counter() - t0,
                      "cached_overloads": len(self.overloads)})
nd.Dispatcher.compile = timed_compile
argv = json.loads(sys.argv[1])
prof = cProfile.Profile()
prof.enable()
try:
    main(argv)
except SystemExit:
    pass
prof.disable()
out = io.StringIO()
stats = pstats.Stats(prof, stream=out)
rows = []
for (path, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
    rows.append({"function": f"{path}:{line}({name})", "calls": nc, "self_s": tt, "cumulative_s": ct})
rows.sort(key=lambda r: -r["cumulative_s"])
total = max((r["cumulative_s"] for r in rows), default=0.0)
print(json.dumps({"total_s": total, "rows": rows[:400], "numba_loads": loads}))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs of each method; medians reported (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="1 run of each but cold (warm uses your usual Numba cache), no profile")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the data file and the JSON")
    p.add_argument("--runtime-venv", type=Path, default=DEFAULT_OUT / "runtime-venv",
                   help="a virtualenv with streamsgd and its runtime dependencies only (made with pip if "
                        "missing; skipped by --quick): the warm start a user without scikit-learn gets")
    args = p.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def runtime_venv(path: Path) -> str:
    """The ``streamsgd`` of a virtualenv holding the package and its runtime dependencies only.

    The project's .venv also holds the test and benchmark extras; scikit-learn brings scipy,
    which Numba imports while it starts (``scipy.linalg.cython_blas``, ~0.2 s of every warm
    start). Installed editable, so it runs this checkout's code with the same Numba cache.
    """
    exe = path / "bin" / "streamsgd"
    if not exe.exists():
        repo = Path(__file__).resolve().parent.parent
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", "-e", str(repo)], check=True)
    return str(exe)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"startup.py: {' '.join(argv)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def import_offenders(env: dict[str, str], top: int = 15) -> dict[str, Any]:
    """``python -X importtime -c 'import streamsgd.cli'``: total and the costliest modules."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import streamsgd.cli"],
                         capture_output=True, text=True, env=env)
    mods = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "self [us]" in line:
            continue
        self_us = int(parts[0].split(":", 1)[1])
        mods.append({"module": parts[2].strip(), "self_s": self_us / 1e6, "cumulative_s": int(parts[1]) / 1e6})
    total = sum(m["self_s"] for m in mods)
    # "top-level" third-party packages: the cumulative cost of each package's first import
    packages: dict[str, float] = {}
    for m in mods:
        root = m["module"].split(".")[0]
        if "." not in m["module"]:
            packages[root] = max(packages.get(root, 0.0), m["cumulative_s"])
    by_self = sorted(mods, key=lambda m: -m["self_s"])[:top]
    return {"total_s": total, "packages_cumulative_s": dict(sorted(packages.items(), key=lambda kv: -kv[1])[:top]),
            "top_self": by_self}


def profile_fit(argv: list[str], env: dict[str, str], top: int = 25) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROFILE, json.dumps(argv)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    data = json.loads(out.stdout.strip().splitlines()[-1])
    keep = []
    for r in data["rows"]:
        f = r["function"]
        # streamsgd's own functions, numba's dispatch/caching, and I/O libraries: where time goes
        if any(s in f for s in ("streamsgd/", "numba/core/dispatcher", "numba/core/caching", "pyarrow",
                                "zarr", "numpy/lib/_npyio", "builtins.exec", "_bootstrap>:1")):
            keep.append(r)
    return {"total_s": data["total_s"], "top_cumulative": keep[:top], "numba_loads": data.get("numba_loads", [])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = _common.begin(args.out)
    streamsgd = _common.command(script="startup.py", name="streamsgd")
    tiny = args.out / f"startup-{ROWS}x{FEATURES}.parquet"
    if not tiny.exists():
        subprocess.run([streamsgd, "generate", str(tiny), "--rows", str(ROWS), "--features", str(FEATURES),
                        "--compression", "none"], check=True, capture_output=True)
    model = args.out / "startup-model.npz"
    fit_argv = [streamsgd, "fit", str(tiny), "--epochs", "1", "-o", str(model), "--json"]
    base_env = dict(os.environ)

    times: dict[str, list[float]] = {"cold": [], "warm": [], "warm_runtime": [], "import": [], "help": []}
    runtime_argv = None
    if args.quick:
        del times["cold"], times["warm_runtime"]
    else:
        runtime_argv = [runtime_venv(args.runtime_venv)] + fit_argv[1:]
    fit_seconds: dict[str, list[float]] = {"cold": [], "warm": [], "warm_runtime": []}
    caches = []
    try:
        for run in range(args.runs):
            cache = tempfile.mkdtemp(prefix="streamsgd-numba-cache-")
            caches.append(cache)
            env = {**base_env, "NUMBA_CACHE_DIR": cache}
            # the same fresh cache: the first run fills it, the second reads it; --quick skips the
            # cold run (its ~25 s of compiling would blow make bench's budget) and uses the user's cache
            if args.quick:
                env = base_env
            for key in (("warm",) if args.quick else ("cold", "warm", "warm_runtime")):
                seconds, out = timed(runtime_argv if key == "warm_runtime" else fit_argv, env)
                times[key].append(seconds)
                fit_seconds[key].append(json.loads(out.strip().splitlines()[-1])["seconds"])
            times["import"].append(timed([sys.executable, "-c", "import streamsgd.cli"], env)[0])
            times["help"].append(timed([streamsgd, "--help"], env)[0])
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
        warm_env = {**base_env, "NUMBA_CACHE_DIR": caches[-1]}
        offenders = import_offenders(warm_env)
        profile = None if args.quick else profile_fit(fit_argv[1:], warm_env)
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)

    med, fit_med = _common.medians(times), _common.medians(fit_seconds)
    if args.quick:  # no cold run: keep the table's shape
        med["cold"] = fit_med["cold"] = med["warm_runtime"] = fit_med["warm_runtime"] = float("nan")
    ok = med["warm"] < TARGET_WARM_SECONDS
    ok_runtime = med["warm_runtime"] < TARGET_WARM_SECONDS
    print(f"\nstreamsgd fit of {ROWS:,} rows x {FEATURES} features, --epochs 1, fresh process each; "
          f"median of {args.runs} run(s)")
    print(f"{'what':<44}{'wall s':>9}{'inside fit() s':>16}")
    print(f"{'cold start (empty NUMBA_CACHE_DIR)':<44}{med['cold']:>9.2f}{fit_med['cold']:>16.2f}")
    print(f"{'warm start (cache filled)':<44}{med['warm']:>9.2f}{fit_med['warm']:>16.2f}")
    print(f"{'warm start, runtime dependencies only':<44}{med['warm_runtime']:>9.2f}{fit_med['warm_runtime']:>16.2f}")
    print(f"{'python -c ' + repr('import streamsgd.cli'):<44}{med['import']:>9.2f}")
    print(f"{'streamsgd --help':<44}{med['help']:>9.2f}")
    runtime = "not measured (--quick)" if args.quick else "ok" if ok_runtime else "NOT MET"
    print(f"warm start < {TARGET_WARM_SECONDS} s: {'ok' if ok else 'NOT MET'} (this venv, with the test extras), "
          f"{runtime} (runtime dependencies only); compiling costs "
          f"{med['cold'] - med['warm']:.2f} s once")
    print(f"\nimport streamsgd.cli: {offenders['total_s']:.2f} s of module execution (-X importtime); "
          "top packages, cumulative:")
    for name, s in list(offenders["packages_cumulative_s"].items())[:10]:
        print(f"  {name:<30}{s:>7.3f} s")
    print("top modules by self time:")
    for m in offenders["top_self"][:10]:
        print(f"  {m['module']:<42}{m['self_s']:>7.3f} s (cumulative {m['cumulative_s']:.3f})")
    if profile and "top_cumulative" in profile:
        print(f"\ncProfile of one warm fit (imports of streamsgd.cli done first): {profile['total_s']:.2f} s; "
              "top by cumulative time")
        for r in profile["top_cumulative"][:18]:
            f = r["function"].replace(str(Path(__file__).resolve().parent.parent) + "/", "")
            f = f.split("site-packages/")[-1]
            print(f"  {r['cumulative_s']:>7.3f} s cum {r['self_s']:>7.3f} s self {r['calls']:>6}x  {f[:90]}")
        loads = profile.get("numba_loads", [])
        print(f"Numba kernels loaded from the cache in that fit (all threads): "
              f"{sum(load['seconds'] for load in loads):.2f} s in all")
        for load in sorted(loads, key=lambda load: -load["seconds"]):
            print(f"  {load['seconds']:>7.3f} s  {load['function']:<40} thread {load['thread']}")

    report = {
        "benchmark": "startup", "quick": args.quick, "runs": args.runs, "rows": ROWS, "features": FEATURES,
        "fit_argv": fit_argv, "seconds": times, "median_seconds": med,
        "fit_summary_seconds": fit_seconds, "fit_summary_seconds_median": fit_med,
        "target_warm_seconds": TARGET_WARM_SECONDS, "warm_ok": ok, "warm_runtime_ok": ok_runtime,
        "runtime_venv": None if args.quick else str(args.runtime_venv),
        "importtime": offenders, "profile_warm_fit": profile,
        "machine": provenance.machine(),
    }
    provenance.write_report(args.out / ("startup-quick.json" if args.quick else "startup.json"), report, started, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
