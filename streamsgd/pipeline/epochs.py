"""The rows of one epoch in plan order: the plan's windows, read ahead, each laid out in its
training order. The trainer cuts them into batches (``loop.train_rows``).

The stream owns the prefetcher and hands a window's bytes back once the trainer asks for
the next one, so at most the window being trained on, plus what the byte budget admits
ahead of it, is alive. The readers run on across epoch boundaries (the next epoch's plan
is known), up to ``last_epoch``, so the first window of an epoch is read while the last
one of the epoch before is trained on. When the whole data set is one window it stays
resident across epochs and later epochs only re-index it: small data then costs no I/O
and no thread start per epoch, while visiting rows in exactly the order a re-read would.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..plan.shuffle import epoch_plan, row_order
from ..sources import Source
from .prefetch import Prefetcher
from .windows import Spare, Window, prefetch_windows


@dataclass
class _Readers:
    """Readers running ahead: what stops them (``stop.close()``), the prefetcher, its stream
    of windows, and the (epoch, window) it yields next."""

    stop: ExitStack
    prefetcher: Prefetcher
    windows: Iterator[Window]
    next: tuple[int, int]
    spare: Spare | None  # where windows done with go for reuse (``EpochStream.recycle``)


@dataclass
class EpochStream:
    """Windows and row orders for any epoch of the plan (seed, window size, strata).

    Call :meth:`close` when done: it stops the readers that run ahead.
    """

    source: Source
    model: str
    seed: int
    shuffle: bool
    window_rows: int
    buffer_bytes: int
    readers: int
    dtype: np.dtype
    strata: NDArray[np.float64] | None = None
    #: the last epoch the readers may read ahead into (None: no bound)
    last_epoch: int | None = None
    #: a window's buffers are reused for a later window once the consumer asks for the next
    #: (``windows.Spare``): only for a consumer that keeps no view of a window past that
    recycle: bool = False
    _resident: tuple[Window, NDArray[np.int64]] | None = field(default=None, init=False)
    #: the resident window's places of an epoch's chunk layout (the same every epoch of one chunk)
    _layout: tuple[bytes, NDArray[np.int64]] | None = field(default=None, init=False)
    _ahead: _Readers | None = field(default=None, init=False)

    def epoch(self, epoch: int, skip: int = 0) -> Generator[tuple[Window, NDArray[np.int64]], None, None]:
        """(window, order) pairs: train on ``window.X[order]`` in that order. A window read
        from the source comes laid out in its training order, so its ``order`` is the
        identity; only a resident window is re-indexed.

        ``skip`` rows of the epoch's order are left out, and windows wholly inside them are
        not read at all: a resumed run starts where it stopped without replaying I/O.
        """
        windows = self._plan(epoch)
        if len(windows) == 1 and self._resident is not None:
            window, order = self._resident_order(epoch, windows[0])
            yield window, order[skip:]
            return
        ends = np.cumsum([self._rows(chunks) for chunks in windows])
        first = int(np.searchsorted(ends, skip, side="right"))
        offset = skip - int(ends[first - 1]) if first else skip
        reader = self._reader(epoch, first, across=len(windows) > 1)
        finished = False
        try:
            for w in range(first, len(windows)):
                window = next(reader.windows)
                reader.next = (epoch, w + 1) if w + 1 < len(windows) else (epoch + 1, 0)
                if len(windows) == 1:  # the row id held in each place of the buffer
                    ids = np.empty(window.X.shape[0], dtype=np.int64)
                    ids[window.slots] = _row_ids(self.source, window.chunks)
                    self._resident, self._layout = (window, ids), None
                in_order = np.arange(window.X.shape[0], dtype=np.int64)
                yield window, (in_order[offset:] if w == first else in_order)
                if reader.spare is not None and len(windows) > 1:  # not a resident window
                    reader.spare.put(window)
                reader.prefetcher.release(window.nbytes)
                del window  # not kept alive while the next one is read
            finished = True
        finally:
            if not finished or len(windows) == 1:  # left mid-epoch (or nothing to read ahead): stop the readers
                self.close()

    def close(self) -> None:
        """Stop the readers and join their threads."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            ahead.stop.close()

    def _reader(self, epoch: int, first: int, across: bool) -> _Readers:
        """The windows from window ``first`` of ``epoch`` on: the running readers when they
        are there already, else new ones (reading on into later epochs when ``across``)."""
        if self._ahead is not None and self._ahead.next == (epoch, first):
            return self._ahead
        self.close()
        last = self.last_epoch if across else epoch

        def items() -> Iterator[tuple[int, int, NDArray[np.int64]]]:
            e, w = epoch, first
            while last is None or e <= last:
                windows = self._plan(e)
                for k in range(w, len(windows)):
                    yield e, k, windows[k]
                e, w = e + 1, 0

        stop, spare = ExitStack(), Spare() if self.recycle else None
        prefetcher = stop.enter_context(prefetch_windows(
            self.source, items(), self.dtype, self.readers, self.buffer_bytes,
            lambda e, w, rows: row_order(rows, self.seed, e, w, self.shuffle), spare))
        self._ahead = _Readers(stop, prefetcher, iter(prefetcher), (epoch, first), spare)
        return self._ahead

    def _plan(self, epoch: int) -> list[NDArray[np.int64]]:
        return epoch_plan(self.source.chunk_rows, self.seed, epoch, self.window_rows, self.shuffle, self.strata,
                          self.source.chunk_groups, getattr(self.source, "chunk_lanes", 1))

    def _rows(self, chunks: NDArray[np.int64]) -> int:
        return int(sum(self.source.chunk_rows[c] for c in chunks))

    def _resident_order(self, epoch: int, chunks: NDArray[np.int64]) -> tuple[Window, NDArray[np.int64]]:
        assert self._resident is not None  # called once the single window is resident
        window, resident_ids = self._resident
        if self._layout is None or self._layout[0] != chunks.tobytes():
            # position in the resident buffer of each global row id, then of this epoch's layout
            position = np.empty_like(resident_ids)
            position[resident_ids] = np.arange(resident_ids.size)
            self._layout = (chunks.tobytes(), position[_row_ids(self.source, chunks)])
        places = self._layout[1]
        return window, places[row_order(places.size, self.seed, epoch, 0, self.shuffle)]


def _row_ids(source: Source, chunks: NDArray[np.int64]) -> NDArray[np.int64]:
    """Global row ids of a window laid out as ``chunks``."""
    starts = np.concatenate([[0], np.cumsum(source.chunk_rows)])
    return np.concatenate([np.arange(starts[c], starts[c + 1]) for c in chunks]).astype(np.int64)
