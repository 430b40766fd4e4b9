"""Some chunks of a source, seen as a source of their own: train / validation splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import UsageError
from .base import Source
from .wrap import SourceWrapper


class ChunkSubset(SourceWrapper):
    """Some chunks of a source, seen as a source of their own (train / validation split).

    Chunk ``i`` of the subset is chunk ``chunks[i]`` of the source. The subset has no
    ``chunk_groups``: its chunks are planned one by one (a sliced row group's slices may
    then be read out of order, at the cost of restarting its stream).
    """

    def __init__(self, source: Source, chunks: Sequence[int]) -> None:
        super().__init__(source)
        self._chunks = [int(c) for c in chunks]
        self._chunk_rows = [source.chunk_rows[c] for c in self._chunks]
        self._chunk_bytes = [source.chunk_bytes[c] for c in self._chunks]

    @property
    def chunks(self) -> list[int]:
        """The parent source's chunk ids, in this subset's order."""
        return list(self._chunks)

    @property
    def chunk_rows(self) -> list[int]:
        return self._chunk_rows

    @property
    def chunk_bytes(self) -> list[int]:
        return self._chunk_bytes

    @property
    def chunk_groups(self) -> list[int] | None:
        return None

    @property
    def chunk_lanes(self) -> int:
        return 1  # no groups: nothing streams in lanes

    @property
    def stream_bytes(self) -> int:
        return 0

    def chunk_name(self, i: int) -> str:
        return self._source.chunk_name(self._chunks[i])

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        self._source.read_into(self._chunks[i], X, y, rows)

    def read_columns(self, i: int, names: Sequence[str]) -> Any:
        return self._source.read_columns(self._chunks[i], names)

    def read_hashed(self, i: int, idx: NDArray, sign: NDArray, rows: NDArray | None = None) -> None:
        self._source.read_hashed(self._chunks[i], idx, sign, rows)  # type: ignore[attr-defined]

    def fingerprint(self) -> str:
        return f"{self._source.fingerprint()}:{','.join(map(str, self._chunks))}"


class RowSubset(SourceWrapper):
    """The held-out rows of every chunk of a source, or the rest: a validation split of data
    with too few chunks to hold out whole ones (a file with one row group).

    Row r of chunk c is held out when the ``r``-th of ``default_rng([seed, tag, c])``'s
    uniform draws is below ``fraction``: a pure function of the seed and the layout, so the
    two sides never share a row and a resumed run splits exactly as the first did. The
    masks are drawn again at each read (cheaper than the decode), never stored.

    A chunk is read whole into a scratch buffer and its side's rows copied out, so a
    reader holds the chunk's rows twice: ``chunk_bytes`` counts the scratch buffer.
    """

    def __init__(self, source: Source, fraction: float, seed: int, tag: int, held: bool) -> None:
        super().__init__(source)
        self._key = (int(seed), int(tag))
        self._fraction = float(fraction)
        self._held = held
        self._chunk_rows = [int(self._mask(c).sum()) for c in range(len(source.chunk_rows))]
        # the scratch copy of the whole chunk, at float64 (the widest --dtype), target and weight included
        row = 8 * (len(source.features) + 2)
        self._chunk_bytes = [b + n * row for b, n in zip(source.chunk_bytes, source.chunk_rows)]

    @property
    def chunk_rows(self) -> list[int]:
        return self._chunk_rows

    @property
    def chunk_bytes(self) -> list[int]:
        return self._chunk_bytes

    @property
    def chunks(self) -> list[int]:
        """The parent source's chunk ids: every chunk gives rows to both sides."""
        return list(range(len(self.chunk_rows)))

    def _mask(self, c: int) -> NDArray[np.bool_]:
        draws = np.random.default_rng([*self._key, c]).random(self._source.chunk_rows[c])
        return (draws < self._fraction) if self._held else (draws >= self._fraction)

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        n = self._source.chunk_rows[i]
        whole_X = np.empty((n, X.shape[1]), dtype=X.dtype)
        whole_y = None if y is None else np.empty(n, dtype=y.dtype)
        self._source.read_into(i, whole_X, whole_y)
        mask = self._mask(i)
        to = slice(None) if rows is None else rows
        X[to] = whole_X[mask]
        if y is not None and whole_y is not None:  # whole_y is allocated exactly when y is given
            y[to] = whole_y[mask]

    def read_columns(self, i: int, names: Sequence[str]) -> Any:
        import pyarrow as pa

        return self._source.read_columns(i, names).filter(pa.array(self._mask(i)))

    def read_hashed(self, i: int, idx: NDArray, sign: NDArray, rows: NDArray | None = None) -> None:
        n, k = self._source.chunk_rows[i], idx.shape[1]
        whole_idx, whole_sign = np.empty((n, k), np.int32), np.empty((n, k), np.int8)
        self._source.read_hashed(i, whole_idx, whole_sign)  # type: ignore[attr-defined]
        from .rows import copy_hashed  # numba: imported when data is first read

        mask = self._mask(i)
        copy_hashed([(whole_idx[mask], whole_sign[mask])], idx, sign, rows)

    def fingerprint(self) -> str:
        side = "held" if self._held else "rest"
        return f"{self._source.fingerprint()}:rows:{self._fraction!r}:{self._key[0]}:{self._key[1]}:{side}"


def split_rows(source: Source, fraction: float, seed: int, tag: int) -> tuple[RowSubset, RowSubset]:
    """(training rows, held-out rows): ``fraction`` of every chunk's rows held out at random
    (see :class:`RowSubset`); refused when either side would be empty."""
    train = RowSubset(source, fraction, seed, tag, held=False)
    held = RowSubset(source, fraction, seed, tag, held=True)
    for side, name in ((train, "train on"), (held, "hold out")):
        if sum(side.chunk_rows) == 0:
            raise UsageError(f"{source.url}: holding out {fraction:g} of {sum(source.chunk_rows)} rows leaves no rows "
                             f"to {name}; give more rows or another fraction")
    return train, held


def holds_whole_chunks(n_chunks: int, fraction: float) -> bool:
    """Whether ``round(fraction·n_chunks)`` whole chunks hold out ``fraction`` of them to
    within a quarter of it (and leave some to train on). Otherwise split rows: with few
    chunks, whole ones would hold out far more, or less, than asked (1 of 2 is 50 %)."""
    held = round(fraction * n_chunks)
    return 1 <= held < n_chunks and abs(held / n_chunks - fraction) <= fraction / 4
