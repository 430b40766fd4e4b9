"""The plan: permutations of all rows, exact batch counts, determinism, fresh orders per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from streamsgd.plan.shuffle import chunk_order, epoch_plan, iterations_per_epoch, row_order
from streamsgd.sources import ArraySource
from streamsgd.train.trainer import fit
from streamsgd.config import FitConfig
from streamsgd.train import Hooks

CHUNKS = [100, 37, 250, 1, 64, 100, 99]


def epoch_rows(seed, epoch, window_rows, shuffle=True):
    """The global row ids in the order one epoch visits them."""
    starts = np.concatenate([[0], np.cumsum(CHUNKS)])
    order = []
    for w, chunks in enumerate(epoch_plan(CHUNKS, seed, epoch, window_rows, shuffle)):
        rows = np.concatenate([np.arange(starts[c], starts[c + 1]) for c in chunks])
        order.append(rows[row_order(len(rows), seed, epoch, w, shuffle)])
    return np.concatenate(order)


def test_iteration_arithmetic_from_the_chapter():
    assert iterations_per_epoch(1_250_000, 512) == 2442
    assert 100_000 // iterations_per_epoch(1_250_000, 512) == 40
    assert iterations_per_epoch(1024, 512) == 2
    assert iterations_per_epoch(1, 512) == 1


@pytest.mark.parametrize("window_rows", [1, 150, 300, 10_000])
def test_each_epoch_is_a_permutation_of_all_rows(window_rows):
    for epoch in range(3):
        order = epoch_rows(7, epoch, window_rows)
        assert sorted(order) == list(range(sum(CHUNKS)))


def test_same_seed_same_order_and_epochs_differ():
    a = epoch_rows(7, 0, 300)
    assert np.array_equal(a, epoch_rows(7, 0, 300))
    assert not np.array_equal(a, epoch_rows(7, 1, 300))
    assert not np.array_equal(a, epoch_rows(8, 0, 300))


def test_no_shuffle_is_the_file_order():
    assert np.array_equal(epoch_rows(7, 3, 300, shuffle=False), np.arange(sum(CHUNKS)))


def test_windows_respect_the_row_budget():
    for chunks in epoch_plan(CHUNKS, 1, 0, 200):
        rows = sum(CHUNKS[c] for c in chunks)
        assert rows <= 200 or len(chunks) == 1


@pytest.mark.parametrize("batch", [1, 7, 64, 512, 1000])
def test_batches_are_exactly_b_rows_but_the_last(batch):
    """The trainer cuts the stream of windows (here of at most 148 rows, so batches straddle
    them) into batches of ``batch`` rows; only each epoch's last one is short."""
    n = sum(CHUNKS)
    rng = np.random.default_rng(batch)
    X = rng.standard_normal((n, 2))
    records = []
    # 16KB leaves windows of 148 rows (4 chunks of 37) for these 651 rows
    fit(ArraySource(X, X @ [1.0, 2.0], chunk_rows=37),
        FitConfig(model="linear", batch=batch, epochs=2, lr=0.01, log_every=1, memory_limit="16KB", seed=1),
        hooks=Hooks(on_progress=records.append))
    # one progress record per update: the rows each update consumed
    seen = [r["rows_seen"] for r in records if r["event"] == "progress"]
    sizes = np.diff([0] + seen).reshape(2, -1)  # two epochs
    assert sizes.shape[1] == iterations_per_epoch(n, batch)
    for epoch in sizes:
        assert (epoch[:-1] == min(batch, n)).all() and 0 < epoch[-1] <= batch
        assert epoch.sum() == n


def test_stratified_windows_cover_every_chunk_and_mix_the_strata():
    chunk_rows = [100] * 60
    strata = np.repeat([0.0, 1.0], 30)  # a file sorted by label: 30 all-0 chunks, then 30 all-1
    for epoch in range(3):
        windows = epoch_plan(chunk_rows, 4, epoch, 2000, strata=strata)
        assert sorted(np.concatenate(windows)) == list(range(60))
        assert all(sum(chunk_rows[c] for c in w) <= 2000 for w in windows)
        # three windows of 20 chunks, each exactly half 0-chunks: the file's own mix; in epoch 0
        # the first is cut into the ramp's pieces (2, 5, 10 and 3 chunks), each as near the mix
        # as its number of chunks allows
        mixes = [strata[w].mean() for w in windows]
        if epoch == 0:
            assert [len(w) for w in windows] == [2, 5, 10, 3, 20, 20]
            assert all(abs(m - 0.5) <= 0.5 / len(w) for m, w in zip(mixes, windows))
            mixes = [strata[np.concatenate(windows[:4])].mean()] + mixes[4:]
        assert mixes == [0.5, 0.5, 0.5]
    assert not np.array_equal(np.concatenate(epoch_plan(chunk_rows, 4, 0, 2000, strata=strata)),
                              np.concatenate(epoch_plan(chunk_rows, 4, 1, 2000, strata=strata)))


def test_random_windows_of_sorted_chunks_would_not_mix():
    """Why stratification exists: whole-chunk random windows leave label mixes far from 0.5."""
    strata = np.repeat([0.0, 1.0], 30)
    mixes = [strata[w].mean() for e in range(20) for w in epoch_plan([100] * 60, 4, e, 2000)]
    assert max(abs(np.array(mixes) - 0.5)) > 0.15


def test_sliced_groups_stay_together_and_in_order():
    """Slices of one row group are read front to back, and whole groups are shuffled."""
    from streamsgd.plan.shuffle import epoch_plan

    groups = [0, 1, 1, 1, 2, 3, 3]
    rows = [10, 5, 5, 5, 10, 7, 7]
    seen = set()
    for epoch in range(6):
        windows = epoch_plan(rows, seed=1, epoch=epoch, window_rows=12, groups=groups)
        order = [int(c) for w in windows for c in w]
        assert sorted(order) == list(range(7))
        for g in set(groups):
            pos = [order.index(c) for c, cg in enumerate(groups) if cg == g]
            assert pos == list(range(pos[0], pos[0] + len(pos)))  # consecutive, ascending
        assert all(sum(rows[c] for c in w) <= 12 or len(w) == 1 for w in windows)
        seen.add(tuple(order))
    assert len(seen) > 1  # the group order changes between epochs


def test_epoch_0_ramps_up_from_an_eighth_of_the_window():
    """The run's first update waits for the first window only: epoch 0 cuts it into windows of
    at most W/8, W/4 and W/2 rows and the rest; later epochs keep whole windows."""
    chunk_rows = [100] * 40  # 4,000 rows, one window of W = 4,000 rows
    first, later = epoch_plan(chunk_rows, 3, 0, 4000), epoch_plan(chunk_rows, 3, 1, 4000)
    assert [len(w) for w in first] == [5, 10, 20, 5] and [len(w) for w in later] == [40]
    assert np.array_equal(np.concatenate(first), chunk_order(40, 3, 0))  # the same chunk order, cut
    # several windows: only the first is cut, into pieces of two chunks at least (two readers)
    windows = epoch_plan([300] * 12, 3, 0, 1000)
    assert [len(w) for w in windows] == [2, 1, 3, 3, 3]
    assert [len(w) for w in epoch_plan([300] * 12, 3, 1, 1000)] == [3, 3, 3, 3]
    # no shuffle: the ramp keeps the file's order
    assert np.array_equal(np.concatenate(epoch_plan(chunk_rows, 3, 0, 4000, shuffle=False)), np.arange(40))
