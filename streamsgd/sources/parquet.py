"""Parquet data sets on any fsspec filesystem; chunk = one row group."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, SourceError


@dataclass(frozen=True)
class _RowGroup:
    file: int
    index: int


class ParquetSource:
    """A Parquet file, a directory of ``.parquet`` files, or a glob; chunk = one row group.

    Files are opened with ``pre_buffer=False``: pyarrow's default buffers whole files,
    which silently defeats the fixed-memory bound. On a remote store only the footers are
    read up front, then each row group's column chunks as byte ranges (the file objects
    are opened without read-ahead caching, so nothing else is fetched).
    """

    def __init__(
        self,
        url: str,
        target: str | None = "y",
        features: Sequence[str] | None = None,
        feature_hint: str = "fix --features",
        storage_options: Mapping[str, Any] | None = None,
    ):
        from fsspec.implementations.local import LocalFileSystem

        from .fs import filesystem

        self.url = url
        self.format = "parquet"
        self._fs, root = filesystem(url, storage_options)
        self._local = isinstance(self._fs, LocalFileSystem)
        self._fs_paths = _expand(self._fs, root, url)
        # paths as the user knows them, for messages
        self.paths = [p if self._local else self._fs.unstrip_protocol(p) for p in self._fs_paths]
        self._metas = [self._footer(k) for k in range(len(self.paths))]
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
            with self._open(g.file) as f:
                pf = pq.ParquetFile(f, metadata=self._metas[g.file], pre_buffer=False)
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
        from numba.typed import List

        from ..kernels import fill_rows

        names = self.features + ([self.target] if y is not None else [])
        table = self.read_columns(i, names)
        fill_rows(List([_values(table.column(n), n, X.dtype, self, i) for n in self.features]), X)
        if y is not None:
            y[...] = _values(table.column(self.target), self.target, y.dtype, self, i)

    def fingerprint(self) -> str:
        """Hash of the data's manifest: files, sizes, row-group layout."""
        manifest = [
            [p, m.num_rows, m.num_row_groups, m.serialized_size] for p, m in zip(self.paths, self._metas)
        ]
        return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:16]

    def _open(self, k: int):
        """File ``k`` for reading: a native path locally, an uncached fsspec file remotely."""
        if self._local:
            import pyarrow as pa

            return pa.OSFile(self._fs_paths[k])
        return self._fs.open(self._fs_paths[k], "rb", cache_type="none")

    def _footer(self, k: int):
        import pyarrow.parquet as pq

        path = self.paths[k]
        try:
            with self._open(k) as f:
                return pq.read_metadata(f)
        except FileNotFoundError as exc:
            raise SourceError(f"{path}: no such file") from exc
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-Parquet input
            raise SourceError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc


def _expand(fs, root: str, url: str) -> list[str]:
    """The Parquet files of ``url``: itself, the matches of a glob, or a directory's tree."""
    try:
        if any(ch in root for ch in "*?["):
            paths = sorted(p for p in fs.glob(root) if fs.isfile(p))
            if not paths:
                raise SourceError(f"{url}: the pattern matches no file; check the path")
            return paths
        if fs.isdir(root):
            paths = sorted(
                p for p in fs.find(root)
                if p.endswith(".parquet") and not posixpath.basename(p).startswith((".", "_"))
            )
            if not paths:
                raise DataError(f"{url}: the directory holds no .parquet file")
            return paths
        if not fs.exists(root):
            raise SourceError(f"{url}: no such file or directory")
    except (DataError, SourceError):
        raise
    except OSError as exc:
        raise SourceError(f"{url}: cannot list the data ({exc})") from exc
    return [root]


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


def _values(column, name: str, dtype, source, i: int) -> NDArray:
    """An Arrow column as one contiguous array of ``dtype``, refusing nulls."""
    if column.null_count:
        raise DataError(
            f"{source.chunk_name(i)}: column {name!r} has {column.null_count} null values; "
            "drop or impute them"
        )
    return np.ascontiguousarray(column.to_numpy(), dtype=dtype)
