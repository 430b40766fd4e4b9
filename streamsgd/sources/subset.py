"""Some chunks of a source, seen as a source of their own: train / validation splits."""

from __future__ import annotations

from collections.abc import Sequence

from numpy.typing import NDArray

from . import Source


class ChunkSubset:
    """Some chunks of a source, seen as a source of their own (train / validation split)."""

    def __init__(self, source: Source, chunks: Sequence[int]) -> None:
        self._source = source
        self._chunks = [int(c) for c in chunks]
        self.url = source.url
        self.features = list(source.features)
        self.target = source.target
        self.weight = getattr(source, "weight", None)
        self.columns = list(source.columns)
        self.chunk_rows = [source.chunk_rows[c] for c in self._chunks]
        self.chunk_bytes = [source.chunk_bytes[c] for c in self._chunks]
        self.metadata_bytes = source.metadata_bytes
        self.target_type = getattr(source, "target_type", None)

    @property
    def chunks(self) -> list[int]:
        """The parent source's chunk ids, in this subset's order."""
        return list(self._chunks)

    def chunk_name(self, i: int) -> str:
        return self._source.chunk_name(self._chunks[i])

    def read_into(self, i: int, X: NDArray, y: NDArray | None) -> None:
        self._source.read_into(self._chunks[i], X, y)

    def read_columns(self, i: int, names: Sequence[str]):
        return self._source.read_columns(self._chunks[i], names)

    def fingerprint(self) -> str:
        return f"{self._source.fingerprint()}:{','.join(map(str, self._chunks))}"
