"""Every kernel equals a plain NumPy twin (float32 and float64) and its own finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from streamsgd.kernels import GRADIENTS, first_nonfinite_column, moments


def numpy_twin(model, X, y, idx, w, b):
    """Summed loss, summed residual and summed r·x of the rows ``idx``, written plainly."""
    Xb = X[idx].astype(np.float64)
    yb = y[idx].astype(np.float64)
    z = Xb @ w + b
    if model == "linear":
        r = z - yb
        loss = 0.5 * r**2
    else:
        r = 1.0 / (1.0 + np.exp(-z)) - yb
        loss = np.logaddexp(0.0, z) - yb * z
    return loss.sum(), r.sum(), Xb.T @ r


def make_batch(model, dtype, seed=0, n=300, d=7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (rng.random(n) < 0.5).astype(dtype) if model == "logistic" else rng.standard_normal(n).astype(dtype)
    idx = rng.permutation(n)[:128]
    return X, y, idx, rng.standard_normal(d), 0.3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("model", sorted(GRADIENTS))
def test_kernel_matches_numpy_twin(model, dtype):
    X, y, idx, w, b = make_batch(model, dtype)
    gw = np.zeros(X.shape[1])
    loss, rsum = GRADIENTS[model](X, y, idx, w, b, gw)
    ref_loss, ref_rsum, ref_gw = numpy_twin(model, X, y, idx, w, b)
    # products of float32 inputs are accumulated in float64 by both, so they agree to rounding
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(rsum, ref_rsum, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("model", sorted(GRADIENTS))
def test_gradient_matches_finite_differences(model):
    X, y, idx, w, b = make_batch(model, np.float64, seed=1)
    gw = np.zeros(X.shape[1])
    _, gb = GRADIENTS[model](X, y, idx, w, b, gw)
    eps = 1e-6

    def loss_at(w_, b_):
        return GRADIENTS[model](X, y, idx, w_, b_, np.zeros_like(w_))[0]

    fd = np.array([(loss_at(w + eps * e, b) - loss_at(w - eps * e, b)) / (2 * eps) for e in np.eye(w.size)])
    fd_b = (loss_at(w, b + eps) - loss_at(w, b - eps)) / (2 * eps)
    # central differences have O(eps^2) truncation and O(1e-16 * loss / eps) rounding error
    np.testing.assert_allclose(gw, fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gb, fd_b, rtol=1e-6, atol=1e-6)


def test_logistic_is_finite_at_extreme_margins():
    X = np.array([[1.0], [1.0], [-1.0], [-1.0]])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    gw = np.zeros(1)
    loss, rsum = GRADIENTS["logistic"](X, y, np.arange(4), np.array([1e4]), 0.0, gw)
    # margins ±1e4: two rows cost ~1e4 each, two cost ~0; residuals are exactly ±1 or 0
    assert np.isfinite(loss) and loss == pytest.approx(2e4)
    assert rsum == pytest.approx(0.0) and np.isfinite(gw).all()


def test_moments_and_nonfinite_scan():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 4)) * 3 + 1
    mean, m2 = moments(X)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m2, ((X - X.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-10)
    assert first_nonfinite_column(X) == -1
    X[77, 2] = np.nan
    assert first_nonfinite_column(X) == 2
