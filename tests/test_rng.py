"""Every random stream of a run has its own tag (plan/rng.py), so no two streams can meet:
not the plan's epochs and tune's hold-out draw (under the old ``[seed, epoch]`` and
``[seed, 13]`` keys they were one stream at epoch 13), not two call sites of one tag."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamsgd.plan import rng
from streamsgd.plan.shuffle import chunk_order, row_order
from streamsgd.sources import ArraySource
from streamsgd.sources.subset import split_rows
from streamsgd.train.trainer import split_validation

SEEDS = (0, 1, 13, 2**31 - 1)


def draws(seed: int, tag: int) -> np.ndarray:
    """The first draws of stream ``tag`` at keys all zero (where padding would make them meet)."""
    return rng.stream(seed, tag, *[0] * rng.KEYS[tag]).random(16)


@pytest.mark.parametrize("seed", SEEDS)
def test_streams_with_one_seed_and_different_tags_differ(seed):
    for a, b in itertools.combinations(rng.KEYS, 2):
        assert not np.array_equal(draws(seed, a), draws(seed, b)), (a, b)


def test_tags_are_distinct_and_a_stream_is_its_documented_key():
    assert len(set(rng.KEYS)) == len(rng.KEYS) == 11
    np.testing.assert_array_equal(rng.stream(7, rng.ROW_ORDER, 3, 2).random(5),
                                  np.random.default_rng([7, rng.ROW_ORDER, 3, 2]).random(5))


def test_a_tag_with_the_wrong_number_of_keys_or_an_unknown_tag_is_refused():
    with pytest.raises(ValueError, match="takes 1 keys; got 0"):
        rng.stream(0, rng.CHUNK_ORDER)  # would be CHUNK_ORDER's epoch 0 under zero padding
    with pytest.raises(ValueError, match="takes None keys"):
        rng.stream(0, 99)


@pytest.mark.parametrize("seed", SEEDS)
def test_tunes_holdout_draw_is_no_epochs_chunk_order(seed):
    n = 40  # 40! orders: equal by chance never
    holdout = rng.stream(seed, rng.HOLDOUT).permutation(n)
    for epoch in range(64):
        assert not np.array_equal(chunk_order(n, seed, epoch), holdout), epoch
    # the old key of tune's hold-out, [seed, 13], is no longer epoch 13's chunk order
    assert not np.array_equal(chunk_order(n, seed, 13), np.random.default_rng([seed, 13]).permutation(n))


def test_an_epochs_chunk_order_is_not_its_first_windows_row_order():
    # [seed, epoch] and [seed, epoch, 0] were one stream (SeedSequence pads with zeros)
    n = 50
    assert np.array_equal(np.random.default_rng([3, 2]).permutation(n), np.random.default_rng([3, 2, 0]).permutation(n))
    assert not np.array_equal(chunk_order(n, 3, 2), row_order(n, 3, 2, 0))


def test_the_validation_splits_draw_from_their_tags():
    X = np.arange(4000, dtype=np.float64).reshape(-1, 1)
    chunks = ArraySource(X, np.zeros(4000), chunk_rows=100)  # 40 chunks: whole chunks held out
    train, held = split_validation(chunks, 0.25, seed=5)
    order = rng.stream(5, rng.SPLIT).permutation(40)
    assert held.chunks == sorted(int(c) for c in order[:10])
    assert train.chunks == sorted(int(c) for c in order[10:])

    one = ArraySource(X, np.zeros(4000), chunk_rows=2000)  # 2 chunks: rows of each held out
    _, held_rows = split_validation(one, 0.25, seed=5)
    for c in range(2):
        mask = rng.stream(5, rng.SPLIT_ROWS, c).random(2000) < 0.25
        assert held_rows.chunk_rows[c] == mask.sum()
    _, tune_rows = split_rows(one, 0.25, 5, rng.HOLDOUT_ROWS)
    assert tune_rows.chunk_rows != held_rows.chunk_rows  # the tuner's rows are drawn apart


@pytest.mark.parametrize("n", [0, 1, 2, 3, 31, 32, 33, 65, 1000, 65_537, 300_001])
def test_the_compiled_row_order_is_numpys_permutation_and_leaves_the_same_state(n):
    # plan.permute draws the window's row order in compiled code: the plan (and every model
    # trained on it) is pinned to NumPy's Generator.permutation of the tagged stream
    from streamsgd.plan.permute import AHEAD, permutation

    assert AHEAD == 32  # n above spans blocks of draws: short, exact, one over, many
    for seed, epoch, window in ((0, 0, 0), (7, 3, 2), (2**31 - 1, 1, 9)):
        ours, numpys = rng.stream(seed, rng.ROW_ORDER, epoch, window), rng.stream(seed, rng.ROW_ORDER, epoch, window)
        got = permutation(ours, n)
        np.testing.assert_array_equal(got, numpys.permutation(n))
        assert got.dtype == np.int64
        assert ours.integers(2**62) == numpys.integers(2**62)  # the generator's state after: NumPy's
        np.testing.assert_array_equal(row_order(n, seed, epoch, window), got)


def test_the_compiled_inverse_is_numpys_scatter_of_the_row_order():
    from streamsgd.plan.permute import inverse

    order = row_order(100_003, 4, 1, 2)
    slots = np.empty_like(order)
    slots[order] = np.arange(order.size)
    np.testing.assert_array_equal(inverse(order), slots)
    assert inverse(np.zeros(0, np.int64)).size == 0
