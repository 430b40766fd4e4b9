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


@pytest.mark.parametrize("options", [{"batch": "auto"}, {"model": "softmax"}, {"optimizer": "adamw"}, {"l1": 0.01}])
def test_refusals(xor_path: str, options: dict) -> None:
    with pytest.raises(UsageError, match="--hidden: .*: not supported with an MLP yet"):
        fit(xor_path, hidden=(4,), epochs=1, **options)


def test_bad_hidden_widths() -> None:
    from streamsgd.config import FitConfig

    with pytest.raises(UsageError, match="--hidden"):
        FitConfig(hidden="64,x")
    assert FitConfig(hidden="64, 32").hidden == (64, 32)
    assert "hidden" not in FitConfig().to_dict()  # a linear model's options are unchanged
