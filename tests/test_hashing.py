"""The hashing of categorical columns (sources/hashing.py): MurmurHash3_x86_32 bit for bit
against scikit-learn's independent implementation, and ``hash_column`` over every Arrow layout
it reads (plain, large, sliced, chunked, dictionary, integer, boolean, with nulls) against
that reference applied value by value."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.utils import murmurhash3_32 as reference

from streamsgd.errors import DataError, UsageError
from streamsgd.sources.hashing import (BOOL_TAG, INT_TAG, MAX_HASH_BITS, NULL_SALT, NULL_TOKEN, column_seed,
                                       hash_column, murmurhash3_32)

SEEDS = st.integers(0, 2**32 - 1)
BITS = st.integers(1, MAX_HASH_BITS)
#: Published MurmurHash3_x86_32 test vectors (key, seed, unsigned hash): empty keys, every tail
#: length, a zero block, and longer keys.
PUBLISHED = [
    (b"", 0, 0), (b"", 1, 0x514E28B7), (b"", 0xFFFFFFFF, 0x81F16F39), (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
    (b"a", 0x9747B28C, 0x7FA09EA6), (b"ab", 0x9747B28C, 0x74875592), (b"abc", 0x9747B28C, 0xC84A62DD),
    (b"aaaa", 0x9747B28C, 0x5A97808A), (b"Hello, world!", 1234, 0xFAF6CDB3),
    (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
]
FAST = settings(deadline=None, max_examples=150)


def expected(value, seed, bits, null_seed=None):
    """(index, sign) of one value by the reference: a str/bytes value's bytes, an int's 8
    little-endian bytes and INT_TAG, a bool's with BOOL_TAG, None the column's null token."""
    if value is None:
        key, seed = NULL_TOKEN, seed ^ NULL_SALT
    elif isinstance(value, bool):
        key = int(value).to_bytes(8, "little") + bytes([BOOL_TAG])
    elif isinstance(value, int):
        key = (value % 2**64).to_bytes(8, "little") + bytes([INT_TAG])
    else:
        key = value.encode("utf-8") if isinstance(value, str) else value
    h = reference(key, seed)
    return reference(key, seed, positive=True) & ((1 << bits) - 1), 1 if h >= 0 else -1


def expected_arrays(values, seed, bits):
    pairs = [expected(v, seed, bits) for v in values]
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int8)


def assert_hashes(array, values, seed, bits):
    idx, sign = hash_column(array, seed, bits)
    want_idx, want_sign = expected_arrays(values, seed, bits)
    assert idx.dtype == np.int32 and sign.dtype == np.int8
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(sign, want_sign)


# ------------------------------------------------------------------ the hash function itself


@pytest.mark.parametrize("key, seed, unsigned", PUBLISHED)
def test_published_vectors(key, seed, unsigned):
    assert murmurhash3_32(key, seed, positive=True) == unsigned == reference(key, seed, positive=True)
    assert murmurhash3_32(key, seed) == (unsigned if unsigned < 2**31 else unsigned - 2**32)


@FAST
@given(key=st.binary(max_size=64), seed=SEEDS)
@example(key=b"", seed=0)
@example(key=bytes(range(256)) * 40, seed=7)  # 10 kB: many blocks
def test_bytes_match_sklearn(key, seed):
    assert murmurhash3_32(key, seed) == reference(key, seed)
    assert murmurhash3_32(key, seed, positive=True) == reference(key, seed, positive=True)


@FAST
@given(text=st.text(), seed=SEEDS)
@example(text="héllo wörld ✓ 日本語 🙂", seed=1)
def test_utf8_text_matches_sklearn(text, seed):
    # sklearn hashes a str as its UTF-8 bytes
    assert murmurhash3_32(text.encode("utf-8"), seed) == reference(text, seed)


def test_column_seed_is_the_hash_of_the_name():
    assert column_seed("carrier", 42) == reference("carrier", 42, positive=True)
    assert column_seed("carrier", 42) != column_seed("carrier", 43) != column_seed("origin", 43)
    assert column_seed("ville_é", 0) == reference("ville_é".encode("utf-8"), 0, positive=True)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_refused(seed):
    with pytest.raises(UsageError, match="hash seed must be from 0 to 4294967295"):
        column_seed("x", seed)


# ------------------------------------------------------------------ strings over Arrow buffers

VALUES = st.lists(st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["", "a", "ab", "abc", "null"])),
                  max_size=40)


@FAST
@given(values=VALUES, seed=SEEDS, bits=BITS, cut=st.tuples(st.integers(0, 40), st.integers(0, 40)))
def test_strings_sliced_with_nulls_match_the_reference(values, seed, bits, cut):
    start, length = min(cut[0], len(values)), cut[1]
    want = values[start:start + length]
    for kind in (pa.string(), pa.large_string(), pa.string_view()):
        array = pa.array(values, kind).slice(start, length)
        assert_hashes(array, want, seed, bits)
        assert_hashes(array.dictionary_encode(), want, seed, bits)


def test_large_string_equals_string_on_many_values():
    values = [f"value-{i}-é" if i % 7 else None for i in range(5000)]
    plain = hash_column(pa.array(values, pa.string()), 99, 20)
    large = hash_column(pa.array(values, pa.large_string()), 99, 20)
    np.testing.assert_array_equal(plain[0], large[0])
    np.testing.assert_array_equal(plain[1], large[1])


def test_null_is_its_own_token_not_the_string_null():
    seed = column_seed("c", 0)
    idx, sign = hash_column(pa.array([None, "null", None]), seed, MAX_HASH_BITS)
    assert (idx[0], sign[0]) == (idx[2], sign[2]) == expected(None, seed, MAX_HASH_BITS)
    assert (idx[0], sign[0]) != (idx[1], sign[1])
    other = hash_column(pa.array([None], pa.string()), column_seed("d", 0), MAX_HASH_BITS)
    assert other[0][0] != idx[0]  # per column
    # a column of Arrow's null type (pandas writes an all-None column so): every row the token
    nothing = hash_column(pa.array([None, None]), seed, MAX_HASH_BITS)
    assert nothing[0].tolist() == [idx[0]] * 2 and nothing[1].tolist() == [sign[0]] * 2


def test_all_null_and_all_empty_columns():
    # no data bytes at all: pyarrow may hand over an empty or missing data buffer
    assert_hashes(pa.array([None, None], pa.string()), [None, None], 5, 12)
    assert_hashes(pa.array(["", ""], pa.large_string()), ["", ""], 5, 12)
    assert_hashes(pa.array([], pa.string()), [], 5, 12)


def test_chunked_arrays_concatenate_their_chunks():
    chunks = [["a", None, "b"], [], ["c", "a"]]
    array = pa.chunked_array([pa.array(c, pa.string()) for c in chunks])
    assert_hashes(array, [v for c in chunks for v in c], 3, 16)
    idx, sign = hash_column(pa.chunked_array([], pa.string()), 3, 16)
    assert idx.shape == sign.shape == (0,)


# ------------------------------------------------------------------ dictionaries


def test_dictionary_row_groups_with_different_codes_give_the_same_ids(tmp_path):
    """Two row groups whose dictionaries list the values in different orders: the same value has
    different codes in each, and must still get the same (index, sign)."""
    values = ["b", "a", None, "c", "c", "a", "b", None]
    path = tmp_path / "two_groups.parquet"
    pq.write_table(pa.table({"c": pa.array(values)}), path, row_group_size=4)
    column = pq.read_table(path, read_dictionary=["c"]).column("c")
    assert column.num_chunks == 2 and all(pa.types.is_dictionary(ch.type) for ch in column.chunks)
    first, second = (ch.dictionary.to_pylist() for ch in column.chunks)
    assert first != second and sorted(first) == sorted(second)  # the case this test is about
    assert column.chunk(0).indices[0] != column.chunk(1).indices[2]  # "b": two codes
    seed = column_seed("c", 11)
    assert_hashes(column, values, seed, 20)
    idx, sign = hash_column(column, seed, 20)
    assert idx[0] == idx[6] and sign[0] == sign[6]


@FAST
@given(values=st.lists(st.one_of(st.none(), st.sampled_from(["x", "y", "zz", "ünï"])), max_size=30),
       order=st.permutations(["x", "y", "zz", "ünï"]), seed=SEEDS, bits=BITS, start=st.integers(0, 30))
def test_dictionary_equals_plain_for_any_dictionary_order(values, order, seed, bits, start):
    codes = pa.array([None if v is None else order.index(v) for v in values], pa.int16())
    array = pa.DictionaryArray.from_arrays(codes, pa.array(order)).slice(start)
    assert_hashes(array, values[start:], seed, bits)


def test_dictionary_of_integers_and_a_null_entry():
    codes = pa.array([0, 1, 2, None, 1], pa.int8())
    array = pa.DictionaryArray.from_arrays(codes, pa.array([7, None, -3], pa.int64()))
    assert_hashes(array, [7, None, -3, None, None], 21, 18)


# ------------------------------------------------------------------ integers and booleans

INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


@pytest.mark.parametrize("kind", INT_TYPES, ids=str)
def test_integers_hash_their_value_whatever_the_width(kind):
    low = 0 if pa.types.is_unsigned_integer(kind) else -(2 ** (kind.bit_width - 1))
    high = 2**kind.bit_width - 1 + low
    values = [0, 1, None, high, low, 5, None, 100 % (high + 1)]
    array = pa.array(values, kind).slice(1)
    assert_hashes(array, values[1:], 77, 24)
    # the same values in an int64 column: the same ids
    small = [v for v in values if v is None or -(2**63) <= v < 2**63]
    np.testing.assert_array_equal(hash_column(pa.array(small, kind), 77, 24)[0],
                                  hash_column(pa.array(small, pa.int64()), 77, 24)[0])


@FAST
@given(values=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=30), seed=SEEDS,
       bits=BITS, start=st.integers(0, 30))
def test_int64_sliced_with_nulls_match_the_reference(values, seed, bits, start):
    assert_hashes(pa.array(values, pa.int64()).slice(start), values[start:], seed, bits)


def test_booleans_sliced_off_a_byte_boundary():
    values = [True, False, None, True, True, False, False, True, None, False, True]
    for start in range(len(values)):
        assert_hashes(pa.array(values).slice(start), values[start:], 13, 10)
    one, true = hash_column(pa.array([1], pa.int64()), 13, 30), hash_column(pa.array([True]), 13, 30)
    assert one[0][0] != true[0][0]  # the type tag keeps 1 and True apart


# ------------------------------------------------------------------ bits, refusals, statistics


def test_every_bits_keeps_the_low_bits_of_one_hash():
    values = [f"v{i}" for i in range(2000)]
    full, full_sign = hash_column(pa.array(values), 4, MAX_HASH_BITS)
    for bits in range(1, MAX_HASH_BITS + 1):
        idx, sign = hash_column(pa.array(values), 4, bits)
        assert 0 <= idx.min() and idx.max() < 2**bits
        np.testing.assert_array_equal(idx, full & ((1 << bits) - 1))
        np.testing.assert_array_equal(sign, full_sign)  # the sign never depends on bits
    assert full.max() >= 2**29  # the top index bit is used


@pytest.mark.parametrize("bits", [0, 31, -1])
def test_bits_out_of_range_are_refused(bits):
    with pytest.raises(UsageError, match="--hash-bits must be from 1 to 30"):
        hash_column(pa.array(["a"]), 0, bits)


@pytest.mark.parametrize("array", [pa.array([1.5]), pa.array([b"\x00"], pa.binary()),
                                   pa.array([{"a": 1}]), pa.array([[1, 2]])], ids=["double", "binary", "struct", "list"])
def test_types_that_are_not_categorical_are_refused(array):
    with pytest.raises(DataError, match=f"cannot hash a column of type {array.type}.*--exclude"):
        hash_column(array, 0, 20)


DISTINCT = 100_000
BUCKET_BITS = 20


@pytest.fixture(scope="module")
def many():
    """(idx, sign) of 100k distinct strings at 2^20 buckets."""
    return hash_column(pa.array([f"user-{i:07d}" for i in range(DISTINCT)]), column_seed("user", 0), BUCKET_BITS)


def test_sign_is_balanced_and_independent_of_every_index_bit(many):
    """P(+1) = 1/2 overall and among the rows with each index bit set. Each fraction over n rows
    has standard deviation sqrt(0.25 / n) under an ideal hash; 5 of them (a one-sided miss
    chance of 3e-7 per check, 6e-6 for all 21) is the tolerance."""
    idx, sign = many
    positive = sign == 1
    assert abs(positive.mean() - 0.5) < 5 * math.sqrt(0.25 / DISTINCT)
    for b in range(BUCKET_BITS):
        rows = (idx >> b) & 1 == 1
        assert abs(positive[rows].mean() - 0.5) < 5 * math.sqrt(0.25 / rows.sum()), b


def test_collisions_within_a_binomial_bound(many):
    """Colliding pairs among n distinct values in m buckets: a sum of C(n, 2) indicators, each 1
    with probability 1/m and (for an ideal hash) pairwise independent, so the count has the
    binomial mean and variance; the observed count must lie within 5 standard deviations."""
    idx, _ = many
    counts = np.bincount(idx, minlength=2**BUCKET_BITS)
    pairs = int((counts * (counts - 1) // 2).sum())
    trials, p = DISTINCT * (DISTINCT - 1) // 2, 2.0**-BUCKET_BITS
    mean, sd = trials * p, math.sqrt(trials * p * (1 - p))
    assert abs(pairs - mean) < 5 * sd, (pairs, mean, sd)


def test_benchmark_runs_and_reports_its_ratios(tmp_path, capsys):
    """benchmarks/hashing.py's plumbing on a tiny column (it also checks the plain and the
    dictionary hash agree); no timing is asserted."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))  # the script imports its sibling provenance.py
    try:
        spec = importlib.util.spec_from_file_location("streamsgd_bench_hashing", bench_dir / "hashing.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main(["--rows", "3000", "--distinct", "300", "--runs", "1", "--out", str(tmp_path)]) == 0
    finally:
        sys.path.remove(str(bench_dir))
    report = json.loads((tmp_path / "hashing.json").read_text())
    assert report["rows"] == 3000 and 0 < report["distinct"] <= 300
    assert set(report["ratios"]["cpu"]) == {"hash/decode", "hash_dict/decode_dict", "sklearn/hash"}
    assert all(v > 0 for v in report["rows_per_second"].values())
    assert "sklearn/hash" in capsys.readouterr().out


def test_empty_chunks_of_a_refused_type_are_refused_too():
    with pytest.raises(DataError, match="cannot hash a column of type double"):
        hash_column(pa.array([], pa.float64()), 0, 20)
    with pytest.raises(DataError, match="cannot hash a column of type dictionary<values=double"):
        hash_column(pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array([1.5])), 0, 20)
