"""streamsgd.batches: the trainer's stream as an iterator (DESIGN.md §9, issue 18 item 1)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamsgd
from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.train import fit as train_fit

N, B = 120_000, 512
#: small enough that an epoch is several windows (120,000 rows of 6 columns make ~2.9 MB;
#: the plan at this limit holds ~62,000 rows per window), so batches straddle windows
LIMIT = "16MiB"


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    """Feature ``row`` = the row's id (exact in float32), so batches name the rows they hold."""
    path = tmp_path_factory.mktemp("batches") / "ids.parquet"
    rng = np.random.default_rng(3)
    table = pa.table({"row": np.arange(N, dtype=np.float32),
                      **{f"x{j}": rng.normal(size=N).astype(np.float32) for j in range(4)},
                      "y": (rng.random(N) < 0.3).astype(np.float64)})
    pq.write_table(table, path, row_group_size=4_000)
    return str(path)


@pytest.fixture(scope="module")
def regression_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("batches") / "reg.parquet"
    rng = np.random.default_rng(4)
    X = rng.normal(size=(N, 5)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7 + rng.normal(scale=0.5, size=N)
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(5)}, "y": y}), path, row_group_size=3_000)
    return str(path)


def ids(batch):
    return batch.X[:, 0].astype(np.int64)


def test_each_epoch_is_a_permutation_cut_into_full_batches_and_a_short_last_one(ids_file):
    with streamsgd.batches(ids_file, batch=B, epochs=2, seed=5, memory_limit=LIMIT, model="logistic") as stream:
        assert stream.plan.window_rows < N  # several windows, so some batches straddle two
        got = list(stream)
    per_epoch = -(-N // B)
    assert len(got) == 2 * per_epoch
    for epoch in (0, 1):
        mine = [b for b in got if b.epoch == epoch]
        assert [b.index for b in mine] == list(range(per_epoch))
        assert [len(b) for b in mine] == [B] * (per_epoch - 1) + [N - B * (per_epoch - 1)]
        rows = np.concatenate([ids(b) for b in mine])
        assert np.array_equal(np.sort(rows), np.arange(N))
    first, second = (np.concatenate([ids(b) for b in got if b.epoch == e]) for e in (0, 1))
    assert not np.array_equal(first, second)  # each epoch has its own order
    assert not np.array_equal(first, np.arange(N))  # and it is shuffled


def test_labels_and_targets_travel_with_their_rows(ids_file):
    table = pq.read_table(ids_file)
    y = table.column("y").to_numpy()
    for batch in streamsgd.batches(ids_file, batch=B, seed=1, memory_limit=LIMIT, model="logistic"):
        assert np.array_equal(batch.y, y[ids(batch)])


def test_same_seed_same_batches_other_seed_others(ids_file):
    def order(seed):
        return np.concatenate([ids(b) for b in streamsgd.batches(ids_file, batch=B, seed=seed, memory_limit=LIMIT)])

    assert np.array_equal(order(7), order(7))
    assert not np.array_equal(order(7), order(8))


def test_no_shuffle_reads_in_file_order(ids_file):
    rows = np.concatenate([ids(b) for b in streamsgd.batches(ids_file, batch=B, shuffle=False, memory_limit=LIMIT)])
    assert np.array_equal(rows, np.arange(N))


def test_the_trainer_trains_on_exactly_these_batches(regression_file):
    """Plain SGD replayed in NumPy over the batches lands on the trainer's model: a different
    order of rows (another window, another straddle) would move it by far more than the
    1e-9 relative tolerance, which only covers summation order (float64, ~700 updates)."""
    lr, epochs, seed = 0.02, 3, 11
    result = train_fit(streamsgd.open_source(regression_file),
                       FitConfig(model="linear", optimizer="sgd", lr=lr, lr_schedule="constant", l2=0.0,
                                 standardize=False, average=False, batch=B, epochs=epochs, seed=seed,
                                 memory_limit=LIMIT))
    w, b = np.zeros(5), 0.0
    for batch in streamsgd.batches(regression_file, batch=B, epochs=epochs, seed=seed, memory_limit=LIMIT):
        X = batch.X.astype(np.float64)
        r = X @ w + b - batch.y
        w, b = w - lr * (X.T @ r) / len(batch), b - lr * r.sum() / len(batch)
    np.testing.assert_allclose(result.model.coef, w, rtol=1e-9)
    np.testing.assert_allclose(result.model.intercept, b, rtol=1e-9)


@pytest.mark.parametrize("stop_after", [1, 117, 235, 236, 300])  # 235 = last of epoch 0, 236 its short one
def test_resume_from_state_dict_continues_exactly(ids_file, stop_after):
    options = dict(batch=B, epochs=2, seed=9, memory_limit=LIMIT)
    whole = [ids(b) for b in streamsgd.batches(ids_file, **options)]
    first = streamsgd.batches(ids_file, **options)
    taken = [ids(next(first)) for _ in range(stop_after)]
    state = first.state_dict()
    first.close()
    second = streamsgd.batches(ids_file, **options)
    second.load_state_dict(state)
    rest = [ids(b) for b in second]
    assert len(taken) + len(rest) == len(whole)
    for a, b in zip(taken + rest, whole):
        assert np.array_equal(a, b)


def test_a_state_of_another_stream_is_refused(ids_file):
    state = streamsgd.batches(ids_file, batch=B, seed=1, memory_limit=LIMIT).state_dict()
    other = streamsgd.batches(ids_file, batch=256, seed=1, memory_limit=LIMIT)
    with pytest.raises(UsageError, match="batch=512"):
        other.load_state_dict(state)


def test_shards_hold_every_row_once_per_epoch(ids_file):
    S = 3
    for epoch_rows in zip(*[[np.concatenate([ids(b) for b in streamsgd.batches(
            ids_file, batch=B, epochs=2, seed=2, memory_limit=LIMIT, shard=(i, S)) if b.epoch == e])
            for e in (0, 1)] for i in range(S)]):
        rows = np.concatenate(epoch_rows)
        assert np.array_equal(np.sort(rows), np.arange(N))
        sizes = [r.size for r in epoch_rows]
        assert max(sizes) - min(sizes) <= 4_000  # balanced: within one row group


def test_shard_is_checked(ids_file):
    with pytest.raises(UsageError, match="shard"):
        streamsgd.batches(ids_file, shard=(3, 3))


def test_leaving_early_leaves_no_thread(ids_file):
    before = threading.active_count()
    stream = streamsgd.batches(ids_file, batch=B, epochs=3, memory_limit=LIMIT)
    next(stream)
    assert threading.active_count() > before  # readers run ahead
    stream.close()
    assert threading.active_count() == before
    stream = streamsgd.batches(ids_file, batch=B, epochs=3, memory_limit=LIMIT)
    next(stream)
    del stream
    gc.collect()
    assert threading.active_count() == before


def test_batches_of_arrays_and_features_only(tmp_path):
    X = np.arange(20.0, dtype=np.float32).reshape(10, 2)
    got = list(streamsgd.batches(streamsgd.ArraySource(X, np.zeros(10)), batch=4, shuffle=False))
    assert [len(b) for b in got] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b.X for b in got]), X)


@pytest.fixture(scope="module")
def nulls_file(tmp_path_factory):
    """A regression table as pandas writes it by default: x1 with NaN (stored as nulls), and
    some null targets."""
    import pandas as pd

    rng = np.random.default_rng(6)
    n = 30_000
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 + rng.normal(scale=0.5, size=n)
    x1 = np.where(rng.random(n) < 0.2, np.nan, X[:, 1])
    target = np.where(rng.random(n) < 0.01, np.nan, y)
    path = tmp_path_factory.mktemp("batches") / "nulls.parquet"
    pd.DataFrame({"x0": X[:, 0], "x1": x1, "x2": X[:, 2], "y": target}).to_parquet(path, row_group_size=5_000)
    return str(path), x1, target


def test_batches_impute_numeric_nulls_as_fit_does(nulls_file):
    """By default a column with nulls is imputed with its mean over the rows that train and
    gains a ``__missing`` indicator, rows with a null target are left out (as ``fit`` does),
    and the trainer trains on exactly these batches (plain SGD replayed in NumPy lands on its
    model at 1e-9: another mean, another row or another order would move it far more)."""
    path, x1, target = nulls_file
    kept = ~np.isnan(target)
    mean = np.nanmean(x1[kept])
    lr, epochs, seed = 0.02, 2, 3
    stream = streamsgd.batches(path, batch=B, epochs=epochs, seed=seed, memory_limit=LIMIT)
    assert stream.source.features == ["x0", "x1", "x2", "x1__missing"]
    w, b, rows, missing = np.zeros(4), 0.0, 0, 0
    for batch in stream:
        X = batch.X.astype(np.float64)
        assert not np.isnan(X).any()
        flagged = X[:, 3] == 1.0
        np.testing.assert_allclose(X[flagged, 1], mean, rtol=1e-6)  # float32 windows
        rows, missing = rows + len(batch), missing + int(flagged.sum())
        r = X @ w + b - batch.y
        w, b = w - lr * (X.T @ r) / len(batch), b - lr * r.sum() / len(batch)
    assert rows == epochs * kept.sum() and missing == epochs * np.isnan(x1[kept]).sum()
    result = train_fit(streamsgd.open_source(path),
                       FitConfig(model="linear", optimizer="sgd", lr=lr, lr_schedule="constant", l2=0.0,
                                 standardize=False, average=False, batch=B, epochs=epochs, seed=seed,
                                 memory_limit=LIMIT))
    np.testing.assert_allclose(result.model.coef, w, rtol=1e-9)
    np.testing.assert_allclose(result.model.intercept, b, rtol=1e-9)


def test_batches_refuse_nulls_with_missing_error(nulls_file):
    from streamsgd.errors import DataError

    path, _, target = nulls_file
    first = int(np.isnan(target[:5_000]).sum())  # row group 0's null targets, the first nulls read
    with pytest.raises(DataError, match=rf"nulls\.parquet row group 0: target column 'y' has {first} null values"):
        next(iter(streamsgd.batches(path, batch=B, memory_limit=LIMIT, shuffle=False, missing="error")))
    with pytest.raises(UsageError, match=r"^--missing: expected one of impute, error; got 'drop'"):
        streamsgd.batches(path, missing="drop")
