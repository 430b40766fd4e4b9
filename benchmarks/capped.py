"""Streaming trains under a hard memory cap far smaller than the data; full batch cannot load it.

A ~4 GB Parquet file (10,000,000 rows x 100 float32 features, uncompressed) and a 1 GB cap:

  streaming:  ``streamsgd fit DATA --epochs 1 --memory-limit 256MB --json`` must finish one epoch;
  full batch: ``pq.read_table(DATA)`` in a child Python (what in-memory full-batch GD must do
              before its first step) must be killed by the cap (SIGKILL from the OOM killer,
              seen as exit -9 and memory.failcnt/oom_kill) or fail with MemoryError.

How the cap is set, in order of preference:
  cgroup:  a child of this process's own cgroup v1 memory cgroup (from /proc/self/cgroup,
           mounted at /sys/fs/cgroup/memory), with memory.limit_in_bytes and
           memory.memsw.limit_in_bytes set to the cap; each command starts through
           ``sh -c 'echo $$ > CGROUP/cgroup.procs; exec CMD'``. One fresh cgroup per command,
           removed afterwards. The cgroup's memory.max_usage_in_bytes is reported as its peak
           (it counts page cache too, which the kernel reclaims before it kills anything).
  prlimit: ``prlimit --as=CAP`` (address space, not resident memory) with
           ARROW_DEFAULT_MEMORY_POOL=system so Arrow allocates through malloc; a coarser cap,
           used only where no cgroup can be made.
  neither: the script says so and exits 0 without a verdict (skipped).

Exit status 1 if streaming fails or full batch unexpectedly succeeds under the cap.

Usage:
  python benchmarks/capped.py            # 10M x 100 (4.1 GB file), 1 GB cap, --memory-limit 256MB
  python benchmarks/capped.py --quick    # 2M x 100 (0.8 GB file), 640 MiB cap (make bench)
  python benchmarks/capped.py --method prlimit   # force the fallback
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance
from streamsgd.config import parse_bytes

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROW_GROUP_ROWS = 65536
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")

FULL_BATCH = r"""
import sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])  # what in-memory full-batch GD must hold before its first step
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(f'{{"table_bytes": {table.nbytes}, "peak_rss_bytes": {hwm}}}')
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--cap", default=None, help="hard memory cap (default 1GiB; 640MiB with --quick)")
    p.add_argument("--memory-limit", default=None, help="streamsgd fit --memory-limit (default 256MB)")
    p.add_argument("--method", choices=["auto", "cgroup", "prlimit"], default="auto")
    p.add_argument("--quick", action="store_true", help="2,000,000 rows (0.8 GB), 640MiB cap")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.rows = 2_000_000
    args.cap = args.cap or ("640MiB" if args.quick else "1GiB")
    args.memory_limit = args.memory_limit or "256MB"
    return args


def ensure_file(command: str, path: Path, rows: int, features: int) -> None:
    if not (path.exists() and _common.is_uncompressed(path, rows, features, ROW_GROUP_ROWS)):
        _common.write_uncompressed(path, rows, features, ROW_GROUP_ROWS, child=command)


# ---------------------------------------------------------------------------- the cap


def own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory cgroup directory, or None (cgroup v2, no memory controller)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            path = CGROUP_ROOT / rel.lstrip("/")
            return path if (path / "memory.limit_in_bytes").exists() else None
    return None


class CgroupCap:
    """A fresh child memory cgroup per command, removed afterwards."""

    method = "cgroup"

    def __init__(self, cap: int):
        self.cap = cap
        self.parent = own_memory_cgroup()
        self.count = 0

    def usable(self) -> tuple[bool, str]:
        if self.parent is None:
            return False, "no cgroup v1 memory controller in /proc/self/cgroup"
        try:
            path = self._make()
            self._remove(path)
        except OSError as e:
            return False, f"cannot create a child of {self.parent}: {e}"
        return True, f"child cgroups of {self.parent}"

    def _make(self) -> Path:
        self.count += 1
        path = self.parent / f"streamsgd-capped-{os.getpid()}-{self.count}"
        path.mkdir()
        try:
            (path / "memory.limit_in_bytes").write_text(str(self.cap))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():  # memory + swap: no escape into swap (memsw must be >= the memory limit)
                swap.write_text(str(self.cap))
        except OSError:
            self._remove(path)
            raise
        return path

    @staticmethod
    def _remove(path: Path) -> None:
        for _ in range(50):  # the last task leaves the cgroup a moment after it is reaped
            try:
                path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"capped.py: could not remove {path}", file=sys.stderr)

    def run(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        path = self._make()
        try:
            wrapped = ["sh", "-c", f'echo $$ > "{path}/cgroup.procs" && exec "$@"', "sh", *argv]
            t0 = time.perf_counter()
            out = subprocess.run(wrapped, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - t0
            stats = {"cgroup": str(path), "cgroup_max_usage_bytes": _int(path / "memory.max_usage_in_bytes"),
                     "cgroup_memsw_max_usage_bytes": _int(path / "memory.memsw.max_usage_in_bytes"),
                     "failcnt": _int(path / "memory.failcnt"), "memsw_failcnt": _int(path / "memory.memsw.failcnt"),
                     "oom_control": _kv(path / "memory.oom_control")}
        finally:
            self._remove(path)
        return {**_result(out, seconds), **stats}


class PrlimitCap:
    method = "prlimit"

    def __init__(self, cap: int):
        self.cap = cap

    def usable(self) -> tuple[bool, str]:
        tool = shutil.which("prlimit")
        if tool is None:
            return False, "prlimit is not installed"
        probe = subprocess.run([tool, f"--as={self.cap}", "--", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            return False, f"prlimit --as failed: {probe.stderr.strip()}"
        return True, f"prlimit --as={self.cap} (address space), ARROW_DEFAULT_MEMORY_POOL=system"

    def run(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        env = {**env, "ARROW_DEFAULT_MEMORY_POOL": "system"}
        t0 = time.perf_counter()
        out = subprocess.run(["prlimit", f"--as={self.cap}", "--", *argv], capture_output=True, text=True, env=env)
        return _result(out, time.perf_counter() - t0)


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kv(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def _result(out: subprocess.CompletedProcess, seconds: float) -> dict[str, Any]:
    rc = out.returncode
    summary = None
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            summary = json.loads(line)
            break
        except ValueError:
            continue
    return {"returncode": rc, "signal": signal.Signals(-rc).name if rc < 0 else None,
            "memory_error": "MemoryError" in out.stderr or "std::bad_alloc" in out.stderr
                            or "Out of memory" in out.stderr,
            "stderr_tail": out.stderr[-1500:], "summary": summary, "wall_seconds": seconds}


def outcome(r: dict[str, Any]) -> str:
    if r["returncode"] == 0:
        return "completed"
    oom = (r.get("oom_control") or {}).get("oom_kill")
    if r["signal"] == "SIGKILL":
        return "killed (SIGKILL" + (f", oom_kill={oom}" if oom is not None else "") + \
               (f", failcnt={r['failcnt']}" if r.get("failcnt") is not None else "") + ")"
    if r["memory_error"]:
        return "refused (MemoryError / allocation failure)"
    return f"failed (exit {r['returncode']}{', ' + r['signal'] if r['signal'] else ''})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = _common.begin(args.out)
    cap = parse_bytes(args.cap)
    command = _common.command(script="capped.py")
    data = args.out / f"mem-{args.rows}x{args.features}.parquet"
    t0 = time.perf_counter()
    ensure_file(command, data, args.rows, args.features)
    size = data.stat().st_size
    print(f"data: {data} ({size / 2**30:.2f} GiB, ready in {time.perf_counter() - t0:.0f} s); cap {_common.mib(cap)} "
          f"= {cap / size:.2f}x the file")

    candidates = {"cgroup": [CgroupCap], "prlimit": [PrlimitCap], "auto": [CgroupCap, PrlimitCap]}[args.method]
    capper, tried = None, []
    for cls in candidates:
        c = cls(cap)
        ok, why = c.usable()
        tried.append({"method": c.method, "usable": ok, "why": why})
        if ok:
            capper = c
            break
    if capper is None:
        print("capped.py: SKIPPED, no way to cap memory here: " + "; ".join(f"{t['method']}: {t['why']}" for t in tried))
        return 0
    print(f"cap: {tried[-1]['why']}")

    env = dict(os.environ)
    model = args.out / "capped-model.npz"
    # one uncapped warm-up so the capped run does not pay for compiling (compiling is not what is tested)
    tiny = args.out / f"mem-warmup-{args.features}.parquet"
    ensure_file(command, tiny, 1000, args.features)
    subprocess.run([command, "fit", str(tiny), "--epochs", "1", "-o", str(model)], capture_output=True, env=env)

    stream_argv = [command, "fit", str(data), "--model", "logistic", "--epochs", "1",
                   "--memory-limit", args.memory_limit, "-o", str(model), "--json"]
    full_argv = [sys.executable, "-c", FULL_BATCH, str(data)]
    stream = capper.run(stream_argv, env)
    print(f"streaming: {outcome(stream)} in {stream['wall_seconds']:.1f} s", flush=True)
    full = capper.run(full_argv, env)
    print(f"full batch (pq.read_table): {outcome(full)} in {full['wall_seconds']:.1f} s", flush=True)

    stream_ok = stream["returncode"] == 0 and stream["summary"] is not None \
        and stream["summary"].get("epochs", 0) >= 1
    full_refused = full["returncode"] != 0 and (full["signal"] == "SIGKILL" or full["memory_error"])
    stream_rss = (stream["summary"] or {}).get("peak_rss_bytes")
    full_rss = (full["summary"] or {}).get("peak_rss_bytes")
    need = args.rows * (args.features + 1) * 4 + args.rows * 8

    print(f"\n{args.rows:,} rows x {args.features} features ({size / 2**30:.2f} GiB file; full batch needs "
          f"{need / 2**30:.2f} GiB), cap {_common.mib(cap)} by {capper.method}")
    print(f"{'run':<30}{'outcome':<44}{'peak RSS':>11}{'cgroup peak':>13}{'seconds':>9}")
    for name, r, rss in (("streaming fit (1 epoch)", stream, stream_rss), ("full batch: pq.read_table", full, full_rss)):
        print(f"{name:<30}{outcome(r):<44}{_common.mib(rss):>11}{_common.mib(r.get('cgroup_max_usage_bytes')):>13}"
              f"{r['wall_seconds']:>9.1f}")
    if stream["summary"]:
        s = stream["summary"]
        print(f"streaming: {s['rows_seen']:,} rows seen, {s['iterations']:,} updates, loss {s['loss']:.4f}, "
              f"{args.rows / stream['wall_seconds']:,.0f} rows/s wall")
    if not stream_ok:
        print("streaming stderr:\n" + stream["stderr_tail"])
    if not full_refused:
        print("full batch stderr:\n" + full["stderr_tail"])
    verdict = stream_ok and full_refused
    print(f"streaming completes under the cap: {'ok' if stream_ok else 'FAIL'}; "
          f"full batch refused: {'ok' if full_refused else 'FAIL'}")

    report = {
        "benchmark": "capped", "quick": args.quick, "rows": args.rows, "features": args.features,
        "file": str(data), "file_bytes": size, "full_batch_bytes": need, "cap": args.cap, "cap_bytes": cap,
        "memory_limit": args.memory_limit, "method": capper.method, "methods_tried": tried,
        "streaming": {**stream, "argv": stream_argv, "ok": stream_ok},
        "full_batch": {**full, "argv": full_argv, "refused": full_refused},
        "passed": verdict,
        "machine": provenance.machine(),
    }
    provenance.write_report(args.out / ("capped-quick.json" if args.quick else "capped.json"), report, started, load_start)
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
