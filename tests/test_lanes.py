"""Row groups too big to decode at once stream several at a time (lanes), so the windows of
label-sorted data in such row groups mix the labels (plan.shuffle.laned_order); a file of one
such row group streams it as two segments, two lanes (sources.parquet.SEGMENTS)."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamsgd
from streamsgd.config import FitConfig
from streamsgd.plan.shuffle import epoch_plan, grouped_order, group_windows, laned_order
from streamsgd.sources.parquet import ParquetSource
from streamsgd.train.setup import cut_to_limit, plan_memory

ROWS, GROUP, D = 300_000, 50_000, 3
#: at this limit a 50,000-row group exceeds a window (sliced), and two open streams fit
LIMIT = 6 << 20
#: what main at a412c94 (before segments) trained on the six-group file (see the test)
COEF_SIX_GROUPS = [1.1503095492, 1.1647374202, 1.1558969108]


def _sorted_rows(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes 2 apart along (1, 1, 1)/sqrt(3), the first half label 0."""
    rng = np.random.default_rng(seed)
    y = (np.arange(rows) >= rows // 2).astype(np.float64)
    X = rng.standard_normal((rows, D)) + ((y - 0.5) * 2)[:, None] / np.sqrt(D)
    return X.astype(np.float32), y


def _write_sorted(path, group_rows: int) -> str:
    X, y = _sorted_rows(ROWS, 0)
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(D)}, "label": y}), str(path),
                   row_group_size=group_rows, use_dictionary=False, compression="none")
    return str(path)


@pytest.fixture(scope="module")
def sorted_file(tmp_path_factory) -> str:
    return _write_sorted(tmp_path_factory.mktemp("lanes") / "sorted.parquet", GROUP)


@pytest.fixture(scope="module")
def one_group_file(tmp_path_factory) -> str:
    """The label-sorted rows in one row group: the first half label 0, the second label 1."""
    return _write_sorted(tmp_path_factory.mktemp("lanes") / "one-group.parquet", ROWS)


def test_sliced_row_groups_stream_in_lanes_under_a_small_limit(sorted_file):
    source = ParquetSource(sorted_file, target="label")
    cut_to_limit(source, FitConfig(model="logistic", memory_limit=LIMIT))
    assert len(set(source.chunk_groups)) == ROWS // GROUP < len(source.chunk_rows)  # sliced
    assert source.chunk_lanes == 2
    plan = plan_memory(source, FitConfig(model="logistic", memory_limit=LIMIT), with_table=False)
    assert 2 * source.chunk_lanes * max(source.chunk_rows) <= plan.window_rows  # a window holds both lanes
    assert source.stream_bytes == source.stream_fixed > 0
    assert source.layout()["lanes"] == 2  # what `streamsgd info` shows


def test_every_batch_of_sorted_sliced_data_mixes_the_labels(sorted_file, caplog):
    """On one lane (the code before lanes) a window is one row group, one label: batch
    label means of 0 or 1. With two lanes and the label strata every batch holds both."""
    means = []
    with caplog.at_level(logging.WARNING, logger="streamsgd"), streamsgd.batches(
            sorted_file, batch=512, seed=3, memory_limit=LIMIT, target="label", model="logistic") as stream:
        for batch in stream:
            means.append(float(np.mean(batch.y)))
    assert not [r for r in caplog.records if "streamsgd shuffle" in r.getMessage()]
    means = np.array(means[:-1])  # the short last batch aside
    # a uniform batch of 512 has a label mean of 0.5 +- 0.022: 0.2 is 9 sigma
    assert np.abs(means - 0.5).max() < 0.2
    assert abs(means.mean() - 0.5) < 0.01


def _sgd_loss(X: np.ndarray, y: np.ndarray, batch: int, X_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out log loss after one epoch of logistic SGD (lr 0.1, from zero) in the given order."""
    w, b = np.zeros(X.shape[1]), 0.0
    for lo in range(0, len(y), batch):
        xb, yb = X[lo:lo + batch].astype(np.float64), y[lo:lo + batch]
        g = 1 / (1 + np.exp(-(xb @ w + b))) - yb
        w -= 0.1 * xb.T @ g / len(yb)
        b -= 0.1 * g.mean()
    z = X_test @ w + b
    return float(np.mean(np.logaddexp(0, z) - y_test * z))


@pytest.mark.parametrize("layout", ["six row groups", "one row group"])
def test_one_epoch_on_sorted_sliced_data_ends_near_random_order(sorted_file, one_group_file, layout):
    """On one lane (the code before lanes; for one row group, before segments) a window is
    slices of one row group, one label."""
    path = sorted_file if layout == "six row groups" else one_group_file
    Xs, ys = [], []
    with streamsgd.batches(path, batch=512, seed=3, memory_limit=LIMIT, target="label",
                           model="logistic") as stream:
        for batch in stream:
            Xs.append(np.array(batch.X)), ys.append(np.array(batch.y))
    X, y = np.concatenate(Xs), np.concatenate(ys)
    X_test, y_test = _sorted_rows(20_000, 1)
    order = np.random.default_rng(0).permutation(len(y))
    streamed, shuffled = _sgd_loss(X, y, 512, X_test, y_test), _sgd_loss(X[order], y[order], 512, X_test, y_test)
    # one row group per window lands ~0.3 above random order on this data; a few random
    # orders differ by < 0.002
    assert streamed - shuffled < 0.01


def test_laned_order_reads_each_group_front_to_back_k_at_a_time():
    groups = [g for g in range(12) for _ in range(5)]
    rows = [10] * 60
    for epoch in range(4):
        order = laned_order(rows, groups, seed=2, epoch=epoch, lanes=3)
        assert sorted(order.tolist()) == list(range(60))
        for g in range(12):
            pos = [c for c in order.tolist() if groups[c] == g]
            assert pos == sorted(pos)  # ascending: a stream never restarts
        for k in range(0, 60 - 3, 3):  # every run of 3 holds 3 groups
            assert len({groups[c] for c in order[k:k + 3]}) == 3


def test_laned_order_with_strata_puts_both_labels_in_every_window():
    groups = [g for g in range(8) for _ in range(4)]
    strata = np.array([float(g >= 4) for g in groups])  # sorted by label
    rows = [25] * 32
    for epoch in range(5):
        windows = epoch_plan(rows, seed=1, epoch=epoch, window_rows=100, strata=strata, groups=groups, lanes=2)
        for w in windows[3:]:  # past the ramp
            assert set(strata[w]) == {0.0, 1.0}


def test_one_lane_is_the_plan_before_lanes():
    groups = [0, 1, 1, 1, 2, 3, 3]
    rows = [10, 5, 5, 5, 10, 7, 7]
    for epoch in range(3):
        got = epoch_plan(rows, seed=1, epoch=epoch, window_rows=12, groups=groups, lanes=1)
        want = group_windows(rows, grouped_order(groups, 1, epoch), 12)
        if epoch == 0:
            continue  # ramped
        assert [w.tolist() for w in got] == [w.tolist() for w in want]


@pytest.mark.parametrize("fixture, held", [("sorted_file", "one or two row groups"),
                                           ("one_group_file", "consecutive rows of its one row group")])
def test_one_lane_on_sliced_data_warns_naming_the_file_and_the_fix(fixture, held, request, monkeypatch, caplog):
    """A limit that pays for one open row group: one lane, said in one line naming the file
    and the fix, also for a file of one row group (its two segments need two streams)."""
    import streamsgd.train.setup as setup

    path = request.getfixturevalue(fixture)
    monkeypatch.setattr(setup, "lanes", lambda *_: 1)  # a limit that pays for one open row group
    source = ParquetSource(path, target="label")
    with caplog.at_level(logging.WARNING, logger="streamsgd"):
        cut_to_limit(source, FitConfig(model="logistic", memory_limit=LIMIT))
    assert source.chunk_lanes == 1 and source.stream_bytes == 0
    [record] = [r for r in caplog.records if "streamsgd shuffle" in r.getMessage()]
    assert path in record.getMessage() and held in record.getMessage()


def test_data_read_whole_is_planned_as_before(tmp_path):
    """Row groups that are not sliced: one lane, nothing charged, the plan of one lane."""
    X, y = _sorted_rows(20_000, 0)
    path = str(tmp_path / "small.parquet")
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(D)}, "label": y}), path, row_group_size=1000)
    source = ParquetSource(path, target="label")
    cut_to_limit(source, FitConfig(model="logistic", memory_limit=LIMIT))
    assert len(set(source.chunk_groups)) == len(source.chunk_rows)
    assert source.chunk_lanes == 1 and source.stream_bytes == 0 and source.stream_fixed == 0


@pytest.mark.parametrize("layout", ["six row groups", "one row group"])
def test_a_stream_in_lanes_resumes_exactly_mid_epoch(sorted_file, one_group_file, layout):
    """The lanes' order is a pure function of the seed and the layout: a stream restored from
    a state saved mid-epoch hands out the very batches the first one went on to (a segment's
    stream starting afresh mid-row-group)."""
    path = sorted_file if layout == "six row groups" else one_group_file
    options = dict(batch=512, seed=5, memory_limit=LIMIT, target="label", model="logistic", epochs=2)
    with streamsgd.batches(path, **options) as stream:
        it = iter(stream)
        for _ in range(700):  # into epoch 1 (586 batches an epoch)
            next(it)
        state = stream.state_dict()
        want = [np.array(next(it).X) for _ in range(20)]
    with streamsgd.batches(path, **options) as again:
        again.load_state_dict(state)
        got = [np.array(b.X) for _, b in zip(range(20), again)]
    assert state["epoch"] == 1
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_a_model_on_row_groups_read_whole_is_the_one_before_lanes(tmp_path):
    """Label-sorted rows in 12 row groups read whole: the coefficients that main at 4e90611
    (before lanes) trained, to 1e-9 (the same plan and kernels give the same floats; the
    tolerance only absorbs a printout rounded to 10 decimals)."""
    from streamsgd.train import trainer

    rng = np.random.default_rng(0)
    y = (np.arange(60_000) >= 30_000).astype(np.float64)
    X = (rng.standard_normal((60_000, 3)) + ((y - 0.5) * 2)[:, None] / np.sqrt(3)).astype(np.float32)
    path = str(tmp_path / "whole.parquet")
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(3)}, "label": y}), path, row_group_size=5000)
    source = streamsgd.open_source(path, target="label")
    model = trainer.fit(source, FitConfig(epochs=2, batch=256, model="logistic", memory_limit=LIMIT, seed=4)).model
    assert len(source.chunk_rows) == 12 and source.chunk_lanes == 1
    np.testing.assert_allclose(np.ravel(model.coef), [1.1536380593, 1.1684906766, 1.1560048776], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.ravel(model.intercept), [0.0004180835], rtol=0, atol=1e-9)


def test_lanes_read_every_row_once_without_restarting_a_stream(sorted_file, monkeypatch):
    """K streams open at once, read by the reader threads in any interleaving: each stream is
    started once per row group and part (a restart would decode the rows before it again)."""
    from streamsgd.sources import parquet

    starts: list[tuple[int, int, tuple[str, ...]]] = []
    restart = parquet._Cursor._restart

    def counted(self):
        starts.append((self._file, self._group, tuple(self._names)))
        restart(self)

    monkeypatch.setattr(parquet._Cursor, "_restart", counted)
    n = 0
    with streamsgd.batches(sorted_file, batch=512, seed=3, memory_limit=LIMIT, target="label", model="logistic",
                           readers=2) as stream:
        for batch in stream:
            n += len(batch.y)
    assert n == ROWS
    # the target pass before training streams the label alone; the epoch, its two parts
    assert len(starts) == len(set(starts)) == (ROWS // GROUP) * (1 + parquet.STREAM_PARTS)


def test_one_sliced_row_group_streams_as_two_segments_each_a_lane(one_group_file):
    """One row group too big to decode at once: its slices form two segments of consecutive
    rows, each its own stream (a lane), and the plan gives each lane a reader, so the two
    halves decode at once."""
    from streamsgd.sources.parquet import SEGMENTS

    config = FitConfig(model="logistic", memory_limit=LIMIT)
    source = ParquetSource(one_group_file, target="label")
    cut_to_limit(source, config)
    assert source.layout()["row_groups"] == source.layout()["sliced_row_groups"] == 1
    assert source.chunk_lanes == SEGMENTS == len(set(source.chunk_groups)) == 2
    halves = [[i for i, g in enumerate(source.chunk_groups) if g == unit] for unit in dict.fromkeys(source.chunk_groups)]
    assert [sum(source.chunk_rows[i] for i in half) for half in halves] == [ROWS // 2, ROWS // 2]
    assert halves[0] + halves[1] == list(range(len(source.chunk_rows)))  # each half consecutive rows
    assert source.stream_bytes == source.stream_fixed > 0  # the second stream is paid for
    plan = plan_memory(source, config, with_table=False)
    assert plan.readers == 2
    assert 2 * source.chunk_lanes * max(source.chunk_rows) <= plan.window_rows


def test_every_batch_of_one_sorted_row_group_mixes_the_labels(one_group_file):
    means = []
    with streamsgd.batches(one_group_file, batch=512, seed=3, memory_limit=LIMIT, target="label",
                           model="logistic") as stream:
        for batch in stream:
            means.append(float(np.mean(batch.y)))
    means = np.array(means[:-1])  # the short last batch aside
    # a uniform batch of 512 has a label mean of 0.5 +- 0.022: 0.2 is 9 sigma (one lane: 0 or 1)
    assert np.abs(means - 0.5).max() < 0.2


def test_segments_read_every_row_once_without_restarting_a_stream(one_group_file, monkeypatch):
    """Two readers on the two segments' streams: each stream starts once per part (the
    second segment's decodes and drops the first half once), never again."""
    from streamsgd.sources import parquet

    starts: list[tuple[int, int, int, tuple[str, ...]]] = []
    restart = parquet._Cursor._restart

    def counted(self):
        starts.append((self._file, self._group, self.end, tuple(self._names)))
        restart(self)

    monkeypatch.setattr(parquet._Cursor, "_restart", counted)
    n = 0
    with streamsgd.batches(one_group_file, batch=512, seed=3, memory_limit=LIMIT, target="label",
                           model="logistic", readers=2, epochs=2) as stream:
        for batch in stream:
            n += len(batch.y)
    assert n == 2 * ROWS
    # the target pass streams the label alone; each epoch, each segment's parts
    per_epoch = parquet.SEGMENTS * parquet.STREAM_PARTS
    assert len(starts) == parquet.SEGMENTS + 2 * per_epoch
    assert len(set(starts)) == parquet.SEGMENTS + per_epoch


def test_a_model_on_a_row_group_read_in_lanes_is_the_one_before_segments(sorted_file):
    """Six sliced row groups already stream in two lanes: segments leave their plan alone,
    and a second reader per lane reads the same rows into the same slots: the coefficients
    of main at a412c94 (before segments), to 1e-9 (a printout rounded to 10 decimals)."""
    from streamsgd.train import trainer

    source = streamsgd.open_source(sorted_file, target="label")
    model = trainer.fit(source, FitConfig(epochs=2, batch=256, model="logistic", memory_limit=LIMIT, seed=4)).model
    assert source.chunk_lanes == 2 and len(set(source.chunk_groups)) == ROWS // GROUP
    np.testing.assert_allclose(np.ravel(model.coef), COEF_SIX_GROUPS, rtol=0, atol=1e-9)


def test_a_second_lane_is_paid_from_half_the_limit_where_a_third_pays_for_none():
    """pyarrow's default 1,048,576-row groups of 100 float columns hold ~235 MB a stream:
    more than a third of the default 512 MiB, less than half, so two lanes (one before)."""
    from streamsgd.plan.memory import lanes

    limit, stream = 536_870_912, 235_081_798
    assert lanes(stream, limit, groups=2) == 2
    assert lanes(limit // 2 + 1, limit, groups=2) == 1  # more than half: one lane
    assert lanes(limit // 10, limit, groups=8) == 1 + 3  # a third pays for three more
    assert lanes(stream, limit, groups=1) == 1  # nothing to stream beside it (a lone row group:
    # cut_to_limit counts its SEGMENTS)
