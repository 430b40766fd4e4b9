"""Loss-curve figures from metrics logs: a real PNG of the requested size, clear errors."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import sys

import numpy as np
import pytest

from streamsgd.config import FitConfig
from streamsgd.train import Hooks
from streamsgd.errors import DataError, UsageError
from streamsgd.tools.plot import plot_metrics, plot_tuning, read_runs
from streamsgd.sources import ArraySource
from streamsgd.train.trainer import fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def metrics_files(tmp_path_factory):
    """Two real metrics logs from the trainer, batch 16 and batch 256."""
    tmp = tmp_path_factory.mktemp("metrics")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) + rng.standard_normal(4000) > 0).astype(np.int64)
    paths = []
    for batch in (16, 256):
        path = str(tmp / f"b{batch}.jsonl")
        fit(ArraySource(X, y, chunk_rows=1000), FitConfig(batch=batch, epochs=2, log_every=10, seed=1),
            hooks=Hooks(metrics=path))
        paths.append(path)
    return paths


@pytest.mark.parametrize("x", ["iteration", "rows_seen", "seconds", "batch"])
def test_writes_a_png_of_the_requested_size(metrics_files, tmp_path, x):
    out = str(tmp_path / f"loss-{x}.png")
    assert plot_metrics(metrics_files, out, x=x, size=(640, 400)) == out
    assert png_size(out) == (640, 400)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []  # no temp file left


def test_overwrites_atomically_and_keeps_the_old_file_on_failure(metrics_files, tmp_path):
    out = tmp_path / "loss.png"
    out.write_bytes(b"old")
    plot_metrics(metrics_files, str(out))
    assert png_size(out) == (900, 560)
    before = out.read_bytes()
    with pytest.raises(UsageError):
        plot_metrics(metrics_files, str(out), x="epoch")
    assert out.read_bytes() == before


def test_reads_runs_appended_to_one_file(metrics_files, tmp_path):
    both = tmp_path / "both.jsonl"
    both.write_text("".join(pathlib.Path(p).read_text() for p in metrics_files))
    runs = read_runs(str(both))
    assert len(runs) == 2
    # 2 epochs of 250 (batch 16) and of 16 (batch 256) updates; a record every 10 updates
    assert [len(r) for r in runs] == [50, 3]
    assert all(r["event"] == "progress" for r in runs[0])
    # the run's batch size is recovered from rows_seen / iteration
    assert runs[0][0]["rows_seen"] / runs[0][0]["iteration"] == 16


def test_epoch_records_when_there_are_no_progress_records(tmp_path):
    path = tmp_path / "epochs.jsonl"
    path.write_text("".join(json.dumps({"event": "epoch", "epoch": e, "iteration": 10 * e, "rows_seen": 640 * e,
                                        "loss": 1.0 / e, "seconds": 0.1 * e}) + "\n" for e in (1, 2, 3)))
    assert [r["loss"] for r in read_runs(str(path))[0]] == [1.0, 0.5, 1 / 3]
    out = tmp_path / "e.png"
    plot_metrics([str(path)], str(out), x="seconds", size=(300, 200))
    assert png_size(out) == (300, 200)


def test_bad_input_gives_clear_errors(metrics_files, tmp_path):
    with pytest.raises(UsageError, match=r"nothing\.jsonl: no such metrics file"):
        plot_metrics([str(tmp_path / "nothing.jsonl")], str(tmp_path / "o.png"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"event": "start"}\n\n')
    with pytest.raises(DataError, match="no loss records"):
        plot_metrics([str(empty)], str(tmp_path / "o.png"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"event": "progress", "iteration": 1, "loss": 0.5}\n{"event": \n')
    with pytest.raises(DataError, match="line 2: not a JSON object"):
        plot_metrics([str(broken)], str(tmp_path / "o.png"))
    with pytest.raises(UsageError, match="x: expected one of iteration, rows_seen, seconds, batch; got 'epoch'"):
        plot_metrics(metrics_files, str(tmp_path / "o.png"), x="epoch")
    with pytest.raises(UsageError, match="does not exist"):
        plot_metrics(metrics_files, str(tmp_path / "no" / "o.png"))
    with pytest.raises(UsageError, match="at least one metrics file"):
        plot_metrics([], str(tmp_path / "o.png"))
    assert not (tmp_path / "o.png").exists()


def test_missing_matplotlib_names_the_extra(metrics_files, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'streamsgd\[plot\]'"):
        plot_metrics(metrics_files, str(tmp_path / "o.png"))


def test_plot_tuning_figure(tmp_path):
    result = {
        "trials": [{"batch": b, "val_loss": 0.3 + 2.0 / b, "seconds": 0.1} for b in (16, 64, 256)],
        "timings": [{"batch": b, "seconds_per_iteration": 2e-5 + 1e-8 * b} for b in (16, 256, 4096)],
        "tau_f": 2e-5, "tau_d": 1e-8, "b_opt": 300.0, "knee_batch": 333,
        "loss_fit": {"a": 0.3, "c": 2.0},
    }
    out = tmp_path / "tune.png"
    plot_tuning(result, str(out), size=(800, 300))
    assert png_size(out) == (800, 300)
    with pytest.raises(UsageError, match="returned by tune"):
        plot_tuning({"trials": []}, str(out))


def test_cli_plot_draws_several_runs(tmp_path):
    """`streamsgd plot A B -o out.png` writes a PNG; a missing metrics file is exit 2 or 3, one line."""
    from helpers import run_cli

    from streamsgd.tools.generate import generate

    data = tmp_path / "d.parquet"
    generate(str(data), rows=5_000, features=3, task="logistic", seed=1, row_group_rows=1_000)
    runs = []
    for batch in (16, 128):
        m = tmp_path / f"m{batch}.jsonl"
        run_cli("fit", str(data), "--batch", str(batch), "--epochs", "2", "--log-every", "5",
                "-o", str(tmp_path / f"{batch}.npz"), "--metrics", str(m))
        runs.append(str(m))
    png = tmp_path / "curves.png"
    done = run_cli("plot", *runs, "-o", str(png), "--x", "rows_seen")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr
    bad = run_cli("plot", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x.png"), check=False)
    assert bad.returncode in (2, 3) and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
