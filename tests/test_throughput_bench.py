"""benchmarks/throughput.py measures every method on the default-writer file too, and its PyTorch
peer runs where torch is installed and is skipped with a note where it is not (torch is not in the
test extra). Tiny sizes: this checks the script's plumbing, not any timing."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling provenance.py
    try:
        spec = importlib.util.spec_from_file_location("streamsgd_bench_throughput", BENCH / "throughput.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


ARGS = ["--rows", "20000", "--features", "5", "--runs", "1", "--no-vw"]


@pytest.mark.slow
def test_default_writer_file_and_torch_peer(bench, tmp_path, capsys):
    assert bench.main(ARGS + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = json.loads((tmp_path / "throughput.json").read_text())["tables"]["5"]
    assert not table["failed"]
    default = table["files"]["default_writer"]
    assert default["compression"] == "SNAPPY" and default["row_groups"] == 1 and default["row_group_rows"] == 20000
    for key in ("decode_default", "convert_default", "streamsgd_default", "streamsgd_default_loop",
                "sklearn_batch_default", "sklearn_group_default"):
        assert table["median_seconds"][key] > 0
    assert table["streamsgd_default_writer_memory_limit"].startswith("default")
    assert set(table["fit_vs_peers"]) == {"uncompressed", "default_writer"}
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
def test_torch_missing_is_skipped_and_a_refused_default_writer_fit_retries_at_3gib(bench, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setattr(bench, "torch_available", lambda: (False, "torch is not installed (test)"))
    fit, limits = bench.streamsgd_fit, []

    def refusing_fit(path, **options):  # as the code before the memory-plan change refused big row groups
        limits.append((Path(path).name, options.get("memory_limit")))
        if "default-writer" in Path(path).name and "memory_limit" not in options:
            raise bench.UsageError("--memory-limit 536870912 bytes is too small for this file (test)")
        return fit(path, **options)

    monkeypatch.setattr(bench, "streamsgd_fit", refusing_fit)
    assert bench.main(ARGS + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PyTorch skipped: torch is not installed (test)" in out
    assert "refused at the default --memory-limit" in out and "streamsgd at --memory-limit 3GiB" in out
    table = json.loads((tmp_path / "throughput.json").read_text())["tables"]["5"]
    assert "torch" not in table["median_seconds"] and not table["failed"]
    assert table["median_seconds"]["streamsgd_default"] > 0
    assert table["streamsgd_default_writer_memory_limit"] == "3GiB"
    assert [lim for name, lim in limits if "default-writer" in name] == [None, "3GiB"]
