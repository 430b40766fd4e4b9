"""Test helpers: small real Parquet files, reading them back, running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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


def run_cli(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([STREAMSGD, *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"streamsgd {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
