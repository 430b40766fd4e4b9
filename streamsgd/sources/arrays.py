"""In-memory arrays as a source: for the Python API and the tests."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from .base import SourceBase
from .validate import not_finite


#: A sparse X's chunk is densified as it is read: its rows are cut so that one dense chunk
#: holds at most this many bytes (the memory plan charges it as the chunk's decode).
SPARSE_CHUNK_BYTES = 16 << 20


def _is_sparse(X: Any) -> bool:
    """A SciPy sparse matrix or array (duck-typed: SciPy is not imported for dense data)."""
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


class ArraySource(SourceBase):
    """In-memory arrays cut into chunks; used by the Python API and the tests (pickles with its arrays).

    X may be a SciPy sparse matrix (a ``OneHotEncoder``'s output, say): it is kept as CSR
    and each chunk is densified as it is read, so its columns train as dense features
    (standardised like any other); its chunks are cut to ``SPARSE_CHUNK_BYTES`` dense.
    Wide one-hot data is better given as a text column of a Parquet file, which is hashed
    and trains in O(nnz) (DESIGN.md §8)."""

    def __init__(
        self, X: Any, y: NDArray | None, chunk_rows: int = 65536, features: Sequence[str] | None = None,
        sample_weight: NDArray | None = None,
    ):
        sparse = _is_sparse(X)
        X = X.tocsr() if sparse else np.asarray(X)
        if X.ndim != 2:
            raise DataError(f"X: expected a 2-D array (rows, features), got shape {X.shape}")
        if sparse:
            chunk_rows = max(1, min(chunk_rows, SPARSE_CHUNK_BYTES // (8 * max(X.shape[1], 1))))
        self.X: Any = X  # an ndarray, or a CSR matrix
        self.y = None if y is None else np.asarray(y)
        if self.y is not None and self.y.shape != (X.shape[0],):
            raise DataError(f"y: expected shape ({X.shape[0]},), got {self.y.shape}")
        self.url = "<arrays>"
        self.features = list(features) if features is not None else [f"x{j}" for j in range(X.shape[1])]
        self.target = None if y is None else "y"
        # per-row sample weights, read as the column "sample_weight" (checked as they are read)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if self.sample_weight is not None and self.sample_weight.shape != (X.shape[0],):
            raise DataError(f"sample_weight: expected shape ({X.shape[0]},), got {self.sample_weight.shape}")
        self.weight = None if sample_weight is None else "sample_weight"
        self.columns = self.features + ([] if y is None else ["y"])
        self.target_type = None if self.y is None else str(self.y.dtype)
        n = X.shape[0]
        self._starts = list(range(0, n, chunk_rows))
        self.chunk_rows = [min(chunk_rows, n - s) for s in self._starts]
        # copies from memory decode nothing; a sparse chunk is densified (float64) as it is read
        self.chunk_bytes = [8 * r * X.shape[1] if sparse else 0 for r in self.chunk_rows]
        self.metadata_bytes = 0

    def chunk_name(self, i: int) -> str:
        return f"array rows {self._starts[i]}..{self._starts[i] + self.chunk_rows[i] - 1}"

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        from .rows import copy_rows

        s = slice(self._starts[i], self._starts[i] + self.chunk_rows[i])
        block = self.X[s].toarray() if _is_sparse(self.X) else self.X[s]
        bad = copy_rows(block, X, rows)
        if bad >= 0:
            raise not_finite(block[:, bad], X.dtype, self.chunk_name(i), self.features[bad])
        if y is not None:
            assert self.y is not None  # a target buffer is passed only for data that has a target
            y[slice(None) if rows is None else rows] = self.y[s]

    def read_columns(self, i: int, names: Sequence[str]) -> Any:
        import pyarrow as pa

        s = slice(self._starts[i], self._starts[i] + self.chunk_rows[i])

        def column(n: str) -> NDArray:
            if n in self.features:
                j = self.features.index(n)
                return self.X[s, [j]].toarray().ravel() if _is_sparse(self.X) else self.X[s, j]
            values = self.sample_weight if n == self.weight else self.y
            assert values is not None  # names other than the features: the weight or the target, when present
            return values[s]

        cols = {n: column(n) for n in names}
        return pa.table(cols)

    def layout(self) -> dict[str, Any]:
        """In-memory arrays: no store, chunks of a fixed number of rows."""
        return {"store": "memory (arrays)", "chunk_shape": [max(self.chunk_rows, default=0), self.X.shape[1]]}

    def manifest(self) -> list[dict[str, Any]]:
        """One record for the arrays: their bytes, rows and chunks (no path, no version mark)."""
        size = _nbytes(self.X) + (0 if self.y is None else self.y.nbytes)
        return [{"path": self.url, "size": int(size), "rows": int(self.X.shape[0]), "chunks": len(self.chunk_rows)}]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in _parts(self.X):
            h.update(np.ascontiguousarray(part).view(np.uint8).data)
        if self.y is not None:
            h.update(np.ascontiguousarray(self.y).view(np.uint8).data)
        if self.sample_weight is not None:
            h.update(self.sample_weight.view(np.uint8).data)
        return h.hexdigest()[:16]


def _parts(X: Any) -> tuple[NDArray, ...]:
    """The arrays that hold X's values: X itself, or a CSR matrix's shape, data and indices."""
    if _is_sparse(X):
        return np.asarray(X.shape, dtype=np.int64), X.data, X.indices, X.indptr
    return (X,)


def _nbytes(X: Any) -> int:
    return sum(part.nbytes for part in _parts(X))
