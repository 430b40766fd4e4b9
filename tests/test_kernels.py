"""Every kernel equals a plain NumPy twin (float32 and float64) and its own finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from streamsgd.config import LOSS_PARAM, LOSS_TASK
from streamsgd.compute.codes import LOSSES
from streamsgd.compute.losses import (
    CURVATURE,
    NO_SAMPLE_WEIGHTS,
    POISSON_MAX_MARGIN,
    accumulate,
    accumulate_rows,
    accumulate_weighted,
    loss_and_slope,
    loss_slope,
    moments,
    row_loss,
)

#: a parameter for each loss that puts rows on both sides of its kink
PARAMS = {"huber": 0.7, "quantile": 0.3}


#: losses of one margin per row (softmax, with one per class, has its own test below)
MARGIN_LOSSES = sorted(set(LOSSES) - {"softmax"})

def twin_loss_slope(model, z, y, param):
    """Per-row loss and dl/dz, written plainly from the formulas (not from ``row_loss``)."""
    s = 2.0 * y - 1.0
    if model == "linear":
        return 0.5 * (z - y) ** 2, z - y
    if model == "logistic":
        return np.logaddexp(0.0, z) - y * z, 1.0 / (1.0 + np.exp(-z)) - y
    if model == "huber":
        r = z - y
        quad = np.abs(r) <= param
        return np.where(quad, 0.5 * r**2, param * np.abs(r) - 0.5 * param**2), np.clip(r, -param, param)
    if model == "hinge":
        m = s * z
        return np.maximum(0.0, 1.0 - m), np.where(m <= 1.0, -s, 0.0)
    if model == "modified_huber":
        m = s * z
        loss = np.where(m >= 1, 0.0, np.where(m >= -1, (1 - m) ** 2, -4 * m))
        slope = np.where(m >= 1, 0.0, np.where(m >= -1, -2 * s * (1 - m), -4 * s))
        return loss, slope
    if model == "poisson":  # half the deviance: y log(y / mu) - y + mu, with 0 log 0 = 0
        return y * np.log(np.where(y > 0, y / np.exp(z), 1.0)) - y + np.exp(z), np.exp(z) - y
    r = y - z  # quantile
    return np.where(r >= 0, param * r, (param - 1) * r), np.where(r > 0, -param, np.where(r < 0, 1 - param, 0.0))


def numpy_twin(model, X, y, idx, w, b, param, cw=(1.0, 1.0)):
    """Summed weighted loss, summed weighted residual and summed c·r·x of the rows ``idx``."""
    Xb = X[idx].astype(np.float64)
    yb = y[idx].astype(np.float64)
    c = np.where(yb == 1.0, cw[1], cw[0]) if LOSS_TASK[model] == "classification" else np.ones_like(yb)
    loss, r = twin_loss_slope(model, Xb @ w + b, yb, param)
    return (c * loss).sum(), (c * r).sum(), Xb.T @ (c * r)


def make_batch(model, dtype, seed=0, n=300, d=7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal(d)
    task = LOSS_TASK[model]
    if task == "classification":
        y = (rng.random(n) < 0.5).astype(dtype)
    elif task == "counts":
        w *= 0.3  # margins of a few units: means e^z up to a few hundred
        y = rng.poisson(np.exp(X.astype(np.float64) @ w + 0.3)).astype(dtype)
    else:
        y = rng.standard_normal(n).astype(dtype)
    idx = rng.permutation(n)[:130]  # not a multiple of 4: the one-row tail runs too
    return X, y, idx, w, 0.3


def test_every_loss_is_described_everywhere():
    assert set(LOSS_TASK) == set(LOSSES) == set(CURVATURE)
    assert set(LOSS_TASK.values()) == {"classification", "regression", "counts", "multiclass"}
    assert LOSS_PARAM == {"huber": 0.1, "quantile": 0.5}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("model", MARGIN_LOSSES)
def test_kernel_matches_numpy_twin(model, dtype):
    """The kernel the training loop calls, with unit weights and the default parameter."""
    X, y, idx, w, b = make_batch(model, dtype)
    gw = np.zeros(X.shape[1])
    loss, rsum = accumulate_rows(LOSSES[model], LOSS_PARAM.get(model, 0.0), np.ones(2), X, y, NO_SAMPLE_WEIGHTS, idx,
                                 w, b, gw)
    ref_loss, ref_rsum, ref_gw = numpy_twin(model, X, y, idx, w, b, LOSS_PARAM.get(model, 0.0))
    # products of float32 inputs are accumulated in float64 by both, so they agree to rounding
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(rsum, ref_rsum, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("model", MARGIN_LOSSES)
def test_weighted_kernel_matches_numpy_twin(model, dtype, weighted):
    X, y, idx, w, b = make_batch(model, dtype, seed=4)
    param = PARAMS.get(model, 0.0)
    cw = (0.4, 2.5) if weighted and LOSS_TASK[model] == "classification" else (1.0, 1.0)
    gw = np.full(X.shape[1], 0.5)  # adds to what is there
    loss, rsum = accumulate_weighted(LOSSES[model], param, np.array(cw), X, y, idx, w, b, gw)
    ref_loss, ref_rsum, ref_gw = numpy_twin(model, X, y, idx, w, b, param, cw)
    scale = max(1.0, np.abs(ref_gw).max())  # poisson's sums reach the hundreds
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(rsum, ref_rsum, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(gw - 0.5, ref_gw, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("model", MARGIN_LOSSES)
def test_accumulate_is_the_unweighted_default(model):
    X, y, idx, w, b = make_batch(model, np.float32, seed=5)
    g1, g2 = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    out1 = accumulate(LOSSES[model], X, y, idx, w, b, g1)
    out2 = accumulate_weighted(LOSSES[model], LOSS_PARAM.get(model, 0.0), np.ones(2), X, y, idx, w, b, g2)
    assert out1 == out2
    np.testing.assert_array_equal(g1, g2)
    for z, label in [(-2.0, 0.0), (0.05, 1.0), (3.0, 1.0)]:
        assert loss_and_slope(LOSSES[model], z, label) == loss_slope(LOSSES[model], z, label,
                                                                     LOSS_PARAM.get(model, 0.0))


@pytest.mark.parametrize("model", ["logistic", "hinge", "modified_huber"])
def test_class_weight_is_row_repetition(model):
    # an integer class weight k counts a row of that class k times, as scikit-learn documents
    X, y, idx, w, b = make_batch(model, np.float64, seed=6)
    positives = idx[y[idx] == 1]
    repeated = np.concatenate([idx, positives, positives])
    g1, g2 = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    out1 = accumulate_weighted(LOSSES[model], 0.0, np.array([1.0, 3.0]), X, y, idx, w, b, g1)
    out2 = accumulate(LOSSES[model], X, y, repeated, w, b, g2)
    np.testing.assert_allclose(out1, out2, rtol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12)


def kink_distance(model, z, y, param):
    """How far each margin is from the loss's kink (inf for losses without one)."""
    if model == "huber":
        return np.abs(np.abs(z - y) - param)
    if model == "hinge":
        return np.abs((2 * y - 1) * z - 1)
    if model == "quantile":
        return np.abs(z - y)
    return np.full(z.shape, np.inf)


@pytest.mark.parametrize("model", MARGIN_LOSSES)
def test_gradient_matches_finite_differences(model):
    X, y, idx, w, b = make_batch(model, np.float64, seed=1)
    param = PARAMS.get(model, 0.0)
    # a step of eps in one parameter moves a margin by at most eps * |x| < 1e-4: rows closer
    # than 1e-3 to a kink are left out, where the derivative does not exist
    idx = idx[kink_distance(model, X[idx] @ w + b, y[idx], param) > 1e-3]
    assert idx.size > 100
    cw = np.array([0.7, 1.6]) if LOSS_TASK[model] == "classification" else np.ones(2)
    gw = np.zeros(X.shape[1])
    _, gb = accumulate_weighted(LOSSES[model], param, cw, X, y, idx, w, b, gw)
    eps = 1e-6

    def loss_at(w_, b_):
        return accumulate_weighted(LOSSES[model], param, cw, X, y, idx, w_, b_, np.zeros_like(w_))[0]

    fd = np.array([(loss_at(w + eps * e, b) - loss_at(w - eps * e, b)) / (2 * eps) for e in np.eye(w.size)])
    fd_b = (loss_at(w, b + eps) - loss_at(w, b - eps)) / (2 * eps)
    # central differences have O(eps^2) truncation and O(1e-16 * loss / eps) rounding error
    np.testing.assert_allclose(gw, fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gb, fd_b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", MARGIN_LOSSES)
def test_finite_at_extreme_margins(model):
    labels = [0.0, 1.0] if LOSS_TASK[model] == "classification" else [0.0, 3.0]
    # 1e100 too: beyond ~1e154 the squared loss's true value is itself not a float64
    for z in (-1e4, 1e4, -1e100, 1e100):
        for label in labels:
            loss, slope = loss_slope(LOSSES[model], z, label, PARAMS.get(model, 0.0))
            assert np.isfinite(loss) and np.isfinite(slope), (z, label)
            assert loss >= 0.0  # every loss, poisson's half deviance included, is non-negative
    # through the batch kernel, float32 rows: margins +-1e4
    X = np.array([[1.0], [1.0], [-1.0], [-1.0], [1.0]], dtype=np.float32)
    y = np.array(labels * 2 + labels[:1], dtype=np.float32)
    gw = np.zeros(1)
    loss, rsum = accumulate_weighted(LOSSES[model], PARAMS.get(model, 0.0), np.ones(2), X, y, np.arange(5),
                                     np.array([1e4]), 0.0, gw)
    assert np.isfinite(loss) and np.isfinite(rsum) and np.isfinite(gw).all()
    assert np.isfinite(row_loss(model, np.array([-1e4, 1e4]), np.array(labels), PARAMS.get(model))).all()


def test_extreme_margin_values():
    lg, hi, mh, po = LOSSES["logistic"], LOSSES["hinge"], LOSSES["modified_huber"], LOSSES["poisson"]
    # margins +-1e4 cost ~1e4 where wrong and ~0 where right; slopes are the limits exactly
    assert loss_slope(lg, 1e4, 0.0, 0.0) == (1e4, 1.0)
    assert loss_slope(lg, 1e4, 1.0, 0.0) == (0.0, 0.0)
    assert loss_slope(hi, 1e4, 0.0, 0.0) == (1e4 + 1, 1.0)
    assert loss_slope(mh, -1e4, 1.0, 0.0) == (4e4, -4.0)
    # poisson: e^z up to POISSON_MAX_MARGIN, then its tangent line: finite, convex, C1
    e = np.exp(POISSON_MAX_MARGIN)
    loss, slope = loss_slope(po, 1e4, 2.0, 0.0)
    assert loss == pytest.approx(e * (1 + 1e4 - POISSON_MAX_MARGIN) - 2e4) and slope == pytest.approx(e - 2.0)
    below = loss_slope(po, POISSON_MAX_MARGIN - 1e-9, 0.0, 0.0)
    above = loss_slope(po, POISSON_MAX_MARGIN + 1e-9, 0.0, 0.0)
    assert above[1] == e and below[1] == pytest.approx(e, rel=1e-8) and above[0] > below[0]
    assert loss_slope(po, -1e4, 2.0, 0.0) == (2e4 + 2 * np.log(2.0) - 2.0, -2.0)


@pytest.mark.parametrize("model", MARGIN_LOSSES)
def test_row_loss_matches_the_kernel(model):
    rng = np.random.default_rng(7)
    z = np.concatenate([rng.standard_normal(200) * 3, [-1e4, 1e4, 0.0, 1.0, -1.0, 60.0]])
    task = LOSS_TASK[model]
    y = (rng.random(z.size) < 0.5) * 1.0 if task == "classification" else rng.poisson(2.0, z.size) * 1.0
    param = PARAMS.get(model)
    expected = [loss_slope(LOSSES[model], zi, yi, param or 0.0)[0] for zi, yi in zip(z, y)]
    np.testing.assert_allclose(row_loss(model, z, y, param), expected, rtol=1e-12, atol=1e-12)
    expected = [loss_and_slope(LOSSES[model], zi, yi)[0] for zi, yi in zip(z, y)]
    np.testing.assert_allclose(row_loss(model, z, y), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        row_loss("nope", z, y)


@pytest.mark.parametrize("model", ["linear", "logistic", "huber", "modified_huber"])
def test_curvature_bounds_the_smooth_losses(model):
    z = np.linspace(-6, 6, 2401)
    h = 1e-4
    labels = (0.0, 1.0) if LOSS_TASK[model] == "classification" else (0.0, 1.0, 0.5)
    for label in labels:
        slopes = np.array([[loss_slope(LOSSES[model], zi + s, label, 1.0)[1] for s in (-h, h)] for zi in z])
        second = (slopes[:, 1] - slopes[:, 0]) / (2 * h)
        assert second.max() <= CURVATURE[model] * (1 + 1e-6)
        assert second.max() >= CURVATURE[model] * 0.99  # and it is the bound, not a loose one
    # poisson's e^z is unbounded: CURVATURE is its value at the start, z = 0
    s = [loss_slope(LOSSES["poisson"], dz, 1.0, 0.0)[1] for dz in (-h, h)]
    assert (s[1] - s[0]) / (2 * h) == pytest.approx(CURVATURE["poisson"], rel=1e-6)


def test_moments():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 4)) * 3 + 1
    mean, m2 = moments(X, np.arange(X.shape[0]))
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m2, ((X - X.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-10)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_moments_sum_in_the_given_row_order_bit_for_bit(layout):
    # the first window's standardisation sums its rows in chunk order through the plan's slots
    # (prefetched ahead): the bits of every model depend on that order, so they are pinned
    # to a plain sequential sum in float64, row by row in the order given
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((3000, 14)) * 1e3 + 7).astype(np.float32)
    X = {"C": X, "F": np.asfortranarray(X), "strided": X[:, ::2]}[layout]
    rows = rng.permutation(X.shape[0])
    mean, m2 = moments(X, rows)
    ref_mean = [0.0] * X.shape[1]
    for r in rows:
        for j in range(X.shape[1]):
            ref_mean[j] += float(X[r, j])
    ref_mean = [m / rows.size for m in ref_mean]
    ref_m2 = [0.0] * X.shape[1]
    for r in rows:
        for j in range(X.shape[1]):
            t = float(X[r, j]) - ref_mean[j]
            ref_m2[j] += t * t
    assert mean.tolist() == ref_mean and m2.tolist() == ref_m2
    shuffled = moments(X, rows[::-1])  # another order, other bits: the order is what is pinned
    assert shuffled[0].tolist() != ref_mean or shuffled[1].tolist() != ref_m2


def softmax_twin(classes, X, y, idx, W):
    """Multinomial log loss and its gradient over rows idx, written plainly."""
    C, k = classes.size, X.shape[1] + 1
    Wm = W.reshape(C, k)
    Xb = X[idx].astype(np.float64)
    z = Xb @ Wm[:, :-1].T + Wm[:, -1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(C)[np.searchsorted(classes, y[idx])]
    loss = float((np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
                  - (z * onehot).sum(axis=1)).sum())
    r = p - onehot
    return loss, np.hstack([r.T @ Xb, r.sum(axis=0)[:, None]]).ravel()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_kernel_matches_numpy_twin_and_finite_differences(dtype):
    from streamsgd.compute.losses import accumulate_softmax

    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 5)).astype(dtype)
    classes = np.array([-1.0, 2.0, 10.0])
    y = classes[rng.integers(0, 3, 200)].astype(dtype)
    idx = rng.permutation(200)[:90]
    W = rng.standard_normal(3 * 6)
    gw = np.zeros_like(W)
    loss = accumulate_softmax(classes, np.ones(classes.size), X, y, idx, W, gw)
    ref_loss, ref_gw = softmax_twin(classes, X, y, idx, W)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-9, atol=1e-9)
    eps = 1e-6  # central differences: O(eps²) truncation, O(1e-16·loss/eps) rounding
    ones = np.ones(classes.size)
    fd = [(accumulate_softmax(classes, ones, X, y, idx, W + eps * e, np.zeros_like(W))
           - accumulate_softmax(classes, ones, X, y, idx, W - eps * e, np.zeros_like(W))) / (2 * eps) for e in np.eye(W.size)]
    np.testing.assert_allclose(gw, fd, rtol=1e-5, atol=1e-5)
    # margins of ±1e4 stay finite (the log-sum-exp is shifted by the largest margin)
    assert np.isfinite(accumulate_softmax(classes, ones, X, y, idx, W * 1e4, np.zeros_like(W)))
