"""Validation on files with one row group (pandas' default for anything under a million
rows): ``--validation-fraction``, ``--early-stopping`` and ``tune-batch`` hold out rows of
every chunk when there are too few chunks to hold out whole ones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

from streamsgd.config import FitConfig
from streamsgd.train import Hooks
import streamsgd
from streamsgd.sources import ArraySource, open_source
from streamsgd.sources.subset import holds_whole_chunks, split_rows
from streamsgd.train.trainer import Checkpointing, fit, split_validation
from streamsgd.pipeline.windows import read_window

N = 4000


def one_row_group(path, seed: int = 0, n: int = N) -> str:
    """A logistic problem written by pandas with its defaults (one row group), with a text column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.1]
    y = (X @ [1.0, -0.4, 8.0] + rng.logistic(size=n) > 0).astype(np.int64)
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "note": rng.choice(["x", "y"], n), "y": y}).to_parquet(path)
    return str(path)


def test_whole_chunks_only_when_they_come_close_to_the_fraction():
    assert not holds_whole_chunks(1, 0.2)  # one row group
    assert not holds_whole_chunks(2, 0.1)  # 1 of 2 chunks would hold out 50 %
    assert not holds_whole_chunks(3, 0.2)  # 1 of 3 is 33 %
    assert holds_whole_chunks(6, 0.34) and holds_whole_chunks(10, 0.2) and holds_whole_chunks(12, 0.25)


def test_the_row_split_is_disjoint_complete_and_fixed_by_the_seed():
    X = np.arange(3000 * 2, dtype=np.float64).reshape(3000, 2)
    source = ArraySource(X, X[:, 0].copy(), chunk_rows=1000)
    train, held = split_validation(source, 0.2, seed=4)
    assert held.chunks == [0, 1, 2]  # every chunk gives rows to both sides
    rows = {side: np.concatenate([read_window(part, np.array([c]), np.float64, True).y
                                  for c in range(3)]) for side, part in (("train", train), ("held", held))}
    assert np.intersect1d(rows["train"], rows["held"]).size == 0  # never trained on a validation row
    np.testing.assert_array_equal(np.sort(np.concatenate([rows["train"], rows["held"]])), X[:, 0])
    # about the fraction: 600 expected, binomial sd 22; 5 sd
    assert abs(rows["held"].size - 600) < 110
    again = split_validation(source, 0.2, seed=4)[1]
    assert again.chunk_rows == held.chunk_rows and again.fingerprint() == held.fingerprint()
    other = split_validation(source, 0.2, seed=5)[1]
    assert other.chunk_rows != held.chunk_rows
    # the row split reads through to the source's columns as well (the target pass, weights)
    table = held.read_columns(1, ["y"])
    np.testing.assert_array_equal(table.column(0).to_numpy(), rows["held"][held.chunk_rows[0]:][:held.chunk_rows[1]])


def test_too_few_rows_to_split_is_a_usage_error():
    X = np.ones((2, 1))
    with pytest.raises(streamsgd.errors.UsageError, match="leaves no rows to"):
        split_rows(ArraySource(X, np.ones(2)), 0.01, seed=0, tag=1)


def test_cli_validation_and_early_stopping_on_one_row_group(tmp_path):
    data = one_row_group(tmp_path / "d.parquet")
    out, metrics = tmp_path / "m.npz", tmp_path / "m.jsonl"
    done = run_cli("fit", data, "--validation-fraction", "0.2", "--early-stopping", "--patience", 2,
                   "--epochs", 30, "--batch", 64, "--lr", 1e-9, "--metrics", metrics, "-o", out, "--json")
    held = streamsgd.load(str(out)).metadata["validation"]
    assert held["split"] == "rows" and abs(held["rows"] - 0.2 * N) < 5 * np.sqrt(N * 0.2 * 0.8)
    # a step too small to move: flat validation loss, so it stops after epoch 1 + patience
    assert held["stopped_early_at_epoch"] == 3
    epochs = [json.loads(line) for line in metrics.read_text().splitlines() if '"epoch"' in line]
    epochs = [e for e in epochs if e.get("event") == "epoch"]
    assert len(epochs) == 3 and all(e["val_loss"] > 0 for e in epochs)
    # every epoch trained on the other rows only
    assert json.loads(done.stdout)["rows_seen"] == 3 * (N - held["rows"])


def test_a_row_split_run_resumes_bit_for_bit(tmp_path):
    data = one_row_group(tmp_path / "d.parquet", seed=1)
    options = dict(model="logistic", epochs=3, batch=64, seed=2, validation_fraction=0.25, target="y",
                   features=("a", "b", "c"))
    states: list = []
    whole = fit(open_source(data, features=["a", "b", "c"]), FitConfig(**options),
                hooks=Hooks(checkpointing=Checkpointing(save=states.append, every=9))).model
    resumed = fit(open_source(data, features=["a", "b", "c"]), FitConfig(**options), resume=states[1]).model
    np.testing.assert_array_equal(resumed.coef, whole.coef)
    assert resumed.metadata["validation"] == whole.metadata["validation"]


def test_cli_tune_batch_on_one_row_group(tmp_path):
    data = one_row_group(tmp_path / "d.parquet", seed=2)
    done = run_cli("tune-batch", data, "--json", "--batches", "16,64,256", "--timing-batches", "16,256",
                   "--timing-rows", "4000")
    result = json.loads(done.stdout)
    # the default --holdout 0.2 of the rows of the one row group
    assert result["rows"] + result["validation_rows"] == N
    assert abs(result["validation_rows"] - 0.2 * N) < 5 * np.sqrt(N * 0.2 * 0.8)
    assert result["knee_batch"] >= 16  # never below the smallest trial


def test_plot_draws_val_loss_when_the_metrics_hold_it(tmp_path, monkeypatch):
    import streamsgd.tools.plot as plot

    data = one_row_group(tmp_path / "d.parquet", seed=3)
    metrics = tmp_path / "m.jsonl"
    run_cli("fit", data, "--validation-fraction", "0.2", "--epochs", 3, "--batch", 64, "--log-every", 20,
            "--metrics", metrics, "-o", tmp_path / "m.npz")
    png = tmp_path / "curves.png"
    run_cli("plot", metrics, "-o", png)  # the command itself
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = {}
    real_save = plot._save
    monkeypatch.setattr(plot, "_save", lambda fig, out: (drawn.update(
        {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}), real_save(fig, out)))
    plot.plot_metrics([str(metrics)], str(tmp_path / "again.png"))
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()]
    val = [r["val_loss"] for r in epochs if r.get("event") == "epoch"]
    np.testing.assert_array_equal(drawn["m.jsonl validation"], val)
    assert len(val) == 3 and "m.jsonl" in drawn


def test_text_labels_with_a_row_split(tmp_path):
    """A softmax target of text labels reads its class indices through the row split: the
    held-out rows' labels line up with their features."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1500, 2))
    labels = np.array(["cat", "dog", "eel"])[np.argmax(X @ [[2.0, -1.0, 0.0], [0.0, 1.0, -2.0]], axis=1)]
    data = str(tmp_path / "d.parquet")
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": labels}).to_parquet(data)
    out, metrics = tmp_path / "m.npz", tmp_path / "m.jsonl"
    run_cli("fit", data, "--model", "softmax", "--validation-fraction", "0.2", "--epochs", 5, "--batch", 32,
            "--metrics", metrics, "-o", out)
    m = streamsgd.load(str(out))
    assert m.metadata["validation"]["split"] == "rows"
    val = [json.loads(line)["val_loss"] for line in metrics.read_text().splitlines() if '"event": "epoch"' in line]
    # separable classes: a held-out loss far below log 3 = 1.10 shows labels and rows line up
    assert len(val) == 5 and val[-1] < 0.5
