"""Hashed categorical features in the update loop: O(nnz) per update, never O(2**bits).

A row's margin is the dense block's (``loop``, standardised weights in raw space) plus
Σ_c sign[i, c]·v[idx[i, c]] over its k categorical columns, v the 2**bits hashed weights.
Sparse columns are never centred or scaled (DESIGN.md §8): a one-hot column's mean would
make every row touch every weight.

The hashed weights are stored as v = wscale·u (scikit-learn's SGD trick), so the L2
shrinkage of every weight, v ← (1 − η·l2)·v, is one multiplication of ``wscale``; u is
renormalised (folded into, wscale back to 1) when wscale falls below ``RENORMALIZE``.
A batch's gradient sums go into a 2**bits buffer; a stamp per weight (the update number)
and a list of touched indices deduplicate them without ever clearing the buffer, and the
update visits only the touched weights.

Optimizers on the hashed weights:

- SGD (+ L2 by the global scale): exact, the same iterates as the dense update.
- AdaGrad: an untouched weight has a zero loss gradient, so its sum of squares does not
  move; without L2 neither does its value: skipping it is exact (lazy). With L2 (``optim``:
  the sum holds the loss gradient's squares only, the penalty is the proximal step in its
  metric h = √G + ε) an untouched weight shrinks by 1 / (1 + η·l2 / h) at every update, h
  frozen, so k skipped updates are exactly v·(1 + η·l2 / h)^(−k) (``_catch_up``): applied
  when a batch first touches the weight, before its margin is read. The stamp (the last
  update whose batch touched it) says how many it missed. The closed form needs one η for
  all of them: the run refuses a schedule that changes it (train.hashed), and a default step
  that is lowered brings every weight up to date first (``catch_up_all``). The Polyak sums
  catch up with it (a geometric series: the skipped iterates are v·ρ^j, ρ = 1/(1 + η·l2/h)),
  so the sum S holds each weight's iterates up to its stamp, without the two-scalar trick.
- L1 (``optim.l1_step``'s cumulative penalty, Tsuruoka et al. 2009), with SGD or AdaGrad
  and any L2: HQ holds the penalty each weight received, ``loop``'s L1_U the total every
  weight is owed. A touched weight takes the dense update, then the pull by what it owes
  (``hashed_step_l1``), so after it a nonzero weight owes nothing; each update that skips it
  then shrinks it by its ρ (SGD: 1 − η·l2; AdaGrad: 1 / (1 + η·l2 / h)) and pulls it by η·l1
  until it reaches zero, where it stays: a closed form in the number of skipped updates
  (``_catch_up_l1``, with the clip index and the Polyak sums of the skipped iterates), for
  one η as AdaGrad's lazy L2. The L2 is then per weight, never the global scale (wscale
  stays 1), and S sums the iterates themselves.
- Momentum and Nesterov (``optim.optimizer_step``'s rules, SGD's L2 in the gradient): the
  momentum lives in HSQ's column (AdaGrad's sums, unused by them). An untouched weight still
  moves by its momentum, and with L2 the pair (θ, m) follows one linear map A per update, so
  k skipped updates are A^k and the averaged ones' sum A^j0·Σ_{i<n} A^i, by binary powering
  (``_catch_up_momentum``): exact for one η, as the other catch-ups. wscale stays 1 and S
  sums the iterates. Their L1 is refused (a weight its momentum carries across zero between
  touches has no closed form).
- Adam and AdamW: "lazy Adam" (PyTorch's SparseAdam), not the dense rule: a touched weight
  takes the dense step from its own moments (the first in HQ, the second in HSQ's column)
  with the update's bias corrections; an untouched one, its moments, its L2 and AdamW's
  decay wait for its next touch (``hashed_step_adam``). Its L1 is refused.
- Polyak averaging, by the two-scalar trick (Xu 2011; scikit-learn's average_a/b): the
  running sum of the iterates is S + B·u, B the sum of the averaged iterates' wscale;
  when u_j moves by Δ, S_j −= B·Δ keeps the sum, and each averaged iterate adds wscale to B.
  The mean is (S + B·u) / (iterates averaged); ``folded`` gives it, with wscale applied.

On shards (train.shards) the lazy L2 holds as in one process: summing gradients, the driver
catches a weight up as it adds the shards' sums (``add_lazy_sums``) and each shard before its
margin reads it, from the stamps and AdaGrad sums sent with the weights; local SGD brings each
shard's figures up to its last update before it averages them (``average_lazy_entries``).
L1 and momentum train in one process.

State lives in plain arrays, a tuple indexed by HW … HQ (``pack_hashed``), checkpointed as
they are.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .codes import ADAGRAD, ADAM, ADAMW, MOMENTUM, NESTEROV, SGD
from .loop import (AVERAGE_FROM, BATCH, BATCH_LOSS, BETA1, BETA2, DIVERGED, EPOCH_ROWS, EPS, FILLED, L1, L1_U, L2,
                   LOSS_CODE, LR0, OPTIMIZER, PARAM, T, T0, THETA_EFF, CW, GW, finish_batch, step_lr)
from ..hints import prefetch
from .losses import loss_slope

# Numba caches these kernels keyed on this file: a change to loop.py, losses.py or optim.py
# reaches them once this file changes too, or its __pycache__ is emptied.

#: The hashed state tuple's slots: weights u, the batch's gradient sums, AdaGrad's sums of
#: squares, the average's sums S (float64, 2**bits each); the stamp of each weight (the
#: update whose batch last touched it) and the touched list (int64, 2**bits); the scalars
#: (float64: WSCALE, AVG_B) and the counters (int64: N_TOUCHED, and FOLDS, the times wscale
#: was folded into every weight or every weight caught up, ``catch_up_all``: any of them may
#: have changed, so a local-SGD round that folded reports all, a shard's copy is stale); last, the
#: L1 penalty each weight received (float64, 2**bits with --l1, else empty: ``pack_hashed``).
N_HASHED = 9
HW, HG, HSQ, HSUM, STAMP, TOUCHED, HF, HI, HQ = range(N_HASHED)
N_HF = 2
WSCALE, AVG_B = range(N_HF)
N_HI = 2
N_TOUCHED, FOLDS = range(N_HI)

#: Columns of the (2**bits, SLAB_COLUMNS) slab: value, batch sum, stamp, AdaGrad sum.
SLAB_COLUMNS = 4
#: Bytes per weight of the hashed state (``pack_hashed``): the slab, the average's sums
#: (float64) and the touched list (int64).
WEIGHT_BYTES = (SLAB_COLUMNS + 2) * 8

#: wscale below this is folded into the weights (O(2**bits), rare: every ~ln(1e3)/(η·l2) updates).
#: Not scikit-learn's 1e-9: the average's sum S + B·u cancels terms of size 1/wscale, so
#: a smaller wscale would cost the averaged weights that many digits.
RENORMALIZE = 1e-3


def state_bytes(bits: int, outputs: int = 1, *, extra: bool = False) -> int:
    """The memory ``pack_hashed(bits, outputs, extra)`` allocates per weight, times its weights
    (its few scalars aside): what the memory plan charges for each holder of a hashed state (a
    run, a shard)."""
    return ((WEIGHT_BYTES + (8 if extra else 0)) << bits) * outputs


def pack_hashed(bits: int, outputs: int = 1, *, extra: bool = False) -> tuple[NDArray, ...]:
    """Fresh hashed state for 2**bits weights, ``outputs`` per bucket (softmax's classes, a
    bucket's C weights next to each other: ``compute.sparse_multi``): zeros, wscale 1.

    A weight's value, batch sum, stamp and AdaGrad sum are the columns of one (2**bits, 4)
    slab (the stamp an int64 view of its float64 column): the update reads and writes the
    three it needs per touch in one cache line, where four separate arrays cost a cache miss
    each once the table outgrows the caches (2**20 weights: 32 MiB). The average's sums and
    the touched list stay apart (read only per touched weight, or in order). ``extra``: room
    for one more figure per weight (HQ: the L1 penalty it received, or Adam's first moment),
    empty without --l1 or Adam (``needs_extra``)."""
    n = (1 << bits) * outputs
    hf = np.zeros(N_HF)
    hf[WSCALE] = 1.0
    slab = np.zeros((n, SLAB_COLUMNS))
    return (slab[:, 0], slab[:, 1], slab[:, 3], np.zeros(n), slab.view(np.int64)[:, 2], np.zeros(n, np.int64), hf,
            np.zeros(N_HI, np.int64), np.zeros(n if extra else 0))


def needs_extra(l1: float, optimizer: int) -> bool:
    """Whether the run's hashed state holds HQ (``pack_hashed``): with an L1 penalty, or Adam."""
    return l1 > 0 or optimizer == ADAM or optimizer == ADAMW


@njit(nogil=True, cache=True)
def _margin(X, i, w, b, idx, sign, hw, wscale):
    """Row ``i``'s margin: dense block plus its hashed features."""
    z = b
    for j in range(X.shape[1]):
        z += X[i, j] * w[j]
    s = 0.0
    for c in range(idx.shape[1]):
        s += sign[i, c] * hw[idx[i, c]]
    return z + wscale * s


def lazy_l2(spec: NDArray[np.int64], hyper: NDArray[np.float64]) -> float:
    """η·l2 of AdaGrad's lazy L2 on the hashed weights (``_catch_up``), 0.0 when the run has
    none (SGD's L2 is the global scale; AdaGrad without L2 skips untouched weights as they are)."""
    if spec[OPTIMIZER] != ADAGRAD:
        return 0.0
    return float(hyper[LR0] * hyper[L2])


@njit(nogil=True, cache=True)
def _lazy_l2(spec, hyper):
    """``lazy_l2`` in compiled code."""
    return hyper[LR0] * hyper[L2] if spec[OPTIMIZER] == ADAGRAD else 0.0


#: Gaps of at most this many skipped updates are caught up by multiplying ρ out, longer ones
#: in closed form (log1p, exp and, when averaged, two expm1). On benchmarks/ctr.py's data about
#: half the catch-ups are such short gaps, and 8 multiplications cost less than the closed form's
#: calls; their rounding (≤ 8 ulps) is of the dense update's own order.
SHORT_GAP = 8
#: k·a (the gap times η·l2 / h) up to which a longer gap's closed form is summed as Taylor
#: series (``_exp_neg``, ``_log1p``, ``_mean_decay``) instead of calling log1p, exp and expm1:
#: the default L2 of a large table (1/rows) puts most gaps there. The first term left out is
#: below x⁶/720 < 2⁻⁶⁹ relative, under the last bit.
SERIES_X = 2.0**-10


@njit(nogil=True, cache=True)
def _log1p(a):
    """log(1 + a) for 0 <= a <= ``SERIES_X``: a − a²/2 + … − a⁶/6."""
    return a * (1.0 - a * (1.0 / 2 - a * (1.0 / 3 - a * (1.0 / 4 - a * (1.0 / 5 - a / 6)))))


@njit(nogil=True, cache=True)
def _exp_neg(x):
    """e^(−x) for 0 <= x <= ``SERIES_X``: 1 − x + x²/2! − … − x⁵/5!."""
    return 1.0 - x * (1.0 - x / 2 * (1.0 - x / 3 * (1.0 - x / 4 * (1.0 - x / 5))))


@njit(nogil=True, cache=True)
def _mean_decay(y):
    """(1 − e^(−y)) / y for 0 <= y <= ``SERIES_X``: 1 − y/2! + y²/3! − … − y⁵/6!."""
    return 1.0 - y / 2 * (1.0 - y / 3 * (1.0 - y / 4 * (1.0 - y / 5 * (1.0 - y / 6))))


@njit(nogil=True, cache=True)
def _decay(v, k, a, before):
    """A weight ``v`` after k skipped updates under AdaGrad's lazy L2, each multiplying it by
    ρ = 1 / (1 + a), and the sum of its values after those of the updates past the first
    ``before`` (the averaged ones): Σ_{j=j0..k} v·ρ^j, the geometric series ρ^j0·(1 − ρ^n) / (1 − ρ)
    in expm1 form (no cancellation for small a), 0.0 when ``before`` >= k. A gap of at most
    ``SHORT_GAP`` updates is multiplied out; a longer one with k·a <= ``SERIES_X`` sums the
    closed form's Taylor series."""
    total = 0.0
    if k <= SHORT_GAP:  # multiplied out, as the dense update multiplies: no log1p, exp, expm1
        rho = 1.0 / (1.0 + a)
        for j in range(1, k + 1):
            v *= rho
            if j > before:
                total += v
        return v, total
    j0 = max(1, before + 1) if before < k else k + 1  # the first averaged one (no overflow: NEVER > k)
    n = k - j0 + 1
    if k * a <= SERIES_X:  # ρ^j = e^(−j·L), L = log(1 + a) <= a: every exponent within the series' range
        lq = _log1p(a)
        if n > 0:
            total = v * _exp_neg(j0 * lq) * (n * _mean_decay(n * lq) / _mean_decay(lq))
        return v * _exp_neg(k * lq), total
    lq = math.log1p(a)  # -log ρ
    if n > 0:
        total = v * math.exp(-j0 * lq) * math.expm1(-n * lq) / math.expm1(-lq)
    return v * math.exp(-k * lq), total


@njit(nogil=True, cache=True)
def _catch_up(h, upto, hw, hsq, hsum, stamps, lr_l2, eps, average_from):
    """Bring weight ``h`` (current up to update ``stamps[h]``) up to update ``upto`` under
    AdaGrad's lazy L2 (``_decay``, a = η·l2 / h its frozen metric h = √G + ε), adding the
    skipped iterates to its Polyak sum where averaged (update > ``average_from``). Does not
    move the stamp (the caller does)."""
    k = upto - stamps[h]
    v = hw[h]
    if k <= 0 or v == 0.0:
        return
    before = average_from - stamps[h]  # skipped updates j <= before are not averaged (no overflow: NEVER)
    v, total = _decay(v, k, lr_l2 / (math.sqrt(hsq[h]) + eps), before)
    if before < k:  # the average's sums are read only when it gains terms
        hsum[h] += total
    hw[h] = v


@njit(nogil=True, cache=True)
def catch_up_all(hashed, upto, lr_l2, eps, average_from):
    """Bring every hashed weight up to update ``upto`` (O(2**bits)): before the step η
    changes (the catch-up's closed form holds for one η), and for the model's weights. The
    weights the batch in progress touched (stamp ``upto`` + 1) are current already."""
    hw, hsq, hsum, stamps = hashed[HW], hashed[HSQ], hashed[HSUM], hashed[STAMP]
    for h in range(hw.shape[0]):
        # a zero weight stays zero at any step (and adds zeros to its sum): its stamp may lag,
        # and the table's never-touched pages are never written
        if stamps[h] < upto and hw[h] != 0.0:
            _catch_up(h, upto, hw, hsq, hsum, stamps, lr_l2, eps, average_from)
            stamps[h] = upto
    hashed[HI][FOLDS] += 1  # any weight may have changed (a shard's copy of them is stale)


@njit(nogil=True, cache=True)
def _caught_up(hw, hsq, hsum, stamps, upto, lr_l2, eps, average_from):
    """``catch_up_all`` into copies of the weights and the average's sums (``hw``, ``hsum``),
    the run's state (its stamps, AdaGrad's sums) only read: the model's weights mid-run."""
    for h in range(hw.shape[0]):
        _catch_up(h, upto, hw, hsq, hsum, stamps, lr_l2, eps, average_from)


#: |y| below which ``_g`` sums its series (above, expm1(y) − y loses at most ~3 bits).
_SERIES = 0.5


@njit(nogil=True, cache=True)
def _g(y):
    """expm1(y) − y = y²/2! + y³/3! + …, without the cancellation of the difference near 0."""
    if abs(y) >= _SERIES:
        return math.expm1(y) - y
    term, total = y * y / 2.0, 0.0
    m = 2
    while total + term != total:
        total += term
        m += 1
        term *= y / m
    return total


@njit(nogil=True, cache=True)
def _decayed(x, j):
    """f(j) = Σ_{i<j} ρ^i = (1 − ρ^j) / (1 − ρ), ρ = e^(−x) (j when x = 0): the L1 pulls of j
    skipped updates as they stand after the L2 shrinkage of the later ones."""
    return float(j) if x == 0.0 else math.expm1(-j * x) / math.expm1(-x)


@njit(nogil=True, cache=True)
def _pulled(a, lr_l1, x, j):
    """|θ| after j skipped updates from |θ| = a, while it stays above zero: ρ^j·a − η·l1·f(j)."""
    return math.exp(-j * x) * a - lr_l1 * _decayed(x, j)


@njit(nogil=True, cache=True)
def _clip_index(a, lr_l1, x, most):
    """The first skipped update (from 1) at which a weight of size ``a`` reaches zero under
    the L2 shrinkage e^(−x) and the L1 pull η·l1 of each, or ``most`` + 1 if not by ``most``:
    ρ^j·(a + c) <= c with c = η·l1 / (1 − ρ), solved in logarithms, then checked on the
    iterates themselves (a rounding at the boundary moves it by one)."""
    if lr_l1 <= 0.0:
        return most + 1
    bound = a / lr_l1 if x == 0.0 else math.log1p(-a * math.expm1(-x) / lr_l1) / x
    if not bound < most:
        return most + 1
    j = max(1, int(math.ceil(bound)))
    if j > 1 and _pulled(a, lr_l1, x, j - 1) <= 0.0:
        j -= 1
    elif _pulled(a, lr_l1, x, j) > 0.0:
        j += 1
    return j


@njit(nogil=True, cache=True)
def _pulled_sum(a, lr_l1, x, j0, j1):
    """Σ_{j=j0..j1} of ``_pulled(a, lr_l1, x, j)`` (the Polyak sum of skipped iterates above
    zero): a·ρ^j0·f(n) − η·l1·(n·f(j0) + ρ^j0·G(n)), n = j1 − j0 + 1, G(n) = Σ_{i<n} f(i) =
    (g(−nx) − n·g(−x)) / expm1(−x)², g = ``_g``: sums of positive terms, no cancellation."""
    n = j1 - j0 + 1
    r0 = math.exp(-j0 * x)
    if x == 0.0:
        big_g = 0.5 * n * (n - 1.0)
    else:
        e1 = math.expm1(-x)
        big_g = (_g(-n * x) - n * _g(-x)) / (e1 * e1)
    return a * r0 * _decayed(x, n) - lr_l1 * (n * _decayed(x, j0) + r0 * big_g)


@njit(nogil=True, cache=True)
def _shrink_rate(optimizer, lr, l2, h_sq, eps):
    """x = −ln ρ, ρ the factor by which one update's L2 shrinks an untouched weight: SGD's
    1 − η·l2 (the L2 in the gradient), AdaGrad's 1 / (1 + η·l2 / h) (its proximal step)."""
    if l2 <= 0.0:
        return 0.0
    if optimizer == ADAGRAD:
        return math.log1p(lr * l2 / (math.sqrt(h_sq) + eps))
    return -math.log1p(-lr * l2)


@njit(nogil=True, cache=True)
def _catch_up_l1(h, upto, hashed, optimizer, lr, l2, lr_l1, l1_total, eps, average_from):
    """Bring weight ``h`` (current up to update ``stamps[h]``) up to update ``upto`` under
    the dense rule's L2 and cumulative L1 (``optim.l1_step``), η = ``lr`` for every skipped
    update. After an update that touched it a nonzero weight owes no penalty (l1_step pulled
    it by all it owed), so each skipped update shrinks it by ρ and pulls it by η·l1, until
    it reaches zero (``_clip_index``) and stays there: a zero weight neither shrinks nor
    is pulled, and its debt grows with every weight's (``l1_total``). The Polyak sum adds
    the averaged skipped iterates (``_pulled_sum``). Without L2 the value is the dense
    formula itself, |θ| − (owed total), which holds whatever the steps were."""
    hw, hsq, hsum, stamps, q = hashed[HW], hashed[HSQ], hashed[HSUM], hashed[STAMP], hashed[HQ]
    k = upto - stamps[h]
    v = hw[h]
    if k <= 0 or v == 0.0:
        return
    s = 1.0 if v > 0.0 else -1.0
    a = abs(v)
    x = _shrink_rate(optimizer, lr, l2, hsq[h], eps)
    clip = _clip_index(a, lr_l1, x, k)
    before = average_from - stamps[h]  # skipped updates j <= before are not averaged (no overflow: NEVER)
    if before < k:
        j0, j1 = max(1, before + 1), min(k, clip - 1)
        if j0 <= j1:
            hsum[h] += s * _pulled_sum(a, lr_l1, x, j0, j1)
    if x == 0.0:
        new = s * max(0.0, a - (l1_total + s * q[h]))
        q[h] += new - v
    elif clip <= k:  # zero at update `clip`: that update pulled it by what was left of it
        new = 0.0
        q[h] -= s * ((clip - 1) * lr_l1 + math.exp(-x) * _pulled(a, lr_l1, x, clip - 1))
    else:
        new = s * _pulled(a, lr_l1, x, k)
        q[h] -= s * k * lr_l1
    hw[h] = new


@njit(nogil=True, cache=True)
def catch_up_all_l1(hashed, upto, optimizer, lr, l2, lr_l1, l1_total, eps, average_from):
    """``catch_up_all`` with an L1 penalty (``_catch_up_l1``; ``l1_total`` the penalty every
    weight was owed after update ``upto``)."""
    hw, stamps = hashed[HW], hashed[STAMP]
    for h in range(hw.shape[0]):
        if stamps[h] < upto and hw[h] != 0.0:
            _catch_up_l1(h, upto, hashed, optimizer, lr, l2, lr_l1, l1_total, eps, average_from)
            stamps[h] = upto
    hashed[HI][FOLDS] += 1


@njit(nogil=True, cache=True)
def _power_and_sum(a, n):
    """(A^n, Σ_{i<n} A^i) of the 2×2 matrix ``a`` (row-major, 4 values) by binary powering:
    O(log n) products, each rounding once, where n products would round n times."""
    p = np.array([1.0, 0.0, 0.0, 1.0])
    s = np.zeros(4)
    for bit in range(62, -1, -1):
        if n >> bit == 0:
            continue
        # doubling: S(2m) = S(m) + A^m·S(m), A^2m = A^m·A^m
        s = s + _times(p, s)
        p = _times(p, p)
        if (n >> bit) & 1:  # one more: S(m + 1) = S(m) + A^m, A^(m+1) = A^m·A
            s = s + p
            p = _times(p, a)
    return p, s


@njit(nogil=True, cache=True)
def _times(x, y):
    """The 2×2 product x·y (row-major)."""
    return np.array([x[0] * y[0] + x[1] * y[2], x[0] * y[1] + x[1] * y[3],
                     x[2] * y[0] + x[3] * y[2], x[2] * y[1] + x[3] * y[3]])


@njit(nogil=True, cache=True)
def _momentum_matrix(optimizer, lr, l2, beta):
    """A, one update of an untouched weight's (θ, m) under momentum or Nesterov with SGD's
    L2 in the gradient (g = l2·θ; ``optim.optimizer_step``): m' = β·m + l2·θ and
    θ' = θ − η·m' (momentum) or θ − η·(l2·θ + β·m') (Nesterov)."""
    if optimizer == NESTEROV:
        return np.array([1.0 - lr * l2 * (1.0 + beta), -lr * beta * beta, l2, beta])
    return np.array([1.0 - lr * l2, -lr * beta, l2, beta])


@njit(nogil=True, cache=True)
def _catch_up_momentum(h, upto, hashed, optimizer, lr, l2, beta, average_from):
    """Bring weight ``h`` and its momentum (HSQ's column, which momentum does not use for
    AdaGrad's sums) up to update ``upto``: an untouched weight still moves, by its momentum,
    and with L2 the pair (θ, m) follows the linear map A (``_momentum_matrix``) at every
    skipped update, so k of them are A^k, and the averaged skipped iterates' sum
    A^j0·Σ_{i<n} A^i (``_power_and_sum``): exact for one η."""
    hw, mom, hsum, stamps = hashed[HW], hashed[HSQ], hashed[HSUM], hashed[STAMP]
    k = upto - stamps[h]
    v, m = hw[h], mom[h]
    if k <= 0 or (v == 0.0 and m == 0.0):
        return
    a = _momentum_matrix(optimizer, lr, l2, beta)
    before = average_from - stamps[h]  # skipped updates j <= before are not averaged (no overflow: NEVER)
    if before < k:
        j0 = max(1, before + 1)
        head, _ = _power_and_sum(a, j0)
        _, total = _power_and_sum(a, k - j0 + 1)
        row = _times(head, total)
        hsum[h] += row[0] * v + row[1] * m
    p, _ = _power_and_sum(a, k)
    hw[h] = p[0] * v + p[1] * m
    mom[h] = p[2] * v + p[3] * m


@njit(nogil=True, cache=True)
def catch_up_all_momentum(hashed, upto, optimizer, lr, l2, beta, average_from):
    """``catch_up_all`` under momentum or Nesterov (``_catch_up_momentum``)."""
    hw, mom, stamps = hashed[HW], hashed[HSQ], hashed[STAMP]
    for h in range(hw.shape[0]):
        if stamps[h] < upto and (hw[h] != 0.0 or mom[h] != 0.0):
            _catch_up_momentum(h, upto, hashed, optimizer, lr, l2, beta, average_from)
            stamps[h] = upto
    hashed[HI][FOLDS] += 1


@njit(nogil=True, cache=True)
def hashed_step_momentum(optimizer, lr, l2, beta, n, averaged, hashed):
    """``hashed_step`` under momentum or Nesterov: each touched weight's dense update
    (``optim.optimizer_step``, SGD's L2 in the gradient), its momentum in HSQ's column; the
    untouched ones are caught up when next touched (``_catch_up_momentum``), wscale stays 1
    and S sums the iterates themselves."""
    hw, hg, mom, hsum, touched, hi = (hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM], hashed[TOUCHED],
                                      hashed[HI])
    for q in range(hi[N_TOUCHED]):
        h = touched[q]
        g = hg[h] / n + l2 * hw[h]
        mom[h] = beta * mom[h] + g
        if optimizer == NESTEROV:
            hw[h] -= lr * (g + beta * mom[h])
        else:
            hw[h] -= lr * mom[h]
        if averaged:
            hsum[h] += hw[h]
    hi[N_TOUCHED] = 0


#: Rows ahead of the one it trains whose hashed weights the kernel asks the CPU for (a hint,
#: ``hints.prefetch``: the results are the same). A row's weights are 26 cache misses in a
#: 2**20 table on benchmarks/ctr.py's data, and the row's own work (the lazy L2's catch-ups,
#: the loss) would otherwise wait for them one row at a time: 2 and 4 rows ahead both took
#: a fifth off the kernel there (benchmarks/README.md, ctr.py, session 13).
AHEAD_ROWS = 4


@njit(nogil=True, cache=True)
def prefetch_row_weights(hw, hsum, idx, rows, m, n_out, averaged):
    """Ask for the cache lines of the hashed entries of row ``rows[m + AHEAD_ROWS]`` (``n_out``
    entries a bucket, next to each other), and of their averages' sums when this update is
    ``averaged`` (read and written per touched weight)."""
    if m + AHEAD_ROWS >= rows.shape[0]:
        return
    i = rows[m + AHEAD_ROWS]
    for q in range(idx.shape[1]):
        base = np.int64(idx[i, q]) * n_out
        for c in range(n_out):
            prefetch(hw, base + c)
            if averaged:
                prefetch(hsum, base + c)


@njit(nogil=True, cache=True)
def accumulate_hashed_rows(loss, param, cw, X, y, sw, idx, sign, rows, w, b, gw, hashed, stamp, lr_l2, eps,
                           average_from):
    """``accumulate_lazy_rows`` without an L1 penalty or momentum (see there)."""
    return accumulate_lazy_rows(loss, param, cw, X, y, sw, idx, sign, rows, w, b, gw, hashed, stamp, lr_l2, eps,
                                average_from, SGD, 0.0, 0.0, 0.0, 0.0, 0.0)


@njit(nogil=True, cache=True)
def accumulate_lazy_rows(loss, param, cw, X, y, sw, idx, sign, rows, w, b, gw, hashed, stamp, lr_l2, eps,
                         average_from, optimizer, lr, l2, lr_l1, l1_total, beta):
    """``losses.accumulate_rows`` with hashed features: rows ``rows`` of the window add
    Σ c_i r_i x_i to ``gw`` (dense, d) and c_i r_i sign to their hashed weights' sums (each
    weight's sum started afresh the first time this batch, ``stamp``, touches it; with
    AdaGrad's lazy L2, ``lr_l2`` = η·l2 > 0, the weight is first brought up to the previous
    update, ``_catch_up``, before a margin reads it). With an L1 penalty, ``lr_l1`` = η·l1 > 0,
    the weight is brought up to date by ``_catch_up_l1`` instead (``optimizer``, η = ``lr``,
    ``l2``; ``l1_total`` the penalty every weight was owed after the previous update); under
    momentum or Nesterov (``optimizer``, β = ``beta``) by ``_catch_up_momentum``.

    idx, sign : (n_rows, k) int32 and int8, each row's hashed ids and signs.
    Returns (Σ c_i l_i, Σ c_i r_i).
    """
    hw, hg, hsq, hsum = hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM]
    stamps, touched, hi = hashed[STAMP], hashed[TOUCHED], hashed[HI]
    wscale = hashed[HF][WSCALE]
    d, k = X.shape[1], idx.shape[1]
    weighted = sw.shape[0] > 0
    lazy = lr_l2 > 0.0
    n_touched = hi[N_TOUCHED]
    total = 0.0
    rsum = 0.0
    averaged = stamp > average_from
    for m in range(rows.shape[0]):
        prefetch_row_weights(hw, hsum, idx, rows, m, 1, averaged)
        i = rows[m]
        for q in range(k):
            h = idx[i, q]
            if stamps[h] != stamp:
                if lr_l1 > 0.0:
                    _catch_up_l1(h, stamp - 1, hashed, optimizer, lr, l2, lr_l1, l1_total, eps, average_from)
                elif optimizer == MOMENTUM or optimizer == NESTEROV:
                    _catch_up_momentum(h, stamp - 1, hashed, optimizer, lr, l2, beta, average_from)
                elif lazy:
                    _catch_up(h, stamp - 1, hw, hsq, hsum, stamps, lr_l2, eps, average_from)
                stamps[h] = stamp
                hg[h] = 0.0
                touched[n_touched] = h
                n_touched += 1
        li, r = loss_slope(loss, _margin(X, i, w, b, idx, sign, hw, wscale), y[i], param)
        c = cw[1] if y[i] > 0.5 else cw[0]
        if weighted:
            c *= sw[i]
        r *= c
        total += c * li
        rsum += r
        for j in range(d):
            gw[j] += r * X[i, j]
        for q in range(k):
            hg[idx[i, q]] += r * sign[i, q]
    hi[N_TOUCHED] = n_touched
    return total, rsum


@njit(nogil=True, cache=True)
def _renormalize(hashed):
    """Fold wscale into u and the average's B into S (O(2**bits)): the iterates and their
    running sum S + B·u are unchanged, wscale becomes 1 and B 0."""
    hw, hsum, hf = hashed[HW], hashed[HSUM], hashed[HF]
    c, b = hf[WSCALE], hf[AVG_B]
    for j in range(hw.shape[0]):
        hsum[j] += b * hw[j]
        hw[j] *= c
    hf[WSCALE] = 1.0
    hf[AVG_B] = 0.0
    hashed[HI][FOLDS] += 1


@njit(nogil=True, cache=True)
def hashed_step(optimizer, lr, l2, eps, n, averaged, hashed):
    """One update of the hashed weights from the batch's sums (``n`` rows), touched ones only.

    optimizer : SGD or ADAGRAD (the others are refused before training); l2 : the L2
    strength; averaged : whether this iterate enters the Polyak average.
    """
    hw, hg, hsq, hsum, touched, hf, hi = (hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM], hashed[TOUCHED],
                                          hashed[HF], hashed[HI])
    if optimizer == ADAGRAD and l2 > 0.0:  # the proximal L2 step (optim); S sums the iterates themselves
        for m in range(hi[N_TOUCHED]):
            h = touched[m]
            g = hg[h] / n
            hsq[h] += g * g
            root = math.sqrt(hsq[h]) + eps
            hw[h] = (hw[h] - lr * g / root) / (1.0 + lr * l2 / root)
            if averaged:
                hsum[h] += hw[h]
        hi[N_TOUCHED] = 0
        return
    if optimizer == SGD and l2 > 0.0:
        hf[WSCALE] *= 1.0 - lr * l2
        if abs(hf[WSCALE]) < RENORMALIZE:
            _renormalize(hashed)
    ws, big_b = hf[WSCALE], hf[AVG_B]
    for m in range(hi[N_TOUCHED]):
        h = touched[m]
        g = hg[h] / n
        if optimizer == ADAGRAD:
            hsq[h] += g * g
            delta = -lr * g / (math.sqrt(hsq[h]) + eps)
        else:
            delta = -lr * g / ws
        hw[h] += delta
        if big_b != 0.0:  # the same bits as subtracting 0·delta: S is never -0.0
            hsum[h] -= big_b * delta
    hi[N_TOUCHED] = 0
    if averaged:
        hf[AVG_B] += ws


@njit(nogil=True, cache=True)
def hashed_step_l1(optimizer, lr, l2, lr_l1, l1_total, eps, n, averaged, hashed):
    """``hashed_step`` with an L1 penalty: the dense update of each touched weight, as
    ``loop.finish_batch`` makes it, then ``optim.l1_step``'s pull by what it is owed
    (``l1_total``, the penalty every weight is owed after this update, less what it received,
    HQ; clipped at zero). The L2 is SGD's term in the gradient or AdaGrad's proximal step,
    never the global scale (wscale stays 1): the untouched weights' L2 and L1 are caught up
    together when next touched (``_catch_up_l1``). S sums the iterates themselves."""
    hw, hg, hsq, hsum, touched, hi, q = (hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM], hashed[TOUCHED],
                                         hashed[HI], hashed[HQ])
    for m in range(hi[N_TOUCHED]):
        h = touched[m]
        g = hg[h] / n
        if optimizer == ADAGRAD:
            hsq[h] += g * g
            root = math.sqrt(hsq[h]) + eps
            if l2 > 0.0:
                hw[h] = (hw[h] - lr * g / root) / (1.0 + lr * l2 / root)
            else:
                hw[h] -= lr * g / root
        else:
            hw[h] -= lr * (g + l2 * hw[h])
        z = hw[h]
        if z > 0.0:
            hw[h] = max(0.0, z - (l1_total + q[h]))
        elif z < 0.0:
            hw[h] = min(0.0, z + (l1_total - q[h]))
        q[h] += hw[h] - z
        if averaged:
            hsum[h] += hw[h]
    hi[N_TOUCHED] = 0


@njit(nogil=True, cache=True)
def hashed_step_adam(optimizer, lr, l2, beta1, beta2, eps, t, n, averaged, hashed):
    """``hashed_step`` under lazy Adam (PyTorch's SparseAdam): only the touched weights move,
    each by ``optim.optimizer_step``'s Adam or AdamW rule with the update's bias corrections
    (``t``, the global update number); their first moment is in HQ, the second in HSQ's
    column. An untouched weight and its moments stay as they are: unlike the dense rule no
    decay of the moments, and no L2 (Adam's, in the gradient) or decoupled decay (AdamW's)
    until a batch touches it. The value is then constant between touches, so the Polyak sum
    is the two-scalar trick's (wscale 1)."""
    hw, hg, v, hsum, touched, hf, hi, m = (hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM], hashed[TOUCHED],
                                           hashed[HF], hashed[HI], hashed[HQ])
    bc1 = 1.0 - beta1**t
    bc2 = 1.0 - beta2**t
    big_b = hf[AVG_B]
    for q in range(hi[N_TOUCHED]):
        h = touched[q]
        g = hg[h] / n
        if optimizer == ADAM:
            g += l2 * hw[h]
        m[h] = beta1 * m[h] + (1.0 - beta1) * g
        v[h] = beta2 * v[h] + (1.0 - beta2) * g * g
        step = (m[h] / bc1) / (math.sqrt(v[h] / bc2) + eps)
        if optimizer == ADAMW:
            step += l2 * hw[h]
        delta = -lr * step
        hw[h] += delta
        if big_b != 0.0:
            hsum[h] -= big_b * delta
    hi[N_TOUCHED] = 0
    if averaged:
        hf[AVG_B] += 1.0


@njit(nogil=True, cache=True)
def fill_batch_hashed(X, y, sw, idx, sign, order, pos, end, spec, hyper, params, counters, sums, hashed):
    """``loop.fill_batch`` with the window's hashed features (scalar-output losses)."""
    theta_eff, gw = params[THETA_EFF], params[GW]
    d = X.shape[1]
    take = min(spec[BATCH] - counters[FILLED], end - pos)
    if take <= 0:
        return pos
    loss, rsum = accumulate_lazy_rows(spec[LOSS_CODE], hyper[PARAM], params[CW], X, y, sw, idx, sign,
                                      order[pos:pos + take], theta_eff[:d], theta_eff[d], gw[:d], hashed,
                                      counters[T] + 1, _lazy_l2(spec, hyper), hyper[EPS], spec[AVERAGE_FROM],
                                      spec[OPTIMIZER], hyper[LR0], hyper[L2], hyper[LR0] * hyper[L1], params[L1_U][0],
                                      hyper[BETA1])
    gw[d] += rsum
    sums[BATCH_LOSS] += loss
    counters[FILLED] += take
    counters[EPOCH_ROWS] += take
    return pos + take


@njit(nogil=True, cache=True)
def finish_batch_hashed(spec, hyper, params, opt_state, mean, scale, counters, sums, noise, hashed):
    """``loop.finish_batch`` after the hashed weights' own update, with the same step."""
    if not math.isfinite(sums[BATCH_LOSS]):
        counters[DIVERGED] = 1
        return
    t = counters[T] + 1
    lr = step_lr(spec, hyper, t)
    if hyper[L1] > 0.0:  # the penalty every weight is owed after this update, as l1_step adds it
        hashed_step_l1(spec[OPTIMIZER], lr, hyper[L2], lr * hyper[L1], params[L1_U][0] + lr * hyper[L1], hyper[EPS],
                       counters[FILLED], t > spec[AVERAGE_FROM], hashed)
    elif spec[OPTIMIZER] == ADAM or spec[OPTIMIZER] == ADAMW:
        hashed_step_adam(spec[OPTIMIZER], lr, hyper[L2], hyper[BETA1], hyper[BETA2], hyper[EPS], t + spec[T0],
                         counters[FILLED], t > spec[AVERAGE_FROM], hashed)
    elif spec[OPTIMIZER] == MOMENTUM or spec[OPTIMIZER] == NESTEROV:
        hashed_step_momentum(spec[OPTIMIZER], lr, hyper[L2], hyper[BETA1], counters[FILLED], t > spec[AVERAGE_FROM],
                             hashed)
    else:
        hashed_step(spec[OPTIMIZER], lr, hyper[L2], hyper[EPS], counters[FILLED], t > spec[AVERAGE_FROM], hashed)
    finish_batch(spec, hyper, params, opt_state, mean, scale, counters, sums, noise)


@njit(nogil=True, cache=True)
def train_rows_hashed(X, y, sw, idx, sign, order, pos, end, stop_at, spec, hyper, params, opt_state, mean, scale,
                      counters, sums, noise, hashed):
    """``loop.train_rows`` for a window with hashed features (``idx``, ``sign``)."""
    while pos < end:
        pos = fill_batch_hashed(X, y, sw, idx, sign, order, pos, end, spec, hyper, params, counters, sums, hashed)
        if counters[FILLED] == spec[BATCH]:
            finish_batch_hashed(spec, hyper, params, opt_state, mean, scale, counters, sums, noise, hashed)
            if counters[DIVERGED] == 1 or counters[T] == stop_at:
                break
    return pos


def lazy_l1(spec: NDArray[np.int64], hyper: NDArray[np.float64], l1_u: NDArray[np.float64]
            ) -> tuple[int, float, float, float, float] | None:
    """The L1 catch-up's figures (``_catch_up_l1``): (optimizer, η, l2, η·l1, the penalty
    every weight is owed so far, ``l1_u``), or None when the run has no L1 penalty."""
    if hyper[L1] <= 0.0:
        return None
    return int(spec[OPTIMIZER]), float(hyper[LR0]), float(hyper[L2]), float(hyper[LR0] * hyper[L1]), float(l1_u[0])


def lazy_momentum(spec: NDArray[np.int64], hyper: NDArray[np.float64]) -> tuple[int, float, float, float] | None:
    """The momentum catch-up's figures (``_catch_up_momentum``): (optimizer, η, l2, β), or
    None when the run's optimizer has no momentum."""
    if spec[OPTIMIZER] != MOMENTUM and spec[OPTIMIZER] != NESTEROV:
        return None
    return int(spec[OPTIMIZER]), float(hyper[LR0]), float(hyper[L2]), float(hyper[BETA1])


def folded(hashed: tuple[NDArray, ...], averaged: int, lazy: tuple[int, float, float, int] | None = None,
           l1: tuple[int, float, float, float, float] | None = None,
           momentum: tuple[int, float, float, float] | None = None) -> NDArray[np.float64]:
    """The hashed weights with every lazy scale folded in: the Polyak mean (S + B·u) / k of
    the ``averaged`` iterates when there are any, else wscale·u. ``lazy`` = (updates made,
    η·l2, ε, AVERAGE_FROM) with AdaGrad's lazy L2 (``lazy_l2`` > 0), ``l1`` (``lazy_l1``)
    with an L1 penalty or ``momentum`` (``lazy_momentum``): every weight is first brought up
    to the last update, on a copy (the run's state is left as it is)."""
    if lazy is not None and (l1 is not None or momentum is not None):  # S holds the iterates (AVG_B stays 0)
        state = list(hashed)
        for slot in (HW, HSQ, HSUM, STAMP, HQ):  # copies: the state stays
            state[slot] = np.array(hashed[slot], order="C")
        if l1 is not None:
            catch_up_all_l1(tuple(state), lazy[0], *l1, lazy[2], lazy[3])
        else:
            assert momentum is not None
            catch_up_all_momentum(tuple(state), lazy[0], *momentum, lazy[3])
        return np.asarray(state[HSUM] / averaged) if averaged else state[HW]
    if lazy is not None and lazy[1] > 0.0:  # S holds the iterates themselves (AVG_B stays 0)
        hw, total = np.array(hashed[HW], order="C"), hashed[HSUM].copy()  # copies: the state stays
        _caught_up(hw, hashed[HSQ], total, hashed[STAMP], lazy[0], lazy[1], lazy[2], lazy[3])
        return np.asarray(total / averaged) if averaged else hw
    u, hf = hashed[HW], hashed[HF]
    if averaged:
        return np.asarray((hashed[HSUM] + hf[AVG_B] * u) / averaged)
    return np.asarray(hf[WSCALE] * u)


@njit(nogil=True, cache=True)
def add_hashed_sums(hashed, idx, values, stamp):
    """Add one shard's share of a batch's hashed gradient sums (its touched ids ``idx``,
    distinct, and their sums ``values``) to the batch in progress, stamped ``stamp`` (the
    update's number), as ``accumulate_hashed_rows`` adds a row's: called in shard order, the
    sums are those of one batch of all the shards' rows, added shard after shard."""
    add_lazy_sums(hashed, idx, values, stamp, 0.0, 0.0, 0)


@njit(nogil=True, cache=True)
def add_lazy_sums(hashed, idx, values, stamp, lr_l2, eps, average_from):
    """``add_hashed_sums`` under AdaGrad's lazy L2 (``lr_l2`` = η·l2 > 0): a weight is first
    brought up to the previous update (``_catch_up``), as ``accumulate_hashed_rows`` brings it
    on its first touch, before the update reads it."""
    hw, hg, hsq, hsum = hashed[HW], hashed[HG], hashed[HSQ], hashed[HSUM]
    stamps, touched, hi = hashed[STAMP], hashed[TOUCHED], hashed[HI]
    n_touched = hi[N_TOUCHED]
    for m in range(idx.shape[0]):
        h = idx[m]
        if stamps[h] != stamp:
            if lr_l2 > 0.0:
                _catch_up(h, stamp - 1, hw, hsq, hsum, stamps, lr_l2, eps, average_from)
            stamps[h] = stamp
            hg[h] = 0.0
            touched[n_touched] = h
            n_touched += 1
        hg[h] += values[m]
    hi[N_TOUCHED] = n_touched


@njit(nogil=True, cache=True)
def _union(ids):
    """The distinct values of ``ids``, ascending."""
    order = np.sort(ids)
    union = np.empty(order.shape[0], np.int64)
    u = 0
    for m in range(order.shape[0]):
        if u == 0 or order[m] != union[u - 1]:
            union[u] = order[m]
            u += 1
    return union[:u]


@njit(nogil=True, cache=True)
def _average_table(table, bits, ids, offsets, values, value_bits, weights, union, acc, moved):
    """One table's entries ``union`` averaged over the shards (see ``average_entries``) into
    ``acc``; ``moved`` marks those a shard changed (bits other than the table's)."""
    for k in range(weights.shape[0]):
        p, end, w = offsets[k], offsets[k + 1], weights[k]
        for q in range(union.shape[0]):
            h = union[q]
            if p < end and ids[p] == h:
                c = values[p]
                if value_bits[p] != bits[h]:
                    moved[q] = True
                p += 1
            else:
                c = table[h]  # the round's start where this shard changed nothing
            if k == 0:
                acc[q] = c * w
            else:
                acc[q] = acc[q] + c * w


@njit(nogil=True, cache=True)
def average_entries(hw, hw_bits, hsq, hsq_bits, hsum, hsum_bits, ids, offsets, values, value_bits, weights):
    """Local SGD's merge of the hashed tables, O(entries reported): shard k reported the
    entries ``ids[offsets[k]:offsets[k+1]]`` (ascending) with their values in each table
    (``values[i]``, i = u, AdaGrad's sums, the average's sums; ``*_bits`` the same arrays
    as int64). Every entry some shard changed becomes Σ_k w_k·c_k in shard order, c_k the
    shard's value or, where it reported none, the table's (the round's start); entries whose
    reports all carry the table's bits keep them. Returns the changed entries, ascending."""
    union = _union(ids)
    u = union.shape[0]
    moved = np.zeros(u, np.bool_)
    acc_w, acc_sq, acc_sum = np.empty(u), np.empty(u), np.empty(u)
    _average_table(hw, hw_bits, ids, offsets, values[0], value_bits[0], weights, union, acc_w, moved)
    _average_table(hsq, hsq_bits, ids, offsets, values[1], value_bits[1], weights, union, acc_sq, moved)
    _average_table(hsum, hsum_bits, ids, offsets, values[2], value_bits[2], weights, union, acc_sum, moved)
    m = 0
    for q in range(u):
        if moved[q]:
            h = union[q]
            hw[h], hsq[h], hsum[h] = acc_w[q], acc_sq[q], acc_sum[q]
            union[m] = h
            m += 1
    return union[:m].copy()


@njit(nogil=True, cache=True)
def _lagged(v, g_sq, sum_, stamp, upto, lr_l2, eps, average_from):
    """``_catch_up`` of one weight's figures given as values: (its value, its Polyak sum)
    brought from update ``stamp`` to ``upto`` under AdaGrad's lazy L2."""
    k = upto - stamp
    if k <= 0 or v == 0.0:
        return v, sum_
    before = average_from - stamp
    v, total = _decay(v, k, lr_l2 / (math.sqrt(g_sq) + eps), before)
    return v, (sum_ + total if before < k else sum_)


@njit(nogil=True, cache=True)
def average_lazy_entries(hw, hsq, hsum, stamps, ids, offsets, values, report_stamps, weights, ends, union, lr_l2,
                         eps, average_from):
    """Local SGD's merge of the hashed tables under AdaGrad's lazy L2, at the entries
    ``union`` (ascending): shard k's value (its report, ``ids[offsets[k]:offsets[k+1]]``
    ascending with ``values[i]`` for u, AdaGrad's sums, the average's sums and its stamps
    ``report_stamps``, or where it reported none the table's, the round's start) is first
    brought up to the shard's last update ``ends[k]`` (``_lagged``): the shards' weights
    lag by different updates, and an average of lagging values is not the average of the
    weights. Each entry becomes Σ_k w_k·(caught-up figures) in shard order, stamped with the
    last of the ends."""
    top = ends.max()
    for q in range(union.shape[0]):
        h = union[q]
        acc_w = acc_sq = acc_sum = 0.0
        for k in range(weights.shape[0]):
            lo, hi = offsets[k], offsets[k + 1]
            p = np.searchsorted(ids[lo:hi], h) + lo
            if p < hi and ids[p] == h:
                v, g_sq, s, st = values[0, p], values[1, p], values[2, p], report_stamps[p]
            else:
                v, g_sq, s, st = hw[h], hsq[h], hsum[h], stamps[h]
            v, s = _lagged(v, g_sq, s, st, ends[k], lr_l2, eps, average_from)
            w = weights[k]
            if k == 0:
                acc_w, acc_sq, acc_sum = v * w, g_sq * w, s * w
            else:
                acc_w, acc_sq, acc_sum = acc_w + v * w, acc_sq + g_sq * w, acc_sum + s * w
        hw[h], hsq[h], hsum[h], stamps[h] = acc_w, acc_sq, acc_sum, top
