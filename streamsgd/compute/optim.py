"""The update rule θ ← θ − η·ĝ, its learning-rate schedules, and the default step size.

Parameters live in the *standardised* feature space (w, b) where the objective and its
L2 penalty are defined; kernels see the equivalent raw-space weights
w_eff = w / scale, b_eff = b − w_eff·mean, so standardisation costs O(d) per update
instead of a pass over the batch.

One update, in the loop's order: ``standardized_gradient`` (batch-mean gradient with the
L2 term; l2 = 0 for adamw and adagrad, which take it in the step) → ``optimizer_step``
(the rule, by optimizer code, state in a (2, d + 1) array) → ``l1_step`` (cumulative L1 penalty, exact zeros) → ``refresh_effective``
(the raw-space parameters the kernels read). Every kernel's state is a plain float64 array, so a
checkpoint stores it as it is.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .codes import ADAGRAD, ADAMW, COSINE, INVSCALING, MOMENTUM, NESTEROV, SGD, STEP
from .losses import CURVATURE


@njit(nogil=True, cache=True)
def schedule_lr(schedule, lr0, t, power_t, warmup, total, step_size_, gamma):
    """η at update ``t`` (counted from 1), with an optional linear warmup.

    During the first ``warmup`` updates η = lr0 · t / warmup (lr0 / warmup, ..., lr0), so
    the large early gradients of a cold start are taken with small steps (Goyal et al.
    2017). After it, with k = t − warmup − 1 the index (from 0) of the update after warmup:

    - CONSTANT:   lr0
    - INVSCALING: lr0 / (k + 1)^power_t (scikit-learn's η₀ / t^power_t when warmup = 0)
    - STEP:       lr0 · gamma^floor(k / step_size_): the first ``step_size_`` updates
      after warmup use lr0, the next ``step_size_`` lr0·gamma, ... (PyTorch StepLR, whose
      counter starts at 0)
    - COSINE:     lr0 · (1 + cos(π · min(k, T) / T)) / 2 with T = total − warmup: from
      lr0 at the first update after warmup towards 0 at update ``total`` (the run's whole
      length, warmup included, as in Hugging Face's cosine-with-warmup; the last update,
      k = T − 1, still moves); 0 beyond ``total``; lr0 when T <= 0.

    Parameters
    ----------
    schedule : int, a schedule's code (``codes.SCHEDULES``).
    lr0 : float, the base step; t : int, the update being made (1 for the first).
    power_t : float, invscaling's exponent; warmup : int >= 0, updates of warmup.
    total : int, the run's number of updates (cosine); step_size_ : int >= 1, updates per
    step of the step decay; gamma : float, its factor.
    """
    if warmup > 0 and t <= warmup:
        return lr0 * t / warmup
    k = max(t - warmup - 1, 0)
    if schedule == INVSCALING:
        return lr0 / (k + 1.0) ** power_t
    if schedule == STEP:
        return lr0 * gamma ** (k // step_size_)
    if schedule == COSINE:
        T = total - warmup
        if T <= 0:
            return lr0
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * min(k, T) / T))
    return lr0


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


#: Rows of the optimizer state (float64, shape (2, d + 1), zeros at the start): the first
#: moment (momentum buffer / Adam's m), the second (Adagrad's sum of squares / Adam's v).
#: SGD uses neither, momentum and nesterov only the first, adagrad only the second.
FIRST, SECOND = 0, 1


def optimizer_state(d: int) -> NDArray[np.float64]:
    """Zeroed state for ``optimizer_step`` over d weights and the intercept: shape (2, d + 1)."""
    return np.zeros((2, d + 1))


@njit(nogil=True, cache=True)
def optimizer_step(kind, theta, g, state, lr, t, beta1, beta2, eps, weight_decay):
    """One update of ``theta`` in place from the batch gradient ``g``, by optimizer code.

    Parameters
    ----------
    kind : int, an optimizer's code (``codes.OPTIMIZERS``).
    theta : float64 (d + 1,), standardised weights then intercept; updated in place.
    g : float64 (d + 1,), the batch-mean gradient (``standardized_gradient``). It includes
        the L2 term for every kind except adamw and adagrad, which take it apart (call
        ``standardized_gradient`` with l2 = 0 and pass the L2 strength as ``weight_decay``).
    state : float64 (2, d + 1), zeros before the first update; updated in place.
    lr : float, this update's step (the schedule's value).
    t : int, this update's number, counted from 1 (Adam's bias correction).
    beta1 : float, momentum coefficient (momentum, nesterov) or Adam's first-moment decay.
    beta2 : float, Adam's second-moment decay. eps : float, Adagrad's and Adam's
        denominator guard. weight_decay : float, adamw's decoupled decay or adagrad's L2
        strength (the others ignore it).

    Rules (m = state[FIRST], v = state[SECOND], element-wise; PyTorch's conventions, dampening 0):

    - SGD:           θ ← θ − lr·g
    - MOMENTUM:      m ← β1·m + g;  θ ← θ − lr·m  (heavy ball: lr·m = lr·g + β1·(previous step))
    - NESTEROV:      m ← β1·m + g;  θ ← θ − lr·(g + β1·m)
    - ADAGRAD:       v ← v + g²;  h = √v + ε;  θ_j ← (θ_j − lr·g_j / h_j) / (1 + lr·λ / h_j) for the
                     weights (λ = weight_decay, the L2 strength), θ_d ← θ_d − lr·g_d / h_d for the
                     intercept. v sums the *loss* gradient's squares only, and the L2 term is
                     AdaGrad's proximal step for (λ/2)‖w‖² in the metric h (Duchi, Hazan & Singer
                     2011, composite mirror descent): the same preconditioner as the loss, so the
                     fixed point is g + λ·w = 0, the L2 objective's (scikit-learn's at alpha = λ);
                     it never overshoots zero whatever lr·λ / h; and between two nonzero gradients
                     of a weight h is frozen, so k updates without one are exactly
                     θ_j ← θ_j·(1 + lr·λ / h_j)^(−k), which the hashed weights apply lazily
                     (``sparse``). λ = 0 is the plain rule, bit for bit.
    - ADAM:          m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
                     m̂ = m / (1 − β1^t);  v̂ = v / (1 − β2^t);  θ ← θ − lr·m̂ / (√v̂ + ε)
    - ADAMW:         adam's m, v, then θ_j ← θ_j − lr·(m̂_j / (√v̂_j + ε) + wd·θ_j) for the
                     weights and θ_d ← θ_d − lr·m̂_d / (√v̂_d + ε) for the intercept, which is
                     not penalised (Loshchilov & Hutter 2019, decay scaled by lr as PyTorch's).
    """
    n = theta.shape[0]
    d = n - 1
    m = state[FIRST]
    v = state[SECOND]
    if kind == SGD:
        for j in range(n):
            theta[j] -= lr * g[j]
    elif kind == MOMENTUM:
        for j in range(n):
            m[j] = beta1 * m[j] + g[j]
            theta[j] -= lr * m[j]
    elif kind == NESTEROV:
        for j in range(n):
            m[j] = beta1 * m[j] + g[j]
            theta[j] -= lr * (g[j] + beta1 * m[j])
    elif kind == ADAGRAD:
        for j in range(n):
            v[j] += g[j] * g[j]
            h = math.sqrt(v[j]) + eps
            if j < d and weight_decay > 0.0:
                theta[j] = (theta[j] - lr * g[j] / h) / (1.0 + lr * weight_decay / h)
            else:
                theta[j] -= lr * g[j] / h
    else:  # ADAM, ADAMW
        bc1 = 1.0 - beta1**t
        bc2 = 1.0 - beta2**t
        wd = weight_decay if kind == ADAMW else 0.0
        for j in range(n):
            m[j] = beta1 * m[j] + (1.0 - beta1) * g[j]
            v[j] = beta2 * v[j] + (1.0 - beta2) * g[j] * g[j]
            step = (m[j] / bc1) / (math.sqrt(v[j] / bc2) + eps)
            if j < d:
                step += wd * theta[j]
            theta[j] -= lr * step


@njit(nogil=True, cache=True)
def refresh_effective(theta, theta_eff, mean, scale):
    """Recompute the raw-space parameters the kernels use from the standardised ``theta``.

    w_eff = w / scale, b_eff = b − w_eff·mean;
    theta, theta_eff : float64 (d + 1,), theta_eff written in place; mean, scale : (d,).
    """
    d = theta.shape[0] - 1
    shift = 0.0
    for j in range(d):
        theta_eff[j] = theta[j] / scale[j]
        shift += theta_eff[j] * mean[j]
    theta_eff[d] = theta[d] - shift


@njit(nogil=True, cache=True)
def l1_step(theta, q, u, lr_l1):
    """Apply the L1 penalty by the cumulative-penalty method, in place; zeros are exact.

    Tsuruoka, Tsujii & Ananiadou (2009), "Stochastic gradient descent training for
    L1-regularized log-linear models with cumulative penalty": u is the total penalty
    every weight would have received so far, q_j what weight j actually received; each
    weight is pulled towards zero by what it is still owed, and clipped at zero rather than
    crossing it. A weight whose gradient stays below the penalty therefore sits at exactly
    0, and unlike the per-step truncation (Langford et al. 2009) the noise of single
    mini-batches does not let weights escape zero.

    Parameters
    ----------
    theta : float64 (d + 1,), standardised weights then intercept; the intercept theta[d]
        is never penalised. Updated in place.
    q : float64 (d,), zeros at the start: signed penalty applied so far (negative for a
        positive weight). Updated in place; checkpointed with the parameters.
    u : float64 (1,), zero at the start: u[0] += lr_l1 here, before the weights are pulled.
    lr_l1 : float, this update's step times the L1 strength (lr · l1 of the objective).

    Call after ``optimizer_step`` (elastic net: the L2 part stays in the gradient) and
    before ``refresh_effective``.
    """
    u[0] += lr_l1
    total = u[0]
    for j in range(q.shape[0]):
        z = theta[j]
        if z > 0.0:
            theta[j] = max(0.0, z - (total + q[j]))
        elif z < 0.0:
            theta[j] = min(0.0, z + (total - q[j]))
        q[j] += theta[j] - z


def default_lr(
    model: str, sample: NDArray, mean: NDArray, scale: NDArray, n_rows: int, batch: int, l2: float,
    curvature: float | None = None, row_weights: NDArray | None = None, row_max: float = 0.0, hashed: int = 0,
) -> float:
    """A step size the problem can take without tuning: 1 / L_B.

    L_B is the expected smoothness of a mini-batch loss (Gower et al., "SGD: General
    Analysis and Improved Rates", 2019): it interpolates between the full-data smoothness
    L (B = N, gradient descent's 1/L) and the worst single-row smoothness L_max (B = 1).
    Both are measured on a row sample of the standardised data, with the loss's curvature
    bound (``kernels.CURVATURE``: 1 for squared loss, 1/4 for log loss, ...), or
    ``curvature`` when given: the caller knows better for Poisson (max(1, mean count), the
    curvature e^b at the intercept-only optimum) or with class weights (CURVATURE times
    the largest weight).

    ``row_weights`` (one per sample row) scale each row's curvature: Poisson's e^z is about
    max(1, y) where the iterate is going (the mean μ ≈ y near the optimum), so its step is
    set by the curvature there, not at z = 0. ``row_max`` is the largest weighted
    ‖((x − mean) / scale, 1)‖² of every row seen so far (``guard.max_row_curvature``): a
    rare one-hot column the sample missed still sets L_max, which dominates L_B at small B.
    ``hashed``: the categorical columns, each a ±1 feature of every row (see ``smoothness``).
    """
    L, L_max = smoothness(model, sample, mean, scale, l2, curvature, row_weights, hashed)
    c = CURVATURE[model] if curvature is None else float(curvature)
    return batch_step(L, max(L_max, c * (row_max + hashed) + l2), n_rows, batch)


def smoothness(
    model: str, sample: NDArray, mean: NDArray, scale: NDArray, l2: float, curvature: float | None = None,
    row_weights: NDArray | None = None, hashed: int = 0,
) -> tuple[float, float]:
    """(L, L_max) of ``default_lr`` measured on the sample: the full-data smoothness and the
    worst sample row's, curvature bound and L2 included.

    ``hashed`` categorical columns add a ±1 entry per column to every row: ‖x‖² grows by
    exactly ``hashed``, and the top eigenvalue of the covariance by at most
    (√λ + √hashed)² − λ (the hashed block's own is at most ``hashed``: a row's k entries
    meet a unit vector with a sum of at most √k)."""
    Z = (sample.astype(np.float64) - mean) / scale
    A = np.hstack([Z, np.ones((Z.shape[0], 1))])
    if row_weights is not None:
        A = A * np.sqrt(row_weights)[:, None]
    c = CURVATURE[model] if curvature is None else float(curvature)
    L = c * (math.sqrt(_top_eigenvalue(A)) + math.sqrt(hashed)) ** 2 + l2
    L_max = c * (float(np.max(np.einsum("ij,ij->i", A, A))) + hashed) + l2
    return L, L_max


def batch_step(L: float, L_max: float, n_rows: int, batch: int) -> float:
    """1 / L_B, the expected smoothness of a batch of ``batch`` rows out of ``n_rows``."""
    N, B = max(n_rows, 2), min(batch, max(n_rows, 1))
    L_B = (N * (B - 1)) / (B * (N - 1)) * L + (N - B) / (B * (N - 1)) * L_max
    return float(1.0 / L_B)


def _top_eigenvalue(A: NDArray[np.float64], iterations: int = 50) -> float:
    """Largest eigenvalue of AᵀA / n by power iteration (never forms AᵀA)."""
    v = np.random.default_rng(0).standard_normal(int(A.shape[1]))
    u = np.empty_like(v)
    lam = 0.0
    for _ in range(iterations):
        _gram_times(A, v, u)
        lam = float(np.linalg.norm(u))
        if lam == 0.0:
            return 0.0
        v = u / lam
    return lam


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _gram_times(A, v, u):
    """u = Aᵀ(A v) / n in one pass over A's rows, on this thread alone.

    NumPy's two matrix-vector products read A twice and run on BLAS threads, which go on
    spinning after each call and take the readers' cores; one compiled pass on the caller's
    thread avoids both, and the eigenvalue moves only by rounding (the sums' order). Timings:
    benchmarks/README.md, "Figures behind the code".
    """
    n, k = A.shape
    u[:] = 0.0
    for i in range(n):
        t = 0.0
        for j in range(k):
            t += A[i, j] * v[j]
        for j in range(k):
            u[j] += t * A[i, j]
    for j in range(k):
        u[j] /= max(n, 1)
