"""Categorical values hashed to sparse feature ids straight from Arrow's buffers.

The hashing trick (DESIGN.md §8): each categorical value becomes one index among ``2**bits``
and a sign, from the signed 32-bit MurmurHash3 (x86_32 variant) of its bytes, seeded per
column. The index is the low ``bits`` bits of the hash and the sign its bit 31, which no
index uses (``bits`` <= 30), so index and sign are independent and a collision between two
values cancels on average instead of adding up (Weinberger et al. 2009). The sign is +1
exactly when the signed hash is >= 0, scikit-learn ``FeatureHasher``'s convention.

pyarrow has no stable scalar hash and a Python call per row would cost more than decoding
the column, so the kernels read Arrow's buffers directly: string offsets (int32, or int64
for ``large_string``) and the data bytes, integer values, the validity bitmap, and the
array's own offset (a slice shares its parent's buffers). A dictionary column is hashed once
per chunk through its dictionary, then gathered by code: codes number the values of one row
group's dictionary only, so they are never ids themselves. A null hashes as the column's
null token (the bytes of ``NULL_TOKEN`` under a salted column seed), a category of its own
that no value of the column can produce by construction (only by collision, like any two
values). Integers hash their 8-byte little-endian value and a type tag, so an ``int32`` and
an ``int64`` column of the same values encode alike; booleans hash 0 or 1 with their own tag.

The kernels live with the sources because hashing is part of reading a chunk's rows, like
the copies of ``rows.py``; the trainer later sees only ``idx`` and ``sign`` arrays.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit
from numpy.typing import NDArray

from ..errors import DataError, UsageError

#: Most index bits: bit 31 of the hash is the sign and must stay outside the index.
MAX_HASH_BITS = 30
#: Seeds (run and column) are MurmurHash3's unsigned 32-bit seed.
MAX_SEED = 2**32 - 1
#: The bytes a null hashes as, under the column seed xor NULL_SALT (see the module docstring).
NULL_TOKEN = b"null"
NULL_SALT = 0x9E3779B9
#: Type tags: the byte after an integer's (or boolean's) 8 value bytes.
INT_TAG = 1
BOOL_TAG = 2

POSITIVE = np.int8(1)
NEGATIVE = np.int8(-1)

# MurmurHash3_x86_32 constants, as uint64: Numba widens uint32 arithmetic to 64 bits, so every
# step works in uint64 and masks back to 32 bits (mixing signed and unsigned would go to float).
_MASK32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0xCC9E2D51)
_C2 = np.uint64(0x1B873593)
_M5 = np.uint64(5)
_N1 = np.uint64(0xE6546B64)
_F1 = np.uint64(0x85EBCA6B)
_F2 = np.uint64(0xC2B2AE35)
_SIGN_BIT = np.uint64(0x80000000)
_BLOCK = 4  # bytes per MurmurHash3 block
_INT_BYTES = np.uint64(9)  # an integer's 8 value bytes and its tag byte
_R13, _R15, _R16, _R17, _R19 = (np.uint64(r) for r in (13, 15, 16, 17, 19))
_S8, _S16, _S24, _S32 = (np.uint64(s) for s in (8, 16, 24, 32))
_TAIL1, _TAIL2, _TAIL3 = 1, 2, 3


@njit(nogil=True, cache=True)
def _scramble(k):
    """A block (or the tail) mixed before it enters the state: k·c1, rotl 15, ·c2."""
    k = (k * _C1) & _MASK32
    k = ((k << _R15) | (k >> _R17)) & _MASK32
    return (k * _C2) & _MASK32


@njit(nogil=True, cache=True)
def _absorb(h, k):
    """The state after one 4-byte block ``k``: h ^ scramble(k), rotl 13, ·5 + n1."""
    h ^= _scramble(k)
    h = ((h << _R13) | (h >> _R19)) & _MASK32
    return (h * _M5 + _N1) & _MASK32


@njit(nogil=True, cache=True)
def _finish(h, length):
    """Fold in the length and avalanche (fmix32)."""
    h ^= length
    h ^= h >> _R16
    h = (h * _F1) & _MASK32
    h ^= h >> _R13
    h = (h * _F2) & _MASK32
    return h ^ (h >> _R16)


@njit(nogil=True, cache=True)
def _murmur_bytes(data, start, end, seed):
    """MurmurHash3_x86_32 of ``data[start:end]`` (uint8) as an unsigned value in a uint64."""
    h = np.uint64(seed)
    n = end - start
    blocks_end = start + (n // _BLOCK) * _BLOCK
    for i in range(start, blocks_end, _BLOCK):
        k = (np.uint64(data[i]) | (np.uint64(data[i + 1]) << _S8)
             | (np.uint64(data[i + 2]) << _S16) | (np.uint64(data[i + 3]) << _S24))
        h = _absorb(h, k)
    tail = n % _BLOCK
    k = np.uint64(0)
    if tail == _TAIL3:
        k ^= np.uint64(data[blocks_end + 2]) << _S16
    if tail >= _TAIL2:
        k ^= np.uint64(data[blocks_end + 1]) << _S8
    if tail >= _TAIL1:
        k ^= np.uint64(data[blocks_end])
        h ^= _scramble(k)
    return _finish(h, np.uint64(n))


@njit(nogil=True, cache=True)
def _murmur_int(value, tag, seed):
    """MurmurHash3_x86_32 of an int64's 8 little-endian bytes followed by the byte ``tag``."""
    v = np.uint64(value)
    h = _absorb(np.uint64(seed), v & _MASK32)
    h = _absorb(h, v >> _S32)
    h ^= _scramble(np.uint64(tag))
    return _finish(h, _INT_BYTES)


@njit(nogil=True, cache=True)
def _is_null(valid, has_nulls, j):
    """Whether bit ``j`` of the validity bitmap (least significant bit first) says null."""
    return has_nulls and not (valid[j >> 3] >> (j & 7)) & 1


@njit(nogil=True, cache=True)
def _hash_strings(offsets, data, valid, has_nulls, first, seed, mask, null_idx, null_sign, idx, sign):
    """Rows ``first .. first + len(idx)`` of a string array: ``idx`` = hash & mask, ``sign``
    from bit 31; a null row gets (null_idx, null_sign)."""
    for i in range(idx.size):
        j = first + i
        if _is_null(valid, has_nulls, j):
            idx[i] = null_idx
            sign[i] = null_sign
            continue
        h = _murmur_bytes(data, offsets[j], offsets[j + 1], seed)
        idx[i] = h & mask
        sign[i] = POSITIVE if h & _SIGN_BIT == 0 else NEGATIVE


@njit(nogil=True, cache=True)
def _hash_ints(values, tag, valid, has_nulls, first, seed, mask, null_idx, null_sign, idx, sign):
    """``values`` (int64, already sliced) hashed with ``tag``; validity bit ``first + i``."""
    for i in range(idx.size):
        if _is_null(valid, has_nulls, first + i):
            idx[i] = null_idx
            sign[i] = null_sign
            continue
        h = _murmur_int(values[i], tag, seed)
        idx[i] = h & mask
        sign[i] = POSITIVE if h & _SIGN_BIT == 0 else NEGATIVE


@njit(nogil=True, cache=True)
def _gather(codes, valid, has_nulls, first, dict_idx, dict_sign, null_idx, null_sign, idx, sign):
    """Each row's dictionary entry, already hashed, by its code (int64, already sliced)."""
    for i in range(idx.size):
        if _is_null(valid, has_nulls, first + i):
            idx[i] = null_idx
            sign[i] = null_sign
            continue
        c = codes[i]
        idx[i] = dict_idx[c]
        sign[i] = dict_sign[c]


#: Type tag of a crossed pair's 8 bytes (``--interactions``), apart from integers and booleans.
PAIR_TAG = 3


@njit(nogil=True, cache=True)
def _hash_pairs(idx_a, sign_a, idx_b, sign_b, seed, mask, idx, sign):
    """Each row's crossed feature: the pair of its two hashed features (index and sign bit,
    31 bits each, so distinct pairs stay distinct) hashed again as 8 bytes and PAIR_TAG."""
    for i in range(idx.size):
        a = np.int64(idx_a[i]) * 2 + (1 if sign_a[i] < 0 else 0)
        b = np.int64(idx_b[i]) * 2 + (1 if sign_b[i] < 0 else 0)
        h = _murmur_int((a << 31) | b, PAIR_TAG, seed)
        idx[i] = h & mask
        sign[i] = POSITIVE if h & _SIGN_BIT == 0 else NEGATIVE


def hash_pairs(a: tuple[NDArray[np.int32], NDArray[np.int8]], b: tuple[NDArray[np.int32], NDArray[np.int8]],
               pair_seed: int, bits: int) -> tuple[NDArray[np.int32], NDArray[np.int8]]:
    """The crossed feature of two hashed columns, row by row: (idx, sign) of shape (rows,).

    ``a`` and ``b`` are ``hash_column``'s results for the two columns (a null crosses as
    its column's null category); ``pair_seed`` is ``column_seed("a:b", run seed)``.
    """
    n = a[0].size
    idx, sign = np.empty(n, np.int32), np.empty(n, np.int8)
    _hash_pairs(np.ascontiguousarray(a[0]), np.ascontiguousarray(a[1]), np.ascontiguousarray(b[0]),
                np.ascontiguousarray(b[1]), np.uint64(_check_seed(pair_seed)),
                np.uint64((1 << _check_bits(bits)) - 1), idx, sign)
    return idx, sign


def list_lengths(array: pa.Array | pa.ChunkedArray) -> NDArray[np.int64]:
    """Values per row of a list column; a null list counts 1 (its null category)."""
    import pyarrow.compute as pc

    return np.asarray(pc.list_value_length(array).fill_null(1).to_numpy(zero_copy_only=False), dtype=np.int64)


def hash_list_column(array: pa.Array | pa.ChunkedArray, column_seed: int, bits: int,
                     width: int) -> tuple[NDArray[np.int32], NDArray[np.int8]]:
    """A multi-valued (list) column's features: each row's values hashed as ``hash_column``
    hashes them, left-aligned in ``width`` slots, the rest padded with sign 0 (a term 0·w:
    nothing to the margin, nothing to the gradient). A null list is the column's null
    category; an empty list has no feature. Returns idx, sign of shape (rows, width)."""
    seed, mask = np.uint64(_check_seed(column_seed)), np.uint64((1 << _check_bits(bits)) - 1)
    lengths = list_lengths(array)
    n = lengths.size
    idx, sign = np.zeros((n, width), np.int32), np.zeros((n, width), np.int8)
    if n and int(lengths.max()) > width:
        raise DataError(f"a list holds {int(lengths.max())} values, more than the {width} measured for its column; "
                        "the data changed while it was read")
    values = pa.concat_arrays([c.flatten() for c in (array.chunks if isinstance(array, pa.ChunkedArray) else [array])])
    vi, vs = hash_column(values, column_seed, bits)
    is_null = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    counts = np.where(is_null, 0, lengths)
    rows = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(rows.size) - np.repeat(starts, counts)
    idx[rows, pos], sign[rows, pos] = vi, vs
    null_idx, null_sign = _null_code(seed, mask)
    idx[is_null, 0], sign[is_null, 0] = null_idx, null_sign
    return idx, sign


def murmurhash3_32(key: bytes, seed: int = 0, positive: bool = False) -> int:
    """MurmurHash3_x86_32 of ``key`` under ``seed``: signed, or in [0, 2**32) if ``positive``
    (the convention of ``sklearn.utils.murmurhash3_32``, which the tests check against)."""
    h = int(_murmur_bytes(np.frombuffer(key, dtype=np.uint8), 0, len(key), np.uint64(_check_seed(seed))))
    return h if positive or h < 2**31 else h - 2**32


def column_seed(name: str, seed: int) -> int:
    """The hash seed of column ``name`` under the run seed: murmur3 of the name's UTF-8 bytes.
    Columns hash apart (the same value in two columns is two features), reproducibly per run."""
    return murmurhash3_32(name.encode("utf-8"), seed, positive=True)


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"a hash seed must be from 0 to {MAX_SEED} (32 bits); got {seed}")
    return seed


def _check_bits(bits: int) -> int:
    if not 1 <= bits <= MAX_HASH_BITS:
        raise UsageError(f"--hash-bits must be from 1 to {MAX_HASH_BITS} (bit 31 is the sign); got {bits}")
    return bits


def hash_column(array: pa.Array | pa.ChunkedArray, column_seed: int,
                bits: int) -> tuple[NDArray[np.int32], NDArray[np.int8]]:
    """Hash a categorical Arrow column into feature ids.

    Parameters
    ----------
    array : pa.Array or pa.ChunkedArray of string, large_string, string_view, dictionary
        (of any of these, integers or booleans), integer, boolean or null type; nulls allowed.
    column_seed : the column's seed, ``column_seed(name, run_seed)``.
    bits : index bits, 1 to 30: indices lie in [0, 2**bits).

    Returns
    -------
    idx : ndarray of shape (len(array),), int32: the low ``bits`` bits of each row's hash.
    sign : ndarray of shape (len(array),), int8: +1 or -1, from bit 31 of the hash.
    """
    seed, mask = np.uint64(_check_seed(column_seed)), np.uint64((1 << _check_bits(bits)) - 1)
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    parts = [_hash_array(chunk, seed, mask) for chunk in chunks]
    if not parts:
        return np.empty(0, np.int32), np.empty(0, np.int8)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _null_code(seed: np.uint64, mask: np.uint64) -> tuple[np.int32, np.int8]:
    """(index, sign) of the column's null token."""
    token = np.frombuffer(NULL_TOKEN, dtype=np.uint8)
    h = _murmur_bytes(token, 0, token.size, seed ^ np.uint64(NULL_SALT))
    return np.int32(h & mask), POSITIVE if h & _SIGN_BIT == 0 else NEGATIVE


def _validity(array: pa.Array) -> tuple[NDArray[np.uint8], bool]:
    """The validity bitmap as bytes and whether any row is null (no bitmap: none is)."""
    bitmap = array.buffers()[0]
    if bitmap is None or array.null_count == 0:
        return np.empty(0, np.uint8), False
    return np.frombuffer(bitmap, dtype=np.uint8), True


def _values(array: pa.Array) -> NDArray[np.int64]:
    """An integer or boolean array's values (nulls arbitrary) as int64, the slice applied."""
    n, first, buf = len(array), array.offset, array.buffers()[1]
    if pa.types.is_boolean(array.type):
        bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
        return bits[first:first + n].astype(np.int64)
    values = np.frombuffer(buf, dtype=array.type.to_pandas_dtype())[first:first + n]
    return values.view(np.int64) if values.dtype == np.uint64 else values.astype(np.int64, copy=False)


def _categorical(kind: pa.DataType) -> bool:
    """Whether ``hash_column`` reads columns of this Arrow type."""
    if pa.types.is_dictionary(kind):  # Arrow has no nested dictionaries: one level of recursion
        return _categorical(kind.value_type)
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
            or pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind))


def _hash_array(array: pa.Array, seed: np.uint64, mask: np.uint64) -> tuple[NDArray[np.int32], NDArray[np.int8]]:
    """One chunk's (idx, sign), by its Arrow type."""
    kind = array.type
    if not _categorical(kind):
        raise DataError(f"cannot hash a column of type {kind}: categorical columns are strings, dictionaries, "
                        "integers or booleans; cast it to one of these or leave it out with --exclude")
    if pa.types.is_string_view(kind):  # no offsets buffer: one copy into large_string
        array, kind = array.cast(pa.large_string()), pa.large_string()
    n = len(array)
    idx, sign = np.empty(n, np.int32), np.empty(n, np.int8)
    if n == 0:  # some producers leave an empty array's buffers out
        return idx, sign
    null_idx, null_sign = _null_code(seed, mask)
    valid, has_nulls = _validity(array)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        _, offsets, data = array.buffers()
        width = np.int64 if pa.types.is_large_string(kind) else np.int32
        data_bytes = np.empty(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
        _hash_strings(np.frombuffer(offsets, dtype=width), data_bytes, valid, has_nulls, array.offset,
                      seed, mask, null_idx, null_sign, idx, sign)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        tag = BOOL_TAG if pa.types.is_boolean(kind) else INT_TAG
        _hash_ints(_values(array), tag, valid, has_nulls, array.offset, seed, mask, null_idx, null_sign, idx, sign)
    elif pa.types.is_dictionary(kind):
        dict_idx, dict_sign = _hash_array(array.dictionary, seed, mask)
        codes = array.indices
        _gather(_values(codes), valid, has_nulls, codes.offset, dict_idx, dict_sign, null_idx, null_sign,
                idx, sign)
    else:  # the null type: a column with no value at all (pandas writes an all-None column so)
        idx[:], sign[:] = null_idx, null_sign
    return idx, sign
