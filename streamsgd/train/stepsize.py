"""The step size and the starting point: what the first window, the checkpoint or ``init``
fix before the first update, and how a growing batch or a rare heavy row changes them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..compute.loop import BATCH, LR0, pack_hyper
from ..compute.losses import CURVATURE
from ..compute.noise import reported
from ..compute.optim import batch_step, default_lr, refresh_effective, smoothness
from ..config import FitConfig
from ..errors import DataError
from ..persist.model import Model
from ..pipeline.windows import Window
from . import guard
from .state import State
from .targets import standardization


def batch_rows(config: FitConfig, N: int) -> int:
    """Rows per update: the number given, N for ``full``, the starting size for ``auto``."""
    if config.batch == "full":
        return N
    if config.batch == "auto":
        return min(config.batch_min, N)
    assert isinstance(config.batch, int)  # FitConfig makes any other value an int >= 1
    return min(config.batch, N)


def curvature_bound(model: str, strata: NDArray[np.float64], chunk_rows: list[int], cw: NDArray) -> float:
    """The loss's curvature bound for the default step: class weights scale the loss.
    (Poisson's e^z, which grows to about y near the optimum, is weighted per row instead:
    ``guard.row_weights``.)"""
    return CURVATURE[model] * float(cw.max())


def grow_batch(st: State, estimate: dict[str, Any], config: FitConfig, N: int) -> None:
    """The norm test (Byrd et al. 2012): grow B until the batch gradient's variance
    tr(Σ)/B is at most θ²‖G‖², i.e. B ≥ B_simple/θ². Never shrinks; at most N. With the
    default step size, η = 1/L_B follows the new batch size.

    When the interval's ‖G‖² cannot be told from zero (its estimate is not positive: the
    iterates wander in SGD's noise ball around the optimum), the noise dominates by
    definition and B doubles.
    """
    if not math.isfinite(estimate["trace_sigma"]):
        return
    assert st.spec is not None  # set by setup before training
    b_simple = estimate["b_simple"]
    if math.isfinite(b_simple) and estimate["grad_norm2"] > 0:
        wanted = math.ceil(b_simple / config.batch_theta**2)
    else:
        wanted = 2 * int(st.spec[BATCH])
    wanted = min(N, wanted)
    if wanted > st.spec[BATCH]:
        st.spec[BATCH] = wanted
        if config.lr is None and not config.hidden:  # an MLP's default step (train/mlp.MLP_LR) is the same at any B
            # set by the first window or the checkpoint (the batch grows after updates)
            assert st.hyper is not None and st.mean is not None and st.scale is not None
            if st.sample is None or st.sample_y is None:
                # drawn by start and kept in checkpoints; one written before they kept it lacks it
                raise DataError("the checkpoint holds no step-size sample (it was written by an older "
                                "streamsgd); resume without --batch auto, or start afresh")
            st.catch_up()  # AdaGrad's lazy L2 holds for one step: the hashed weights settle first
            st.hyper[LR0] = default_lr(config.model, st.sample, st.mean, st.scale, N, wanted, config.l2_strength,
                                       st.curvature, guard.row_weights(config.model, st.sample_y),
                                       float(st.guard[guard.ROW_MAX]))


def noise_fields(estimate: dict[str, Any]) -> dict[str, Any]:
    """The interval's noise figures for the metrics record (null where not estimable)."""
    keys = ("trace_sigma", "batch_grad_var", "grad_norm2", "b_simple", "temperature")
    shown = reported(estimate)  # a |G|² estimate <= 0 is null, never negative
    return {k: (float(shown[k]) if math.isfinite(shown[k]) else None) for k in keys}


def start(st: State, window: Window, config: FitConfig, init: Model | None, N: int, B: int) -> None:
    """Standardisation, step size and starting point, from the first window (or ``init``),
    its rows taken chunk after chunk: the figures do not depend on the shuffle's layout."""
    X, y, rows = window.X, window.y, window.slots
    assert y is not None and st.classes is not None  # a training window has the target; setup sets classes
    d = X.shape[1]
    if init is not None:  # its parameters in its standardised space, one block per class for softmax
        st.mean, st.scale = np.asarray(init.mean, dtype=np.float64), np.asarray(init.scale, dtype=np.float64)
        coef = np.asarray(init.coef, dtype=np.float64).reshape(-1, d)
        intercept = np.atleast_1d(np.asarray(init.intercept, dtype=np.float64))
        for c in range(coef.shape[0]):
            st.theta[c * (d + 1):c * (d + 1) + d] = coef[c] * st.scale
            st.theta[c * (d + 1) + d] = intercept[c] + float(coef[c] @ st.mean)
    else:
        st.mean, st.scale = standardization(X, config.standardize, rows)
        st.theta[d] = start_intercept(config, y)
    st.sample, st.sample_y = guard.sample_rows(X, y, order=rows)
    st.guard[guard.SMOOTH] = smoothness(config.model, st.sample, st.mean, st.scale, config.l2_strength, st.curvature,
                                        guard.row_weights(config.model, st.sample_y), st.hashed_columns)[0]
    if config.lr is None:
        lr0 = _default_step(st, config, N, B)
    else:  # the linear scaling rule, when asked: the given lr was tuned at the reference batch
        lr0 = config.lr * (B / config.lr_reference_batch if config.lr_reference_batch else 1.0)
    param = config.epsilon if config.model == "huber" else config.quantile
    st.hyper = pack_hyper(lr0=lr0, power_t=config.power_t, l2=config.l2_strength, l1=config.l1, param=param,
                          beta1=config.beta1, beta2=config.beta2, eps=config.eps, gamma=config.gamma)
    for c in range(st.theta.size // (d + 1)):
        refresh_effective(st.theta[c * (d + 1):(c + 1) * (d + 1)], st.theta_eff[c * (d + 1):(c + 1) * (d + 1)],
                          st.mean, st.scale)
    coef, intercept = raw_parameters(st.theta, st.theta.size // (d + 1), st.mean, st.scale)
    st.guard[guard.REFERENCE] = guard.reference_loss(config.model, st.sample, st.sample_y, coef, intercept, param,
                                                     st.cw, st.classes)


#: Losses whose slope is bounded (by ε, or by max(τ, 1 − τ)): from zero their intercept moves
#: at most that far times the step per update, so a target far from 0 would take thousands of
#: updates to reach (diabetes: ~150). They start at the intercept-only optimum instead.
BOUNDED_SLOPE = ("huber", "quantile")


def start_intercept(config: FitConfig, y: NDArray) -> float:
    """The intercept a fresh run starts from: 0, or for a bounded-slope loss the first window's
    τ-quantile of the target (the pinball loss's intercept-only minimiser; τ = ½, the median,
    for Huber, whose minimiser it is as ε → 0). The other losses' gradients grow with the
    distance, so they start from 0 (the full-batch runs pinned to gradient descent do too)."""
    if config.model not in BOUNDED_SLOPE or y.size == 0:
        return 0.0
    tau = config.quantile if config.model == "quantile" else 0.5
    return float(np.quantile(y, tau, method="inverted_cdf"))


def _default_step(st: State, config: FitConfig, N: int, B: int) -> float:
    """``default_lr`` for the run's sample, worst row seen so far and optimizer."""
    # start sets them before it asks for the step
    assert st.sample is not None and st.sample_y is not None and st.mean is not None and st.scale is not None
    return _for_optimizer(default_lr(config.model, st.sample, st.mean, st.scale, N, B, config.l2_strength, st.curvature,
                                     guard.row_weights(config.model, st.sample_y), float(st.guard[guard.ROW_MAX]),
                                     st.hashed_columns),
                          config)


def _for_optimizer(lr0: float, config: FitConfig) -> float:
    """A default step as the optimizer takes it: the heavy ball's step is η / (1 − β) in effect."""
    return lr0 * (1.0 - config.beta1) if config.optimizer in ("momentum", "nesterov") else lr0


def see_rows(st: State, X: NDArray, y: NDArray, config: FitConfig, N: int) -> None:
    """Track the largest row curvature of the first epoch's windows; when a window holds a
    row worse than any before (a rare one-hot column the first window's sample missed),
    lower the default step before training on it. Deterministic: a window's rows are a
    function of the seed, and a resumed window finds the maximum it already recorded."""
    lower_step(st, guard.max_row_curvature(X, y, st.mean, st.scale, guard.row_weighting(config.model)), config, N)


def lower_step(st: State, top: float, config: FitConfig, N: int) -> None:
    """``see_rows`` given a window's largest row curvature ``top`` (measured where the rows
    are: a cluster's shards send it with their gradients)."""
    if top <= st.guard[guard.ROW_MAX]:
        return
    st.guard[guard.ROW_MAX] = top
    if config.lr is None and math.isfinite(st.guard[guard.SMOOTH]):
        # setup sets spec; the first window (start) or the checkpoint sets hyper
        assert st.spec is not None and st.hyper is not None
        c = CURVATURE[config.model] if st.curvature is None else st.curvature
        lr0 = _for_optimizer(batch_step(float(st.guard[guard.SMOOTH]), c * (top + st.hashed_columns) + config.l2_strength, N,
                                        int(st.spec[BATCH])), config)
        if lr0 < st.hyper[LR0]:
            st.catch_up()  # AdaGrad's lazy L2 holds for one step: the hashed weights settle first
            st.hyper[LR0] = lr0


def raw_parameters(theta: NDArray, blocks: int, mean: NDArray, scale: NDArray) -> tuple[Any, Any]:
    """coef and intercept in raw feature space: (d,) and a float, or (C, d) and (C,) for softmax."""
    d = theta.size // blocks - 1
    standardized = theta.reshape(blocks, d + 1)
    coef = standardized[:, :d] / scale
    intercept = standardized[:, d] - coef @ mean
    if blocks == 1:
        return coef[0], float(intercept[0])
    return coef, intercept
