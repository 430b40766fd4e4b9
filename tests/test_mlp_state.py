"""fit --hidden with the run's state: checkpoints and an exact resume after SIGKILL, the
held-out loss and early stopping, warm starts from an MLP file, the linear scaling rule.

Synchronisation with a killed run is by its own JSON log lines on stderr (a "checkpoint"
event is read before the signal is sent), never by sleeping.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import invoke, run_cli, start_fit, wait_for

from streamsgd.api import fit
from streamsgd.persist.model import load
from streamsgd.tools.generate import generate

# 3 epochs of 12,000 rows at batch 64 (564 updates) in windows of ~2,000 rows, so batches
# straddle windows and checkpoints fall inside epochs
OPTIONS = ["--batch", "64", "--epochs", "3", "--seed", "5", "--lr", "0.05", "--memory-limit", "1MB", "--readers", "1"]
TRAIN = ["--hidden", "8,4", *OPTIONS]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("mlpstate") / "d.parquet"
    generate(str(path), rows=12_000, features=6, task="logistic", seed=4, row_group_rows=1_000)
    return str(path)


@pytest.fixture(scope="module")
def reference(data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The uninterrupted run's model file (no checkpoints at all)."""
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    run_cli("fit", data, *TRAIN, "-o", out)
    return str(out)


def _same_network(a: str, b: str) -> None:
    """Two model files hold the same network, bit for bit (layers, standardisation)."""
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        names = [n for n in x.files if n.startswith("layer")] + ["mean", "scale"]
        assert len(names) == 8  # three layers' W and b
        for name in names:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def test_sigkill_then_resume_is_bit_identical(data: str, reference: str, tmp_path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    rng = random.Random(7)
    kills = 0
    # checkpoints every update (the kill most likely lands inside a write), then every 13
    # (inside an update or a window read); the 2nd to 5th checkpoint of 43, so the run (about
    # 0.15 s after compiling at every 13) is still going when the signal comes
    for every in ("1", "13"):
        proc = start_fit(data, *TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", every, "--resume",
                         "-o", str(out))
        if wait_for(proc, "checkpoint", rng.randint(2, 5)) is not None:
            for _ in range(rng.randint(0, 2000)):  # a random instant after that checkpoint
                os.sched_yield()
            proc.kill()
            kills += 1
        proc.communicate(timeout=120)
    assert kills == 2 and not out.exists()
    assert os.listdir(ckpt), "the killed runs left no checkpoint"
    done = run_cli("fit", data, *TRAIN, "--checkpoint-dir", ckpt, "--resume", "-o", out, "--log-format", "json")
    start = next(json.loads(line) for line in done.stderr.splitlines() if json.loads(line)["event"] == "start")
    assert start["resumed_at"] > 0
    _same_network(str(out), reference)


def test_resume_inside_the_second_epoch_is_exact(data: str, reference: str, tmp_path) -> None:
    """A run killed inside its second epoch resumes from its checkpoint there (it does not
    train the first epoch again) and ends with the uninterrupted model; checkpointing itself
    leaves the model as it is."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    res = invoke(["fit", data, *TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "50",
                  "-o", str(tmp_path / "first.npz")])
    assert res.code == 0, res
    assert not os.listdir(ckpt)  # the finished run cleared its checkpoints
    proc = start_fit(data, *TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "50", "-o", str(out))
    assert wait_for(proc, "checkpoint", 5) is not None  # update 250, inside the second epoch
    proc.kill()
    proc.communicate(timeout=120)
    # another network (or a linear model) on the same checkpoints: refused in one line, before any work
    for options in (["--hidden", "8"], ["--hidden", "8,4", "--activation", "tanh"], []):
        args = ["fit", data, *OPTIONS, *options, "--checkpoint-dir",
                str(ckpt), "--resume", "-o", str(tmp_path / "other.npz")]
        res = invoke(args)
        assert res.code != 0 and "--resume: the checkpoint in" in res.stderr, res
        assert "was written with hidden=[8, 4]" in res.stderr or "activation='relu'" in res.stderr, res
        # one line (the first attempt also warns that it took over the killed run's locks)
        assert len([line for line in res.stderr.splitlines() if " warning: " not in line]) == 1, res
    assert not (tmp_path / "other.npz").exists()
    done = run_cli("fit", data, *TRAIN, "--checkpoint-dir", ckpt, "--resume", "-o", out, "--log-format", "json")
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [2, 3]
    _same_network(str(tmp_path / "first.npz"), reference)
    _same_network(str(out), reference)


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def test_validation_loss_is_the_held_out_loss_and_early_stopping_stops(data: str) -> None:
    records: list[dict] = []
    model = fit(data, hidden=(8,), epochs=4, batch=64, lr=0.05, seed=2, validation_fraction=0.25,
                on_progress=records.append)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 4 and all(np.isfinite(r["val_loss"]) for r in epochs)
    held = model.metadata["validation"]
    table = pq.ParquetFile(data)
    rows = [table.read_row_group(int(c)) for c in held["chunks"]]
    X = np.column_stack([np.concatenate([t[f].to_numpy() for t in rows]) for f in model.features])
    y = np.concatenate([t[model.target].to_numpy() for t in rows]).astype(np.float64)
    # the last record's val_loss is the final network's mean log loss on the held-out rows
    # (NumPy's forward pass in float64 against the kernel-free one: rounding only)
    assert epochs[-1]["val_loss"] == pytest.approx(_log_loss(model.decision_function(X), y), rel=1e-9)
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]  # it learns
    # no epoch improves on the first by more than --tol 10: stopped after --patience 1 more
    stopped = fit(data, hidden=(8,), epochs=4, batch=64, lr=0.05, seed=2, validation_fraction=0.25,
                  early_stopping=True, tol=10.0, patience=1)
    assert stopped.metadata["validation"]["stopped_early_at_epoch"] == 2
    assert stopped.metadata["metrics"]["epochs"] == pytest.approx(2.0)


def test_a_softmax_networks_validation_loss_is_its_held_out_cross_entropy(tmp_path) -> None:
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (6000, 2))
    names = np.array(["inner", "middle", "outer"])
    y = names[np.searchsorted([0.5, 0.85], np.hypot(X[:, 0], X[:, 1]))]
    path = str(tmp_path / "rings.parquet")
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "y": y}), path, row_group_size=500)
    records: list[dict] = []
    model = fit(path, model="softmax", hidden=(8,), epochs=2, batch=64, lr=0.1, seed=2, validation_fraction=0.25,
                on_progress=records.append)
    held = [int(c) for c in model.metadata["validation"]["chunks"]]
    table = pq.ParquetFile(path)
    rows = pa.concat_tables([table.read_row_group(c) for c in held])
    proba = model.predict_proba(np.column_stack([rows["a"].to_numpy(), rows["b"].to_numpy()]))
    labels = np.searchsorted(model.classes_, rows["y"].to_numpy(zero_copy_only=False))
    cross_entropy = float(-np.mean(np.log(proba[np.arange(labels.size), labels])))
    last = [r for r in records if r["event"] == "epoch"][-1]
    # float64 forward passes on both sides: rounding only
    assert last["val_loss"] == pytest.approx(cross_entropy, rel=1e-9)


def test_init_continues_from_an_mlp_file_and_refuses_other_layers(data: str, tmp_path) -> None:
    first = str(tmp_path / "first.npz")
    assert invoke(["fit", data, "--hidden", "8", "--epochs", "1", "--seed", "3", "-o", first]).code == 0
    # a vanishing step: the warm start's network comes back (its layers, its standardisation)
    again = str(tmp_path / "again.npz")
    res = invoke(["fit", data, "--hidden", "8", "--epochs", "1", "--lr", "1e-300", "--init", first, "-o", again])
    assert res.code == 0, res
    a, b = load(first), load(again)
    assert a.layers is not None and b.layers is not None
    np.testing.assert_array_equal(a.mean, b.mean)
    for (W, c), (W2, c2) in zip(a.layers, b.layers):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(c, c2)
    assert b.metadata["init"]["metrics"] == a.metadata["metrics"]
    # a real step from there continues to lower the training loss
    more = str(tmp_path / "more.npz")
    assert invoke(["fit", data, "--hidden", "8", "--epochs", "1", "--init", first, "-o", more]).code == 0
    assert load(more).metadata["metrics"]["loss"] < a.metadata["metrics"]["loss"]
    linear = str(tmp_path / "linear.npz")
    assert invoke(["fit", data, "--epochs", "1", "-o", linear]).code == 0
    for model, options in ((first, ["--hidden", "8,4"]), (first, ["--hidden", "8", "--activation", "tanh"]),
                           (linear, ["--hidden", "8"])):
        res = invoke(["fit", data, *options, "--epochs", "1", "--init", model, "-o", str(tmp_path / "no.npz")])
        assert res.code != 0 and "give a model file of the same layers" in res.stderr, res
    assert not (tmp_path / "no.npz").exists()


def test_lr_scale_with_batch(data: str) -> None:
    model = fit(data, hidden=(4,), epochs=1, batch=128, lr=0.02, lr_reference_batch=32, seed=1)
    assert model.metadata["metrics"]["lr"] == pytest.approx(0.02 * 128 / 32)


# a growing batch makes few updates (62 here: 16 rows, then 260 from the first log line on)
@pytest.mark.parametrize("options, every", [({"model": "softmax", "optimizer": "adamw", "lr": 0.01, "l1": 1e-3}, 23),
                                            ({"batch": "auto", "batch_min": 16, "lr": 0.05, "log_every": 10}, 4)])
def test_softmax_adamw_l1_and_a_growing_batch_resume_bit_for_bit(options: dict, every: int) -> None:
    """Resumed from any of its checkpoints, a run ends with the uninterrupted network: for
    softmax's C outputs, Adam's moments and L1's owed penalties, and for --batch auto, whose
    batch grows by the noise meter's interval sums (which the checkpoint keeps)."""
    from streamsgd.compute.loop import BATCH
    from streamsgd.config import FitConfig
    from streamsgd.sources import ArraySource
    from streamsgd.train.trainer import Checkpointing, Hooks, fit as train_fit

    rng = np.random.default_rng(0)
    X = rng.standard_normal((6000, 4))
    y = np.digitize(X[:, 0] * X[:, 1], [-0.3, 0.3]) if options.get("model") == "softmax" else X[:, 0] * X[:, 1] > 0
    source = ArraySource(X, y.astype(np.int64), chunk_rows=700)
    config = FitConfig(**{"hidden": (8,), "epochs": 3, "batch": 64, "seed": 1, **options})
    saved: list = []
    whole = train_fit(source, config, hooks=Hooks(checkpointing=Checkpointing(save=saved.append, every=every)))
    assert len(saved) > 10
    if config.batch == "auto":  # the batch grows before the middle checkpoint resumed from below
        assert int(saved[len(saved) // 2]["spec"][BATCH]) > 16
    for state in (saved[2], saved[len(saved) // 2], saved[-2]):
        resumed = train_fit(source, config, resume=state,
                            hooks=Hooks(checkpointing=Checkpointing(save=lambda _: None, every=every)))
        assert whole.model.layers is not None and resumed.model.layers is not None
        for (W, b), (W2, b2) in zip(whole.model.layers, resumed.model.layers):
            np.testing.assert_array_equal(W, W2)
            np.testing.assert_array_equal(b, b2)


def test_a_linear_checkpoint_does_not_resume_a_network() -> None:
    """(The command line refuses it earlier, by the checkpoint's recorded options; the
    trainer itself still checks every array's shape.)"""
    from streamsgd.config import FitConfig
    from streamsgd.errors import DataError
    from streamsgd.sources import ArraySource
    from streamsgd.train.trainer import Checkpointing, Hooks, fit as train_fit

    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3))
    source = ArraySource(X, (X[:, 0] > 0).astype(np.int64), chunk_rows=100)
    saved: list = []
    train_fit(source, FitConfig(epochs=1, batch=50), hooks=Hooks(checkpointing=Checkpointing(save=saved.append,
                                                                                             every=3)))
    with pytest.raises(DataError, match="the checkpoint's theta has shape .*start without --resume"):
        train_fit(source, FitConfig(hidden=(8,), epochs=1, batch=50), resume=saved[0])
