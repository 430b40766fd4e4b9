"""benchmarks/kernel_replay.py end to end on a small file with a text column: windows captured
from a real fit, each tree's kernel replaying them in its own child. Checks the plumbing (the
captured calls replay whole windows in both trees, the report pairs them), not any timing."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from kernel_replay import as_trained  # noqa: E402

from streamsgd.compute.sparse import HG, HQ, HSQ, HW, STAMP, pack_hashed  # noqa: E402


def test_kernel_replay_captures_windows_and_replays_them_in_both_trees(tmp_path):
    rng = np.random.default_rng(0)
    n = 16_000
    x = rng.standard_normal(n)
    cat = rng.integers(0, 50, n)
    click = (rng.random(n) < 1 / (1 + np.exp(-(x + (cat % 3) - 1)))).astype(np.int64)
    table = pa.table({"x": x, "cat": [f"v{c}" for c in cat], "click": click})
    data = tmp_path / "clicks.parquet"
    pq.write_table(table, data, row_group_size=2_000)
    argv = [sys.executable, str(ROOT / "benchmarks" / "kernel_replay.py"), str(data), "--target", "click",
            "--base", str(ROOT), "--new", str(ROOT), "--every", "1", "--windows", "2", "--rounds", "2",
            "--reps", "2", "--out", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["round 1 base", "round 1 new", "round 2 base",
                                                          "round 2 new"]
    report = json.loads(lines[-1])
    # the file is one window at the default limit: captured once, replayed whole (every row, not
    # only up to the call's stop at the next log line)
    assert report["rows_per_replay"] == n
    assert report["new_over_base"] > 0 and report["base"]["min_ns_per_row"] > 0
    runs = json.loads((tmp_path / "kernel_replay.json").read_text())["runs"]
    assert len(runs["base"]) == len(runs["new"]) == 4  # 2 rounds x 2 replays


def test_the_replayed_state_keeps_the_slab_the_product_trains_on():
    """A pickled state comes back with each slab column an array of its own; the replay puts
    the values back into one slab (the product's layout), where a row's touch is one cache line."""
    hashed = pack_hashed(6, extra=True)
    rng = np.random.default_rng(1)
    for slot in (HW, HG, HSQ, HQ):
        hashed[slot][:] = rng.standard_normal(hashed[slot].size)
    hashed[STAMP][:] = rng.integers(0, 99, hashed[STAMP].size)
    unpickled = pickle.loads(pickle.dumps(hashed))
    assert unpickled[HW].strides == (8,)  # what a replay of the pickle would have timed
    replayed = as_trained(unpickled)
    for slot in (HW, HG, HSQ, STAMP):
        assert replayed[slot].base is not None and replayed[slot].base is replayed[HW].base
        assert replayed[slot].strides == hashed[slot].strides
    for got, want in zip(replayed, hashed):
        np.testing.assert_array_equal(got, want)
        assert not np.shares_memory(got, want)
