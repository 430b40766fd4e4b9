"""The update rule θ ← θ − η·ĝ, its learning-rate schedules, and the default step size.

Parameters live in the *standardised* feature space (w, b) where the objective and its
L2 penalty are defined; kernels see the equivalent raw-space weights
w_eff = w / scale, b_eff = b − w_eff·mean, so standardisation costs O(d) per update
instead of a pass over the batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .kernels import CURVATURE


#: Schedule name -> the integer the compiled loop branches on.
SCHEDULES = {"constant": 0, "invscaling": 1}


@njit(nogil=True, cache=True)
def step_size(schedule, lr0, t, power_t):
    """η at update ``t`` (counted from 1): constant, or scikit-learn's η₀ / t^power_t."""
    if schedule == 1:
        return lr0 / t**power_t
    return lr0


def learning_rate(schedule: str, lr0: float, t: int, power_t: float) -> float:
    """``step_size`` by schedule name."""
    return step_size(SCHEDULES[schedule], lr0, t, power_t)


@njit(nogil=True, cache=True)
def standardized_gradient(gw, n, mean, scale, l2, theta, out):
    """The batch-mean gradient in the optimizer's standardised space, from raw-space sums.

    gw : float64 (d + 1,), sum of r_i x_i (raw features) then sum of r_i, as the kernels
    leave them; theta : standardised parameters (weights, then intercept); out : (d + 1,).
    The L2 penalty is included; the intercept is not penalised.
    """
    d = out.shape[0] - 1
    rsum = gw[d]
    for j in range(d):
        out[j] = (gw[j] - mean[j] * rsum) / scale[j] / n + l2 * theta[j]
    out[d] = rsum / n


@njit(nogil=True, cache=True)
def sgd_update(theta, theta_eff, g, mean, scale, lr):
    """θ ← θ − η·g in standardised space; refreshes the raw-space ``theta_eff`` the kernels use.

    theta, theta_eff, g : float64 (d + 1,), weights then intercept.
    """
    d = theta.shape[0] - 1
    shift = 0.0
    for j in range(d):
        theta[j] -= lr * g[j]
        theta_eff[j] = theta[j] / scale[j]
        shift += theta_eff[j] * mean[j]
    theta[d] -= lr * g[d]
    theta_eff[d] = theta[d] - shift


def default_lr(
    model: str, sample: NDArray, mean: NDArray, scale: NDArray, n_rows: int, batch: int, l2: float
) -> float:
    """A step size the problem can take without tuning: 1 / L_B.

    L_B is the expected smoothness of a mini-batch loss (Gower et al., "SGD: General
    Analysis and Improved Rates", 2019): it interpolates between the full-data smoothness
    L (B = N, gradient descent's 1/L) and the worst single-row smoothness L_max (B = 1).
    Both are measured on a row sample of the standardised data, with the loss's curvature
    bound (1 for squared loss, 1/4 for log loss).
    """
    Z = (sample.astype(np.float64) - mean) / scale
    A = np.hstack([Z, np.ones((Z.shape[0], 1))])
    c = CURVATURE[model]
    L = c * _top_eigenvalue(A) + l2
    L_max = c * float(np.max(np.einsum("ij,ij->i", A, A))) + l2
    N, B = max(n_rows, 2), min(batch, max(n_rows, 1))
    L_B = (N * (B - 1)) / (B * (N - 1)) * L + (N - B) / (B * (N - 1)) * L_max
    return float(1.0 / L_B)


def _top_eigenvalue(A: NDArray[np.float64], iterations: int = 50) -> float:
    """Largest eigenvalue of AᵀA / n by power iteration (never forms AᵀA)."""
    v = np.random.default_rng(0).standard_normal(A.shape[1])
    lam = 0.0
    for _ in range(iterations):
        u = A.T @ (A @ v) / A.shape[0]
        lam = float(np.linalg.norm(u))
        if lam == 0.0:
            return 0.0
        v = u / lam
    return lam
