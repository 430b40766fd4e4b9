"""Shuffle windows: consecutive chunks of the plan decoded into one row-major buffer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import DataError, StreamSGDError, SourceError
from .prefetch import Prefetcher
from ..sources import Source
from ..sources.validate import refuse_nulls


@dataclass
class Window:
    """Rows of some chunks: in the order the trainer visits them (a read with the plan's row
    order), else chunk after chunk.

    X : ndarray of shape (rows, n_features), C-contiguous
    y : ndarray of shape (rows,) or None when the source has no target
    slots : for a window laid out in training order, the place of each row of the chunks
        laid end to end (``X[slots]`` is the window chunk after chunk); else None
    w : float64 ndarray of shape (rows,), each row's sample weight (``--weight``), or None
    idx, sign : int32 and int8 ndarrays of shape (rows, k), the hashed feature id and sign of
        each of the source's k categorical columns (``Source.read_hashed``), in the same row
        order as ``X``; shape (rows, 0) without categorical columns
    """

    X: NDArray
    y: NDArray | None
    chunks: NDArray[np.int64]
    slots: NDArray[np.int64] | None = None
    w: NDArray[np.float64] | None = None
    idx: NDArray[np.int32] = field(default_factory=lambda: np.empty((0, 0), np.int32))
    sign: NDArray[np.int8] = field(default_factory=lambda: np.empty((0, 0), np.int8))

    @property
    def nbytes(self) -> int:
        return (self.X.nbytes + (0 if self.y is None else self.y.nbytes) + (0 if self.w is None else self.w.nbytes)
                + self.idx.nbytes + self.sign.nbytes)


class Spare:
    """The buffers of one window its consumer is done with, for the next window of the same
    shape: a window's pages are written once and read once, and fresh ones must each be
    faulted in and zeroed by the kernel first (benchmarks/README.md, ctr.py).

    The consumer puts a window here just before it hands the window's bytes back to the
    prefetcher's budget, so the buffers are either reused by the next read, in place of
    the allocation the budget has just admitted, or dropped by it: what is alive stays
    within what the budget admitted. Only a consumer that keeps no view of a window past
    its release may put it here (the trainer; not ``streamsgd.batches``, whose batches are
    the caller's)."""

    def __init__(self) -> None:
        self._window: Window | None = None
        self._lock = threading.Lock()

    def put(self, window: Window) -> None:
        with self._lock:
            self._window = window

    def take(self, rows: int, d: int, dtype: np.dtype, with_target: bool, weighted: bool, hashed: int
             ) -> Window | None:
        """The spare window if it has exactly this shape (its buffers then belong to the
        caller), else None; either way the spare is gone."""
        with self._lock:
            window, self._window = self._window, None
        if window is None or window.X.shape != (rows, d) or window.X.dtype != dtype \
                or (window.y is not None) != with_target or (window.w is not None) != weighted \
                or window.idx.shape != (rows, hashed):
            return None
        return window


#: Bytes per row and categorical column in a window: an int32 feature id and an int8 sign.
HASHED_BYTES = 5


def hashed_columns(source: Source) -> int:
    """Hashed features per row of ``source``, k of a window's idx/sign: one per categorical
    column (a list column's width once encoded), and one per crossed pair (``--interactions``)."""
    encoding = getattr(source, "encoding", None)
    return len(getattr(source, "categorical", ())) if encoding is None else int(encoding.width)


def window_bytes(source: Source, chunks: NDArray[np.int64], dtype: DTypeLike, with_target: bool) -> int:
    rows = int(sum(source.chunk_rows[c] for c in chunks))
    weights = WEIGHT_BYTES if with_target and sample_weight_column(source) else 0
    return rows * ((len(source.features) + int(with_target)) * np.dtype(dtype).itemsize + weights
                   + HASHED_BYTES * hashed_columns(source))


#: Bytes per row of the sample-weight column in a window (float64 whatever ``--dtype``: a
#: weight multiplies the loss in float64 in the kernels).
WEIGHT_BYTES = 8


def sample_weight_column(source: Source) -> str | None:
    """The source's sample-weight column (``--weight``), or None."""
    return source.weight


def read_weights(source: Source, chunk: int) -> NDArray[np.float64]:
    """Chunk ``chunk``'s sample weights as float64; refuses nulls, NaN, infinity and negatives,
    naming the chunk and the column (a weight must say how much a row counts: >= 0)."""
    from ..sources.cast import arrow_values

    name = sample_weight_column(source)
    assert name is not None  # called for data read with a weight column only
    column = source.read_columns(chunk, [name]).column(0)
    where = source.chunk_name(chunk)
    refuse_nulls(column, where, name, "weight column", "fill them (0 leaves a row out) or drop those rows")
    w = np.array(arrow_values(column), dtype=np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise DataError(f"{where}: weight column {name!r} holds {w[np.argmax(bad)]:g}; sample weights must be "
                        "finite numbers >= 0: fix those rows or choose another --weight")
    return w


def read_window(
    source: Source,
    chunks: NDArray[np.int64],
    dtype: DTypeLike,
    with_target: bool,
    pool: ThreadPoolExecutor | None = None,
    order: NDArray[np.int64] | None = None,
    spare: Spare | None = None,
) -> Window:
    """Decode ``chunks`` into a fresh buffer (or ``spare``'s, when it has the shape), in
    parallel when a pool is given.

    Row ``k`` of the chunks laid end to end lands in the buffer at the fixed place ``k``,
    or, given the window's row ``order`` (train on ``rows[order]``), at the place ``p`` with
    ``order[p] = k``: the buffer is then already in training order, so the one thread that
    trains reads it in sequence and the readers pay the random access, in writes. Either
    way its content does not depend on the number of reader threads or on which read
    finishes first.
    """
    sizes = [source.chunk_rows[c] for c in chunks]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    # sample weights travel with the target: windows read for training or scoring
    weighted, hashed = bool(with_target and sample_weight_column(source)), hashed_columns(source)
    reuse = None if spare is None else spare.take(n, len(source.features), np.dtype(dtype), with_target, weighted,
                                                  hashed)
    if reuse is not None:  # every row of each buffer is written below
        X, y, w, idx, sign = reuse.X, reuse.y, reuse.w, reuse.idx, reuse.sign
    else:
        X = np.empty((n, len(source.features)), dtype=dtype)
        y = np.empty(n, dtype=dtype) if with_target else None
        w = np.empty(n) if weighted else None
        idx, sign = np.empty((n, hashed), np.int32), np.empty((n, hashed), np.int8)
    slots = None
    if order is not None:
        from ..plan.permute import inverse  # numba: imported when a window is first ordered

        slots = inverse(np.asarray(order, dtype=np.int64))

    def one(k: int) -> None:
        s = slice(int(offsets[k]), int(offsets[k + 1]))
        c = int(chunks[k])
        rows = None if slots is None else slots[s]
        try:
            if rows is None:
                source.read_into(c, X[s], None if y is None else y[s])
            else:
                source.read_into(c, X, y, rows)
        except StreamSGDError:
            raise
        except Exception as exc:  # an unexpected reader failure still names the chunk
            raise SourceError(f"{source.chunk_name(c)}: read failed: {exc}") from exc
        if w is not None:
            w[s if rows is None else rows] = read_weights(source, c)
        if hashed:  # the categorical columns: hashed into the same rows
            if rows is None:
                source.read_hashed(c, idx[s], sign[s])  # type: ignore[attr-defined]
            else:
                source.read_hashed(c, idx, sign, rows)  # type: ignore[attr-defined]

    if pool is None or len(chunks) == 1:
        for k in range(len(chunks)):
            one(k)
    else:
        def run(ks: list[int]) -> None:
            for k in ks:
                one(k)

        for future in [pool.submit(run, ks) for ks in stream_runs(source, chunks)]:
            future.result()
    return Window(X, y, chunks, slots, w, idx, sign)


def stream_runs(source: Source, chunks: Sequence[int] | NDArray[np.int64]) -> list[list[int]]:
    """The positions of ``chunks``, one list per stream (``chunk_groups``: the slices of one
    row group, or of one segment of it), each in window order: a reader reads one stream's
    slices one after the other, front to back, while the other readers read other streams.
    Two readers taking turns on one stream could ask for its slices out of order, which
    restarts it. Chunks of no group (or read whole) are a stream each."""
    groups = getattr(source, "chunk_groups", None)
    if groups is None:
        return [[k] for k in range(len(chunks))]
    streams: dict[int, list[int]] = {}
    for k, c in enumerate(chunks):
        streams.setdefault(int(groups[c]), []).append(k)
    return list(streams.values())


@contextmanager
def prefetch_windows(
    source: Source,
    windows: Iterable[tuple[int, int, NDArray[np.int64]]],
    dtype: DTypeLike,
    readers: int,
    max_bytes: int,
    orders: Callable[[int, int, int], NDArray[np.int64]] | None = None,
    spare: Spare | None = None,
) -> Iterator[Prefetcher]:
    """Read ``windows`` ((epoch, window number, chunks) items) ahead in the background, each,
    given ``orders`` ((epoch, window number, rows) → its row order), laid out in that order.
    Their targets were checked once, before training (:mod:`streamsgd.sources.validate`).

    Yields the prefetcher: iterate it for windows, ``release(window.nbytes)`` each when done
    (having put it in ``spare``, when given, for a later read to reuse).
    """

    def read(item: tuple[int, int, NDArray[np.int64]]) -> Window:
        epoch, w, chunks = item
        order = None if orders is None else orders(epoch, w, int(sum(source.chunk_rows[c] for c in chunks)))
        return read_window(source, chunks, dtype, True, pool, order, spare)

    with ThreadPoolExecutor(readers) as pool, Prefetcher(
        windows, read, lambda item: window_bytes(source, item[2], dtype, True), max_bytes,
    ) as stream:
        yield stream
