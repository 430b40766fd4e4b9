"""Dense layers in Numba: an MLP's forward and backward pass over one batch of a window.

The network is d -> h1 -> ... -> hK -> out: hidden layers with ReLU or tanh, then a linear
output layer whose pre-activation z (out = 1 for the margin losses, C for softmax) feeds the
losses of ``losses.loss_slope`` unchanged, so every loss becomes an MLP loss.

Parameters are float64 and live in ONE flat vector ``theta`` (``layout``): per layer, its
weights W (n_out, n_in) row-major (one row per unit, as torch.nn.Linear's weight), then its
biases (n_out,). The existing optimizers update a flat vector, so they drive the network as
they are; with no hidden layer and out = 1 the layout is the linear model's (d weights, then
the intercept). The gradient buffer has the same
layout and receives the *summed* data loss's gradient, as ``losses.accumulate`` does: the
caller scales by 1/B and adds the penalty.

A batch is a contiguous row range [lo, hi) of the window ``X`` (the readers have already
written the rows in plan order). It is processed in blocks of at most ``BLOCK_ROWS`` rows, so
each layer's activations (block x width) stay in L1/L2 while the block goes forward through
every layer and back again. Activations and the block's gradient sums have the workspace's
dtype (float32 in the product; float64 for exact checks), made once by ``workspace``: nothing
is allocated per batch. The parameters are copied into that dtype once per call, and each
block's gradient sums are added into the float64 buffer, so long sums stay in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit
from numpy.typing import DTypeLike, NDArray

from ..config import LOSS_PARAM
from ..errors import UsageError
from .codes import LOSSES, SOFTMAX
from .embedding import EF, ESCALE, EU, bag_backward, touch
from .losses import loss_slope

#: Hidden activation name -> the integer the kernels branch on.
RELU = 0
TANH = 1
ACTIVATIONS = {"relu": RELU, "tanh": TANH}
IDENTITY = 2  # the output layer's: its margins go to the loss as they are

#: Rows per block: 64 rows of a 64-wide float32 layer are 16 KiB, so a block's activations and
#: deltas sit in L1/L2 between its forward and backward passes.
BLOCK_ROWS = 64

#: Columns of a ``layout`` row: the layer's input and output widths and where its weights
#: and biases start in ``theta``.
N_IN, N_OUT, W_AT, B_AT = range(4)
N_LAYOUT = 4

#: Workspace slots (``workspace``): hidden activations (K or 1, block, widest hidden), deltas
#: (2, block, widest layer output), output margins (block, out), the parameters in the
#: workspace dtype (P,), and the block's gradient sums (P,).
HIDDEN, DELTA, MARGIN, PARAMS, GRAD = range(5)

#: Slots of the ``network`` tuple: the layout, the activation and loss codes, the loss's
#: parameter, the class weights and softmax's label values.
LAYOUT, ACTIVATION, LOSS, PARAM, CLASS_WEIGHTS, CLASSES = range(6)


def layout(d: int, hidden: Sequence[int], out: int) -> NDArray[np.int64]:
    """Where each layer's parameters live in the flat vector ``theta``.

    Parameters
    ----------
    d : int, input features; hidden : widths of the hidden layers (may be empty);
    out : int, output margins (1 for the margin losses, C for softmax).

    Returns
    -------
    int64 ndarray of shape (K + 1, N_LAYOUT): row k is layer k's (N_IN, N_OUT, W_AT, B_AT).
    Layer k's weights are theta[W_AT : W_AT + N_IN * N_OUT] as (N_OUT, N_IN) row-major, its
    biases theta[B_AT : B_AT + N_OUT]; the next layer starts where they end.
    """
    widths = [d, *hidden, out]
    if any(int(w) != w or w < 1 for w in widths):
        raise UsageError(f"layer widths must be positive integers (--hidden 64,32); got d={d}, "
                         f"hidden={list(hidden)}, out={out}")
    lay = np.zeros((len(widths) - 1, N_LAYOUT), dtype=np.int64)
    at = 0
    for k in range(len(widths) - 1):
        n_in, n_out = int(widths[k]), int(widths[k + 1])
        lay[k] = (n_in, n_out, at, at + n_in * n_out)
        at += n_in * n_out + n_out
    return lay


#: Rows of the standardised scratch block a compiled call copies a batch's slice into.
SCRATCH_ROWS = 4096
#: float64 arrays of the parameters' size a run holds: theta, its average, the gradient sums,
#: two optimizer moments, the step's gradient, the noise meter's two sums, the L1 ledger and a
#: checkpoint's copy of theta.
STATE_COPIES = 10


def scratch_rows(growing: bool, batch: int) -> int:
    """Rows of the standardised scratch block a run of ``batch``-row updates holds: the batch's,
    at most SCRATCH_ROWS (a compiled call feeds a larger batch in slices), and the whole block
    when the batch grows (``--batch auto``)."""
    return SCRATCH_ROWS if growing else min(int(batch), SCRATCH_ROWS)


def n_params(lay: NDArray[np.int64]) -> int:
    """Length of ``theta`` (and of the gradient buffer) for a ``layout``."""
    return int(lay[-1, B_AT] + lay[-1, N_OUT])


def _workspace_shapes(batch: int, lay: NDArray[np.int64]) -> tuple[tuple[int, ...], ...]:
    rows = max(1, min(int(batch), BLOCK_ROWS))
    widths = lay[:, N_OUT]
    hidden = widths[:-1]
    n_hidden = max(1, hidden.shape[0])
    widest_hidden = int(hidden.max()) if hidden.shape[0] else 1
    P = n_params(lay)
    return ((n_hidden, rows, widest_hidden), (2, rows, int(widths.max())), (rows, int(widths[-1])), (P,), (P,))


def workspace(batch: int, lay: NDArray[np.int64], dtype: DTypeLike = np.float32) -> tuple:
    """Scratch arrays for ``batch_gradient`` and ``margins``, indexed by the workspace slots.

    Their size depends on the block (min(batch, BLOCK_ROWS) rows) and the widths, never on the
    window: one workspace serves every batch of a run. ``dtype`` is the activations' (float32
    in the product, float64 for exact checks).
    """
    return tuple(np.zeros(shape, dtype) for shape in _workspace_shapes(batch, lay))


def state_bytes(lay: NDArray[np.int64], rows: int, dtype: DTypeLike = np.float32) -> int:
    """Bytes a run of this network holds beside its windows: STATE_COPIES float64 arrays of the
    parameters' size, the workspace, and the standardised scratch block of ``rows`` rows (the
    inputs in ``dtype``, the targets and weights in float64). The memory plan pays them first."""
    itemsize = np.dtype(dtype).itemsize
    workspace_values = sum(math.prod(shape) for shape in _workspace_shapes(rows, lay))
    return (STATE_COPIES * 8 * n_params(lay) + workspace_values * itemsize
            + rows * (int(lay[0, N_IN]) * itemsize + 2 * 8))


def init_params(lay: NDArray[np.int64], rng: np.random.Generator, fan_in0: int | None = None) -> NDArray[np.float64]:
    """Initial ``theta``: every layer's weights U(±1/sqrt(n_in)), zero biases.

    This is PyTorch's ``nn.Linear`` default (Kaiming-uniform with a = sqrt(5): std
    1/sqrt(3 n_in)), the same draw for ReLU and tanh. It
    is smaller than He's sqrt(2 / n_in) and Glorot's: the output layer's initial margins stay
    near 0, so a short run starts near the constant prediction instead of from large random
    margins that it must first unlearn (benchmarks/README.md, mlp.py, measures the held-out
    difference). The biases are zero rather than PyTorch's U(±1/sqrt(n_in)). ``rng`` is the
    caller's, seeded from integers, so the network is a function of the seed. ``fan_in0``: the
    first layer's fan-in when it is not its dense inputs alone (categorical columns add one
    input per column to every row: ``first_fan_in``).
    """
    theta = np.zeros(n_params(lay))
    for k in range(lay.shape[0]):
        n_in, n_out, w_at = int(lay[k, N_IN]), int(lay[k, N_OUT]), int(lay[k, W_AT])
        limit = 1.0 / math.sqrt(n_in if k or fan_in0 is None else fan_in0)
        theta[w_at:w_at + n_in * n_out] = rng.uniform(-limit, limit, n_in * n_out)
    return theta


def network(
    lay: NDArray[np.int64], activation: str, loss: str, param: float | None = None,
    cw: NDArray[np.float64] | None = None, classes: NDArray[np.float64] | None = None,
) -> tuple:
    """The kernels' description of the model: (lay, activation code, loss code, param, cw, classes).

    Parameters
    ----------
    activation : a key of ACTIVATIONS; loss : a key of ``losses.LOSSES``.
    param : huber's epsilon or quantile's tau; None means LOSS_PARAM's default.
    cw : float64, the row weight by class: (2,) by binary label (y > 0.5 takes cw[1]; ones for
        regression), (C,) for softmax in ``classes`` order. None means ones.
    classes : float64 (C,), softmax's sorted label values (None: 0 … C−1); empty otherwise.
    """
    if activation not in ACTIVATIONS:
        raise UsageError(f"--activation: expected one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    if loss not in LOSSES:
        raise UsageError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    out = int(lay[-1, N_OUT])
    softmax = LOSSES[loss] == SOFTMAX
    if softmax and out < 2 or not softmax and out != 1:
        raise UsageError(f"loss {loss!r} needs {'C >= 2 output margins' if softmax else 'one output margin'}; "
                         f"the layout has {out}")
    classes = np.arange(out, dtype=np.float64) if classes is None and softmax else classes
    classes = np.zeros(0) if classes is None else np.asarray(classes, np.float64)
    cw = np.ones(out if softmax else 2) if cw is None else np.asarray(cw, np.float64)
    if cw.shape != ((out,) if softmax else (2,)) or softmax and classes.shape != (out,):
        want, got = (f"{out} class weights and {out} classes", f"{cw.shape[0]} and {classes.shape[0]}") if softmax \
            else ("2 class weights (one per binary label)", f"{cw.shape[0]}")
        raise UsageError(f"loss {loss!r} with {out} output margin(s) needs {want}; got {got}")
    p = LOSS_PARAM.get(loss, 0.0) if param is None else param
    return lay, ACTIVATIONS[activation], LOSSES[loss], float(p), cw, classes


@njit(nogil=True, cache=True)
def _weights(W, spec):
    """Layer ``spec``'s weights (n_out, n_in) and biases (n_out,) as views of the flat W.

    The kernels index these views with loop counters only: an index computed from offsets
    (W[k + o]) cannot be proven non-negative, so Numba's negative-index wraparound stays in
    the inner loop and blocks its vectorisation (the forward pass ran 12x slower so, measured
    at d = 100, hidden 64).
    """
    n_in, n_out, w_at, b_at = spec[N_IN], spec[N_OUT], spec[W_AT], spec[B_AT]
    return W[w_at:b_at].reshape((n_out, n_in)), W[b_at:b_at + n_out]


@njit(nogil=True, cache=True)
def _apply(v, activation):
    """f(v) for a hidden layer's activation code; v itself for IDENTITY (the output layer)."""
    if activation == RELU:  # v · 0, not 0.0: keeps v's float type, and a NaN still shows
        return v if v > 0.0 else v * 0.0
    if activation == TANH:
        return math.tanh(v)
    return v


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _tile(A, a, Wl, bl, o, out, r, activation):
    """out[r : r + 4, o : o + 4] = f(A[a : a + 4] @ Wl[o : o + 4]ᵀ + b): sixteen dot products
    at once, their sums in registers, so each load of an input or a weight feeds four
    multiply-adds and the loop over inputs has no store to check for aliasing."""
    xa, xb, xc, xd = A[a], A[a + 1], A[a + 2], A[a + 3]
    w0, w1, w2, w3 = Wl[o], Wl[o + 1], Wl[o + 2], Wl[o + 3]
    s00 = s10 = s20 = s30 = bl[o]
    s01 = s11 = s21 = s31 = bl[o + 1]
    s02 = s12 = s22 = s32 = bl[o + 2]
    s03 = s13 = s23 = s33 = bl[o + 3]
    for i in range(Wl.shape[1]):
        u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
        x = xa[i]
        s00 += x * u0; s01 += x * u1; s02 += x * u2; s03 += x * u3  # noqa: E702
        x = xb[i]
        s10 += x * u0; s11 += x * u1; s12 += x * u2; s13 += x * u3  # noqa: E702
        x = xc[i]
        s20 += x * u0; s21 += x * u1; s22 += x * u2; s23 += x * u3  # noqa: E702
        x = xd[i]
        s30 += x * u0; s31 += x * u1; s32 += x * u2; s33 += x * u3  # noqa: E702
    sums = ((s00, s01, s02, s03), (s10, s11, s12, s13), (s20, s21, s22, s23), (s30, s31, s32, s33))
    for k in range(4):
        row = out[r + k]
        for j in range(4):
            row[o + j] = _apply(sums[k][j], activation)


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dense(A, a0, rows, spec, W, out, activation):
    """out[r] = f(A[a0 + r] @ W_lᵀ + b_l) for r < rows (layer ``spec``, a ``layout`` row), in
    4 x 4 tiles of rows and units; the rows and units left over, one dot product each."""
    Wl, bl = _weights(W, spec)
    n_out, n_in = Wl.shape
    r4, o4 = rows - rows % 4, n_out - n_out % 4
    for r in range(0, r4, 4):
        for o in range(0, o4, 4):
            _tile(A, a0 + r, Wl, bl, o, out, r, activation)
    for r in range(rows):
        x = A[a0 + r]
        for o in range(o4 if r < r4 else 0, n_out):
            w = Wl[o]
            s = bl[o]
            for i in range(n_in):
                s += x[i] * w[i]
            out[r, o] = _apply(s, activation)


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dense_grad(A, a0, rows, spec, D, G):
    """G_l += Dᵀ A[a0 : a0 + rows] and G_b += Σ_r D[r]: layer ``spec``'s weight and bias sums.

    Eight rows at a time, so each unit's row of sums is loaded and stored once per eight
    multiply-adds (along the inputs, the longer and contiguous side; 10-15 % faster than four
    rows at d = 100, hidden 64).
    """
    Gw, Gb = _weights(G, spec)
    n_out, n_in = Gw.shape
    r = 0
    while r + 8 <= rows:
        xa, xb, xc, xd = A[a0 + r], A[a0 + r + 1], A[a0 + r + 2], A[a0 + r + 3]
        xe, xf, xg, xh = A[a0 + r + 4], A[a0 + r + 5], A[a0 + r + 6], A[a0 + r + 7]
        for o in range(n_out):
            c0, c1, c2, c3 = D[r, o], D[r + 1, o], D[r + 2, o], D[r + 3, o]
            c4, c5, c6, c7 = D[r + 4, o], D[r + 5, o], D[r + 6, o], D[r + 7, o]
            g = Gw[o]
            for i in range(n_in):
                g[i] += ((c0 * xa[i] + c1 * xb[i]) + (c2 * xc[i] + c3 * xd[i])) + (
                    (c4 * xe[i] + c5 * xf[i]) + (c6 * xg[i] + c7 * xh[i]))
            Gb[o] += ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7))
        r += 8
    for r in range(r, rows):
        x = A[a0 + r]
        for o in range(n_out):
            c, g = D[r, o], Gw[o]
            for i in range(n_in):
                g[i] += c * x[i]
            Gb[o] += c


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dense_back(D, rows, spec, W, H, activation, D_in):
    """D_in[r] = (D[r] @ W_l) ⊙ f'(H[r]): the delta of layer ``spec``'s input, whose
    activations H are its hidden units after f (f' is read from f's value: ReLU's step,
    tanh's 1 − a²)."""
    Wl, _ = _weights(W, spec)
    n_out, n_in = Wl.shape
    for r in range(rows):
        dr, h, back = D[r], H[r], D_in[r]
        for i in range(n_in):
            back[i] = 0.0
        for o in range(n_out):
            c, w = dr[o], Wl[o]
            for i in range(n_in):
                back[i] += c * w[i]
        for i in range(n_in):
            a = h[i]
            if activation == RELU:
                back[i] = back[i] if a > 0.0 else 0.0
            else:
                back[i] *= 1.0 - a * a


def first_fan_in(d: int, k: int) -> int:
    """The first layer's fan-in for the initialisation: d dense inputs and, with categorical
    columns, the k hashed features every row holds (each a ±1 input picking one row of E), so
    the first pre-activation's variance at the start is the dense network's of d + k inputs."""
    return d + k


@njit(nogil=True, cache=True)
def _bag_forward(idx, sign, r0, rows, emb, H0, n_out, activation):
    """H0[r] ← f(H0[r] + escale·Σ_c sign·u[idx]) (``compute.embedding``): H0 holds the first
    layer's dense pre-activations of the rows r0 + r, and the bag is added into them in their
    dtype, as the dense layer's own sums are made, a contiguous row of u at a time (the inner
    loop vectorises; gathering one unit across the rows of u did not)."""
    u, escale = emb[EU], emb[EF][ESCALE]
    for r in range(rows):
        h = H0[r]
        for c in range(idx.shape[1]):
            row, s = u[idx[r0 + r, c]], escale * sign[r0 + r, c]
            for o in range(n_out):
                h[o] += s * row[o]
        for o in range(n_out):
            h[o] = _apply(h[o], activation)


@njit(nogil=True, cache=True)
def _forward(X, r0, rows, lay, activation, W, H, Z, idx, sign, emb):
    """Rows X[r0 : r0 + rows] through every layer: hidden activations into H, margins into Z;
    their hashed features (idx, sign; k = 0 for none) join the first layer through the bag."""
    last = lay.shape[0] - 1
    if last == 0:
        _dense(X, r0, rows, lay[0], W, Z, IDENTITY)
        return
    if idx.shape[1] == 0:
        _dense(X, r0, rows, lay[0], W, H[0], activation)
    else:
        _dense(X, r0, rows, lay[0], W, H[0], IDENTITY)
        _bag_forward(idx, sign, r0, rows, emb, H[0], lay[0, N_OUT], activation)
    for k in range(1, last):
        _dense(H[k - 1], 0, rows, lay[k], W, H[k], activation)
    _dense(H[last - 1], 0, rows, lay[last], W, Z, IDENTITY)


@njit(nogil=True, cache=True)
def _output_slopes(y, sw, r0, rows, net, Z, D):
    """Each row's weighted dl/dz into D (rows, out); returns the block's summed weighted loss.

    Row i's weight is its class weight (cw by binary label, or by class for softmax) times its
    sample weight when ``sw`` is not empty, as in ``losses.accumulate_rows``.
    """
    loss, param, cw, classes = net[LOSS], net[PARAM], net[CLASS_WEIGHTS], net[CLASSES]
    weighted = sw.shape[0] > 0
    C = Z.shape[1]
    total = 0.0
    for r in range(rows):
        i = r0 + r
        if loss == SOFTMAX:
            label = np.searchsorted(classes, y[i])
            c = cw[label] * sw[i] if weighted else cw[label]
            top = -np.inf
            for k in range(C):
                top = max(top, np.float64(Z[r, k]))
            norm = 0.0
            for k in range(C):
                norm += math.exp(np.float64(Z[r, k]) - top)
            total += c * (math.log(norm) + top - Z[r, label])
            for k in range(C):
                p = math.exp(np.float64(Z[r, k]) - top) / norm
                D[r, k] = c * (p - (1.0 if k == label else 0.0))
        else:
            li, slope = loss_slope(loss, np.float64(Z[r, 0]), y[i], param)
            c = cw[1] if y[i] > 0.5 else cw[0]  # a select: regression labels are not 0/1 (weights 1)
            if weighted:
                c *= sw[i]
            total += c * li
            D[r, 0] = c * slope
    return total


@njit(nogil=True, cache=True)
def _backward(X, r0, rows, lay, activation, W, H, D, G):
    """Back from the output deltas in D[(K) % 2] (K hidden layers) to the first layer, adding
    every layer's gradient sums into G; the two delta buffers take turns, so the first
    layer's pre-activation deltas end in D[0]."""
    cur = (lay.shape[0] - 1) % 2
    for k in range(lay.shape[0] - 1, 0, -1):
        _dense_grad(H[k - 1], 0, rows, lay[k], D[cur], G)
        _dense_back(D[cur], rows, lay[k], W, H[k - 1], activation, D[1 - cur])
        cur = 1 - cur
    _dense_grad(X, r0, rows, lay[0], D[cur], G)


@njit(nogil=True, cache=True)
def batch_gradient(X, y, sw, lo, hi, net, theta, grad, ws):
    """Add the summed loss's gradient over rows [lo, hi) to ``grad``; return the summed loss.

    Parameters
    ----------
    X : ndarray of shape (n_rows, d), float32 (or float64), the window's rows in plan order.
    y : ndarray of shape (n_rows,), labels (softmax: values found in ``classes``).
    sw : float64 (n_rows,), each row's sample weight, or an empty array for none.
    lo, hi : int, the batch's rows.
    net : the tuple made by ``network`` (layout, activation, loss, param, cw, classes).
    theta : float64 (P,), the parameters in ``layout`` order.
    grad : float64 (P,), added to in place: Σ_i c_i ∂ℓ_i/∂θ over the rows.
    ws : the tuple made by ``workspace`` for this layout (its dtype is the activations').

    Returns the summed weighted loss Σ_i c_i ℓ_i (float64).
    """
    idx, sign, emb = _no_bag()
    return embedded_gradient(X, idx, sign, y, sw, lo, hi, net, theta, grad, ws, emb, 0)


@njit(nogil=True, cache=True)
def _no_bag():
    """Empty hashed features and embedding state: a network without categorical columns."""
    e2, e1 = np.zeros((0, 0)), np.zeros(0, np.int64)
    return (np.zeros((0, 0), np.int32), np.zeros((0, 0), np.int8),
            (e2, e2, e2, e2, e1, e1, e1, np.ones(2), np.zeros(2, np.int64)))


@njit(nogil=True, cache=True)
def embedded_gradient(X, idx, sign, y, sw, lo, hi, net, theta, grad, ws, emb, stamp):
    """``batch_gradient`` with the rows' hashed features (idx int32, sign int8, (n_rows, k);
    k = 0 for none) through the first layer's embedding bag (``compute.embedding``): its
    gradient sums go to the state ``emb``'s rows for the buckets the batch touched, each
    started afresh the first time batch ``stamp`` touches it."""
    lay, activation = net[LAYOUT], net[ACTIVATION]
    H, D, Z, W, G = ws[HIDDEN], ws[DELTA], ws[MARGIN], ws[PARAMS], ws[GRAD]
    for j in range(theta.shape[0]):
        W[j] = theta[j]
        G[j] = 0.0
    out = (lay.shape[0] - 1) % 2
    block = Z.shape[0]
    bagged = idx.shape[1] > 0
    total = 0.0
    for r0 in range(lo, hi, block):
        rows = min(block, hi - r0)
        _forward(X, r0, rows, lay, activation, W, H, Z, idx, sign, emb)
        total += _output_slopes(y, sw, r0, rows, net, Z, D[out])
        _backward(X, r0, rows, lay, activation, W, H, D, G)
        if bagged:
            touch(idx, r0, rows, emb, stamp)
            bag_backward(idx, sign, r0, rows, D[0], emb, lay[0, N_OUT])
        for j in range(G.shape[0]):  # the block's sums join the float64 buffer
            grad[j] += G[j]
            G[j] = 0.0
    return total


@njit(nogil=True, cache=True)
def margins(X, lo, hi, net, theta, ws, out):
    """The output margins z of rows [lo, hi) into ``out`` (float64, (hi − lo, out)): predictions
    before the loss's link, by the same forward pass as training."""
    lay, activation = net[LAYOUT], net[ACTIVATION]
    H, Z, W = ws[HIDDEN], ws[MARGIN], ws[PARAMS]
    for j in range(theta.shape[0]):
        W[j] = theta[j]
    block = Z.shape[0]
    idx, sign, emb = _no_bag()
    for r0 in range(lo, hi, block):
        rows = min(block, hi - r0)
        _forward(X, r0, rows, lay, activation, W, H, Z, idx, sign, emb)
        for r in range(rows):
            for k in range(Z.shape[1]):
                out[r0 - lo + r, k] = Z[r, k]


@njit(nogil=True, cache=True)
def mean_gradient(grad, n, l2, theta, lay, out):
    """The batch-mean gradient with the L2 term on the weights (biases are not penalised, as the
    linear model's intercept is not): out = grad / n + l2 · θ on weights, grad / n on biases."""
    for k in range(lay.shape[0]):
        w_at, b_at, end = lay[k, W_AT], lay[k, B_AT], lay[k, B_AT] + lay[k, N_OUT]
        for j in range(w_at, b_at):
            out[j] = grad[j] / n + l2 * theta[j]
        for j in range(b_at, end):
            out[j] = grad[j] / n


@njit(nogil=True, cache=True)
def decay_weights(theta, lay, rate):
    """θ ← θ (1 − rate) on every layer's weights, the biases left as they are: adamw's decoupled
    decay (rate = lr · λ), which PyTorch's AdamW applies before the Adam step."""
    keep = 1.0 - rate
    for k in range(lay.shape[0]):
        for j in range(lay[k, W_AT], lay[k, B_AT]):
            theta[j] *= keep
