"""The batch stream of one epoch: the plan's windows, read ahead, cut into batches.

A batch is a list of segments ``(X, y, idx)``: rows ``idx`` of a window's buffers, valid
until the next batch is asked for (the list is then emptied, so the consumer holds no
window the stream has handed back). The stream owns the prefetcher and hands a window's
bytes back once its last batch has been consumed. When the whole data set is one window it stays resident across epochs and
later epochs only re-index it: small data then costs no I/O and no thread start per
epoch, while visiting rows in exactly the order a re-read would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from .shuffle import batch_segments, epoch_plan, row_order
from .sources import Source
from .windows import Window, prefetch_windows

Batch = list[tuple[NDArray, NDArray, NDArray[np.int64]]]


@dataclass
class BatchStream:
    """Batches of ``batch`` rows for any epoch of the plan (seed, window size, strata)."""

    source: Source
    model: str
    batch: int
    seed: int
    shuffle: bool
    window_rows: int
    buffer_bytes: int
    readers: int
    dtype: np.dtype
    strata: NDArray[np.float64] | None = None
    _resident: tuple[Window, NDArray[np.int64]] | None = field(default=None, init=False)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        windows = epoch_plan(self.source.chunk_rows, self.seed, epoch, self.window_rows, self.shuffle, self.strata)
        sizes = [int(sum(self.source.chunk_rows[c] for c in chunks)) for chunks in windows]
        if len(windows) == 1 and self._resident is not None:
            yield from self._resident_epoch(epoch, windows[0], sizes)
            return
        with prefetch_windows(self.source, windows, self.dtype, self.model, self.readers, self.buffer_bytes) as stream:
            arriving = iter(stream)
            live: dict[int, tuple[Window, NDArray[np.int64]]] = {}
            for segments in batch_segments(sizes, self.batch):
                for w, _, _ in segments:
                    if w not in live:
                        live[w] = (next(arriving), row_order(sizes[w], self.seed, epoch, w, self.shuffle))
                batch = [(live[w][0].X, live[w][0].y, live[w][1][start:stop]) for w, start, stop in segments]
                yield batch
                # the consumer is done with the batch: drop its references before handing the
                # bytes back, or a released window would stay alive beside the next one read
                batch.clear()
                last, _, end = segments[-1]
                for w in [k for k in live if k < last or (k == last and end == sizes[k])]:
                    if len(windows) == 1:
                        self._resident = (live[w][0], _row_ids(self.source, live[w][0].chunks))
                    stream.release(live.pop(w)[0].nbytes)

    def _resident_epoch(self, epoch: int, chunks: NDArray[np.int64], sizes: list[int]) -> Iterator[Batch]:
        window, resident_ids = self._resident
        # position in the resident buffer of each global row id, then of this epoch's layout
        position = np.empty_like(resident_ids)
        position[resident_ids] = np.arange(resident_ids.size)
        order = position[_row_ids(self.source, chunks)][row_order(sizes[0], self.seed, epoch, 0, self.shuffle)]
        for segments in batch_segments(sizes, self.batch):
            yield [(window.X, window.y, order[start:stop]) for _, start, stop in segments]


def _row_ids(source: Source, chunks: NDArray[np.int64]) -> NDArray[np.int64]:
    """Global row ids of a window laid out as ``chunks``."""
    starts = np.concatenate([[0], np.cumsum(source.chunk_rows)])
    return np.concatenate([np.arange(starts[c], starts[c + 1]) for c in chunks]).astype(np.int64)
