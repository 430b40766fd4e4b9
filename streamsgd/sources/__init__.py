"""Where rows come from: chunked, random-access sources with sizes known from metadata.

A source exposes ``chunk_rows`` (rows per chunk, read from metadata before any data) and
``read_into(i, X, y, rows)``, which decodes chunk ``i`` straight into a caller-owned window
buffer (its row ``j`` into row ``rows[j]``, or into a slice of its own), refusing NaN and
infinity as it copies. The chunk is the unit of I/O: one
Parquet row group, or one Zarr chunk along the row axis. Any fsspec URL works (local paths,
``file://``, ``memory://``, ``s3://`` …); ``storage_options`` go to the fsspec filesystem.

The whole contract, optional members and their defaults included, is :class:`Source`
(:mod:`streamsgd.sources.base`); every source pickles, for worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

from ..config import DEFAULT_TARGET
from ..errors import SourceError, UsageError
from . import retry
from .arrays import ArraySource
from .base import Source, SourceBase
from .fs import filesystem
from .parquet import ParquetSource
from .zarr import ZarrSource

FORMATS = ("auto", "parquet", "zarr")


def n_rows(source: Source) -> int:
    return int(sum(source.chunk_rows))


def open_source(
    url: str | Sequence[str],
    target: str | None = DEFAULT_TARGET,
    features: Sequence[str] | None = None,
    feature_hint: str = "fix --features",
    storage_options: Mapping[str, Any] | None = None,
    format: str = "auto",
    x_array: str = "X",
    max_chunk_bytes: int | None = None,
    max_chunk_rows: int | None = None,
    exclude: Sequence[str] | None = None,
    weight: str | None = None,
    retry_policy: retry.RetryPolicy | None = None,
    categorical: Sequence[str] | None = None,
) -> ParquetSource | ZarrSource:
    """Open a Parquet data set (file, directory, glob, or a list of them) or a Zarr group.

    ``feature_hint`` ends the message when a feature column is missing or not numeric.
    ``format="auto"`` takes a URL holding Zarr group metadata (or ending in ``.zarr``) as
    Zarr, anything else as Parquet. ``max_chunk_bytes`` / ``max_chunk_rows`` cap a chunk:
    Parquet row groups beyond them are read in slices (see :class:`ParquetSource`).
    ``features`` and ``exclude`` take names and globs (see :mod:`streamsgd.sources.columns`).
    ``weight`` names a column (Parquet) or 1-D array (Zarr) of per-row sample weights: read
    with the target, never a feature. ``retry_policy`` says how transient store failures are
    retried (default :data:`~streamsgd.sources.retry.DEFAULT_POLICY`); the source keeps it.
    ``categorical`` names integer columns to hash (Parquet; text columns always are).
    """
    if format not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}; got {format!r}")
    options = dict(storage_options or {})
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise UsageError("no data given: name at least one path or URL")
    if format == "auto":
        format = "zarr" if _is_zarr(urls[0], options, retry_policy) else "parquet"
    if format == "zarr":
        if categorical:
            raise UsageError(f"--categorical: {urls[0]} is a Zarr group of numeric arrays; categorical columns "
                             "come from Parquet tables")
        if len(urls) > 1:
            raise UsageError(f"{urls[0]}: a Zarr data set is one group; give one URL, not {len(urls)}")
        return ZarrSource(urls[0], target=target, features=features, feature_hint=feature_hint,
                          storage_options=options, x_array=x_array, exclude=exclude, weight=weight,
                          retry_policy=retry_policy)
    return ParquetSource(urls if len(urls) > 1 else urls[0], target=target, features=features,
                         feature_hint=feature_hint, storage_options=options, max_chunk_bytes=max_chunk_bytes,
                         max_chunk_rows=max_chunk_rows, exclude=exclude, weight=weight,
                         retry_policy=retry_policy, categorical=tuple(categorical or ()))


def _is_zarr(url: str, storage_options: Mapping[str, Any], policy: retry.RetryPolicy | None) -> bool:
    if url.rstrip("/").endswith(".zarr"):
        return True
    fs, path = filesystem(url, storage_options)
    root = path.rstrip("/")
    try:
        return retry.call(lambda: fs.exists(f"{root}/zarr.json") or fs.exists(f"{root}/.zgroup"),
                          f"{url}: format detection", policy)
    except SourceError:
        raise
    except OSError as exc:
        raise SourceError(f"{url}: cannot reach the store ({exc})") from exc


__all__ = ["Source", "SourceBase", "ArraySource", "ParquetSource", "ZarrSource", "open_source", "filesystem", "n_rows"]
