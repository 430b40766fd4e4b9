"""benchmarks/ctr.py end to end at tiny sizes: the Criteo-shaped files (their columns, nulls,
dictionary and plain text), every method's row in the report, the held-out losses scored
against the floor. Checks the script's plumbing, not any timing. Vowpal Wabbit's rows are
checked where ``vowpalwabbit`` is installed (the bench extra) and skipped with a note where not.

The script runs in a child process, as ``make bench`` runs it: the tests never import it."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("sklearn")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_ctr_benchmark_runs_every_method_on_a_criteo_shaped_file(tmp_path):
    argv = [sys.executable, str(BENCH / "ctr.py"), "--rows", "8000,16000", "--heldout", "4000", "--sklearn-rows",
            "2000", "--runs", "1", "--out", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=BENCH)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "ctr.json").read_text())
    schema = pq.read_schema(tmp_path / "ctr-8000.parquet")
    assert len(schema.names) == 13 + 26 + 1 and schema.field("I1").type == pa.float64()
    assert pa.types.is_dictionary(schema.field("C1").type) and schema.field("C3").type == pa.string()
    nulls = pq.read_table(tmp_path / "ctr-8000.parquet").to_pandas().isna().sum()
    assert nulls[[f"I{j}" for j in range(1, 14)]].gt(0).sum() >= 5 and nulls[[f"C{j}" for j in range(1, 27)]].gt(0).any()
    results, floor = report["results"], report["heldout_floor"]
    methods = {"streamsgd 8000", "streamsgd 16000", "streamsgd sgd 8000", "sklearn"}
    if importlib.util.find_spec("vowpalwabbit") is not None:
        methods |= {"vw 8000", "vw 16000"}
        assert report["marks"]["vs_vw_16000"] > 0 and "vw_rss_16000_over_8000" in report["marks"]
    else:
        assert "Vowpal Wabbit skipped" in proc.stdout
    assert set(results) == methods
    for name in methods:
        assert results[name]["rows_per_second"] > 0 and results[name]["peak_rss_mib"] > 10
        assert floor < results[name]["heldout_log_loss"], name  # none beats the true probabilities
    for name in methods - {"sklearn"}:  # 16 updates or more learned something (sklearn's 4 may not)
        assert results[name]["heldout_log_loss"] < math.log(2), name
    assert results["sklearn"]["rows"] == 2000 and results["streamsgd 16000"]["rows"] == 16000
