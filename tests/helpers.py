"""Test helpers: small real Parquet files, reading them back, running the real CLI."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from streamsgd.cli import main

STREAMSGD = os.path.join(os.path.dirname(sys.executable), "streamsgd")


def write_parquet(path, X, y=None, row_group_size=1000, names=None, **kwargs) -> str:
    """Write X (n, d) and y as columns x0..x{d-1}, y."""
    names = names or [f"x{j}" for j in range(X.shape[1])]
    cols = {n: X[:, j] for j, n in enumerate(names)}
    if y is not None:
        cols["y"] = y
    pq.write_table(pa.table(cols), str(path), row_group_size=row_group_size, **kwargs)
    return str(path)


def read_xy(path, target="y"):
    table = pq.read_table(str(path))
    X = np.column_stack([table[c].to_numpy() for c in table.column_names if c != target])
    return X.astype(np.float64), table[target].to_numpy().astype(np.float64)


def start_fit(*args: str) -> subprocess.Popen:
    """``streamsgd fit ARGS`` as a child process logging JSON lines on its stderr."""
    return subprocess.Popen([STREAMSGD, "fit", *map(str, args), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, event: str, count: int = 1) -> dict | None:
    """Read a :func:`start_fit` run's log until its ``count``-th ``event``; None if the run
    ended first (how tests synchronise with a run they signal: never by sleeping)."""
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        record = json.loads(line)
        if record["event"] == event:
            seen += 1
            if seen == count:
                return record
    return None


def run_cli(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([STREAMSGD, *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"streamsgd {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    args: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)  # ResourceWarnings: files left open
    warnings: list[str] = field(default_factory=list)  # printed on a real run's stderr

    def report(self) -> str:
        return (f"streamsgd {' '.join(self.args)}\nexit {self.code}\nstdout: {self.stdout!r}\n"
                f"stderr: {self.stderr!r}\nwarnings: {self.warnings}\nleaks: {self.leaks}")


def invoke(args: list[str]) -> Outcome:
    """``streamsgd ARGS`` in this process; any exception other than SystemExit propagates
    (that is the traceback a user would see, and fails the test with its own).

    Warnings are recorded, not raised: the installed command runs with Python's default
    filters, where a warning is extra lines on stderr, not an exception (pytest's
    ``filterwarnings = error`` would turn it into one, and the reader would report it as
    a read failure, hiding what a user sees). Files the command leaves open are caught by
    a garbage collection inside the run, each as a ResourceWarning.
    """
    runner = CliRunner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        with runner.isolation() as (out, err, _):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, ResourceWarning)]
    return Outcome(code, stdout, stderr, list(args), leaks, shown)
