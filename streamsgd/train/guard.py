"""No run ends in success with a blown-up model: the divergence check and its advice, and
the worst-row bound that keeps the default step safe on rows the step's sample missed.

The trainer measures the mean loss of the model it starts from (the zero model, or the
``--init`` model) on the row sample of the first window. At every logging interval and at
each epoch's end it compares the interval's mean data loss with that reference; a loss
DIVERGENCE_FACTOR times above it, or parameters that are not finite, stop the run with
:class:`~streamsgd.errors.DivergenceError` (exit 5) and one line naming the fix that
applies. The check costs O(1) per interval (the loss sums are already kept) and O(d) for
the parameters, nothing per row, and it only reads the state, so a resumed run is bit
identical to an uninterrupted one.

Parameters that grow by orders of magnitude but stay finite are caught by the loss: every
gradient lies in the span of the rows (plus the L2 pull towards zero), so the weights can
only grow along directions the data spans, which moves the margins, and every loss here
grows at least linearly in a wrong margin. A separate norm test would need a scale for
"too large" that a target of 10^6 (a linear intercept of 10^6) does not trip.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from ..compute.losses import row_loss
from ..config import LOSS_TASK
from .targets import SAMPLE_ROWS

#: An interval whose mean loss is this many times the starting model's has diverged. For a
#: convex loss, a stable step makes the expected loss of the iterates fall from the start
#: (the descent lemma at η ≤ 1/L_B); an interval averages at least one batch, usually
#: --log-every of them, so sampling noise moves its mean by a fraction of the start's loss,
#: not by 10x. An unstable step grows the loss geometrically (|1 − ηλ| > 1 per update), so
#: it passes 10x within a few updates of leaving the stable regime: a lower factor would
#: stop noisy but converging tiny-batch runs, a higher one would only delay the stop.
DIVERGENCE_FACTOR = 10.0

#: Row weighting of the worst-row curvature: every row alike, or by max(1, y) (Poisson's
#: e^z ≈ y near the optimum).
UNIT, BY_COUNT = 0, 1

#: A column's mean square this many times the others' (their median, at least the
#: intercept's 1) is the one whose scale sets the step, when standardisation is off.
DOMINANT_SCALE = 100.0

#: Batches smaller than this are named as the cause when the default step diverges: a
#: batch of a few rows makes L_B the worst row's smoothness, and its gradient noise large.
SMALL_BATCH = 32

#: Layout of the guard's state array (checkpointed with the parameters): the starting
#: model's loss, the largest row curvature seen (``max_row_curvature``) and the sample's
#: full-data smoothness L, so a resumed run lowers the step exactly as the first would.
REFERENCE, ROW_MAX, SMOOTH = 0, 1, 2
N_GUARD = 3


def row_weighting(model: str) -> int:
    """How rows weigh in the curvature bound: BY_COUNT for Poisson, else UNIT."""
    return BY_COUNT if model == "poisson" else UNIT


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def max_row_curvature(X, y, mean, scale, weighting):
    """max_i c_i (‖(x_i − mean) / scale‖² + 1), c_i = max(1, y_i) when BY_COUNT, else 1.

    The largest single-row smoothness of the standardised data with intercept (L_max of
    ``optim.default_lr``), over every row of a window: one sequential pass, done once per
    window of the first epoch, so rare rows (a one-hot column set on 25 rows in 261,585)
    are seen before the step they would break is taken. Sequential and vectorised, it costs
    a fraction of the gradient kernel's time over the same rows, in the first epoch only.
    """
    n, d = X.shape
    inv = 1.0 / scale  # a multiply per value, not a divide; reassoc lets the sum vectorise
    top = 0.0
    for i in range(n):
        s = 1.0
        for j in range(d):
            t = (X[i, j] - mean[j]) * inv[j]
            s += t * t
        if weighting == BY_COUNT:
            s *= max(1.0, float(y[i]))
        top = max(top, s)
    return top


def sample_rows(
    X: NDArray, y: NDArray, rows: int = SAMPLE_ROWS, order: NDArray | None = None
) -> tuple[NDArray, NDArray]:
    """Up to ``rows`` evenly spaced rows of ``X[order]`` (default: of ``X``) and their labels
    as copies."""
    step = max(1, X.shape[0] // rows)
    picked = slice(None, step * rows, step) if order is None else order[::step][:rows]
    return X[picked][:rows].copy(), np.array(y[picked][:rows], dtype=np.float64)  # copies: windows are reused


def row_weights(model: str, y: NDArray) -> NDArray | None:
    """Per-row curvature factors for ``default_lr``: max(1, y) for Poisson, None otherwise."""
    return np.maximum(1.0, y) if row_weighting(model) == BY_COUNT else None


def reference_loss(model: str, X: NDArray, y: NDArray, coef: NDArray, intercept: Any, param: float,
                   cw: NDArray, classes: NDArray) -> float:
    """Mean loss over the sample rows of the zero model and of (coef, intercept), the larger.

    Weighted by class as the kernels weight rows (``--class-weight``), so it is comparable
    with the interval losses. The zero model counts too when starting from ``--init``: a
    warm start near a perfect fit has a tiny loss, and SGD's noise around it is no divergence.
    """
    X = X.astype(np.float64)
    if model == "softmax":
        labels = np.searchsorted(classes, y)
        weight = cw[labels]
        z = X @ np.asarray(coef).reshape(len(classes), -1).T + intercept
        zero = np.zeros_like(z)
        y = labels
    else:
        weight = np.where(y > 0.5, cw[1], cw[0]) if LOSS_TASK[model] == "classification" else np.ones(y.size)
        z = X @ coef + intercept
        zero = np.zeros_like(z)
    losses = [np.average(row_loss(model, m, y, param), weights=weight) for m in (zero, z)]
    return float(max(losses))


def divergence(loss: float, reference: float, theta: NDArray) -> str | None:
    """Why the run has diverged, or None: non-finite parameters or loss, or a mean loss over
    DIVERGENCE_FACTOR times the starting model's (``reference``; NaN switches that test off,
    for checkpoints written before it existed)."""
    if not np.isfinite(theta).all():
        return "the parameters overflowed"
    if not math.isfinite(loss):
        return "the loss became not finite"
    if loss > DIVERGENCE_FACTOR * max(reference, np.finfo(np.float64).tiny):
        return (f"the mean loss rose to {loss:.4g}, over {DIVERGENCE_FACTOR:g}x the starting model's "
                f"{reference:.4g}")
    return None


def dominant_column(sample: NDArray, features: list[str]) -> tuple[str, float] | None:
    """The raw column whose mean square dwarfs the others' (DOMINANT_SCALE), and its ratio."""
    if sample.size == 0:
        return None
    m2 = np.mean(np.square(sample.astype(np.float64)), axis=0)
    j = int(np.argmax(m2))
    others = np.delete(m2, j)
    base = max(1.0, float(np.median(others)) if others.size else 1.0)
    ratio = float(m2[j]) / base
    return (features[j], ratio) if ratio > DOMINANT_SCALE else None


def advice(lr: float, lr_given: bool, optimizer: str, batch: int, standardize: bool, sample: NDArray | None,
           features: list[str]) -> str:
    """The one fix that applies, most specific first: the column whose scale set the step
    (standardisation off), a larger --batch (tiny batches at the default step), else a
    tenth of the step, or an adaptive optimizer for plain SGD."""
    if not standardize and sample is not None:
        found = dominant_column(sample, features)
        if found is not None:
            name, ratio = found
            return (f"column {name!r} is {ratio:.3g}x larger in mean square than the others and sets the "
                    f"step: drop --no-standardize, or rescale {name!r}")
    if not lr_given and batch < SMALL_BATCH:
        return f"use a larger --batch (it was {batch}), e.g. --batch 256, or set --lr {lr / 10:.3g}"
    fix = f"rerun with --lr {lr / 10:.3g} (a tenth of {lr:.4g})"
    if optimizer in ("sgd", "momentum", "nesterov"):
        fix += " or with --optimizer adagrad"
    return fix
