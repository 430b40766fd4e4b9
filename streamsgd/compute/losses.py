"""Numba kernels: loss and gradient of one batch segment, in one pass over its rows.

Kernels read rows of the window buffer ``X`` (row-major, float32 or float64) through the
batch's index array, so shuffled batches are never materialised as copies. They add the
gradient of the *summed* data loss into ``gw`` (float64, length d) and return the summed
loss and the summed residual (the intercept's gradient); the caller scales by 1/B and adds
the penalty, which is O(d) per update. No temporaries of size batch x features.

Losses by model name (``codes.LOSSES`` numbers them; z = w.x + b; for hinge and
modified_huber s = 2y - 1, the {0,1} label as +-1):
  linear            l = (z - y)^2 / 2                                 dl/dz = z - y
  logistic          l = log(1 + e^z) - y z,  y in {0,1}               dl/dz = sigmoid(z) - y
  huber             l = r^2/2 if |r| <= eps else eps |r| - eps^2/2,   dl/dz = clip(r, -eps, eps)
                    r = z - y (scikit-learn SGDRegressor's ``huber``; param = eps)
  hinge             l = max(0, 1 - s z)                               dl/dz = -s if s z <= 1 else 0
  modified_huber    l = (1 - s z)^2 if -1 <= s z < 1, -4 s z if s z < -1, 0 if s z >= 1
  poisson           l = y log(y / e^z) - y + e^z (half the Poisson    dl/dz = e^z - y
                    deviance, log link, y >= 0 counts; 0 log 0 = 0)
  quantile          l = max(tau r, (tau - 1) r), r = y - z (pinball; param = tau)
                    dl/dz = -tau if r > 0, 1 - tau if r < 0, 0 at r = 0
Hinge and modified_huber follow scikit-learn's ``SGDClassifier`` (including the
subgradient -s taken at the hinge's kink). Poisson's loss is e^z - y z plus y log y - y, a
term in y alone: the gradient is that of e^z - y z, but the reported loss is the half
deviance, 0 at a perfect fit, whose mean is scikit-learn's ``mean_poisson_deviance`` / 2
(what ``PoissonRegressor`` minimises, 1/(2N) Σ deviance).

Every loss is finite at any finite margin: logistic is arranged so that neither term
overflows; poisson continues e^z by its tangent line above ``POISSON_MAX_MARGIN``
(see ``_exp_capped``), the others are at most linear in z.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from ..config import LOSS_PARAM
from .codes import HINGE, HUBER, LINEAR, LOGISTIC, LOSSES, MODIFIED_HUBER, POISSON, QUANTILE
from ..hints import prefetch

#: Above this margin the Poisson mean e^z is continued by its tangent line, so the loss and
#: its slope stay finite (e^50 ~ 5e21 is far above any count a model could fit; float64's
#: exp overflows at 709.8, and a single e^709 would turn every sum it meets into inf).
POISSON_MAX_MARGIN = 50.0


@njit(nogil=True, cache=True)
def _exp_capped(z: float) -> tuple[float, float]:
    """(f(z), f'(z)) for f = e^z up to POISSON_MAX_MARGIN and its tangent line beyond.

    The continuation is C1 and convex, so the Poisson loss built on it stays convex and
    its derivative is still the exact derivative of the loss that is reported (the
    finite-difference check holds everywhere); a run that reaches such margins shows a
    huge but finite loss and diverges visibly rather than through an overflow.
    """
    if z <= POISSON_MAX_MARGIN:
        e = math.exp(z)
        return e, e
    e = math.exp(POISSON_MAX_MARGIN)
    return e * (1.0 + (z - POISSON_MAX_MARGIN)), e


@njit(nogil=True, cache=True)
def _poisson_offset(y: float) -> float:
    """y log y - y (0 at y = 0): what turns e^z - y z into the half deviance."""
    v = np.float64(y)  # numba's float() keeps a float32 label float32, and its log too
    if v > 0.0:
        return v * math.log(v) - v
    return 0.0


# compile-time constants of default_param, from config's one home of the defaults
_DEFAULT_EPSILON = LOSS_PARAM["huber"]
_DEFAULT_TAU = LOSS_PARAM["quantile"]


@njit(nogil=True, cache=True)
def loss_slope(loss: int, z: float, y: float, param: float) -> tuple[float, float]:
    """(l(z, y), dl/dz) of one row for the loss coded ``loss`` (``codes.LINEAR`` … ``QUANTILE``).

    ``param`` is epsilon for huber and tau in (0, 1) for quantile, ignored otherwise.
    Labels of hinge and modified_huber are 0/1 (mapped to -1/+1 here).
    """
    y = float(y)
    if loss == LINEAR:
        r = z - y
        return 0.5 * r * r, r
    if loss == LOGISTIC:  # softplus and sigmoid from one exponential: e^-|z| never overflows
        e = math.exp(-abs(z))
        p = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
        return (z if z > 0.0 else 0.0) + math.log1p(e) - y * z, p - y
    if loss == HUBER:
        r = z - y
        if r > param:
            return param * r - 0.5 * param * param, param
        if r < -param:
            return -param * r - 0.5 * param * param, -param
        return 0.5 * r * r, r
    if loss == HINGE:
        s = 2.0 * y - 1.0
        m = s * z
        if m <= 1.0:
            return 1.0 - m, -s
        return 0.0, 0.0
    if loss == MODIFIED_HUBER:
        s = 2.0 * y - 1.0
        m = s * z
        if m >= 1.0:
            return 0.0, 0.0
        if m >= -1.0:
            return (1.0 - m) * (1.0 - m), -2.0 * s * (1.0 - m)
        return -4.0 * m, -4.0 * s
    if loss == POISSON:
        e, de = _exp_capped(z)
        return e - y * z + _poisson_offset(y), de - y
    # QUANTILE
    r = y - z
    if r > 0.0:
        return param * r, -param
    if r < 0.0:
        return (param - 1.0) * r, 1.0 - param
    return 0.0, 0.0


@njit(nogil=True, cache=True)
def default_param(loss: int) -> float:
    """The parameter ``loss_and_slope`` and ``accumulate`` use: LOSS_PARAM's, by code."""
    if loss == HUBER:
        return _DEFAULT_EPSILON
    if loss == QUANTILE:
        return _DEFAULT_TAU
    return 0.0


@njit(nogil=True, cache=True)
def loss_and_slope(loss, z, y):
    """(l(z, y), dl/dz) of one row, with the default parameter (see ``LOSS_PARAM``)."""
    return loss_slope(loss, z, y, default_param(loss))


#: No sample weights (``accumulate_rows``' ``sw``): every row counts once. An empty array
#: rather than a ones vector: nothing of the window's size is allocated or read.
NO_SAMPLE_WEIGHTS = np.zeros(0)


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _accumulate(loss, param, c0, c1, X, y, sw, idx, w, b, gw):
    """``accumulate_rows`` with the two class weights as scalars (c0 for y == 0, c1 else).

    Rows are taken four at a time: shuffled rows are cache misses, and four independent
    dot products keep four of them in flight (benchmarks/README.md has the figures).
    ``reassoc`` lets the dot products
    vectorise; NaN and infinity keep their meaning (no ``nnan``/``ninf``), so divergence
    is still seen. The losses themselves (``loss_slope``) are compiled without fastmath,
    so their overflow-avoiding arrangements are kept as written.
    """
    d = X.shape[1]
    n = idx.shape[0]
    weighted = sw.shape[0] > 0  # an empty sw: unweighted (a branch the CPU predicts every time)
    total = 0.0
    rsum = 0.0
    k = 0
    while k + 4 <= n:
        i0, i1, i2, i3 = idx[k], idx[k + 1], idx[k + 2], idx[k + 3]
        z0 = z1 = z2 = z3 = b
        for j in range(d):
            z0 += X[i0, j] * w[j]
            z1 += X[i1, j] * w[j]
            z2 += X[i2, j] * w[j]
            z3 += X[i3, j] * w[j]
        y0, y1, y2, y3 = y[i0], y[i1], y[i2], y[i3]
        l0, r0 = loss_slope(loss, z0, y0, param)
        l1, r1 = loss_slope(loss, z1, y1, param)
        l2, r2 = loss_slope(loss, z2, y2, param)
        l3, r3 = loss_slope(loss, z3, y3, param)
        # a select, not c0 + (c1 - c0) y: regression labels are not 0/1 (their weights are 1)
        c_0 = c1 if y0 > 0.5 else c0
        c_1 = c1 if y1 > 0.5 else c0
        c_2 = c1 if y2 > 0.5 else c0
        c_3 = c1 if y3 > 0.5 else c0
        if weighted:  # a row's sample weight multiplies its class weight
            c_0 *= sw[i0]
            c_1 *= sw[i1]
            c_2 *= sw[i2]
            c_3 *= sw[i3]
        r0 *= c_0
        r1 *= c_1
        r2 *= c_2
        r3 *= c_3
        total += (c_0 * l0 + c_1 * l1) + (c_2 * l2 + c_3 * l3)
        rsum += (r0 + r1) + (r2 + r3)
        for j in range(d):
            gw[j] += (r0 * X[i0, j] + r1 * X[i1, j]) + (r2 * X[i2, j] + r3 * X[i3, j])
        k += 4
    for k in range(k, n):
        i = idx[k]
        z = b
        for j in range(d):
            z += X[i, j] * w[j]
        li, r = loss_slope(loss, z, y[i], param)
        c = c1 if y[i] > 0.5 else c0
        if weighted:
            c *= sw[i]
        r *= c
        total += c * li
        rsum += r
        for j in range(d):
            gw[j] += r * X[i, j]
    return total, rsum


@njit(nogil=True, cache=True)
def accumulate_weighted(loss, param, cw, X, y, idx, w, b, gw):
    """Add sum c_i r_i x_i over rows ``idx`` to gw; return (sum c_i l_i, sum c_i r_i).

    Parameters
    ----------
    loss : int, a margin loss's code (``codes.LINEAR`` … ``QUANTILE``).
    param : float, huber's epsilon or quantile's tau (ignored by the other losses).
    cw : float64 array of shape (2,), the row weight by binary label: cw[0] for rows with
        y == 0, cw[1] for y == 1 (``class_weight``; scikit-learn multiplies each row's loss
        by its class's weight, and so do we). Regression passes ones.
    X : ndarray of shape (n_rows, d), float32 or float64, row-major.
    y : ndarray of shape (n_rows,), labels.
    idx : integer ndarray of shape (B,), the rows of this batch segment.
    w : float64 (d,), raw-space weights; b : float, raw-space intercept.
    gw : float64 (d,), updated in place.
    """
    return _accumulate(loss, param, cw[0], cw[1], X, y, NO_SAMPLE_WEIGHTS, idx, w, b, gw)


@njit(nogil=True, cache=True)
def accumulate_rows(loss, param, cw, X, y, sw, idx, w, b, gw):
    """``accumulate_weighted`` with a sample weight per row as well (``--weight``).

    sw : float64 (n_rows,), row i's weight s_i >= 0, or an empty array for none. Row i's
        loss and gradient are multiplied by s_i times its class weight, so the objective is
        (1/N) Σ s_i c_i ℓ_i: an integer weight k counts a row k times, as in scikit-learn.
    """
    return _accumulate(loss, param, cw[0], cw[1], X, y, sw, idx, w, b, gw)


@njit(nogil=True, cache=True)
def accumulate(loss, X, y, idx, w, b, gw):
    """Add sum r_i x_i over rows ``idx`` to gw; return (sum of losses, sum of residuals r_i).

    ``accumulate_weighted`` with unit weights and the loss's default parameter.
    """
    return _accumulate(loss, default_param(loss), 1.0, 1.0, X, y, NO_SAMPLE_WEIGHTS, idx, w, b, gw)


@njit(nogil=True, cache=True)
def accumulate_softmax(classes, cw, X, y, idx, W, gw):
    """``accumulate_softmax_rows`` without sample weights."""
    return accumulate_softmax_rows(classes, cw, X, y, NO_SAMPLE_WEIGHTS, idx, W, gw)


@njit(nogil=True, cache=True)
def accumulate_softmax_rows(classes, cw, X, y, sw, idx, W, gw):
    """Multinomial log loss over rows ``idx``, each row weighted by its class; returns its sum
    and adds the gradient to gw.

    Class weights (``--class-weight``) multiply a row's loss and gradient by its class's
    weight: (1/N) Σ_i w_{y_i} ℓ_i, what scikit-learn's ``LogisticRegression(class_weight=...)``
    minimises (an integer weight k counts a row k times). Unit weights are exact (x · 1.0).

    Parameters
    ----------
    classes : float64 (C,), the sorted label values; a row's class is the index of its
        label there (binary search), so labels may be any numbers.
    cw : float64 (C,), the weight of each class's rows, in ``classes`` order.
    X : float32 or float64 (n_rows, d), the window's rows; y : (n_rows,), their labels.
    sw : float64 (n_rows,), each row's sample weight (it multiplies the class weight), or
        an empty array for none.
    idx : int64 (rows,), the rows of this batch segment.
    W, gw : float64 (C·(d+1),), class blocks of weights then intercept (raw space for W);
        gw is added to in place.

    Row i adds w ℓ_i with ℓ = logsumexp(z) − z_y and w = cw[y_i], and w (p_c − [c = y])
    times (x_i, 1) to class c's block of gw. The log-sum-exp is shifted by max z, so no
    margin overflows.
    """
    d = X.shape[1]
    C = classes.shape[0]
    k = d + 1
    z = np.empty(C)
    weighted = sw.shape[0] > 0
    total = 0.0
    for r in range(idx.shape[0]):
        i = idx[r]
        label = np.searchsorted(classes, y[i])
        weight = cw[label] * sw[i] if weighted else cw[label]
        top = -np.inf
        for c in range(C):
            zc = W[c * k + d]
            for j in range(d):
                zc += X[i, j] * W[c * k + j]
            z[c] = zc
            top = max(top, zc)
        z_label = z[label]
        norm = 0.0
        for c in range(C):
            z[c] = math.exp(z[c] - top)
            norm += z[c]
        total += weight * (math.log(norm) + top - z_label)
        for c in range(C):
            slope = weight * (z[c] / norm - (1.0 if c == label else 0.0))
            for j in range(d):
                gw[c * k + j] += slope * X[i, j]
            gw[c * k + d] += slope
    return total


#: Upper bound of d^2 l / dz^2 per model, used to pick a stable default step size (1/L).
#: Exact for the smooth losses: linear 1, logistic 1/4, huber 1 (its quadratic zone),
#: modified_huber 2 (the (1 - s z)^2 zone).
#: hinge and quantile have no second derivative at their kink (and 0 elsewhere), so there is
#: no bound; we use 1, the curvature of the same loss smoothed over a unit-wide band of
#: margins (the "smooth hinge" of Rennie & Srebro 2005; for the pinball loss, whose slope
#: also jumps by exactly 1 at r = 0, the same construction). Margins of standardised data
#: with O(1) weights move on that unit scale, so 1/L of the surrogate is the step at which a
#: subgradient step neither stalls nor overshoots the kink by more than the band.
#: poisson's e^z is unbounded; 1 is e^0, its curvature at the starting point (w = 0, b = 0).
#: When the mean count is large the optimum sits near b = log(mean y), where the curvature
#: is mean y: ``optim.default_lr(..., curvature=max(1, mean y))`` is the step for that case.
CURVATURE = {
    "linear": 1.0, "logistic": 0.25, "huber": 1.0, "hinge": 1.0, "modified_huber": 2.0,
    "poisson": 1.0, "quantile": 1.0,
    "softmax": 0.5,  # the multinomial Hessian diag(p) − ppᵀ has eigenvalues below 1/2
}


#: Rows ``moments`` asks for ahead of the one it sums (a hint: the sums are the same).
AHEAD_ROWS = 16


@njit(nogil=True, cache=True)
def moments(X, rows):
    """Per-column mean and sum of squared deviations (float64) of rows ``X[rows]``, taken in
    that order (the sums, hence the bits, depend on it), for Chan's parallel merge."""
    n, d = rows.size, X.shape[1]
    mean = np.zeros(d)
    m2 = np.zeros(d)
    for i in range(n):
        if i + AHEAD_ROWS < n:  # the window is in training order: rows[i] are cache misses
            prefetch(X[rows[i + AHEAD_ROWS]], 0)
        r = rows[i]
        for j in range(d):
            mean[j] += X[r, j]
    for j in range(d):
        mean[j] /= max(n, 1)
    for i in range(n):
        if i + AHEAD_ROWS < n:
            prefetch(X[rows[i + AHEAD_ROWS]], 0)
        r = rows[i]
        for j in range(d):
            t = X[r, j] - mean[j]
            m2[j] += t * t
    return mean, m2


def decision(X: NDArray, w: NDArray[np.float64], b: float) -> NDArray[np.float64]:
    """Margins z = X w + b for a contiguous block (BLAS; not on the training path)."""
    return X @ w.astype(X.dtype, copy=False) + b


def row_loss(
    model: str, z: NDArray[np.float64], y: NDArray, param: float | None = None
) -> NDArray[np.float64]:
    """Per-row loss, vectorised, for evaluation: the same functions as ``loss_slope``.

    Parameters
    ----------
    model : a key of LOSSES.
    z : ndarray of shape (n,), margins; y : ndarray of shape (n,), labels.
    param : huber's epsilon or quantile's tau; None means LOSS_PARAM's default.
    """
    z = z.astype(np.float64, copy=False)
    y = y.astype(np.float64, copy=False)
    if param is None:
        param = LOSS_PARAM.get(model, 0.0)
    if model == "linear":
        return 0.5 * (z - y) ** 2
    if model == "logistic":
        return np.logaddexp(0.0, z) - y * z
    if model == "huber":
        a = np.abs(z - y)
        return np.where(a <= param, 0.5 * a * a, param * a - 0.5 * param * param)
    if model == "hinge":
        return np.maximum(0.0, 1.0 - (2.0 * y - 1.0) * z)
    if model == "modified_huber":
        m = (2.0 * y - 1.0) * z
        return np.where(m >= 1.0, 0.0, np.where(m >= -1.0, (1.0 - m) ** 2, -4.0 * m))
    if model == "poisson":
        zc = np.minimum(z, POISSON_MAX_MARGIN)
        mu = np.exp(zc) * (1.0 + (z - zc))  # e^z, continued by its tangent (see _exp_capped)
        offset = np.where(y > 0.0, y * np.log(np.where(y > 0.0, y, 1.0)) - y, 0.0)
        return mu - y * z + offset
    if model == "quantile":
        r = y - z
        return np.maximum(param * r, (param - 1.0) * r)
    if model == "softmax":  # z of shape (n, C), y the class index of each row
        top = z.max(axis=1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return lse - z[np.arange(z.shape[0]), y.astype(np.intp)]
    raise KeyError(f"unknown loss {model!r}; expected one of {', '.join(LOSSES)}")
