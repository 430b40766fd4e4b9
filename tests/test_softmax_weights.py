"""The softmax kernel's class weights (``kernels.accumulate_softmax``): its NumPy twin in
float32 and float64, finite differences, and integer weights as repeated rows."""

from __future__ import annotations

import numpy as np
import pytest

from streamsgd.compute.losses import accumulate_softmax

CLASSES = np.array([-1.0, 2.0, 10.0])


def batch(dtype, seed=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((200, 5)).astype(dtype)
    y = CLASSES[rng.integers(0, 3, 200)].astype(dtype)
    idx = rng.permutation(200)[:90]
    W = rng.standard_normal(3 * 6)
    return X, y, idx, W


def weighted_twin(classes, cw, X, y, idx, W):
    """Σ w_{y_i} ℓ_i and its gradient, written plainly (rows weighted by their class's weight)."""
    C, k = classes.size, X.shape[1] + 1
    Wm = W.reshape(C, k)
    Xb = X[idx].astype(np.float64)
    z = Xb @ Wm[:, :-1].T + Wm[:, -1]
    label = np.searchsorted(classes, y[idx])
    w = cw[label]
    lse = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    p = np.exp(z - lse[:, None])
    r = w[:, None] * (p - np.eye(C)[label])
    loss = float((w * (lse - z[np.arange(z.shape[0]), label])).sum())
    return loss, np.hstack([r.T @ Xb, r.sum(axis=0)[:, None]]).ravel()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_softmax_matches_its_numpy_twin_and_finite_differences(dtype):
    X, y, idx, W = batch(dtype)
    cw = np.array([0.4, 2.5, 1.3])
    gw = np.full(W.size, 0.5)  # adds to what is there
    loss = accumulate_softmax(CLASSES, cw, X, y, idx, W, gw)
    ref_loss, ref_gw = weighted_twin(CLASSES, cw, X, y, idx, W)
    # float64 sums of the same terms in another order: agreement to ~1e-13 is expected
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(gw - 0.5, ref_gw, rtol=1e-9, atol=1e-9)
    eps = 1e-6  # central differences: O(eps²) truncation, O(1e-16·loss/eps) rounding

    def at(V):
        return accumulate_softmax(CLASSES, cw, X, y, idx, V, np.zeros_like(V))

    fd = [(at(W + eps * e) - at(W - eps * e)) / (2 * eps) for e in np.eye(W.size)]
    np.testing.assert_allclose(gw - 0.5, fd, rtol=1e-5, atol=1e-5)
    assert np.isfinite(at(W * 1e4))  # margins of ±1e4: the log-sum-exp is shifted by the largest


def test_an_integer_class_weight_counts_each_row_that_many_times():
    # scikit-learn documents class_weight so: weight k is the row repeated k times
    X, y, idx, W = batch(np.float64, seed=6)
    third = idx[y[idx] == CLASSES[2]]
    g1, g2 = np.zeros(W.size), np.zeros(W.size)
    out1 = accumulate_softmax(CLASSES, np.array([1.0, 1.0, 3.0]), X, y, idx, W, g1)
    out2 = accumulate_softmax(CLASSES, np.ones(3), X, y, np.concatenate([idx, third, third]), W, g2)
    np.testing.assert_allclose(out1, out2, rtol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12)
