"""Where rows come from: chunked, random-access sources with sizes known from metadata.

A source exposes ``chunk_rows`` (rows per chunk, read from metadata before any data) and
``read_into(i, X, y)``, which decodes chunk ``i`` straight into a caller-owned slice of a
window buffer. The chunk is the unit of I/O: one Parquet row group.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import DataError, SourceError


class Source(Protocol):
    """What the trainer needs from a data set."""

    url: str
    columns: list[str]  # every column the data has
    features: list[str]
    target: str | None
    chunk_rows: list[int]
    chunk_bytes: list[int]  # bytes a reader holds while decoding the chunk (uncompressed size)

    def chunk_name(self, i: int) -> str: ...
    def read_into(self, i: int, X: NDArray, y: NDArray | None) -> None: ...
    def read_columns(self, i: int, names: Sequence[str]): ...
    def fingerprint(self) -> str: ...


def n_rows(source: Source) -> int:
    return int(sum(source.chunk_rows))


@dataclass(frozen=True)
class _RowGroup:
    file: int
    index: int


class ParquetSource:
    """A Parquet file, a directory of ``.parquet`` files, or a glob; chunk = one row group.

    Files are opened with ``pre_buffer=False``: pyarrow's default buffers whole files,
    which silently defeats the fixed-memory bound.
    """

    def __init__(
        self,
        url: str,
        target: str | None = "y",
        features: Sequence[str] | None = None,
        feature_hint: str = "fix --features",
    ):
        import pyarrow.parquet as pq

        self.url = url
        self.paths = _expand(url)
        self._metas = [_read_footer(pq, p) for p in self.paths]
        schema = self._metas[0].schema.to_arrow_schema()
        self.columns = list(schema.names)
        self.target = target
        self.features = _resolve_columns(self.paths[0], schema, target, features, feature_hint)
        self.target_type = str(schema.field(target).type) if target is not None else None
        used = self.features + ([target] if target is not None else [])
        for path, meta in zip(self.paths[1:], self._metas[1:]):
            other = meta.schema.to_arrow_schema()
            for name in used:
                if name not in other.names:
                    raise DataError(
                        f"{path}: column {name!r} is missing, but {self.paths[0]} has it; "
                        "give every file the same columns or choose --features present in all"
                    )
                _check_numeric(path, other.field(name))
        self._groups = [
            _RowGroup(f, g) for f, meta in enumerate(self._metas) for g in range(meta.num_row_groups)
        ]
        self.chunk_rows = [self._metas[g.file].row_group(g.index).num_rows for g in self._groups]
        self.chunk_bytes = [self._uncompressed_bytes(g, used) for g in self._groups]

    def _uncompressed_bytes(self, g: _RowGroup, names: list[str]) -> int:
        rg = self._metas[g.file].row_group(g.index)
        columns = (rg.column(j) for j in range(rg.num_columns))
        return sum(c.total_uncompressed_size for c in columns if c.path_in_schema in names)

    def chunk_name(self, i: int) -> str:
        g = self._groups[i]
        return f"{self.paths[g.file]} row group {g.index}"

    def read_columns(self, i: int, names: Sequence[str]):
        """Chunk ``i`` as a pyarrow Table of the named columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        g = self._groups[i]
        path = self.paths[g.file]
        try:
            pf = pq.ParquetFile(path, metadata=self._metas[g.file], pre_buffer=False)
            table = pf.read_row_group(g.index, columns=list(names), use_threads=False)
            # return the decode buffers to the OS now rather than let the allocator keep them
            pa.default_memory_pool().release_unused()
            return table
        except FileNotFoundError as exc:
            raise SourceError(f"{path}: file disappeared while reading; {exc}") from exc
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(
                f"{path}: cannot read row group {g.index} ({exc}); the file may be corrupt or "
                "truncated, rewrite it"
            ) from exc

    def read_into(self, i: int, X: NDArray, y: NDArray | None) -> None:
        """Decode chunk ``i`` into ``X`` (rows x features) and ``y`` (rows,)."""
        names = self.features + ([self.target] if y is not None else [])
        table = self.read_columns(i, names)
        for j, name in enumerate(self.features):
            _fill(X[:, j], table.column(name), name, self, i)
        if y is not None:
            _fill(y, table.column(self.target), self.target, self, i)

    def fingerprint(self) -> str:
        """Hash of the data's manifest: files, sizes, row-group layout."""
        manifest = [
            [p, m.num_rows, m.num_row_groups, m.serialized_size] for p, m in zip(self.paths, self._metas)
        ]
        return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:16]

    def raw_bytes(self) -> int:
        return sum(m.row_group(g).total_byte_size for m in self._metas for g in range(m.num_row_groups))


class ArraySource:
    """In-memory arrays cut into chunks; used by the Python API and the tests."""

    def __init__(
        self, X: NDArray, y: NDArray | None, chunk_rows: int = 65536, features: Sequence[str] | None = None
    ):
        X = np.asarray(X)
        if X.ndim != 2:
            raise DataError(f"X: expected a 2-D array (rows, features), got shape {X.shape}")
        self.X, self.y = X, None if y is None else np.asarray(y)
        if self.y is not None and self.y.shape != (X.shape[0],):
            raise DataError(f"y: expected shape ({X.shape[0]},), got {self.y.shape}")
        self.url = "<arrays>"
        self.features = list(features) if features is not None else [f"x{j}" for j in range(X.shape[1])]
        self.target = None if y is None else "y"
        self.columns = self.features + ([] if y is None else ["y"])
        self.target_type = None if y is None else str(self.y.dtype)
        n = X.shape[0]
        self._starts = list(range(0, n, chunk_rows))
        self.chunk_rows = [min(chunk_rows, n - s) for s in self._starts]
        self.chunk_bytes = [0] * len(self.chunk_rows)  # copies from memory decode nothing

    def chunk_name(self, i: int) -> str:
        return f"array rows {self._starts[i]}..{self._starts[i] + self.chunk_rows[i] - 1}"

    def read_into(self, i: int, X: NDArray, y: NDArray | None) -> None:
        s = slice(self._starts[i], self._starts[i] + self.chunk_rows[i])
        X[...] = self.X[s]
        if y is not None:
            y[...] = self.y[s]

    def read_columns(self, i: int, names: Sequence[str]):
        import pyarrow as pa

        s = slice(self._starts[i], self._starts[i] + self.chunk_rows[i])
        cols = {n: self.X[s, self.features.index(n)] if n in self.features else self.y[s] for n in names}
        return pa.table(cols)

    def fingerprint(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.X).view(np.uint8))
        if self.y is not None:
            h.update(np.ascontiguousarray(self.y).view(np.uint8))
        return h.hexdigest()[:16]


def open_source(
    url: str, target: str | None = "y", features: Sequence[str] | None = None, feature_hint: str = "fix --features"
) -> ParquetSource:
    """Open a Parquet data set by path, directory or glob.

    ``feature_hint`` ends the message when a feature column is missing or not numeric.
    """
    return ParquetSource(url, target=target, features=features, feature_hint=feature_hint)


def _expand(url: str) -> list[str]:
    if any(ch in url for ch in "*?["):
        paths = sorted(p for p in glob.glob(url, recursive=True) if os.path.isfile(p))
        if not paths:
            raise SourceError(f"{url}: the pattern matches no file; check the path")
        return paths
    if os.path.isdir(url):
        paths = sorted(
            os.path.join(root, name)
            for root, dirs, names in os.walk(url)
            for name in names
            if name.endswith(".parquet") and not name.startswith((".", "_"))
        )
        if not paths:
            raise DataError(f"{url}: the directory holds no .parquet file")
        return paths
    if not os.path.exists(url):
        raise SourceError(f"{url}: no such file or directory")
    return [url]


def _read_footer(pq, path: str):
    try:
        return pq.read_metadata(path)
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: no such file") from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-Parquet input
        raise SourceError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_numeric(field) -> bool:
    import pyarrow as pa

    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _check_numeric(path: str, field, fix: str = "choose numeric columns with --features") -> None:
    if not _is_numeric(field):
        raise DataError(
            f"{path}: column {field.name!r} has type {field.type}, not a number; "
            f"{fix} (or encode this column as numbers)"
        )


def _resolve_columns(
    path: str, schema, target: str | None, features: Sequence[str] | None, feature_hint: str
) -> list[str]:
    names = schema.names
    wanted = list(features) if features is not None else []
    if target is not None:
        wanted.append(target)
    for name in wanted:
        hint = "fix --target" if name == target else feature_hint
        if name not in names:
            raise DataError(
                f"{path}: no column {name!r} (columns: {', '.join(names[:20])}"
                f"{', …' if len(names) > 20 else ''}); {hint}"
            )
        _check_numeric(path, schema.field(name), hint)
    if features is not None:
        return list(features)
    chosen = [n for n in names if n != target and _is_numeric(schema.field(n))]
    if not chosen:
        raise DataError(f"{path}: no numeric feature column besides the target {target!r}")
    return chosen


def _fill(out: NDArray, column, name: str, source, i: int) -> None:
    """Copy an Arrow column into a (possibly strided) float view, refusing nulls."""
    if column.null_count:
        raise DataError(
            f"{source.chunk_name(i)}: column {name!r} has {column.null_count} null values; "
            "drop or impute them"
        )
    out[...] = column.to_numpy()
