"""What a benchmark figure was measured on: machine, versions, and the commit of the checkout."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether streamsgd/ had uncommitted edits: what was measured."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "streamsgd"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "streamsgd_dirty": None}
    return {"commit": commit, "streamsgd_dirty": bool(dirty)}


def machine(**versions: str) -> dict[str, Any]:
    """CPU count, platform, Python, the given package versions and the git state."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            **versions, **git_state()}


def write_report(path: Path, report: dict[str, Any], started: float, load_start: float) -> None:
    """Finish a benchmark's JSON report (total time, load average at start and end), write
    it, and say where: every script's last line."""
    import json
    import time

    report["total_seconds"] = time.perf_counter() - started
    report["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} (total {report['total_seconds']:.0f} s; 1-min load average "
          f"{load_start:.1f} at start, {report['load_average_1min']['end']:.1f} at end)")
