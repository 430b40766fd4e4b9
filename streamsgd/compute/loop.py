"""The compiled inner loop: a window's rows, in plan order, cut into batches and updates.

The trainer hands over a whole window at a time, so an update costs compiled code only,
not a Python-level step; control comes
back only at the window's end, at ``stop_at`` updates (the next log line, checkpoint or
the last step) or when a batch's loss is not finite. A batch may straddle windows: its
rows' gradient sums stay in ``gw`` between calls, so no row is ever copied.

State lives in plain arrays (the checkpoint stores them as they are):

params = (theta, theta_eff, avg, gw, l1_q, l1_u, cw, classes), indexed by THETA … CLASSES and
    built by ``pack_params``: float64 vectors; the first four
    hold spec[BLOCKS] blocks of (d + 1,): one per class for softmax, else one
    standardised parameters (weights, then intercept), the same in raw feature space (what
    the kernels use), the running Polyak–Ruppert average, and the current batch's sums;
    then the L1 penalty applied to each weight of every block (BLOCKS·d,) and in all (1,)
    (Tsuruoka et al. 2009), the row weight of each class ((2,) binary, (C,) softmax), and
    softmax's sorted label values (C,) (class indices 0…C−1 for text labels).
opt_state : float64 (2, d + 1), the optimizer's moments (``optim.optimizer_step``).
counters : int64, indexed by T, FILLED, AVERAGED, DIVERGED, EPOCH, EPOCH_ROWS (the
    place in the plan: a resumed run skips EPOCH_ROWS rows of epoch EPOCH).
noise : (total, sums, g), indexed by NOISE_TOTAL, NOISE_SUMS, NOISE_G: the gradient-noise
    meter's accumulators (``noise.NoiseMeter``) and scratch room for the step's standardised
    gradient; O(d) per update.
spec, hyper : the run's integers (int64, indexed by LOSS_CODE … BLOCKS) and real numbers
    (float64, LR0 … GAMMA), built by ``pack_spec`` and ``pack_hyper``.
sums : float64, indexed by BATCH_LOSS, LOSS, ROWS (LOSS and ROWS are the completed
    batches' totals since the caller last cleared them).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .codes import ADAGRAD, ADAMW, SOFTMAX
from .losses import accumulate_rows, accumulate_softmax_rows
from .noise import noise_add
from .optim import l1_step, optimizer_step, refresh_effective, schedule_lr, standardized_gradient

# Numba's cache of train_rows holds the kernels it calls, and the codes they compare against,
# compiled in, and is keyed on this file alone: a change to losses.py, optim.py, noise.py or
# codes.py reaches the loop only once this file changes too, or its __pycache__ is emptied.

# counters (int64): the place of the run
T = 0  # updates made
FILLED = 1  # rows of the batch in progress whose gradient is in gw
AVERAGED = 2  # iterates in the average
DIVERGED = 3  # 1 once a batch's loss was not finite
EPOCH = 4  # epochs completed
EPOCH_ROWS = 5  # rows of the current epoch fed to the loss so far
N_COUNTERS = 6
# sums (float64)
BATCH_LOSS = 0  # summed loss of the batch in progress
LOSS = 1  # summed loss of the completed batches
ROWS = 2  # their rows
N_SUMS = 3
# spec (int64): the integers of the run; an unpacking of another length fails on import
N_SPEC = 12
LOSS_CODE, BATCH, SCHEDULE, AVERAGE_FROM, N_ROWS, OPTIMIZER, WARMUP, TOTAL, STEP_EVERY, NOISE, T0, BLOCKS = range(N_SPEC)
# hyper (float64): its real numbers (PARAM: huber's epsilon or the quantile)
N_HYPER = 9
LR0, POWER_T, L2, L1, PARAM, BETA1, BETA2, EPS, GAMMA = range(N_HYPER)
# params: the parameter vectors and per-class figures (see the module docstring)
N_PARAMS = 8
THETA, THETA_EFF, AVG, GW, L1_Q, L1_U, CW, CLASSES = range(N_PARAMS)
# noise: the meter's accumulators and the step's gradient
NOISE_TOTAL, NOISE_SUMS, NOISE_G = range(3)


def _packed(values: dict[int, float], size: int, dtype: type) -> NDArray:
    """An array of ``size`` slots from {slot: value}; every slot must be given exactly once."""
    if sorted(values) != list(range(size)):
        raise AssertionError(f"slots {sorted(values)} do not fill an array of {size}")
    out: NDArray = np.empty(size, dtype=dtype)
    for slot, value in values.items():
        out[slot] = value
    return out


def pack_spec(*, loss: int, batch: int, schedule: int, average_from: int, n_rows: int, optimizer: int,
              warmup: int, total: int, step_every: int, noise: bool, t0: int, blocks: int) -> NDArray[np.int64]:
    """The run's ``spec`` (int64, N_SPEC slots), by name.

    loss, schedule, optimizer : codes (``codes.LOSSES`` …); average_from : the update after
    which iterates are averaged; total : the run's updates, 0 when open; step_every : updates
    per step of the step schedule; noise : whether the noise meter is fed; t0 : updates made
    before this run (a continued model); blocks : parameter blocks, one per softmax class.
    """
    return _packed({LOSS_CODE: loss, BATCH: batch, SCHEDULE: schedule, AVERAGE_FROM: average_from, N_ROWS: n_rows,
                    OPTIMIZER: optimizer, WARMUP: warmup, TOTAL: total, STEP_EVERY: step_every, NOISE: int(noise),
                    T0: t0, BLOCKS: blocks}, N_SPEC, np.int64)


def pack_hyper(*, lr0: float, power_t: float, l2: float, l1: float, param: float, beta1: float, beta2: float,
               eps: float, gamma: float) -> NDArray[np.float64]:
    """The run's ``hyper`` (float64, N_HYPER slots), by name; ``param`` is huber's epsilon or
    the quantile's tau."""
    return _packed({LR0: lr0, POWER_T: power_t, L2: l2, L1: l1, PARAM: param, BETA1: beta1, BETA2: beta2, EPS: eps,
                    GAMMA: gamma}, N_HYPER, np.float64)


def pack_params(*, theta: NDArray, theta_eff: NDArray, avg: NDArray, gw: NDArray, l1_q: NDArray, l1_u: NDArray,
                cw: NDArray, classes: NDArray) -> tuple[NDArray, ...]:
    """The loop's ``params`` tuple (N_PARAMS arrays), by name."""
    slots = {THETA: theta, THETA_EFF: theta_eff, AVG: avg, GW: gw, L1_Q: l1_q, L1_U: l1_u, CW: cw, CLASSES: classes}
    if sorted(slots) != list(range(N_PARAMS)):
        raise AssertionError(f"slots {sorted(slots)} do not fill a tuple of {N_PARAMS}")
    return tuple(slots[k] for k in range(N_PARAMS))


@njit(nogil=True, cache=True)
def train_rows(X, y, sw, order, pos, end, stop_at, spec, hyper, params, opt_state, mean, scale, counters, sums,
               noise):
    """Feed rows ``order[pos:end]`` of a window to the loss, updating every ``spec[BATCH]`` rows.

    ``sw`` holds each row's sample weight (float64, the window's rows), or is empty for none.

    Returns the position reached: ``end``, or earlier when the update count reaches
    ``stop_at`` or a batch diverged (``counters[DIVERGED]`` is then 1).
    """
    while pos < end:
        pos = fill_batch(X, y, sw, order, pos, end, spec, hyper, params, counters, sums)
        if counters[FILLED] == spec[BATCH]:
            finish_batch(spec, hyper, params, opt_state, mean, scale, counters, sums, noise)
            if counters[DIVERGED] == 1 or counters[T] == stop_at:
                break
    return pos


@njit(nogil=True, cache=True)
def fill_batch(X, y, sw, order, pos, end, spec, hyper, params, counters, sums):
    """Add rows ``order[pos:end]`` to the batch in progress (its gradient sums in
    ``params[GW]``, its loss in ``sums[BATCH_LOSS]``) until it holds ``spec[BATCH]`` rows;
    no update. Returns the position reached. A cluster's shard calls it alone and sends the
    sums to the driver, which applies the update (``finish_batch``) once for all shards."""
    theta_eff, gw, cw = params[THETA_EFF], params[GW], params[CW]
    d = X.shape[1]
    take = min(spec[BATCH] - counters[FILLED], end - pos)
    if take <= 0:
        return pos
    if spec[LOSS_CODE] == SOFTMAX:
        loss = accumulate_softmax_rows(params[CLASSES], cw, X, y, sw, order[pos:pos + take], theta_eff, gw)
    else:
        loss, rsum = accumulate_rows(spec[LOSS_CODE], hyper[PARAM], cw, X, y, sw, order[pos:pos + take], theta_eff[:d],
                                     theta_eff[d], gw[:d])
        gw[d] += rsum
    sums[BATCH_LOSS] += loss
    counters[FILLED] += take
    counters[EPOCH_ROWS] += take
    return pos + take


@njit(nogil=True, cache=True)
def step_lr(spec, hyper, t):
    """The step of update ``t`` by the run's schedule (shared by the linear, hashed and MLP
    loops); T0, updates made before this run (a continued model), carries the schedule on."""
    return schedule_lr(spec[SCHEDULE], hyper[LR0], t + spec[T0], hyper[POWER_T], spec[WARMUP], spec[TOTAL],
                       spec[STEP_EVERY], hyper[GAMMA])


@njit(nogil=True, cache=True)
def close_batch(t, spec, theta, avg, gw, counters, sums):
    """After update ``t``: count it, fold it into the tail average, add the batch's loss and
    rows to the interval's sums, and empty the gradient buffer for the next batch (shared
    by the linear and the MLP loops)."""
    counters[T] = t
    if t > spec[AVERAGE_FROM]:
        counters[AVERAGED] += 1
        inv = 1.0 / counters[AVERAGED]
        for j in range(theta.shape[0]):
            avg[j] += (theta[j] - avg[j]) * inv
    sums[LOSS] += sums[BATCH_LOSS]
    sums[ROWS] += counters[FILLED]
    sums[BATCH_LOSS] = 0.0
    counters[FILLED] = 0
    gw[:] = 0.0


@njit(nogil=True, cache=True)
def finish_batch(spec, hyper, params, opt_state, mean, scale, counters, sums, noise):
    """Update from the batch in progress (also the epoch's short last one) and start the next."""
    theta, theta_eff, avg, gw = params[THETA], params[THETA_EFF], params[AVG], params[GW]
    l1_q, l1_u = params[L1_Q], params[L1_U]
    if not math.isfinite(sums[BATCH_LOSS]):
        counters[DIVERGED] = 1
        return
    t = counters[T] + 1
    lr = step_lr(spec, hyper, t)
    apart = spec[OPTIMIZER] == ADAMW or spec[OPTIMIZER] == ADAGRAD  # L2 in the step, not in g (optim)
    g = noise[NOISE_G]
    n = counters[FILLED]
    k = theta.shape[0] // spec[BLOCKS]  # d + 1
    for c in range(spec[BLOCKS]):  # one block of weights and intercept per class (softmax), else one
        block = slice(c * k, (c + 1) * k)
        standardized_gradient(gw[block], n, mean, scale, 0.0 if apart else hyper[L2], theta[block], g[block])
    if spec[NOISE]:
        noise_add(noise[NOISE_TOTAL], noise[NOISE_SUMS], g, n, spec[N_ROWS], lr)
    d = k - 1
    for c in range(spec[BLOCKS]):
        block = slice(c * k, (c + 1) * k)
        optimizer_step(spec[OPTIMIZER], theta[block], g[block], opt_state[:, block], lr, t + spec[T0],
                       hyper[BETA1], hyper[BETA2], hyper[EPS], hyper[L2] if apart else 0.0)
        if hyper[L1] > 0.0:
            # every weight of every class is owed the same total penalty u: it grows once per
            # update (with the first block), and each block settles its own weights' debts q
            l1_step(theta[block], l1_q[c * d:(c + 1) * d], l1_u, lr * hyper[L1] if c == 0 else 0.0)
        refresh_effective(theta[block], theta_eff[block], mean, scale)
    close_batch(t, spec, theta, avg, gw, counters, sums)
