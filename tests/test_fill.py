"""The copies into window rows: exact values, any numeric dtype, and the non-finite scan."""

import numpy as np
import pytest

from streamsgd.sources.rows import BLOCK_ROWS, copy_hashed, copy_rows, fill_columns, first_nonfinite_column
from streamsgd.sources.validate import not_finite

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int8, np.uint16, np.bool_, np.int32, np.uint32, np.uint64]


def columns(n, seed=0):
    rng = np.random.default_rng(seed)
    cols = [(rng.standard_normal(n + 3) * 50).astype(dt) for dt in DTYPES]
    return [c[3:] for c in cols]  # views that do not start at their buffer's first byte


@pytest.mark.parametrize("n", [0, 1, BLOCK_ROWS - 1, BLOCK_ROWS * 3 + 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_columns_is_a_transpose_with_casts(n, dtype):
    cols = columns(n)
    X = np.full((n, len(cols)), -7, dtype=dtype)
    assert fill_columns(cols, X) == -1
    np.testing.assert_array_equal(X, np.stack([c.astype(dtype) for c in cols], axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_rows_is_a_copy_with_casts(dtype):
    block = np.random.default_rng(1).integers(-1000, 1000, size=(BLOCK_ROWS + 5, 9))
    X = np.empty(block.shape, dtype=dtype)
    assert copy_rows(block, X) == -1
    np.testing.assert_array_equal(X, block.astype(dtype))
    assert copy_rows(block[:, ::2], X[:, :5]) == -1  # strided source
    np.testing.assert_array_equal(X[:, :5], block[:, ::2].astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_copies_scatter_rows_to_the_places_given(dtype):
    """Row i goes to row rows[i] of a bigger window (the plan's slot); other rows untouched."""
    n = BLOCK_ROWS * 2 + 11
    rng = np.random.default_rng(4)
    rows = rng.permutation(3 * n)[:n]
    cols = columns(n)
    X = np.full((3 * n, len(cols)), -7, dtype=dtype)
    assert fill_columns(cols, X, rows) == -1
    expected = np.full_like(X, -7)
    expected[rows] = np.stack([c.astype(dtype) for c in cols], axis=1)
    np.testing.assert_array_equal(X, expected)
    block = rng.integers(-1000, 1000, size=(n, 5))
    X = np.full((3 * n, 5), -7, dtype=dtype)
    assert copy_rows(block, X, rows) == -1
    expected = np.full_like(X, -7)
    expected[rows] = block
    np.testing.assert_array_equal(X, expected)
    cols[2] = cols[2].astype(np.float64)
    cols[2][n // 2] = np.nan  # found wherever its row lands
    assert fill_columns(cols, np.empty((3 * n, len(cols)), dtype), rows) == 2
    assert copy_rows(np.stack(cols, axis=1), np.empty((3 * n, len(cols)), dtype), rows) == 2


def test_first_bad_column_is_reported_whichever_row_and_dtype_group_holds_it():
    n = BLOCK_ROWS * 2 + 3
    cols = columns(n)
    cols[3] = cols[3].astype(np.float64)  # column 3 joins the float64 group of column 1
    cols[3][-1] = np.inf  # late row, low column
    cols[4] = cols[4].astype(np.float32)
    cols[4][0] = np.nan  # early row, higher column, another dtype group
    assert fill_columns(cols, np.empty((n, len(cols)), np.float32)) == 3
    block = np.stack(cols, axis=1)
    assert copy_rows(block, np.empty_like(block)) == 3


def test_a_value_beyond_float32_is_named_as_out_of_range_not_as_nan():
    cols = [np.ones(10), np.array([1.0] * 9 + [1e300])]
    X = np.empty((10, 2), np.float32)
    assert fill_columns(cols, X) == 1
    assert "beyond the range of float32" in str(not_finite(cols[1], X.dtype, "f.parquet row group 0", "b"))
    assert fill_columns(cols, np.empty((10, 2), np.float64)) == -1
    cols[0][4] = np.nan
    message = str(not_finite(cols[0], np.float32, "f.parquet row group 0", "a"))
    assert message == "f.parquet row group 0: column 'a' holds NaN or infinite values; clean or impute them"


def test_scan_of_data_decoded_in_place():
    X = np.random.default_rng(3).standard_normal((BLOCK_ROWS + 9, 7)).astype(np.float32)
    assert first_nonfinite_column(X) == -1
    X[-1, 2] = -np.inf
    X[0, 5] = np.nan
    assert first_nonfinite_column(X) == 2


@pytest.mark.parametrize("n", [0, 1, BLOCK_ROWS * 2 + 5])
def test_copy_hashed_places_every_columns_ids_and_signs_in_their_rows(n):
    """Scalar columns (width 1, a strided view as the hashing returns them) and a list column
    (width 3) side by side, row i into row rows[i] of a bigger window: NumPy's assignment."""
    rng = np.random.default_rng(2)
    widths = [1, 3, 1]
    parts = [(rng.integers(0, 2**20, size=(n, w)).astype(np.int32), rng.choice([-1, 0, 1], size=(n, w)).astype(np.int8))
             for w in widths]
    parts[0] = (parts[0][0][:, 0][:, None], parts[0][1])  # a (n, 1) view of a 1-D array
    rows = rng.permutation(n + 4)[:n]
    idx, sign = np.full((n + 4, 5), -1, np.int32), np.full((n + 4, 5), 9, np.int8)
    copy_hashed(parts, idx, sign, rows)
    want_idx, want_sign = np.full_like(idx, -1), np.full_like(sign, 9)
    want_idx[rows], want_sign[rows] = np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts])
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(sign, want_sign)
    with pytest.raises(ValueError, match="5 hashed columns for a window of 4"):
        copy_hashed(parts, idx[:, :4], sign[:, :4], rows)
