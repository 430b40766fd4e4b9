"""Numba kernels: loss and gradient of one batch segment, in one pass over its rows.

Kernels read rows of the window buffer ``X`` (row-major, float32 or float64) through the
batch's index array, so shuffled batches are never materialised as copies. They add the
gradient of the *summed* data loss into ``gw`` (float64, length d) and return the summed
loss and the summed residual (the intercept's gradient); the caller scales by 1/B and adds
the penalty, which is O(d) per update. No temporaries of size batch x features.

Losses (z = w.x + b):
  linear    l = (z - y)^2 / 2                dl/dz = z - y
  logistic  l = log(1 + e^z) - y z, y in {0,1}  dl/dz = sigmoid(z) - y
The logistic forms are arranged so that neither overflows at any finite margin.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray


@njit(nogil=True, cache=True)
def _softplus(z: float) -> float:
    # log(1 + e^z) without overflow: max(z, 0) + log1p(e^-|z|)
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@njit(nogil=True, cache=True)
def _sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


#: Loss name -> the integer the compiled loop branches on.
LOSSES = {"linear": 0, "logistic": 1}


@njit(nogil=True, cache=True)
def loss_and_slope(loss, z, y):
    """(l(z, y), dl/dz) of one row for the loss numbered ``loss`` (see LOSSES)."""
    if loss == 0:
        r = z - y
        return 0.5 * r * r, r
    return _softplus(z) - y * z, _sigmoid(z) - y


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def accumulate(loss, X, y, idx, w, b, gw):
    """Add sum r_i x_i over rows ``idx`` to gw; return (sum of losses, sum of residuals r_i).

    Rows are taken four at a time: shuffled rows are cache misses, and four independent
    dot products keep four of them in flight (2-2.7x faster than one row at a time at
    d = 100, measured on permuted float32 rows). ``reassoc`` lets the dot products
    vectorise; NaN and infinity keep their meaning (no ``nnan``/``ninf``), so divergence
    is still seen.
    """
    d = X.shape[1]
    n = idx.shape[0]
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
        l0, r0 = loss_and_slope(loss, z0, y[i0])
        l1, r1 = loss_and_slope(loss, z1, y[i1])
        l2, r2 = loss_and_slope(loss, z2, y[i2])
        l3, r3 = loss_and_slope(loss, z3, y[i3])
        total += (l0 + l1) + (l2 + l3)
        rsum += (r0 + r1) + (r2 + r3)
        for j in range(d):
            gw[j] += (r0 * X[i0, j] + r1 * X[i1, j]) + (r2 * X[i2, j] + r3 * X[i3, j])
        k += 4
    for k in range(k, n):
        i = idx[k]
        z = b
        for j in range(d):
            z += X[i, j] * w[j]
        l, r = loss_and_slope(loss, z, y[i])
        total += l
        rsum += r
        for j in range(d):
            gw[j] += r * X[i, j]
    return total, rsum


@njit(nogil=True, cache=True)
def linear_grad(X, y, idx, w, b, gw):
    """Squared loss. Returns (sum of losses, sum of residuals); adds sum r_i x_i to gw."""
    return accumulate(0, X, y, idx, w, b, gw)


@njit(nogil=True, cache=True)
def logistic_grad(X, y, idx, w, b, gw):
    """Log loss for labels in {0, 1}. Returns (sum of losses, sum of residuals)."""
    return accumulate(1, X, y, idx, w, b, gw)


#: Model name -> gradient kernel of one batch segment (the loop calls ``accumulate``).
GRADIENTS = {"linear": linear_grad, "logistic": logistic_grad}

#: Upper bound of d^2 l / dz^2 per model, used to pick a stable default step size.
CURVATURE = {"linear": 1.0, "logistic": 0.25}


@njit(nogil=True, cache=True)
def moments(X):
    """Per-column mean and sum of squared deviations (float64), for Chan's parallel merge."""
    n, d = X.shape
    mean = np.zeros(d)
    m2 = np.zeros(d)
    for i in range(n):
        for j in range(d):
            mean[j] += X[i, j]
    for j in range(d):
        mean[j] /= max(n, 1)
    for i in range(n):
        for j in range(d):
            t = X[i, j] - mean[j]
            m2[j] += t * t
    return mean, m2


@njit(nogil=True, cache=True)
def fill_rows(columns, X):
    """Write 1-D ``columns`` (a typed List, one array per feature) into row-major ``X``.

    A blocked transpose: each block of rows x all columns stays in cache while it is
    written, which is about 2.5x faster than filling X column by column with strided
    stores (measured on 65,536 x 100 float32: 4.3M against 1.7M rows/s).
    """
    n = X.shape[0]
    for i0 in range(0, n, 512):
        i1 = min(n, i0 + 512)
        for j in range(len(columns)):
            c = columns[j]
            for i in range(i0, i1):
                X[i, j] = c[i]


@njit(nogil=True, cache=True)
def first_nonfinite_column(X) -> int:
    """Index of the first column holding NaN or +-inf, or -1 when all values are finite."""
    n, d = X.shape
    for i in range(n):
        for j in range(d):
            if not math.isfinite(X[i, j]):
                return j
    return -1


def decision(X: NDArray, w: NDArray[np.float64], b: float) -> NDArray[np.float64]:
    """Margins z = X w + b for a contiguous block (BLAS; not on the training path)."""
    return X @ w.astype(X.dtype, copy=False) + b


def row_loss(model: str, z: NDArray[np.float64], y: NDArray) -> NDArray[np.float64]:
    """Per-row loss, vectorised, for evaluation."""
    z = z.astype(np.float64, copy=False)
    y = y.astype(np.float64, copy=False)
    if model == "linear":
        return 0.5 * (z - y) ** 2
    return np.logaddexp(0.0, z) - y * z
