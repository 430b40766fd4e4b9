"""Helpers the benchmark scripts share: the installed command, a run's start, timing, sizes,
the uncompressed files they train on, and the versions a report records.

Imports only the standard library at module level: ``memory.py`` measures its children's peak
RSS, which includes the parent's (see its ``ensure_file``), so the parent must stay small.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def command(name: str = "streamsgd", script: str = "benchmark") -> str:
    """The ``name`` script next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"{script}: cannot find the {name} command; run with the project's .venv/bin/python")
    return found


def in_tree(tree: Path, argv: list[str], script: str, cwd: Path | None = None) -> str:
    """Run this interpreter with ``argv`` in a child whose ``streamsgd`` is ``tree``'s (``PYTHONPATH``):
    its stdout; a failure ends ``script`` naming the tree and the child's last line of stderr."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    if proc.returncode != 0:
        sys.exit(f"{script}: {tree}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


@contextmanager
def hashed_kernel_through(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """Within it, each training run's compiled hashed-kernel calls (``Run.train_hashed``) go
    through ``wrap(kernel)``: how kernel_replay.py captures them and ctr_bound.py times them."""
    from streamsgd.train import run as run_module

    init = run_module.Run.__init__

    def wrapping_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.train_hashed = wrap(self.train_hashed)

    run_module.Run.__init__ = wrapping_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        run_module.Run.__init__ = init  # type: ignore[method-assign]


def begin(out: Path) -> tuple[float, float]:
    """Start a run: create ``out``; return the start time and the 1-minute load average (other
    work on a shared machine skews timings, so every report records it)."""
    out.mkdir(parents=True, exist_ok=True)
    return time.perf_counter(), os.getloadavg()[0]


def seconds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each method's runs (those that ran at least once)."""
    return {key: statistics.median(v) for key, v in times.items() if v}


def mib(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:,.0f} MiB"


def human(n: float | None) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1 (KiB at least)."""
    if n is None:
        return "n/a"
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.0f} KiB"


def is_uncompressed(path: Path, rows: int, features: int, row_group_rows: int | None = None) -> bool:
    """Whether ``path`` is an uncompressed file of ``rows`` x (``features`` + a target), with
    row groups of ``row_group_rows`` when given: the file a script would write, already there."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        return (meta.num_rows == rows and meta.num_columns == features + 1
                and (row_group_rows is None or meta.row_group(0).num_rows == min(rows, row_group_rows))
                and meta.row_group(0).column(0).compression == "UNCOMPRESSED")
    except Exception:  # unreadable or foreign file: write it again
        return False


def write_uncompressed(path: Path, rows: int, features: int, row_group_rows: int, seed: int = 0,
                       child: str | None = None) -> None:
    """An uncompressed logistic file from ``streamsgd generate``: in this process, or by the
    ``child`` command (a script measuring its children's memory must not grow itself)."""
    if child is None:
        from streamsgd.tools.generate import generate

        generate(str(path), rows=rows, features=features, task="logistic", seed=seed,
                 row_group_rows=row_group_rows, compression="none")
        return
    subprocess.run([child, "generate", str(path), "--rows", str(rows), "--features", str(features),
                    "--task", "logistic", "--seed", str(seed), "--row-group-rows", str(row_group_rows),
                    "--compression", "none"], check=True, capture_output=True)


def versions(**more: str) -> dict[str, str]:
    """The versions of numpy, pyarrow, numba and streamsgd, with ``more`` (a peer's)."""
    import numba
    import numpy
    import pyarrow

    import streamsgd

    return {"numpy": numpy.__version__, "pyarrow": pyarrow.__version__, "numba": numba.__version__,
            "streamsgd": streamsgd.__version__, **more}
