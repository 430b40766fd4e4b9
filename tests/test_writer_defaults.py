"""Files written with a writer's defaults train at the default --memory-limit.

pyarrow's (and pandas') ``write_table`` defaults make one row group of up to 1,048,576
rows, snappy, dictionary-encoded: streaming such a row group holds a page and a dictionary
per column (about 2.6 MB a column here) whatever the slice, which at 100 columns is more
than the decode third of the default limit. The plan must pay for it out of the windows,
keep peak RSS within the limit plus the idle footprint, and, where a limit is really too
small, name one that works.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import run_cli
from streamsgd.config import DEFAULT_MEMORY_LIMIT

D = 100


def _write(path, rows: int) -> str:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((rows, D))
    y = (X @ rng.standard_normal(D) / 10 + rng.logistic(size=rows) > 0).astype(np.int64)
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(D)}, "y": y}), str(path))  # every default
    return str(path)


@pytest.fixture(scope="module")
def defaults_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("writer-defaults")
    return _write(folder / "big.parquet", 200_000), _write(folder / "idle.parquet", 1_000)


def _fit(path, tmp_path, *options, check=True):
    return run_cli("fit", path, "--epochs", "1", "-o", tmp_path / "m.npz", "--json", *options, check=check)


@pytest.mark.slow
def test_a_pyarrow_defaults_file_trains_at_the_default_limit_within_it(defaults_files, tmp_path):
    big, idle_file = defaults_files
    meta = pq.read_metadata(big)
    assert meta.num_row_groups == 1 and meta.row_group(0).column(0).compression == "SNAPPY"
    info = json.loads(run_cli("info", big, "--json").stdout)
    assert info["sliced_row_groups"] == 1 and info["chunks"] > 1
    # a second open stream (~235 MB) fits in half the default limit: the row group streams as two
    # segments, two lanes (one lane, before: windows of one half of the file's rows at a time)
    assert info["lanes"] == 2
    _fit(idle_file, tmp_path)  # compiles the kernels, so that neither measured run pays for it
    idle = json.loads(_fit(idle_file, tmp_path).stdout)["peak_rss_bytes"]
    summary = json.loads(_fit(big, tmp_path).stdout)
    assert summary["rows_seen"] == 200_000
    # the bound the memory plan promises (benchmarks/memory.py measures the 2M-row case)
    assert summary["peak_rss_bytes"] <= DEFAULT_MEMORY_LIMIT + idle


@pytest.mark.slow
def test_a_refused_limit_names_one_that_works(defaults_files, tmp_path):
    big, _ = defaults_files
    proc = _fit(big, tmp_path, "--memory-limit", "200MiB", check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "row_group_size=" in proc.stderr  # the rewrite that avoids it
    named = re.search(r"raise --memory-limit to (\d+MiB)", proc.stderr)
    assert named, proc.stderr
    assert json.loads(_fit(big, tmp_path, "--memory-limit", named.group(1)).stdout)["rows_seen"] == 200_000


@pytest.mark.slow
def test_one_row_group_in_two_segments_stays_within_the_limit(tmp_path_factory, tmp_path):
    """A pyarrow-defaults file of one row group where the limit pays for a second open stream:
    it streams as two segments (two lanes, sources.parquet.SEGMENTS), and the second stream
    (~75 MB of dictionaries and pages at 30 columns) is paid out of the windows, so the peak
    stays within the limit plus the idle footprint (measured 519-522 MB against 560 MB; one
    lane, before segments, 433-438 MB)."""
    folder = tmp_path_factory.mktemp("segments")
    rng = np.random.default_rng(5)
    d = 30
    X = rng.standard_normal((400_000, d))
    y = (X @ rng.standard_normal(d) / 10 + rng.logistic(size=len(X)) > 0).astype(np.int64)
    big, idle_file = str(folder / "one-group.parquet"), str(folder / "idle.parquet")
    table = pa.table({**{f"x{j}": X[:, j] for j in range(d)}, "y": y})
    pq.write_table(table, big)  # every default: one row group of 400,000 rows
    pq.write_table(table.slice(0, 1000), idle_file)
    limit = 256 << 20
    info = json.loads(run_cli("info", big, "--json", "--memory-limit", str(limit)).stdout)
    assert info["row_groups"] == info["sliced_row_groups"] == 1 and info["lanes"] == 2
    _fit(idle_file, tmp_path, "--memory-limit", str(limit))  # compiles nothing in the measured runs
    idle = json.loads(_fit(idle_file, tmp_path, "--memory-limit", str(limit)).stdout)["peak_rss_bytes"]
    summary = json.loads(_fit(big, tmp_path, "--memory-limit", str(limit)).stdout)
    assert summary["rows_seen"] == 400_000
    assert summary["peak_rss_bytes"] <= limit + idle
