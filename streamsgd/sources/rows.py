"""Compiled copies of decoded data into a window's rows, checking every value on the way.

The window buffer is row-major and already shuffled: each copy writes row ``j`` of a chunk
to the window row ``rows[j]`` the plan gives it, so the trainer reads the window in order
(random writes are absorbed by the store buffers; random reads stall the one thread that
trains, DESIGN.md §3). Parquet decodes column by column, Zarr and in-memory arrays hand over row-major blocks. Each copy
here is one pass that also casts to the window's dtype and finds the first non-finite
value, so a window costs one write of its bytes after decoding: no intermediate stacked
copy, no separate finiteness pass (the largest share of a reader's time after decoding).

Columns reach the kernel as raw addresses of the decoded buffers, not as a list of
arrays: Numba's typed lists compile anew in every process (seconds of each start) and a
tuple of arrays would compile once per column count. The caller keeps the arrays alive
during the call. Rows reach the window through non-temporal stores: the window is far
larger than the cache and is read next by another thread, so reading its lines in before
overwriting them (what an ordinary store does) would only cost memory bandwidth.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic
from numpy.typing import NDArray

#: Rows per block of the transpose: the block (100 KB at d = 100 float32) stays in L2 while
#: its columns are written, then goes to the window in one streaming pass.
BLOCK_ROWS = 256


@intrinsic
def _pointer_like(typingctx, address, witness):
    """``address`` as a pointer to elements of ``witness``'s dtype."""
    sig = types.CPointer(witness.dtype)(address, witness)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def _store_streaming(typingctx, out, i, value):
    """``out[i] = value`` (1-D contiguous ``out``) as a non-temporal store: the line goes to
    memory without first being read into the cache, a third of a copy's memory traffic."""
    sig = types.void(out, i, value)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        store = builder.store(args[2], builder.gep(array.data, [args[1]]))
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fence(typingctx):
    """Order the streaming stores before anything later (another thread reads the window)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _column_into(src, i0, i1, block, j):
    """``block[:, j] = src[i0:i1]`` cast to the block's dtype; returns the sum of v * 0 (the
    scan: 0 when all values are finite, NaN otherwise). A sum vectorises (``reassoc``) where a
    per-value test and branch would not; NaN and infinity keep their meaning."""
    zero = block.dtype.type(0.0)
    scan = zero
    for i in range(i0, i1):
        v = block.dtype.type(src[i])
        block[i - i0, j] = v
        scan += v * zero
    return scan


#: Column dtypes the copy reads as they are; others are converted first (see ``fill_columns``).
_KINDS = {np.dtype(t): k for k, t in enumerate((np.float32, np.float64, np.int32, np.int64, np.uint64))}


@njit(nogil=True, cache=True)
def _fill_columns(addresses, kinds, X, rows):
    """``X[rows[i], j] = column j[i]`` (``rows.size`` values of dtype ``_KINDS`` code
    ``kinds[j]`` at ``addresses[j]``); returns the first column given a non-finite value, or -1.

    Each block of rows is transposed in a buffer that stays in L2, then streamed to its
    rows of ``X``: faster than ordinary stores with Arrow's system pool (as the CLI runs), no
    slower with pyarrow's default pool (benchmarks/README.md, "Figures behind the code").
    """
    n, d = rows.size, X.shape[1]
    out = X.reshape(-1)
    block = np.empty((BLOCK_ROWS, d), X.dtype)
    flat = block.reshape(-1)
    witnesses = (np.empty(0, np.float32), np.empty(0, np.float64), np.empty(0, np.int32), np.empty(0, np.int64),
                 np.empty(0, np.uint64))
    bad = -1
    for i0 in range(0, n, BLOCK_ROWS):
        i1 = min(n, i0 + BLOCK_ROWS)
        for j in range(d):
            kind = kinds[j]
            if kind == 0:
                scan = _column_into(carray(_pointer_like(addresses[j], witnesses[0]), n), i0, i1, block, j)
            elif kind == 1:
                scan = _column_into(carray(_pointer_like(addresses[j], witnesses[1]), n), i0, i1, block, j)
            elif kind == 2:
                scan = _column_into(carray(_pointer_like(addresses[j], witnesses[2]), n), i0, i1, block, j)
            elif kind == 3:
                scan = _column_into(carray(_pointer_like(addresses[j], witnesses[3]), n), i0, i1, block, j)
            else:
                scan = _column_into(carray(_pointer_like(addresses[j], witnesses[4]), n), i0, i1, block, j)
            if scan != 0.0 and (bad < 0 or j < bad):
                bad = j
        for r in range(i1 - i0):
            base = rows[i0 + r] * d
            for k in range(d):
                _store_streaming(out, base + k, flat[r * d + k])
    _fence()
    return bad


def fill_columns(columns: list[NDArray], X: NDArray, rows: NDArray[np.int64] | None = None) -> int:
    """Copy 1-D ``columns`` (any numeric dtypes) into the columns of row-major ``X``: value
    ``i`` of each into row ``rows[i]`` (default: row ``i``).

    Returns the first column of ``X`` that received a non-finite value (NaN, infinity, or a
    number beyond ``X.dtype``'s range), or -1.
    """
    if not X.flags.c_contiguous:
        raise ValueError("fill_columns writes a C-contiguous window")
    prepared = []
    for c in columns:
        if c.dtype not in _KINDS:  # narrower integers exactly as int64; float16 and bool (no Numba type) as X's
            c = c.astype(np.int64 if c.dtype.kind in "iu" else X.dtype)
        prepared.append(np.ascontiguousarray(c))
    addresses = np.array([c.ctypes.data for c in prepared], dtype=np.int64)
    kinds = np.array([_KINDS[c.dtype] for c in prepared], dtype=np.int64)
    return _fill_columns(addresses, kinds, X, _rows(rows, X))


def copy_hashed(parts: list[tuple[NDArray[np.int32], NDArray[np.int8]]], idx: NDArray[np.int32],
                sign: NDArray[np.int8], rows: NDArray[np.int64] | None = None) -> None:
    """A chunk's hashed columns into the window: ``parts`` holds each categorical column's
    (ids, signs), (n, width) each, side by side in ``idx``/``sign``'s k columns, row ``i`` into
    row ``rows[i]``. Each block of rows is gathered in an L2-sized buffer and every row's k
    values are written together: assigned column by column (NumPy's fancy indexing) the
    window's rows were visited once per column, a cache miss each time, and a stacked copy of
    the chunk would be fresh pages to fault in for every chunk."""
    prepared = [(np.ascontiguousarray(ids, np.int32), np.ascontiguousarray(signs, np.int8)) for ids, signs in parts]
    widths = np.array([ids.shape[1] for ids, _ in prepared], dtype=np.int64)
    if int(widths.sum()) != idx.shape[1]:
        raise ValueError(f"{int(widths.sum())} hashed columns for a window of {idx.shape[1]}")
    _copy_hashed(np.array([ids.ctypes.data for ids, _ in prepared], dtype=np.int64),
                 np.array([signs.ctypes.data for _, signs in prepared], dtype=np.int64), widths, idx, sign,
                 _rows(rows, idx))


@njit(nogil=True, cache=True)
def _copy_hashed(id_addresses, sign_addresses, widths, idx, sign, rows):
    n, k = rows.size, idx.shape[1]
    block_ids, block_signs = np.empty((BLOCK_ROWS, k), np.int32), np.empty((BLOCK_ROWS, k), np.int8)
    id_witness, sign_witness = np.empty(0, np.int32), np.empty(0, np.int8)
    for i0 in range(0, n, BLOCK_ROWS):
        i1 = min(n, i0 + BLOCK_ROWS)
        j = 0
        for c in range(widths.size):
            w = widths[c]
            ids = carray(_pointer_like(id_addresses[c], id_witness), n * w)
            signs = carray(_pointer_like(sign_addresses[c], sign_witness), n * w)
            for i in range(i0, i1):
                for q in range(w):
                    block_ids[i - i0, j + q] = ids[i * w + q]
                    block_signs[i - i0, j + q] = signs[i * w + q]
            j += w
        for r in range(i1 - i0):
            to = rows[i0 + r]
            for q in range(k):
                idx[to, q] = block_ids[r, q]
                sign[to, q] = block_signs[r, q]


def _rows(rows: NDArray[np.int64] | None, X: NDArray) -> NDArray[np.int64]:
    """The destination rows of a copy: ``rows``, or all of ``X``'s in order."""
    return np.arange(X.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)


@njit(nogil=True, cache=True)
def _first_bad_column(X, i, bad):
    """The first column of row ``i`` holding NaN or infinity if it comes before column ``bad``
    (any column when ``bad`` < 0), else ``bad``: the running answer of a row-by-row scan."""
    for j in range(X.shape[1] if bad < 0 else bad):
        if not math.isfinite(X[i, j]):
            return j
    return bad


def copy_rows(block: NDArray, X: NDArray, rows: NDArray[np.int64] | None = None) -> int:
    """``X[rows] = block`` (default ``X[...] = block``; any numeric dtypes); returns the first
    column given a non-finite value, or -1."""
    return _copy_rows(block, X, _rows(rows, X))


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _copy_rows(block, X, rows):
    """``X[rows[i]] = block[i]``, with the scan of ``_column_into`` row by row."""
    d = X.shape[1]
    zero = X.dtype.type(0.0)
    bad = -1
    for i in range(rows.size):
        r = rows[i]
        scan = zero
        for j in range(d):
            v = X.dtype.type(block[i, j])
            X[r, j] = v
            scan += v * zero
        if scan != zero:
            bad = _first_bad_column(X, r, bad)
    return bad


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def first_nonfinite_column(X) -> int:
    """The first column of ``X`` holding NaN or infinity, or -1 (for data decoded in place)."""
    n, d = X.shape
    zero = X.dtype.type(0.0)
    bad = -1
    for i in range(n):
        scan = zero
        for j in range(d):
            scan += X[i, j] * zero
        if scan != zero:
            bad = _first_bad_column(X, i, bad)
    return bad


#: The values an indicator feature ``<col>__missing`` takes (sources.missing).
PRESENT, ABSENT = 0.0, 1.0


@njit(nogil=True, cache=True)
def impute_column(values, valid, first, mean, out, flag):
    """``out[i] = values[i]`` where bit ``first + i`` of the Arrow validity bitmap ``valid``
    (least significant bit first) is set, else ``mean``; ``flag[i]`` ABSENT where the value
    was null, else PRESENT. One pass, no Python per row (sources.missing.imputed)."""
    for i in range(values.size):
        j = first + i
        if (valid[j >> 3] >> (j & 7)) & 1:
            out[i] = values[i]
            flag[i] = PRESENT
        else:
            out[i] = mean
            flag[i] = ABSENT
