"""benchmarks/alternate.py end to end on a tiny file: both trees run, paired, and the report
says whether the models' losses agree. Checks the script's plumbing, not any timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from helpers import write_parquet

ROOT = Path(__file__).resolve().parents[1]


def test_alternate_runs_both_trees_in_turn_and_reports_the_paired_ratio(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 3))
    data = write_parquet(tmp_path / "d.parquet", X, (X[:, 0] > 0).astype(float))
    argv = [sys.executable, str(ROOT / "benchmarks" / "alternate.py"), "--base", str(ROOT), "--new", str(ROOT),
            "--rounds", "2", "--out", str(tmp_path), "--", "fit", data, "--model", "logistic", "--epochs", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["round 1 base", "round 1 new", "round 2 base",
                                                          "round 2 new"]
    report = json.loads(lines[-1])
    assert report["same_loss"] is True  # one tree twice: the same model
    assert report["new_over_base_seconds"] > 0 and report["base"]["peak_rss_mib"] > 0
    assert len(json.loads((tmp_path / "alternate.json").read_text())["runs"]["new"]) == 2
