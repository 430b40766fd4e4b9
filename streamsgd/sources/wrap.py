"""A source seen through another: the base of the wrappers (chunk and row subsets, text
labels read as class indices).

:class:`SourceWrapper` forwards every member of :class:`~streamsgd.sources.Source` to the
wrapped source by name, so a wrapper is a complete source, and a subclass overrides only
what it changes. Forwarding (not copying at construction) means a wrapper always sees its
source as it is now; it holds nothing but the wrapped source and plain values, so it
pickles whenever the wrapped source does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from numpy.typing import NDArray

from .base import Source


class SourceWrapper:
    """Every :class:`~streamsgd.sources.Source` member of ``source``, forwarded."""

    def __init__(self, source: Source) -> None:
        self._source = source

    @property
    def url(self) -> str:
        return self._source.url

    @property
    def columns(self) -> list[str]:
        return self._source.columns

    @property
    def features(self) -> list[str]:
        return self._source.features

    @property
    def target(self) -> str | None:
        return self._source.target

    @property
    def weight(self) -> str | None:
        return self._source.weight

    @property
    def target_type(self) -> str | None:
        return self._source.target_type

    @property
    def feature_type(self) -> str | None:
        return self._source.feature_type

    @property
    def format(self) -> str:
        return self._source.format

    @property
    def chunk_rows(self) -> list[int]:
        return self._source.chunk_rows

    @property
    def chunk_bytes(self) -> list[int]:
        return self._source.chunk_bytes

    @property
    def chunk_groups(self) -> list[int] | None:
        return self._source.chunk_groups

    @property
    def chunk_lanes(self) -> int:
        return getattr(self._source, "chunk_lanes", 1)

    @property
    def stream_bytes(self) -> int:
        return getattr(self._source, "stream_bytes", 0)

    @property
    def metadata_bytes(self) -> int:
        return self._source.metadata_bytes

    @property
    def column_types(self) -> Mapping[str, Any]:
        return self._source.column_types

    @property
    def footer_facts(self) -> Any:
        return self._source.footer_facts

    @property
    def skipped(self) -> Mapping[str, str]:
        return self._source.skipped

    @property
    def categorical(self) -> Sequence[str]:
        return getattr(self._source, "categorical", ())

    @property
    def encoding(self) -> Any:
        return getattr(self._source, "encoding", None)

    def chunk_name(self, i: int) -> str:
        return self._source.chunk_name(i)

    def read_hashed(self, i: int, idx: NDArray, sign: NDArray, rows: NDArray | None = None) -> None:
        self._source.read_hashed(i, idx, sign, rows)  # type: ignore[attr-defined]

    def encode(self, encoding: Any) -> None:
        self._source.encode(encoding)  # type: ignore[attr-defined]

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        self._source.read_into(i, X, y, rows)

    def read_columns(self, i: int, names: Sequence[str]) -> Any:
        return self._source.read_columns(i, names)

    def fingerprint(self) -> str:
        return self._source.fingerprint()

    def manifest(self) -> list[dict[str, Any]]:
        """The wrapped source's files: the wrapper reads from them."""
        return self._source.manifest()

    def layout(self) -> dict[str, Any]:
        """The wrapped source's layout (store, files, chunking)."""
        return self._source.layout()

    def null_counts(self) -> dict[str, int | None]:
        return self._source.null_counts()
