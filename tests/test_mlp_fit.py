"""fit --hidden: an MLP trained end to end on a stream, saved and loaded, and what it refuses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamsgd.api import fit
from streamsgd.errors import UsageError
from streamsgd.persist.model import load

from helpers import invoke


def _xor(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def xor_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    X, y = _xor(12_000, 0)
    path = str(tmp_path_factory.mktemp("xor") / "xor.parquet")
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "y": y}), path, row_group_size=3000)
    return path


def _log_loss(model, X: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(model.predict_proba(X), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.fixture(scope="module")
def mlp(xor_path: str):
    return fit(xor_path, hidden=(16,), epochs=4, batch=128, lr=0.1, seed=3)


def test_mlp_beats_linear_on_xor(xor_path: str, mlp) -> None:
    X, y = _xor(4000, 1)
    linear = fit(xor_path, epochs=2, seed=3)
    assert _log_loss(linear, X, y) > 0.65  # no linear model separates XOR
    assert _log_loss(mlp, X, y) < 0.3
    assert (mlp.predict(X) == y).mean() > 0.95


def test_same_seed_same_network(xor_path: str, mlp) -> None:
    again = fit(xor_path, hidden=(16,), epochs=4, batch=128, lr=0.1, seed=3)
    other = fit(xor_path, hidden=(16,), epochs=4, batch=128, lr=0.1, seed=4)
    assert mlp.layers is not None and again.layers is not None and other.layers is not None
    for (W, b), (W2, b2) in zip(mlp.layers, again.layers):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(mlp.layers[0][0], other.layers[0][0])


def test_saved_model_predicts_as_in_memory(tmp_path, mlp) -> None:
    path = str(tmp_path / "mlp.npz")
    mlp.save(path)
    loaded = load(path)
    X, _ = _xor(500, 2)
    assert loaded.metadata["mlp"] == {"hidden": [16], "activation": "relu"}
    np.testing.assert_array_equal(loaded.decision_function(X), mlp.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), mlp.predict(X))
    with np.load(path, allow_pickle=False) as npz:
        assert npz["layer0_W"].shape == (16, 2) and npz["layer1_W"].shape == (1, 16)


def test_cli_fit_hidden_tanh_then_predict(tmp_path, xor_path: str) -> None:
    out = str(tmp_path / "m.npz")
    res = invoke(["fit", xor_path, "--hidden", "8,8", "--activation", "tanh", "--epochs", "2",
                               "--lr", "0.05", "-o", out])
    assert res.code == 0, res
    model = load(out)
    assert model.metadata["mlp"] == {"hidden": [8, 8], "activation": "tanh"}
    assert len(model.layers or ()) == 3
    res = invoke(["evaluate", out, xor_path])
    assert res.code == 0, res
    res = invoke(["show", out])
    assert res.code == 0, res
    assert "network    2 -> 8 -> 8 -> 1 (tanh)" in res.stdout
    pred = str(tmp_path / "p.parquet")
    res = invoke(["predict", out, xor_path, "-o", pred])
    assert res.code == 0, res
    X, _ = _xor(12_000, 0)
    np.testing.assert_allclose(pq.read_table(pred)["probability"].to_numpy(), model.predict_proba(X), rtol=1e-6)


def _three_classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class by the radius of (x0, x1): three rings of equal area (x2 is noise), which no
    linear softmax separates (each class's margin would have to peak at its own radius)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 3))
    radius = np.hypot(X[:, 0], X[:, 1])
    return X, np.searchsorted(np.sqrt([4 / (3 * np.pi), 8 / (3 * np.pi)]), radius)


def _torch_replay(model, X: np.ndarray, y: np.ndarray, options: dict, steps: int) -> list:
    """The same network trained by PyTorch in float64: full-batch steps from the seed's
    initial parameters on the model's standardised rows; its layers as (W, b) arrays. L1 is
    Tsuruoka et al.'s cumulative penalty on the weights after each step, written out here;
    invscaling's step at update t is lr / t^power_t (power_t 0.25, the default)."""
    import torch

    from streamsgd.compute.mlp import init_params, layout
    from streamsgd.plan.rng import MLP_INIT, stream

    C = 1 if options["model"] == "logistic" else int(y.max()) + 1
    lay = layout(X.shape[1], options["hidden"], C)
    theta = init_params(lay, stream(options["seed"], MLP_INIT))
    params = []
    for n_in, n_out, w_at, b_at in lay:
        params += [torch.tensor(theta[w_at:b_at].reshape(n_out, n_in), requires_grad=True),
                   torch.tensor(theta[b_at:b_at + n_out], requires_grad=True)]
    weights, biases = params[0::2], params[1::2]
    l2, lr = options["l2"], options["lr"]
    if options["optimizer"] == "adamw":  # decoupled decay on the weights only
        opt = torch.optim.AdamW([{"params": weights, "weight_decay": l2}, {"params": biases, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:  # momentum: PyTorch's heavy ball with dampening 0, as optim.optimizer_step's
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9 if options["optimizer"] == "momentum" else 0.0)
    h0 = torch.tensor((X - model.mean) / model.scale)
    target = torch.tensor(y)
    owed, received = 0.0, [np.zeros(W.shape) for W in weights]  # L1: the total u, each weight's q
    for t in range(1, steps + 1):
        if options.get("lr_schedule") == "invscaling":
            opt.param_groups[0]["lr"] = lr / t ** 0.25
        opt.zero_grad()
        h = h0
        for W, b in zip(weights[:-1], biases[:-1]):
            h = torch.relu(h @ W.T + b)
        z = h @ weights[-1].T + biases[-1]
        if C == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], target.double())
        else:
            loss = torch.nn.functional.cross_entropy(z, target)
        if options["optimizer"] != "adamw":  # the L2 term of the objective: (l2 / 2) Σ W²
            loss = loss + 0.5 * l2 * sum((W * W).sum() for W in weights)
        loss.backward()
        opt.step()
        owed += opt.param_groups[0]["lr"] * options.get("l1", 0.0)
        for W, q in zip(weights, received):
            z = W.detach().numpy()  # a view: written in place
            new = np.where(z > 0, np.maximum(0.0, z - (owed + q)), np.where(z < 0, np.minimum(0.0, z + (owed - q)), z))
            q += new - z
            z[...] = new
    return [(W.detach().numpy(), b.detach().numpy()) for W, b in zip(weights, biases)]


@pytest.mark.parametrize("model, optimizer, lr, l1, schedule", [
    ("softmax", "sgd", 0.5, 0.0, "constant"), ("softmax", "adamw", 0.05, 0.0, "constant"),
    ("logistic", "adamw", 0.05, 0.0, "constant"), ("logistic", "sgd", 0.5, 0.02, "invscaling"),
    ("softmax", "momentum", 0.1, 0.0, "invscaling")])
def test_full_batch_steps_equal_pytorch(model: str, optimizer: str, lr: float, l1: float, schedule: str) -> None:
    """C output margins with softmax's cross-entropy, AdamW's decoupled decay on the weights
    (not the biases), L1 on the weights, momentum and a decaying schedule, step for step as
    PyTorch takes them."""
    X, y = _three_classes(600, 5)
    if model == "logistic":
        y = (y == 0).astype(np.int64)
    options = {"model": model, "hidden": (6, 5), "optimizer": optimizer, "lr": lr, "l2": 0.05, "l1": l1, "seed": 9,
               "lr_schedule": schedule}
    trained = fit((X, y), batch="full", epochs=6, dtype="float64", average=False, **options)
    assert trained.layers is not None
    want = _torch_replay(trained, X, y, options, steps=6)
    # float64 on both sides; the rows' sums are taken in another order (the plan's), so
    # rounding differs at ~1e-16 and Adam's normalised steps may amplify it a little
    for (W, b), (W2, b2) in zip(trained.layers, want):
        np.testing.assert_allclose(W, W2, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(b, b2, rtol=1e-8, atol=1e-12)
    moved = [np.abs(W - W0).max() for (W, _), (W0, _) in zip(trained.layers, _torch_replay(trained, X, y, options, 0))]
    assert min(moved) > 1e-3  # the steps did move every layer
    zeros = sum(int((W == 0).sum()) for W, _ in trained.layers)
    assert zeros == sum(int((W == 0).sum()) for W, _ in want)
    assert (zeros > 0) == (l1 > 0)  # L1 sets weights to exactly zero, where PyTorch's replay does


def test_softmax_mlp_learns_text_classes_and_the_tools_read_it(tmp_path) -> None:
    X, y = _three_classes(9000, 1)
    names = np.array(["inner", "middle", "outer"])
    path = str(tmp_path / "three.parquet")
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": names[y]}), path, row_group_size=3000)
    out = str(tmp_path / "m.npz")
    res = invoke(["fit", path, "--model", "softmax", "--hidden", "16", "--epochs", "6", "--batch", "64",
                  "--lr", "0.1", "--seed", "2", "-o", out])
    assert res.code == 0, res
    model = load(out)
    assert list(model.classes_) == ["inner", "middle", "outer"] and model.layers is not None
    assert model.layers[-1][0].shape == (3, 16)
    Xt, yt = _three_classes(3000, 2)
    proba = model.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    # the network reaches well above the 1/3 of chance (0.88 measured), the linear model
    # stays near it (0.34)
    linear = fit(path, model="softmax", epochs=6, batch=64, seed=2)
    accuracy, linear_accuracy = (model.predict(Xt) == names[yt]).mean(), (linear.predict(Xt) == names[yt]).mean()
    assert accuracy > 0.8 and linear_accuracy < 0.5, (accuracy, linear_accuracy)
    pred = str(tmp_path / "p.parquet")
    assert invoke(["predict", out, path, "-o", pred]).code == 0
    np.testing.assert_array_equal(pq.read_table(pred)["prediction"].to_numpy(zero_copy_only=False),
                                  model.predict(X))
    res = invoke(["evaluate", out, path])
    assert res.code == 0 and "accuracy" in res.stdout, res
    res = invoke(["show", out])
    assert res.code == 0 and "3 -> 16 -> 3" in res.stdout, res


def test_batch_auto_grows_the_batch_from_the_networks_noise(xor_path: str) -> None:
    records: list[dict] = []
    model = fit(xor_path, hidden=(16,), batch="auto", batch_min=16, epochs=4, lr=0.1, seed=3, log_every=20,
                on_progress=records.append)
    progress = [r for r in records if r["event"] == "progress"]
    # the network's gradients feed the noise meter: B_simple is measured, and the batch grows by it
    assert all(r["trace_sigma"] is not None and r["trace_sigma"] > 0 for r in progress)
    assert progress[0]["batch"] == 16 and progress[-1]["batch"] > 64
    assert [r["batch"] for r in progress] == sorted(r["batch"] for r in progress)  # never shrinks
    assert model.metadata["metrics"]["lr"] == 0.1  # a given step stays as given
    X, y = _xor(4000, 1)
    assert (model.predict(X) == y).mean() > 0.9


def test_bad_hidden_widths() -> None:
    from streamsgd.config import FitConfig

    with pytest.raises(UsageError, match="--hidden"):
        FitConfig(hidden="64,x")
    assert FitConfig(hidden="64, 32").hidden == (64, 32)
    assert "hidden" not in FitConfig().to_dict()  # a linear model's options are unchanged
