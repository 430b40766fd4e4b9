"""Zarr groups (format 2 or 3) holding a feature array and a target array.

Layout: a 2-D array ``X`` (rows x features) and a 1-D array ``y`` (rows), names set by
``x_array`` and the target; feature names in ``X.attrs["feature_names"]`` (else x0, x1,
…). Chunk = one chunk of ``X`` along the row axis; when chunks also split the feature
axis, zarr assembles the row block from its column chunks. Codecs (Blosc, Zstd, gzip)
decode through zarr/numcodecs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .base import SourceBase
from .cast import to_dtype
from .validate import not_finite
from .columns import is_glob, select
from ..config import DEFAULT_TARGET
from ..errors import DataError, SourceError
from . import retry
from .fs import with_defaults

#: What a reader holds while decoding a chunk, as a multiple of its decoded size.
DECODE_FACTOR = 3


class ZarrSource(SourceBase):
    """A Zarr group on any store zarr can open (local path or fsspec URL).

    A pickled source holds the URL, storage options and array names; the opened arrays
    (with their store, fsspec filesystem and event loop) are opened again when first read.
    """

    _TRANSIENT = ("_opened", "_open_lock", "_breaker")
    _opened: tuple[Any, Any, Any] | None  # the feature, target and weight arrays, once open

    def __init__(
        self,
        url: str,
        target: str | None = DEFAULT_TARGET,
        features: Sequence[str] | None = None,
        feature_hint: str = "fix --features",
        storage_options: Mapping[str, Any] | None = None,
        x_array: str = "X",
        exclude: Sequence[str] | None = None,
        weight: str | None = None,
        retry_policy: retry.RetryPolicy | None = None,
    ):
        self.url = url
        self.format = "zarr"
        self.retry_policy = retry_policy or retry.DEFAULT_POLICY  # how transient store failures are retried
        kwargs: dict[str, Any] = {}
        options = with_defaults(url, storage_options)
        if "://" in url and not url.startswith(("file://", "memory://")):
            # zarr makes its own asynchronous fsspec instance; a fresh one, so that none
            # cached by another caller (bound to another event loop) is shared with it
            kwargs = {"storage_options": {**options, "skip_instance_cache": True}}
        elif options:
            kwargs = {"storage_options": options}
        self._options = options
        self._open_kwargs = kwargs
        self._x_array = x_array
        self.target = target
        #: the sample-weight array (``--weight``): 1-D, one weight per row
        self.weight = weight
        self._fresh()
        group = self._group()
        self._opened = (_array(group, x_array, url, "--x-array", ndim=2),
                        _array(group, target, url, "--target/--y-array", ndim=1) if target is not None else None,
                        _array(group, weight, url, "--weight", ndim=1) if weight is not None else None)
        n, d = self._X.shape
        if self._y is not None and self._y.shape[0] != n:
            raise DataError(f"{url}: {x_array!r} has {n} rows but {target!r} has {self._y.shape[0]}")
        if self._w is not None and self._w.shape[0] != n:
            raise DataError(f"{url}: {x_array!r} has {n} rows but the weight array {weight!r} has {self._w.shape[0]}")
        names = list(self._X.attrs.get("feature_names", [f"x{j}" for j in range(d)]))
        if len(names) != d:
            raise DataError(f"{url}: {x_array!r} has {d} columns but {len(names)} feature_names")
        self.target_type = str(self._y.dtype) if self._y is not None else None
        self.columns = names + ([target] if target is not None else [])
        self.skipped: dict[str, str] = {}
        self.feature_type = str(self._X.dtype)
        if features is None and not exclude:
            self.features, self._cols = names, None
        else:
            missing = [f for f in features or () if f not in names and not is_glob(f)]
            if missing:
                raise DataError(f"{url}: no feature {missing[0]!r} in {x_array!r} (features: "
                                f"{', '.join(names[:20])}); {feature_hint}")
            import pyarrow as pa

            # every column of X is a number: select only applies the names, globs and --exclude
            self.features, self.skipped = select(url, {n: pa.float64() for n in names}, (), None, features,
                                                 exclude, feature_hint)
            self._cols = np.array([names.index(f) for f in self.features])
        step = self._X.chunks[0]
        self._starts = list(range(0, n, step))
        self.chunk_rows = [min(step, n - s) for s in self._starts]
        row_bytes = d * self._X.dtype.itemsize + (self._y.dtype.itemsize if self._y is not None else 0)
        # held while decoding a chunk: the compressed bytes, the decompressed chunk and the cast
        self.chunk_bytes = [DECODE_FACTOR * rows * row_bytes for rows in self.chunk_rows]
        self.metadata_bytes = 0
        self._zarr_format = group.metadata.zarr_format
        # Reads from several reader threads at once are safe: each goes through zarr's one
        # event loop.

    def _fresh(self) -> None:
        """No arrays open yet (they open at the first read), a lock to open them once, the retry breaker."""
        self._opened = None
        self._open_lock = threading.Lock()
        self._breaker = retry.Breaker()

    def _group(self):
        """The Zarr group, opened read-only (transient store failures retried)."""
        import zarr

        url = self.url
        try:
            return retry.call(lambda: zarr.open_group(store=url, mode="r", **self._open_kwargs),
                              f"{url}: Zarr metadata", self.retry_policy)
        except SourceError:
            raise
        except FileNotFoundError as exc:
            raise SourceError(f"{url}: no Zarr group here; check the path") from exc
        except Exception as exc:
            raise SourceError(f"{url}: not a readable Zarr group ({exc})") from exc

    def _arrays(self) -> tuple[Any, Any, Any]:
        """The feature, target and weight arrays (None where not used), opened on first use."""
        opened = self._opened
        if opened is None:
            with self._open_lock:
                if self._opened is None:
                    group = self._group()
                    self._opened = (group[self._x_array], None if self.target is None else group[self.target],
                                    None if self.weight is None else group[self.weight])
                opened = self._opened
        return opened

    @property
    def _X(self) -> Any:
        return self._arrays()[0]

    @property
    def _y(self) -> Any:
        return self._arrays()[1]

    @property
    def _w(self) -> Any:
        return self._arrays()[2]

    def chunk_name(self, i: int) -> str:
        start = self._starts[i]
        return f"{self.url} rows {start}..{start + self.chunk_rows[i] - 1} (chunk {i})"

    def _rows(self, i: int) -> slice:
        return slice(self._starts[i], self._starts[i] + self.chunk_rows[i])

    def _get(self, i: int, array, out=None):
        """Rows of chunk ``i`` of ``array`` (decoded into ``out``, a Zarr NDBuffer, when given),
        transient store failures retried."""
        try:
            return retry.call(lambda: array.get_basic_selection(self._rows(i), out=out), self.chunk_name(i),
                              self.retry_policy, self._breaker)
        except SourceError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise SourceError(f"{self.chunk_name(i)}: cannot read ({retry.first_line(exc)})") from exc

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        """Decode the row block ``i`` into ``X`` and ``y``, its row ``j`` into row ``rows[j]``
        when given; refuse NaN and infinity."""
        from .rows import copy_rows, first_nonfinite_column  # numba: imported when data is first read

        where = self.chunk_name(i)
        if rows is None and self._cols is None and X.dtype == self._X.dtype and X.flags.c_contiguous:
            # all columns, same dtype: Zarr decodes straight into the window
            from zarr.core.buffer.cpu import NDBuffer

            self._get(i, self._X, NDBuffer.from_numpy_array(X))
            bad = first_nonfinite_column(X)
            if bad >= 0:
                raise not_finite(X[:, bad], X.dtype, where, self.features[bad])
        else:
            block = self._get(i, self._X)
            block = block if self._cols is None else block[:, self._cols]
            bad = copy_rows(block, X, rows)
            if bad >= 0:
                raise not_finite(block[:, bad], X.dtype, where, self.features[bad])
        if y is not None:
            # a target buffer is passed only for data that has a target (fit and evaluate need one)
            assert self.target is not None
            y[slice(None) if rows is None else rows] = to_dtype(self._get(i, self._y), y.dtype, where, self.target)

    def read_columns(self, i: int, names: Sequence[str]):
        import pyarrow as pa

        all_names = self.columns[: self._X.shape[1]]
        # the target alone (the trainer's first pass) does not read the feature array
        block = self._get(i, self._X) if any(n not in (self.target, self.weight) for n in names) else None

        def column(n: str) -> Any:
            if n == self.target:
                return self._get(i, self._y)
            if n == self.weight:
                return self._get(i, self._w)
            assert block is not None  # read above whenever a name is neither the target nor the weight
            return block[:, all_names.index(n)]

        return pa.table({n: column(n) for n in names})

    def layout(self) -> dict[str, Any]:
        """Store, Zarr format and chunk shape of the feature array."""
        from .fs import protocol_of

        return {"store": protocol_of(self.url), "zarr_format": self._zarr_format,
                "chunk_shape": list(self._X.chunks), "shape": list(self._X.shape)}

    def manifest(self) -> list[dict[str, Any]]:
        """One record per array (features, target): path, decoded size, rows, chunks, and
        the ETag or mtime of its metadata document when the store gives one."""
        from .fs import file_info, filesystem

        fs, root = filesystem(self.url, self._options)
        out = []
        for name, array in ((self._x_array, self._X), (self.target, self._y)):
            if array is None:
                continue
            doc = "zarr.json" if self._zarr_format == 3 else ".zarray"
            record: dict[str, Any] = {"path": f"{self.url.rstrip('/')}/{name}", "size": int(array.nbytes),
                      "rows": int(array.shape[0]), "chunks": len(self.chunk_rows)}
            try:
                marks = retry.call(lambda: file_info(fs, f"{root.rstrip('/')}/{name}/{doc}"), record["path"],
                                   self.retry_policy)
                record.update({k: v for k, v in marks.items() if k != "size"})
            except FileNotFoundError:
                pass  # stores without per-array documents (consolidated) give no version mark
            out.append(record)
        return out

    def fingerprint(self) -> str:
        manifest = [self.url, self._x_array, list(self._X.shape), list(self._X.chunks), str(self._X.dtype),
                    None if self._y is None else [self.target, list(self._y.shape), str(self._y.dtype)]]
        return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:16]


def _array(group, name: str, url: str, option: str, ndim: int):
    try:
        array = group[name]
    except KeyError:
        raise DataError(f"{url}: the Zarr group has no array {name!r} (it has: "
                        f"{', '.join(sorted(group.array_keys()))}); fix {option}") from None
    if array.ndim != ndim:
        raise DataError(f"{url}: array {name!r} has {array.ndim} dimensions, expected {ndim}; fix {option}")
    if array.dtype.kind not in "iufb":
        raise DataError(f"{url}: array {name!r} has dtype {array.dtype}, not a number; fix {option}")
    return array
