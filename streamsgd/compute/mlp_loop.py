"""The compiled inner loop of an MLP: a window's rows, in plan order, cut into batches and updates.

The MLP twin of ``loop.train_rows``/``loop.finish_batch``, with the same counters, sums, spec
and hyper slots (so the trainer's stops, logs and schedule work unchanged): batches are cut
exactly as there and may straddle windows (the gradient sums stay in ``gw`` between calls).
Each slice of a batch is first copied, standardised ((x − mean) / scale), into the scratch
rows ``xs`` with its labels and weights, since ``mlp.batch_gradient`` reads a contiguous row
range; the parameters are the flat float64 ``theta`` of ``mlp.layout``, updated by
``optim.optimizer_step`` from ``mlp.mean_gradient`` (L2 on weights only; adamw's decay is
decoupled, ``mlp.decay_weights``, and also reaches the weights only; L1 is the linear
model's cumulative penalty, ``optim.l1_step``, on every layer's weights). Each step's mean
gradient feeds the gradient-noise meter (``noise.noise_add``) as the linear loop's does, so
the noise statistics and ``--batch auto`` work for networks too (over the dense parameters:
the embedding's rows, ``compute.embedding``, are not in ``g``). With categorical columns the
rows' hashed features are copied beside them, go into the first layer through the embedding
bag, and the touched rows of the table are updated after the dense step with the same η
(``embedding.embed_step``).
"""

from __future__ import annotations

import math

from numba import njit

from .codes import ADAMW
from .embedding import EU, embed_step
from .loop import (AVERAGE_FROM, BATCH, BATCH_LOSS, BETA1, BETA2, DIVERGED, EPOCH_ROWS, EPS, FILLED, L1, L2, N_ROWS,
                   NOISE, NOISE_SUMS, NOISE_TOTAL, OPTIMIZER, T, T0, close_batch, step_lr)
from .mlp import B_AT, LAYOUT, W_AT, decay_weights, embedded_gradient, mean_gradient
from .noise import noise_add
from .optim import l1_step, optimizer_step

# Numba's cache of mlp_rows holds the kernels it calls compiled in and is keyed on this file
# alone: a change to mlp.py, embedding.py, optim.py, noise.py, codes.py or loop.py's slots reaches it once
# this file changes too.

#: Slots of the ``params`` tuple: parameters, their running average, the batch's gradient sums
#: and the step's mean gradient (all float64, the layout's length); then the L1 penalty each
#: weight has received (float64, the layers' weights in layout order, biases skipped) and the
#: total every weight is owed (1,) (``optim.l1_step``).
THETA, AVG, GW, G, L1_Q, L1_U = range(6)
#: Slots of the ``scratch`` tuple: standardised rows (batch, d) in the activations' dtype,
#: their labels and sample weights (empty when the data has none), their hashed ids and
#: signs (batch, k) (k = 0 without categorical columns).
XS, YS, SWS, IDS, SGS = range(5)


@njit(nogil=True, cache=True)
def _standardize_into(X, y, sw, idx, sign, order, pos, take, mean, scale, scratch):
    """Rows order[pos : pos + take] of the window, standardised, into the scratch's first rows."""
    xs, ys, sws, ids, sgs = scratch[XS], scratch[YS], scratch[SWS], scratch[IDS], scratch[SGS]
    d, k = X.shape[1], ids.shape[1]
    for r in range(take):
        i = order[pos + r]
        for j in range(d):
            xs[r, j] = (X[i, j] - mean[j]) / scale[j]
        for c in range(k):
            ids[r, c] = idx[i, c]
            sgs[r, c] = sign[i, c]
        ys[r] = y[i]
        if sw.shape[0] > 0:
            sws[r] = sw[i]


@njit(nogil=True, cache=True)
def mlp_rows(X, y, sw, idx, sign, order, pos, end, stop_at, spec, hyper, net, params, opt_state, mean, scale,
             counters, sums, ws, scratch, noise, emb):
    """Feed rows ``order[pos:end]`` of a window to the network, updating every ``spec[BATCH]`` rows.

    Returns the position reached: ``end``, or earlier when the update count reaches ``stop_at``
    or a batch's loss was not finite (``counters[DIVERGED]`` is then 1). ``noise`` is the
    linear loop's (total, sums, g): the meter's accumulators (g is not used here). ``idx``,
    ``sign``: the window's hashed features ((n_rows, k), k = 0 for none), ``emb`` the
    embedding's state (``embedding.pack_embedding``; empty without categorical columns).
    """
    weighted = sw.shape[0] > 0
    sws = scratch[SWS] if weighted else sw
    while pos < end:
        take = min(spec[BATCH] - counters[FILLED], end - pos, scratch[XS].shape[0])
        _standardize_into(X, y, sw, idx, sign, order, pos, take, mean, scale, scratch)
        sums[BATCH_LOSS] += embedded_gradient(scratch[XS], scratch[IDS], scratch[SGS], scratch[YS], sws, 0, take, net,
                                              params[THETA], params[GW], ws, emb, counters[T] + 1)
        counters[FILLED] += take
        counters[EPOCH_ROWS] += take
        pos += take
        if counters[FILLED] == spec[BATCH]:
            finish_mlp_batch(spec, hyper, net, params, opt_state, counters, sums, noise, emb)
            if counters[DIVERGED] == 1 or counters[T] == stop_at:
                break
    return pos


@njit(nogil=True, cache=True)
def finish_mlp_batch(spec, hyper, net, params, opt_state, counters, sums, noise, emb):
    """Update from the batch in progress (also the epoch's short last one) and start the next;
    the embedding's touched rows (``emb``, when the network has one) with the same step."""
    theta, avg, gw, g = params[THETA], params[AVG], params[GW], params[G]
    if not math.isfinite(sums[BATCH_LOSS]):
        counters[DIVERGED] = 1
        return
    t = counters[T] + 1
    lr = step_lr(spec, hyper, t)
    adamw = spec[OPTIMIZER] == ADAMW
    n = counters[FILLED]
    mean_gradient(gw, n, 0.0 if adamw else hyper[L2], theta, net[LAYOUT], g)
    if spec[NOISE]:
        noise_add(noise[NOISE_TOTAL], noise[NOISE_SUMS], g, n, spec[N_ROWS], lr)
    if adamw:  # decoupled: θ_w ← θ_w (1 − lr·λ) before Adam's step, on the weights only (PyTorch's AdamW)
        decay_weights(theta, net[LAYOUT], lr * hyper[L2])
    # weight_decay 0: the L2 term is in g, or applied above for adamw (optimizer_step's own
    # decay assumes the linear layout, one intercept last, and would reach the biases)
    optimizer_step(spec[OPTIMIZER], theta, g, opt_state, lr, t + spec[T0], hyper[BETA1], hyper[BETA2], hyper[EPS],
                   0.0)
    if hyper[L1] > 0.0:
        _l1_layers(theta, params[L1_Q], params[L1_U], net[LAYOUT], lr * hyper[L1])
    if emb[EU].shape[0] > 0:
        embed_step(spec[OPTIMIZER], lr, hyper[L2], hyper[EPS], n, t > spec[AVERAGE_FROM], emb)
    close_batch(t, spec, theta, avg, gw, counters, sums)


@njit(nogil=True, cache=True)
def _l1_layers(theta, q, u, lay, lr_l1):
    """``optim.l1_step`` on each layer's weights (their penalties ``q`` one after another in
    layout order); the biases are not penalised, as the linear model's intercept is not.
    Every weight is owed the same total u: it grows once per update, with the first layer."""
    at = 0
    for k in range(lay.shape[0]):
        w_at, b_at = lay[k, W_AT], lay[k, B_AT]
        n = b_at - w_at
        l1_step(theta[w_at:b_at], q[at:at + n], u, lr_l1 if k == 0 else 0.0)
        at += n
