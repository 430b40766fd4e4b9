"""The rows of one epoch in plan order: the plan's windows, read ahead, each with its row
permutation. The trainer cuts them into batches (``loop.train_rows``).

The stream owns the prefetcher and hands a window's bytes back once the trainer asks for
the next one, so at most the window being trained on, plus what the byte budget admits
ahead of it, is alive. When the whole data set is one window it stays resident across
epochs and later epochs only re-index it: small data then costs no I/O and no thread
start per epoch, while visiting rows in exactly the order a re-read would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from .shuffle import epoch_plan, row_order
from .sources import Source
from .windows import Window, prefetch_windows


@dataclass
class EpochStream:
    """Windows and row orders for any epoch of the plan (seed, window size, strata)."""

    source: Source
    model: str
    seed: int
    shuffle: bool
    window_rows: int
    buffer_bytes: int
    readers: int
    dtype: np.dtype
    strata: NDArray[np.float64] | None = None
    _resident: tuple[Window, NDArray[np.int64]] | None = field(default=None, init=False)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Window, NDArray[np.int64]]]:
        """(window, order) pairs: train on ``window.X[order]`` in that order. A window read
        from the source comes laid out in its training order, so its ``order`` is the
        identity; only a resident window is re-indexed.

        ``skip`` rows of the epoch's order are left out, and windows wholly inside them are
        not read at all: a resumed run starts where it stopped without replaying I/O.
        """
        windows = epoch_plan(self.source.chunk_rows, self.seed, epoch, self.window_rows, self.shuffle, self.strata,
                             getattr(self.source, "chunk_groups", None))
        if len(windows) == 1 and self._resident is not None:
            window, order = self._resident_order(epoch, windows[0])
            yield window, order[skip:]
            return
        sizes = np.array([sum(self.source.chunk_rows[c] for c in chunks) for chunks in windows], dtype=np.int64)
        ends = np.cumsum(sizes)
        first = int(np.searchsorted(ends, skip, side="right"))
        offset = skip - int(ends[first - 1]) if first else skip
        todo = windows[first:]

        def order(k: int) -> NDArray[np.int64]:  # the k-th window read: window first + k of the epoch
            return row_order(int(sizes[first + k]), self.seed, epoch, first + k, self.shuffle)

        with prefetch_windows(self.source, todo, self.dtype, self.model, self.readers, self.buffer_bytes,
                              order) as stream:
            for w, window in enumerate(stream, start=first):
                if len(windows) == 1:  # the row id held in each place of the buffer
                    self._resident = (window, _row_ids(self.source, window.chunks)[order(0)])
                in_order = np.arange(window.X.shape[0], dtype=np.int64)
                yield window, (in_order[offset:] if w == first else in_order)
                stream.release(window.nbytes)
                del window  # not kept alive while the next one is read

    def _resident_order(self, epoch: int, chunks: NDArray[np.int64]) -> tuple[Window, NDArray[np.int64]]:
        window, resident_ids = self._resident
        # position in the resident buffer of each global row id, then of this epoch's layout
        position = np.empty_like(resident_ids)
        position[resident_ids] = np.arange(resident_ids.size)
        rows = int(sum(self.source.chunk_rows[c] for c in chunks))
        return window, position[_row_ids(self.source, chunks)][row_order(rows, self.seed, epoch, 0, self.shuffle)]


def _row_ids(source: Source, chunks: NDArray[np.int64]) -> NDArray[np.int64]:
    """Global row ids of a window laid out as ``chunks``."""
    starts = np.concatenate([[0], np.cumsum(source.chunk_rows)])
    return np.concatenate([np.arange(starts[c], starts[c + 1]) for c in chunks]).astype(np.int64)
