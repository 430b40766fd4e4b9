"""benchmarks/ctr_bound.py end to end on a small file with a text column and nulls: reading
alone and a fit with its kernel timed in place, and the bound they set. Checks the plumbing
and the arithmetic of the report, not any timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ctr_bound_reads_fits_and_bounds(tmp_path):
    rng = np.random.default_rng(0)
    n = 16_000
    x = np.where(rng.random(n) < 0.1, np.nan, rng.standard_normal(n))  # nulls: imputed by both passes
    cat = rng.integers(0, 50, n)
    click = (rng.random(n) < 1 / (1 + np.exp(-(cat % 3) + 1))).astype(np.int64)
    data = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"x": pa.array(x, from_pandas=True), "cat": [f"v{c}" for c in cat], "click": click}), data, row_group_size=2_000)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ctr_bound.py"), str(data), "--runs", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout.splitlines()[-1])
    runs = json.loads((tmp_path / "ctr_bound.json").read_text())["runs"]
    assert runs["reading"][0]["rows"] == runs["fit"][0]["rows"] == n  # every row read, every row trained
    assert 0 < runs["fit"][0]["kernel_seconds"] < runs["fit"][0]["seconds"]
    assert report["kernel_us_per_row"] < report["fit_cpu_us_per_row"]  # the trainer's calls are part of the CPU
    assert report["cpu_bound_rows_per_second"] == pytest.approx(report["cores"] / report["fit_cpu_us_per_row"] * 1e6)
    assert report["kernel_bound_rows_per_second"] == pytest.approx(1e6 / report["kernel_us_per_row"])
