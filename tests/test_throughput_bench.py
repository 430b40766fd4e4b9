"""benchmarks/throughput.py measures every method on the default-writer file too, and its PyTorch
peer runs where torch is installed and is skipped with a note where it is not (torch is not in the
test extra). Tiny sizes: this checks the script's plumbing, not any timing.

The script runs in a child process, as ``make bench`` runs it: the tests never import a benchmark
script. Its fallbacks (no torch, a default-writer fit refused at the default memory limit) are
reached by a small driver that replaces the two functions in the child before calling ``main``."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
#: 20,000 rows at batch 512 make 39 full updates: a progress record every 5 puts seven of them
#: between 10 % and 90 % of the rows, where the steady rate (c") is measured
ARGS = ["--rows", "20000", "--features", "5", "--runs", "1", "--no-vw", "--log-every", "5"]

#: Runs throughput.main(argv) with torch reported missing and the default-writer fit refused
#: at the default --memory-limit (as the code before the memory-plan change refused big row
#: groups); prints the limits each fit was given as its last line.
FALLBACKS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import throughput as bench
bench.torch_available = lambda: (False, "torch is not installed (test)")
fit, limits = bench.streamsgd_fit, []
def refusing_fit(path, **options):
    limits.append([Path(path).name, options.get("memory_limit")])
    if "default-writer" in Path(path).name and "memory_limit" not in options:
        raise bench.UsageError("--memory-limit 536870912 bytes is too small for this file (test)")
    return fit(path, **options)
bench.streamsgd_fit = refusing_fit
code = bench.main(sys.argv[2:])
print(json.dumps(limits))
sys.exit(code)
"""


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=BENCH)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_default_writer_file_and_torch_peer(tmp_path):
    out = run([sys.executable, str(BENCH / "throughput.py"), *ARGS, "--out", str(tmp_path)])
    table = json.loads((tmp_path / "throughput.json").read_text())["tables"]["5"]
    assert not table["failed"]
    default = table["files"]["default_writer"]
    assert default["compression"] == "SNAPPY" and default["row_groups"] == 1 and default["row_group_rows"] == 20000
    for key in ("decode_default", "convert_default", "streamsgd_default", "streamsgd_default_loop",
                "sklearn_batch_default", "sklearn_group_default"):
        assert table["median_seconds"][key] > 0
    assert table["streamsgd_default_writer_memory_limit"].startswith("default")
    assert set(table["fit_vs_peers"]) == {"uncompressed", "default_writer"}
    for key in ("streamsgd", "streamsgd_zarr", "streamsgd_default"):
        # the middle of the epoch, without opening, planning and the first window: faster than end to end
        steady = table["streamsgd_steady_rows_per_second"][key]
        assert len(steady) == 1 and steady[0] > table["rows_per_second"][key]
        assert table["median_seconds"][key + "_steady"] == pytest.approx(20000 / steady[0])
    assert table["fit_vs_peers"]["default_writer"]["steady_vs_decode"] > table["fit_vs_peers"]["default_writer"]["fit_vs_decode"]
    assert "steady fit / decode-only" in out
    assert "fit vs peers, default-writer file: fit / decode-only" in out
    losses = table["heldout_log_loss"]
    if importlib.util.find_spec("torch") is None:
        assert "PyTorch skipped" in out and "torch" not in table["median_seconds"]
        return
    for key in ("torch", "torch_default"):  # 40 steps of 512 rows: learned something, scored on held-out rows
        assert table["median_seconds"][key] > 0
        assert losses["true_weights"] < losses[key] < math.log(2)
    assert table["fit_vs_peers"]["default_writer"]["PyTorch"]["speedup"] > 0


@pytest.mark.slow
def test_torch_missing_is_skipped_and_a_refused_default_writer_fit_retries_at_3gib(tmp_path):
    out = run([sys.executable, "-c", FALLBACKS, str(BENCH), *ARGS, "--out", str(tmp_path)])
    limits = json.loads(out.strip().splitlines()[-1])
    assert "PyTorch skipped: torch is not installed (test)" in out
    assert "refused at the default --memory-limit" in out and "streamsgd at --memory-limit 3GiB" in out
    table = json.loads((tmp_path / "throughput.json").read_text())["tables"]["5"]
    assert "torch" not in table["median_seconds"] and not table["failed"]
    assert table["median_seconds"]["streamsgd_default"] > 0
    assert table["streamsgd_default_writer_memory_limit"] == "3GiB"
    assert [lim for name, lim in limits if "default-writer" in name] == [None, "3GiB"]
