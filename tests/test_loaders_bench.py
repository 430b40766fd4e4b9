"""benchmarks/loaders.py's plumbing on a tiny label-sorted file: streamsgd.batches hands out
every row once with its own label and features (the script exits otherwise), the shuffle
measures and the SGD replay come back, and streamsgd.batches at 2x the rows peaks within the
memory limit plus its idle footprint. No timing is asserted. The PyTorch and MosaicML peers are
left out here, and so are the NumPy peers (each method is a process of its own: seconds
each on a loaded 2-core machine; benchmarks/README.md has their figures).

The script runs in a child process, as ``make bench`` runs it: the tests never import a
benchmark script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_loaders_benchmark_checks_every_row_and_the_memory_bound(tmp_path):
    out = tmp_path / "loaders.json"
    proc = subprocess.run([sys.executable, str(BENCH / "loaders.py"), "--rows", "6000", "--features", "4",
                           "--runs", "1", "--scale", "2", "--methods", "s", "--memory-limit", "8MiB",
                           "--dir", str(tmp_path), "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    runs = {m: rs[0] for m, rs in report["runs"].items()}
    assert set(runs) == {"s"} and all(r["rows"] == 6000 for r in runs.values())
    s = runs["s"]
    # 6,000 rows fit in one window: a full shuffle, so the rank correlation of a uniform
    # permutation of 6,000 (sd 1/sqrt(6000) = 0.013) is < 0.1 and a batch spreads like a uniform one
    assert s["spearman"] < 0.1 and 0.8 < s["spread"] < 1.2, s
    # ... and SGD fed it lands where SGD fed a random order does (ten random orders of these
    # 6,000 rows span 0.0007 in held-out loss)
    assert abs(s["loss"] - report["references"]["random"]) < 0.01, s
    # the floor is the loss of the model the data was drawn from: one epoch cannot beat it by
    # more than the held-out sample's noise
    assert report["references"]["random"] > report["references"]["floor"] - 0.01
    scale = report["scale"]
    assert scale["rows"] == 12_000 and scale["ok"] and max(scale["peak_rss"]) <= scale["bound"]
    assert "best shuffle quality" in proc.stdout
