"""Hashed categorical features for softmax: a (2**bits, C) table, O(nnz·C) per update.

Row i's margin for class c is the dense block c's (``losses.accumulate_softmax_rows``) plus
Σ_q sign[i, q]·V[idx[i, q], c] over its k categorical columns. The table is the scalar
table of ``compute.sparse`` with C weights per bucket: entry h·C + c holds V[h, c], so a
bucket's C weights (and their batch sums, stamps and AdaGrad sums, the slab's columns) are
next to each other, and the row's C margins read one run of C·32 bytes per column.

Every rule of the scalar table holds per entry, unchanged (``sparse.hashed_step``,
``catch_up_all``, ``folded``, the shards' sums and merges): one ``wscale`` for SGD's L2 (all
classes share it, as every weight shrinks by the same 1 − η·l2), AdaGrad's sums and its exact
lazy L2 catch-up per (bucket, class), Polyak averaging by the two-scalar trick. A stamp per
entry rather than per bucket: a row's loss moves all C margins, so a bucket's C entries are
always touched together and their stamps agree; keeping them per entry lets every
scalar-table kernel (and the shards' O(touched) messages) serve the wider table as it is,
at C int64 words per bucket where one would do.
"""

from __future__ import annotations

from collections.abc import Callable

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .codes import SOFTMAX
from .loop import (AVERAGE_FROM, BATCH, BATCH_LOSS, CLASSES, CW, DIVERGED, EPOCH_ROWS, EPS, FILLED, GW, LOSS_CODE, T,
                   THETA_EFF)
from .sparse import (HF, HG, HI, HSQ, HSUM, HW, N_TOUCHED, STAMP, TOUCHED, WSCALE, _catch_up, _lazy_l2,
                     fill_batch_hashed, finish_batch_hashed, prefetch_row_weights, train_rows_hashed)

# Numba caches these kernels keyed on this file: a change to sparse.py, loop.py, losses.py or
# optim.py reaches them once this file changes too, or its __pycache__ is emptied.


@njit(nogil=True, cache=True)
def _touch(i, idx, n_out, hashed, stamp, n_touched, lr_l2, eps, average_from):
    """Start row ``i``'s buckets' entries in the batch ``stamp``: each entry the batch has not
    touched yet is brought up to the previous update (AdaGrad's lazy L2, ``lr_l2`` > 0), its
    sum zeroed and listed. Returns the touched count."""
    hw, hg, hsq, hsum, stamps, touched = (hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM], hashed[STAMP],
                                          hashed[TOUCHED])
    for q in range(idx.shape[1]):
        base = idx[i, q] * n_out
        for c in range(n_out):
            h = base + c
            if stamps[h] != stamp:
                if lr_l2 > 0.0:
                    _catch_up(h, stamp - 1, hw, hsq, hsum, stamps, lr_l2, eps, average_from)
                stamps[h] = stamp
                hg[h] = 0.0
                touched[n_touched] = h
                n_touched += 1
    return n_touched


@njit(nogil=True, cache=True)
def accumulate_softmax_hashed_rows(classes, cw, X, y, sw, idx, sign, rows, W, gw, hashed, stamp, lr_l2, eps,
                                   average_from):
    """``losses.accumulate_softmax_rows`` with hashed features: rows ``rows`` add their
    multinomial loss (returned, summed) and w (p_c − [c = y]) times (x_i, 1) to class c's block
    of ``gw``, and times sign to entry (idx, c) of the table's sums (started afresh the first
    time this batch, ``stamp``, touches it, after the lazy L2's catch-up, ``_touch``).

    classes, cw : float64 (C,), the sorted label values and each class's row weight;
    idx, sign : (n_rows, k) int32 and int8, each row's hashed ids and signs;
    W, gw : float64 (C·(d+1),), class blocks of weights then intercept (raw space for W).
    """
    hw, hg, hi = hashed[HW], hashed[HG], hashed[HI]
    wscale = hashed[HF][WSCALE]
    d, k, n_out = X.shape[1], idx.shape[1], classes.shape[0]
    kd = d + 1
    z = np.empty(n_out)
    weighted = sw.shape[0] > 0
    n_touched = hi[N_TOUCHED]
    total = 0.0
    averaged = stamp > average_from
    for m in range(rows.shape[0]):
        prefetch_row_weights(hw, hashed[HSUM], idx, rows, m, n_out, averaged)
        i = rows[m]
        n_touched = _touch(i, idx, n_out, hashed, stamp, n_touched, lr_l2, eps, average_from)
        label = np.searchsorted(classes, y[i])
        weight = cw[label] * sw[i] if weighted else cw[label]
        top = -np.inf
        for c in range(n_out):
            zc = W[c * kd + d]
            for j in range(d):
                zc += X[i, j] * W[c * kd + j]
            s = 0.0
            for q in range(k):
                s += sign[i, q] * hw[idx[i, q] * n_out + c]
            zc += wscale * s
            z[c] = zc
            top = max(top, zc)
        z_label = z[label]
        norm = 0.0
        for c in range(n_out):
            z[c] = math.exp(z[c] - top)
            norm += z[c]
        total += weight * (math.log(norm) + top - z_label)
        for c in range(n_out):
            slope = weight * (z[c] / norm - (1.0 if c == label else 0.0))
            for j in range(d):
                gw[c * kd + j] += slope * X[i, j]
            gw[c * kd + d] += slope
            for q in range(k):
                hg[idx[i, q] * n_out + c] += slope * sign[i, q]
    hi[N_TOUCHED] = n_touched
    return total


@njit(nogil=True, cache=True)
def fill_batch_softmax_hashed(X, y, sw, idx, sign, order, pos, end, spec, hyper, params, counters, sums, hashed):
    """``sparse.fill_batch_hashed`` for softmax: the (2**bits, C) table's sums beside the C
    dense blocks'."""
    take = min(spec[BATCH] - counters[FILLED], end - pos)
    if take <= 0:
        return pos
    sums[BATCH_LOSS] += accumulate_softmax_hashed_rows(
        params[CLASSES], params[CW], X, y, sw, idx, sign, order[pos:pos + take], params[THETA_EFF], params[GW],
        hashed, counters[T] + 1, _lazy_l2(spec, hyper), hyper[EPS], spec[AVERAGE_FROM])
    counters[FILLED] += take
    counters[EPOCH_ROWS] += take
    return pos + take


@njit(nogil=True, cache=True)
def train_rows_softmax_hashed(X, y, sw, idx, sign, order, pos, end, stop_at, spec, hyper, params, opt_state, mean,
                              scale, counters, sums, noise, hashed):
    """``sparse.train_rows_hashed`` for softmax: its update (``finish_batch_hashed``) is the
    scalar table's, entry by entry, and ``loop.finish_batch``'s per class block."""
    while pos < end:
        pos = fill_batch_softmax_hashed(X, y, sw, idx, sign, order, pos, end, spec, hyper, params, counters, sums,
                                        hashed)
        if counters[FILLED] == spec[BATCH]:
            finish_batch_hashed(spec, hyper, params, opt_state, mean, scale, counters, sums, noise, hashed)
            if counters[DIVERGED] == 1 or counters[T] == stop_at:
                break
    return pos


def hashed_kernels(spec: NDArray[np.int64]) -> tuple[Callable[..., int], Callable[..., int]]:
    """The run's (fill_batch, train_rows) with hashed features, by its loss: the (2**bits, C)
    table's for softmax, else the scalar table's (``compute.sparse``). Both pairs take the same
    arguments, and share ``finish_batch_hashed``."""
    if spec[LOSS_CODE] == SOFTMAX:
        return fill_batch_softmax_hashed, train_rows_softmax_hashed
    return fill_batch_hashed, train_rows_hashed


def table_shape(weights: NDArray[np.float64], outputs: int) -> NDArray[np.float64]:
    """The flat table of ``outputs`` weights per bucket as the model holds it: (2**bits,) for
    one output, (2**bits, C) for softmax (row h: bucket h's weight of each class)."""
    return weights if outputs == 1 else weights.reshape(-1, outputs)
