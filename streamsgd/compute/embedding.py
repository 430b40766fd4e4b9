"""An MLP's categorical columns: an embedding bag as the first layer, O(nnz·H1) per row.

A row's first hidden pre-activation is the dense layer's plus the bag of its hashed features,
h1_pre = W1·x + b1 + Σ_c sign[i, c]·E[idx[i, c], :], E a (2**bits, H1) table: exactly the first
dense layer applied to the hashed indicator vector (one ±1 per categorical column), without
ever forming it. Its gradient reaches only the rows of E a batch touched, so an update costs
O(touched·H1), never O(2**bits·H1).

State (``pack_embedding``, a tuple indexed by EU … EI, checkpointed as it is):

- EU, the table's values u, with E = escale·u (scikit-learn's ``wscale`` trick, as
  ``compute.sparse``): SGD's L2 shrinkage E ← (1 − η·l2)·E of every row is one multiplication
  of ``escale``; u is renormalised (escale folded in) when escale falls below RENORMALIZE.
- EG, the batch's gradient sums, one row per distinct bucket the batch touched, in the order
  first touched (``touched``); a stamp per bucket (the update number) and its row in EG
  (``slot``) deduplicate without ever clearing anything.
- ESQ, AdaGrad's sums of squares ((0, H1) for SGD). An untouched row has a zero loss gradient:
  without L2 its sums and values do not move, so skipping it is exact (the run refuses
  AdaGrad with L2 here: with L2 in the gradient, k skipped updates have no closed form).
- ESUM, the Polyak average's sums S ((0, H1) without ``--average``), by the two-scalar trick
  (Xu 2011; scikit-learn's average_a/b): the running sum of the iterates is S + B·u, B the
  sum of the averaged iterates' escale; when u moves by Δ, S −= B·Δ keeps the sum, and each
  averaged iterate adds escale to B. The mean is (S + B·u) / (iterates averaged).

Updates (``embed_step``), with the same step η as the dense parameters, on the mean gradient
g = EG / n of each touched row:

- SGD (+ L2 by the global scale): E_new = (1 − η·l2)·E − η·g, the dense rule exactly.
- AdaGrad (no L2): ESQ += g²; E −= η·g / (√ESQ + ε), ``optim.optimizer_step``'s rule.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .codes import ADAGRAD, SGD

# Numba caches the kernels that call these (mlp.embedded_gradient, mlp_loop's) keyed on their own
# files: a change here reaches them once mlp.py and mlp_loop.py change too, or their __pycache__
# is emptied.

#: Slots of the embedding state tuple: the table u (n, H1), AdaGrad's sums (n or 0, H1), the
#: average's sums S (n or 0, H1), the batch's sums by slot (cap, H1) (float64 all); each
#: bucket's stamp and row in EG (n,), the touched list (cap,) (int64); the scalars (ESCALE,
#: EAVG_B) and the counters (E_TOUCHED, E_FOLDS).
N_EMBEDDING = 9
EU, ESQ, ESUM, EG, ESTAMP, ESLOT, ETOUCHED, EF, EI = range(N_EMBEDDING)
ESCALE, EAVG_B = range(2)
E_TOUCHED, E_FOLDS = range(2)

#: escale below this is folded into u (O(2**bits·H1), rare): as ``sparse.RENORMALIZE``, the
#: average's S + B·u cancels terms of size 1/escale.
RENORMALIZE = 1e-3


def pack_embedding(bits: int, width: int, cap: int, adagrad: bool, average: bool) -> tuple[NDArray, ...]:
    """Fresh embedding state for a (2**bits, ``width``) table: zeros, escale 1.

    ``cap`` bounds the distinct buckets one batch touches (``batch_buckets``); AdaGrad's
    sums and the average's exist only when used. ``bits`` < 0 gives the empty state of a
    network without categorical columns."""
    n = 0 if bits < 0 else 1 << bits
    ef = np.array([1.0, 0.0])
    return (np.zeros((n, width)), np.zeros((n if adagrad else 0, width)), np.zeros((n if average else 0, width)),
            np.zeros((min(cap, n), width)), np.zeros(n, np.int64), np.zeros(n, np.int64),
            np.zeros(min(cap, n), np.int64), ef, np.zeros(2, np.int64))


def state_bytes(bits: int, width: int, cap: int, adagrad: bool, average: bool) -> int:
    """Bytes ``pack_embedding`` allocates, twice (a checkpoint copies every array), plus the
    model's folded copy of the table: what the memory plan charges an MLP with categorical
    columns."""
    n = 1 << bits
    rows = n * (1 + int(adagrad) + int(average))
    once = 8 * (rows * width + min(cap, n) * (width + 1) + 2 * n)
    return 2 * once + 8 * n * width


def init_table(emb: tuple[NDArray, ...], rng: np.random.Generator, limit: float) -> None:
    """u ← U(±limit), a block of rows at a time (no table-sized temporary)."""
    u = emb[EU]
    step = max(1, (1 << 20) // max(1, u.shape[1]))
    for r in range(0, u.shape[0], step):
        u[r:r + step] = rng.uniform(-limit, limit, u[r:r + step].shape)


@njit(nogil=True, cache=True)
def touch(idx, r0, rows, emb, stamp):
    """Give each bucket of rows [r0, r0 + rows) that batch ``stamp`` has not touched yet its
    row of EG, zeroed, and add it to the touched list."""
    g, stamps, slots, touched, ei = emb[EG], emb[ESTAMP], emb[ESLOT], emb[ETOUCHED], emb[EI]
    n_touched = ei[E_TOUCHED]
    for r in range(r0, r0 + rows):
        for c in range(idx.shape[1]):
            h = idx[r, c]
            if stamps[h] != stamp:
                stamps[h] = stamp
                slots[h] = n_touched
                touched[n_touched] = h
                for o in range(g.shape[1]):
                    g[n_touched, o] = 0.0
                n_touched += 1
    ei[E_TOUCHED] = n_touched


@njit(nogil=True, cache=True)
def bag_backward(idx, sign, r0, rows, D, emb, n_out):
    """EG[slot(idx)] += sign·D[r]: the bag's gradient sums, D the first layer's pre-activation
    deltas (rows, ≥ n_out); ``touch`` gave every bucket its slot."""
    g, slots = emb[EG], emb[ESLOT]
    for r in range(rows):
        d = D[r]
        for c in range(idx.shape[1]):
            row = g[slots[idx[r0 + r, c]]]
            s = np.float64(sign[r0 + r, c])
            for o in range(n_out):
                row[o] += s * d[o]


@njit(nogil=True, cache=True)
def _renormalize(emb):
    """Fold escale into u and the average's B into S: the iterates and their running sum
    S + B·u are unchanged, escale becomes 1 and B 0."""
    u, total, ef = emb[EU], emb[ESUM], emb[EF]
    c, b = ef[ESCALE], ef[EAVG_B]
    averaged = total.shape[0] > 0
    for h in range(u.shape[0]):
        for o in range(u.shape[1]):
            if averaged:
                total[h, o] += b * u[h, o]
            u[h, o] *= c
    ef[ESCALE] = 1.0
    ef[EAVG_B] = 0.0
    emb[EI][E_FOLDS] += 1


@njit(nogil=True, cache=True)
def embed_step(optimizer, lr, l2, eps, n, averaged, emb):
    """One update of the touched rows from the batch's sums (``n`` rows); SGD or ADAGRAD
    (the run refuses the others, and AdaGrad with l2 > 0). ``averaged``: this iterate
    enters the Polyak average. The rows are read from memory once each: at 2**16 rows of
    64 the table is DRAM-bound, not compute-bound (a branch-free variant that vectorised
    measured no faster)."""
    u, sq, total, g, touched, ef, ei = emb[EU], emb[ESQ], emb[ESUM], emb[EG], emb[ETOUCHED], emb[EF], emb[EI]
    if optimizer == SGD and l2 > 0.0:
        ef[ESCALE] *= 1.0 - lr * l2
        if abs(ef[ESCALE]) < RENORMALIZE:
            _renormalize(emb)
    ws, big_b = ef[ESCALE], ef[EAVG_B]
    for m in range(ei[E_TOUCHED]):
        h = touched[m]
        for o in range(u.shape[1]):
            gm = g[m, o] / n
            if optimizer == ADAGRAD:
                sq[h, o] += gm * gm
                delta = -lr * gm / (math.sqrt(sq[h, o]) + eps)
            else:
                delta = -lr * gm / ws
            u[h, o] += delta
            if big_b != 0.0:  # the same bits as subtracting 0·delta: S is never -0.0
                total[h, o] -= big_b * delta
    ei[E_TOUCHED] = 0
    if averaged:
        ef[EAVG_B] += ws


def table(emb: tuple[NDArray, ...], averaged: int) -> NDArray[np.float64]:
    """E with every lazy scale folded in: the Polyak mean (S + B·u) / k of the ``averaged``
    iterates when there are any, else escale·u (a new array; the state stays)."""
    u, ef = emb[EU], emb[EF]
    if averaged:
        return np.asarray((emb[ESUM] + ef[EAVG_B] * u) / averaged)
    return np.asarray(ef[ESCALE] * u)


def norm2(emb: tuple[NDArray, ...]) -> float:
    """‖E‖² of the current iterate (the epoch loss's L2 term)."""
    u = emb[EU]
    return float(emb[EF][ESCALE] ** 2 * np.einsum("ij,ij->", u, u)) if u.size else 0.0


def batch_buckets(bits: int, k: int, batch: int, growing: bool) -> int:
    """Rows of EG: the distinct buckets one batch can touch, min(2**bits, batch·k), or 2**bits
    when the batch grows (``--batch auto``)."""
    n = 1 << bits
    return n if growing else min(n, int(batch) * k)
