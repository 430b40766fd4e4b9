"""The readers lay each window out in its training order; the trainer visits the same rows in
the same order as a gather by the plan's permutation would (DESIGN.md §3)."""

from __future__ import annotations

import threading
from contextlib import closing

import numpy as np
import pytest

import streamsgd
from helpers import write_parquet
from streamsgd.plan.shuffle import epoch_plan, row_order
from streamsgd.pipeline.epochs import EpochStream
from streamsgd.pipeline.windows import read_window

ROWS, GROUP = 20_000, 1_000


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """x0 is the row's number in the file, so a row shows where it came from."""
    rng = np.random.default_rng(5)
    X = np.column_stack([np.arange(ROWS, dtype=np.float64), rng.standard_normal((ROWS, 2))])
    return write_parquet(tmp_path_factory.mktemp("layout") / "numbered.parquet", X, rng.standard_normal(ROWS),
                         row_group_size=GROUP)


def _planned(source, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """The epoch's rows as the plan orders them: each window read chunk after chunk, then
    gathered by its row permutation (the layout the trainer read before the scatter)."""
    parts = []
    for w, chunks in enumerate(epoch_plan(source.chunk_rows, seed, epoch, window_rows, True)):
        X = read_window(source, chunks, np.dtype(np.float64), True).X
        parts.append(X[row_order(X.shape[0], seed, epoch, w, True)])
    return np.concatenate(parts)


def _streamed(stream: EpochStream, epoch: int, skip: int = 0) -> np.ndarray:
    parts = []
    with closing(stream.epoch(epoch, skip)) as windows:
        for window, order in windows:
            parts.append(window.X[order])
    return np.concatenate(parts)


@pytest.mark.parametrize("recycle", [False, True])
@pytest.mark.parametrize("window_rows", [4_000, ROWS])  # five windows read ahead; one resident window
def test_the_trainer_sees_the_plans_rows_in_the_plans_order(numbered, window_rows, recycle):
    source = streamsgd.open_source(numbered)
    stream = EpochStream(source, "linear", 7, True, window_rows, 3 * window_rows * 40, 2, np.dtype(np.float64),
                         recycle=recycle)
    with closing(stream):
        # with several windows the readers run on from one epoch into the next; with one,
        # epochs 1 and 2 re-index the resident buffer
        for epoch in (0, 1, 2):
            np.testing.assert_array_equal(_streamed(stream, epoch), _planned(source, 7, epoch, window_rows))
        # a resumed run starts inside a window: the rest of the epoch, in order
        np.testing.assert_array_equal(_streamed(stream, 1, 6_500), _planned(source, 7, 1, window_rows)[6_500:])
    assert not [t for t in threading.enumerate() if t.name.startswith("streamsgd-prefetch") and t.is_alive()]


def test_a_window_read_in_training_order_is_shuffled_not_sorted(numbered):
    source = streamsgd.open_source(numbered)
    chunks = np.arange(4)
    order = row_order(4 * GROUP, 3, 0, 0, True)
    window = read_window(source, chunks, np.dtype(np.float64), True, order=order)
    plain = read_window(source, chunks, np.dtype(np.float64), True)
    np.testing.assert_array_equal(window.X, plain.X[order])
    np.testing.assert_array_equal(window.y, plain.y[order])
    np.testing.assert_array_equal(window.X[window.slots], plain.X)  # slots: back to chunk order


def test_the_readers_read_the_next_epochs_first_window_during_this_epochs_last(numbered):
    source = streamsgd.open_source(numbered)
    window_rows = 4_000
    wanted = set(int(c) for c in epoch_plan(source.chunk_rows, 7, 1, window_rows, True)[0])
    read_ahead = threading.Event()
    real = source.read_into

    def watched(i, X, y, rows=None):
        real(i, X, y, rows)
        wanted.discard(i)
        if not wanted:
            read_ahead.set()

    source.read_into = watched
    stream = EpochStream(source, "linear", 7, True, window_rows, 3 * window_rows * 40, 2, np.dtype(np.float64),
                         last_epoch=1)
    with closing(stream):
        windows = list(epoch_plan(source.chunk_rows, 7, 0, window_rows, True))
        with closing(stream.epoch(0)) as epoch0:
            for k, (window, order) in enumerate(epoch0):
                if k == len(windows) - 1:  # still training on epoch 0's last window
                    assert read_ahead.wait(60), "epoch 1's first window was not read ahead"
        np.testing.assert_array_equal(_streamed(stream, 1), _planned(source, 7, 1, window_rows))


def test_a_recycling_stream_reads_later_windows_into_the_buffers_of_earlier_ones(numbered):
    """The trainer's stream (``recycle``) hands a window it is done with to a later read of
    the same shape, whose buffer it then is: fresh pages cost a fault and a zeroing each.
    Without it every window is a fresh buffer; with it the rows are the same (above)."""
    source = streamsgd.open_source(numbered)
    seen = {}
    for recycle in (False, True):
        stream = EpochStream(source, "linear", 7, True, 4_000, 3 * 4_000 * 40, 2, np.dtype(np.float64),
                             recycle=recycle)
        with closing(stream), closing(stream.epoch(0)) as windows:
            seen[recycle] = [window.X for window, _ in windows]  # held: no id is reused by a new array
    assert len(seen[True]) == len(seen[False]) > 2
    assert len({id(X) for X in seen[False]}) == len(seen[False])  # a fresh buffer each
    assert len({id(X) for X in seen[True]}) < len(seen[True])  # later windows in earlier windows' buffers
