"""Training on S logical shards in one process (train/shards.py): the exact reference the
cluster runs must equal (DESIGN.md §7)."""

from __future__ import annotations

import numpy as np
import pytest

import streamsgd
from streamsgd.compute.sparse import FOLDS
from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.plan.shards import shard_chunks
from streamsgd.sources import open_source
from streamsgd.train.inputs import Checkpointing, Hooks
from streamsgd.train.shards import InProcess, ShardWorker
from streamsgd.train.trainer import fit

from helpers import write_parquet


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """7 row groups of unequal size (shards differ in rows), a rare heavy column (the default
    step is lowered in a later window), a sample weight column."""
    rng = np.random.default_rng(7)
    n = 6000
    X = rng.normal(size=(n, 6))
    X[rng.choice(n, 5, replace=False), 5] = 40.0  # rare large rows: see_rows lowers the step
    y = (X[:, :5] @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + rng.normal(size=n) > 0).astype(float)
    path = tmp_path_factory.mktemp("shards") / "d.parquet"
    return write_parquet(path, X, y, row_group_size=900)


def _fit(path, hooks=None, **options):
    config = FitConfig(**{"model": "logistic", "epochs": 3, "batch": 128, "memory_limit": "64MiB", **options})
    return fit(open_source(path, target="y"), config, hooks=hooks)


def _same(a, b):
    assert np.array_equal(a.model.coef, b.model.coef) and np.array_equal(a.model.intercept, b.model.intercept)
    assert a.summary["iterations"] == b.summary["iterations"]


@pytest.mark.parametrize("options", [{}, {"model": "linear", "optimizer": "adam"}, {"model": "poisson", "l1": 1e-3},
                                     {"model": "softmax", "lr_schedule": "cosine"}])
def test_one_shard_in_rounds_equals_the_single_process_run(data, options):
    plain = _fit(data, **options)
    rounds = _fit(data, hooks=Hooks(backend=InProcess), **options)
    _same(plain, rounds)


def test_two_shards_first_update_is_one_batch_of_both_shards(data):
    """The first update equals a NumPy gradient over the union of each shard's first batch
    (rows from streamsgd.batches with the same shard deal): Σ g_k / Σ n_k, not a mean of means."""
    B, lr = 100, 0.5
    result = _fit(data, shards=2, steps=1, batch=B, lr=lr, l2=0.0, standardize=False, average=False, epochs=None)
    rows_x, rows_y = [], []
    for k in range(2):
        with streamsgd.batches(data, target="y", batch=B, epochs=1, seed=0, memory_limit="32MiB",
                               shard=(k, 2), dtype="float32") as stream:
            first = next(iter(stream))
            rows_x.append(np.asarray(first.X, dtype=np.float64))
            rows_y.append(np.asarray(first.y, dtype=np.float64))
    X, y = np.vstack(rows_x), np.concatenate(rows_y)
    assert len(y) == 2 * B
    residual = 0.5 - y  # σ(0) − y at the zero start
    grad_w, grad_b = X.T @ residual / len(y), residual.mean()
    np.testing.assert_allclose(result.model.coef, -lr * grad_w, rtol=1e-12, atol=0)
    assert result.model.intercept == pytest.approx(-lr * grad_b, rel=1e-12)


def test_two_shards_see_every_row_once_per_epoch(data):
    """An epoch on shards feeds every row once: the rows the run counts equal the data's."""
    result = _fit(data, shards=3, epochs=2)
    assert result.summary["rows_seen"] == 2 * 6000
    source = open_source(data, target="y")
    deal = shard_chunks(source.chunk_rows, 0, 0, 3)
    rounds = max(-(-sum(source.chunk_rows[c] for c in chunks) // 128) for chunks in deal)
    assert result.summary["iterations_per_epoch"] == rounds


def test_shards_resume_from_a_mid_epoch_checkpoint_bit_for_bit(data):
    saved = []
    hooks = Hooks(checkpointing=Checkpointing(save=saved.append, every=7))
    whole = _fit(data, hooks=hooks, shards=2)
    middle = saved[len(saved) // 2]
    assert 0 < int(middle["shard_round"][0])  # inside an epoch
    resumed = fit(open_source(data, target="y"),
                  FitConfig(model="logistic", epochs=3, batch=128, memory_limit="64MiB", shards=2), resume=middle)
    _same(whole, resumed)


def test_shards_are_recorded_and_change_the_model(data):
    one, two = _fit(data), _fit(data, shards=2)
    assert two.model.metadata["config"]["shards"] == 2 and "shards" not in one.model.metadata["config"]
    assert not np.array_equal(one.model.coef, two.model.coef)


@pytest.mark.parametrize("options, word", [({"batch": "auto"}, "--batch"), ({"sync": "models", "l1": 0.1}, "--l1"),
                                           ({"sync_every": "often"}, "--sync-every"), ({"sync_every": 0}, "--sync-every"),
                                           ({"hidden": (4,)}, "--hidden"), ({"workers": 2, "scheduler": "x:1"},
                                                                            "--scheduler")])
def test_sharded_options_refused_in_one_line(options, word):
    with pytest.raises(UsageError, match=word):
        FitConfig(**{"shards": 2, **options})


# --sync models (local SGD): each shard makes H updates of its own, then the driver averages


@pytest.mark.parametrize("options", [{}, {"model": "linear", "optimizer": "adam", "l2": 1e-3}])
def test_one_shard_local_sgd_equals_the_single_process_run(data, options):
    """With one shard the average is that shard's model (weight 1.0 exactly): any H gives
    the plain run's bits (a given --lr: the default step is lowered after a round instead
    of before the update)."""
    plain = _fit(data, lr=0.05, **options)
    for every in (1, 7):
        _same(plain, _fit(data, lr=0.05, sync="models", sync_every=every, **options))


def test_local_sgd_with_one_update_per_round_is_the_synchronous_update(data):
    """Plain SGD is linear in the gradient: the row-weighted mean of the shards' one-step
    models θ − η(G_k/n_k + λθ) is θ − η(ΣG_k/Σn_k + λθ), the --sync gradients update; only
    the rounding of the averaging differs (rtol 1e-10 after ~140 updates of a stable step)."""
    options = {"shards": 3, "lr": 0.3, "l2": 1e-3, "epochs": 3}
    sync = _fit(data, **options)
    local = _fit(data, sync="models", sync_every=1, **options)
    np.testing.assert_allclose(local.model.coef, sync.model.coef, rtol=1e-10)
    assert local.summary["iterations"] == sync.summary["iterations"]


def test_local_sgd_reaches_the_single_process_held_out_loss(data, tmp_path):
    """Two shards averaged every 30 updates, the same 5 epochs: held-out loss within 1 % of
    the single-process model's (issue 17's mark; measured here: 1.0039x; H = 1 is 1.088x,
    since each update then steps as for the local batch B on 2B rows; on throughput.py's
    file every H lands within 1e-5 after one epoch, benchmarks/cluster.py)."""
    from streamsgd.tools.inference import evaluate

    rng = np.random.default_rng(8)
    X = rng.normal(size=(4000, 6))
    y = (X[:, :5] @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + rng.normal(size=4000) > 0).astype(float)
    test = write_parquet(tmp_path / "test.parquet", X, y)
    plain, local = _fit(data, epochs=5), _fit(data, epochs=5, shards=2, sync="models", sync_every=30)
    losses = [evaluate(result.model, open_source(test, target="y"))["loss"] for result in (plain, local)]
    assert losses[1] <= losses[0] * 1.01, losses


@pytest.mark.parametrize("batch", [128, 8])
def test_local_sgd_auto_records_its_choice_and_reruns_to_the_same_model(data, batch):
    """auto's H comes from timings, so it is recorded: the summary and the model say which,
    and --sync-every with that H gives the same model, bit for bit. Its dry rounds take 51
    updates: at batch 128 they run past a shard's first window (the first round seeks back),
    at batch 8 they stay inside it (the lanes rewind to where they stood)."""
    auto = _fit(data, shards=2, sync="models", batch=batch)
    every = auto.summary["sync_every"]
    assert 1 <= every <= auto.summary["iterations_per_epoch"]
    assert auto.model.metadata["config"]["sync_every"] == every
    _same(auto, _fit(data, shards=2, sync="models", sync_every=every, batch=batch))


def test_local_sgd_resumes_from_a_mid_epoch_checkpoint_bit_for_bit(data):
    saved = []
    options = {"shards": 2, "sync": "models", "sync_every": 5}
    whole = _fit(data, hooks=Hooks(checkpointing=Checkpointing(save=saved.append, every=12)), **options)
    middle = next(arrays for arrays in saved if int(arrays["shard_round"][0]) > 0)
    assert int(middle["sync_every"][0]) == 5
    config = FitConfig(model="logistic", epochs=3, batch=128, memory_limit="64MiB", **options)
    _same(whole, fit(open_source(data, target="y"), config, resume=middle))



class _Counting(InProcess):
    """The in-process backend, counting the rounds asked of it."""

    asked: list[str] = []

    def ask(self, method, *args):
        _Counting.asked.append(method)
        return super().ask(method, *args)


@pytest.mark.parametrize("shards", [1, 2])
def test_local_sgd_asks_no_empty_round_once_every_shard_has_run_out(data, shards):
    """A round in which every shard runs out of the epoch ends it: with H past an epoch's
    updates, one round an epoch, not a second, empty one to learn that the rows are gone (on
    a cluster each round is a message round trip, ~10 ms: 5 % of an epoch of cluster.py's
    2M-row file at K = 1). The model is unchanged (one shard: the single-process bits)."""
    _Counting.asked.clear()
    rounds = _fit(data, hooks=Hooks(backend=_Counting), lr=0.05, shards=shards, sync="models", sync_every=10**6)
    assert _Counting.asked.count("local") == 3  # epochs
    if shards == 1:
        _same(_fit(data, lr=0.05), rounds)

# hashed categorical columns on shards: the sparse sums reduced in shard order, or the tables averaged


@pytest.fixture(scope="module")
def hashed_data(tmp_path_factory):
    """3 numeric and 2 text columns (400 and 25 levels, each level's own effect: a round of
    local SGD touches some of the 400, not all), 5,000 rows in row groups of 700 (shards of
    unequal rows)."""
    import pandas as pd

    rng = np.random.default_rng(5)
    n = 5000
    a, b = rng.integers(0, 400, n), rng.integers(0, 25, n)
    X = rng.normal(size=(n, 3))
    z = X @ np.array([1.0, -0.5, 0.25]) + rng.normal(size=400)[a] + rng.normal(size=25)[b] + rng.logistic(size=n)
    frame = pd.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "a": [f"a{v}" for v in a],
                          "b": [f"b{v}" for v in b], "y": (z > 0).astype(float)})
    path = tmp_path_factory.mktemp("hashed") / "h.parquet"
    frame.to_parquet(path, index=False, row_group_size=700)
    return str(path)


def _hashed_fit(path, hooks=None, **options):
    # sgd unless given: --optimizer auto picks adagrad in one process and sgd on shards
    # (train.hashed), and these tests compare the two
    return _fit(path, hooks=hooks, **{"hash_bits": 10, "epochs": 2, "optimizer": "sgd", **options})


@pytest.mark.parametrize("options", [{"lr": 0.2}, {"heavy": True, "memory_limit": "2MiB"}])
def test_hashed_adagrad_lazy_l2_with_local_sgd_on_one_shard_equals_the_single_process_run(hashed_data,
                                                                                        heavy_hashed_data, options):
    """Local SGD under AdaGrad's lazy L2: the tables travel with their stamps and one shard's
    (× 1.0) are taken as they are, so one shard gives the single process's model bit for bit
    at a given step. A default step lowered mid-epoch (after the round, not before the
    update as in one process) catches every weight up on the driver, which then sends the
    tables whole: lanes replaced every 7th round (sent them whole) give the same model;
    --optimizer auto trains adagrad there."""
    heavy = options.pop("heavy", False)
    path = heavy_hashed_data if heavy else hashed_data
    options = {"optimizer": "adagrad", "l2": 1e-3, **options}
    local = _hashed_fit(path, sync="models", sync_every=7, **options)
    reference = _hashed_fit(path, hooks=Hooks(backend=_Replacing), sync="models", sync_every=7, **options) if heavy \
        else _hashed_fit(path, **options)
    _same_hashed(reference, local)
    auto = _hashed_fit(path, sync="models", sync_every=7, **{**options, "optimizer": "auto"})
    assert auto.summary["optimizer"] == "adagrad"


@pytest.fixture(scope="module")
def heavy_hashed_data(hashed_data, tmp_path_factory):
    """``hashed_data`` with one row of x0 = 40 in its last row group: read in windows of a
    2 MiB plan, the first epoch meets it late and lowers the default step (``lower_step``)."""
    import pandas as pd

    frame = pd.read_parquet(hashed_data)
    frame.loc[4500, "x0"] = 40.0
    path = tmp_path_factory.mktemp("heavy") / "h.parquet"
    frame.to_parquet(path, index=False, row_group_size=700)
    return str(path)


@pytest.mark.parametrize("options", [{}, {"lr": 0.2, "epochs": 3}, {"heavy": True, "memory_limit": "2MiB"}])
def test_hashed_adagrad_lazy_l2_on_one_shard_equals_the_single_process_run(hashed_data, heavy_hashed_data, options):
    """AdaGrad's lazy L2 on shards that sum their gradients: a shard brings each weight its
    rows touch up to date from the stamps and AdaGrad sums the driver sends with the weights,
    before its margin reads it, and the driver before the update, as the single process does
    on a weight's first touch: one shard gives its model bit for bit (the default step, a
    given one, and a default step lowered mid-epoch, which catches every weight up on the
    driver: the shard is then sent the whole tables; averaging on)."""
    path = heavy_hashed_data if options.pop("heavy", False) else hashed_data
    options = {"optimizer": "adagrad", "l2": 1e-3, **options}
    saved: list = []
    sharded = _hashed_fit(path, hooks=Hooks(backend=InProcess, checkpointing=Checkpointing(save=saved.append, every=10)),
                          **options)
    _same_hashed(_hashed_fit(path, **options), sharded)
    if path == heavy_hashed_data:
        assert saved[-1]["hi"][FOLDS] > 0  # the lowered step caught every weight up


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_hashed_lazy_adam_on_one_shard_equals_the_single_process_run(hashed_data, optimizer):
    """Lazy Adam moves only the weights a batch touches, so the last update's changes keep a
    shard's copy current: one shard gives the single process's model bit for bit."""
    options = {"optimizer": optimizer, "l2": 1e-3, "lr": 0.01}
    _same_hashed(_hashed_fit(hashed_data, **options), _hashed_fit(hashed_data, hooks=Hooks(backend=InProcess),
                                                                  **options))


def test_hashed_adagrad_lazy_l2_on_three_shards_resumes_and_survives_replaced_lanes(hashed_data):
    """Three shards: a resumed run's new lanes and lanes replaced mid-run get the whole tables
    (weights, stamps, AdaGrad sums) and give the uninterrupted model bit for bit; --optimizer
    auto trains adagrad there; the L2 mattered."""
    saved = []
    options = {"shards": 3, "lr": 0.2, "l2": 1e-3, "optimizer": "adagrad"}
    whole = _hashed_fit(hashed_data, hooks=Hooks(checkpointing=Checkpointing(save=saved.append, every=10)), **options)
    middle = next(arrays for arrays in saved if int(arrays["shard_round"][0]) > 0)
    config = FitConfig(model="logistic", epochs=2, batch=128, memory_limit="64MiB", hash_bits=10, **options)
    _same_hashed(whole, fit(open_source(hashed_data, target="y"), config, resume=middle))
    _same_hashed(whole, _hashed_fit(hashed_data, hooks=Hooks(backend=_Replacing), **options))
    assert _hashed_fit(hashed_data, **{**options, "optimizer": "auto"}).summary["optimizer"] == "adagrad"
    assert not np.allclose(whole.model.hashed, _hashed_fit(hashed_data, **{**options, "l2": 0.0}).model.hashed,
                           rtol=1e-3)


def _same_hashed(a, b):
    _same(a, b)
    assert a.model.hashed is not None and np.array_equal(a.model.hashed, b.model.hashed)


@pytest.mark.parametrize("options", [{"l2": 1e-3}, {"optimizer": "adagrad", "l2": 0.0, "lr": 0.1},
                                     {"l2": 0.05, "lr": 0.5, "batch": 32}])
def test_hashed_one_shard_equals_the_single_process_run(hashed_data, options):
    """One shard: its hashed sums, added to an empty batch on the driver, are the single
    process's, bit for bit (SGD's lazy L2 scale and AdaGrad's sums alike; the third case's
    scale (1 - 0.025)^t falls below RENORMALIZE after 273 of its 313 updates, so u is rescaled
    whole and the shard's copy of it must follow); and local SGD with one shard (× 1.0
    averaging, a given --lr) as well."""
    plain = _hashed_fit(hashed_data, **options)
    _same_hashed(plain, _hashed_fit(hashed_data, hooks=Hooks(backend=InProcess), **options))
    given = {"lr": 0.05, **options}
    plain = _hashed_fit(hashed_data, **given)
    _same_hashed(plain, _hashed_fit(hashed_data, sync="models", sync_every=7, **given))


def test_hashed_local_sgd_with_one_update_per_round_is_the_synchronous_update(hashed_data):
    """Three shards: --sync gradients reduces the shards' sparse sums, --sync models H = 1
    averages their tables (folded when a shard that ran out left its scale behind); plain
    SGD is linear in the gradient, so the two agree but for rounding (rtol 1e-9 after ~80
    updates of a stable step, as for the dense weights)."""
    options = {"shards": 3, "lr": 0.3, "l2": 1e-3}
    sync = _hashed_fit(hashed_data, **options)
    local = _hashed_fit(hashed_data, sync="models", sync_every=1, **options)
    assert np.abs(sync.model.hashed).max() > 0.1  # the tables learned something
    np.testing.assert_allclose(local.model.hashed, sync.model.hashed, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(local.model.coef, sync.model.coef, rtol=1e-9)
    assert not np.array_equal(sync.model.hashed, _hashed_fit(hashed_data, lr=0.3, l2=1e-3).model.hashed)


def test_hashed_tables_of_other_scales_are_folded_before_averaging():
    """A shard that ran out early made fewer updates, so its lazy scale (wscale) and the
    average's B differ: the averaged table's weights and Polyak mean are then the row-weighted
    means of each shard's own (``folded``), whatever the scales."""
    from streamsgd.compute.sparse import AVG_B, WSCALE, folded, pack_hashed
    from streamsgd.train.shards import merge_hashed

    rng = np.random.default_rng(3)
    parts = []
    for wscale, big_b, rows in ((0.5, 0.0, 300), (0.8, 1.3, 100)):
        scalars = np.zeros(2)
        scalars[WSCALE], scalars[AVG_B] = wscale, big_b
        parts.append(((np.arange(16), tuple(rng.normal(size=(3, 16))), scalars), rows))
    hashed = pack_hashed(4)
    assert merge_hashed(hashed, parts, 400) is None  # every entry changed: the next round sends all
    tables = [((u, sq, total), s, rows) for (_, (u, sq, total), s), rows in parts]
    weights = sum(s[WSCALE] * u * rows / 400 for (u, _, _), s, rows in tables)
    np.testing.assert_allclose(folded(hashed, 0), weights, rtol=1e-13)
    sums = sum((total + s[AVG_B] * u) / 5 * rows / 400 for (u, _, total), s, rows in tables)
    np.testing.assert_allclose(folded(hashed, 5), sums, rtol=1e-13)
    assert not np.allclose(weights, sum(u * rows / 400 for (u, _, _), _, rows in tables))  # the scales mattered


def test_hashed_tables_average_the_entries_a_shard_changed_and_keep_the_rest():
    """Shards with the same scales: an entry one shard changed averages its value with the
    round's start (the other shard's, unchanged); an entry no shard changed keeps its bits."""
    from streamsgd.compute.sparse import HF, HW, pack_hashed
    from streamsgd.train.shards import merge_hashed

    rng = np.random.default_rng(4)
    hashed = pack_hashed(3)
    hashed[HW][:] = rng.normal(size=8)
    start = hashed[HW].copy()
    scalars = np.array([0.9, 0.4])
    a, b = rng.normal(size=2), rng.normal(size=2)
    changed = merge_hashed(hashed, [((np.array([1, 3]), (a, a, a), scalars), 300),
                                    ((np.array([3, 5]), (b, b, b), scalars), 100)], 400)
    assert changed.tolist() == [1, 3, 5]
    expected = start.copy()
    expected[1] = a[0] * 0.75 + start[1] * 0.25
    expected[3] = a[1] * 0.75 + b[0] * 0.25
    expected[5] = start[5] * 0.75 + b[1] * 0.25
    np.testing.assert_array_equal(hashed[HW], expected)  # untouched entries: the same bits
    np.testing.assert_array_equal(hashed[HF], scalars)


@pytest.mark.parametrize("sync", [{}, {"sync": "models", "sync_every": 3}])
def test_hashed_shards_resume_from_a_mid_epoch_checkpoint_bit_for_bit(hashed_data, sync):
    """A resumed run's new shards hold no copy of the hashed weights: the first round sends
    the whole table; the model is the uninterrupted one."""
    saved = []
    options = {"shards": 2, "lr": 0.3, "l2": 1e-3, **sync}
    whole = _hashed_fit(hashed_data, hooks=Hooks(checkpointing=Checkpointing(save=saved.append, every=10)), **options)
    middle = next(arrays for arrays in saved if int(arrays["shard_round"][0]) > 0)
    config = FitConfig(model="logistic", epochs=2, batch=128, memory_limit="64MiB", hash_bits=10, **options)
    _same_hashed(whole, fit(open_source(hashed_data, target="y"), config, resume=middle))


class _Replacing(InProcess):
    """Every 7th round on fresh lanes, as on a cluster whose worker died and was replaced
    (``integrations.dask``: the new actors seek to the round themselves)."""

    def __init__(self, job):
        super().__init__(job)
        self.job, self.rounds = job, 0

    def rejob(self, job):
        self.job = job
        super().rejob(job)

    def ask(self, method, *args):
        if method in ("accumulate", "local"):
            self.rounds += 1
            if self.rounds % 7 == 0:
                self.worker.close()
                self.worker = ShardWorker(self.job, range(self.job.shards))
        return super().ask(method, *args)


@pytest.mark.parametrize("sync", [{}, {"sync": "models", "sync_every": 3}])
def test_hashed_shards_on_replaced_lanes_get_the_whole_table(hashed_data, sync):
    """New lanes mid-run hold no copy of the hashed tables: they answer a round's changes
    as stale, the round is asked again with the whole tables, and the model is unchanged."""
    options = {"shards": 2, "lr": 0.3, "l2": 1e-3, **sync}
    _same_hashed(_hashed_fit(hashed_data, **options), _hashed_fit(hashed_data, hooks=Hooks(backend=_Replacing),
                                                                  **options))


class _Kept(InProcess):
    """The in-process backend, kept for a look at its lanes after the run."""

    made: list[InProcess] = []

    def __init__(self, job):
        super().__init__(job)
        _Kept.made.append(self)


def _buffers(value):
    """The distinct memory blocks (by base address) of an array, or of a tuple of arrays."""
    arrays = value if isinstance(value, tuple) else (value,)
    for array in arrays:
        if isinstance(array, np.ndarray):
            base = array if array.base is None else array.base
            yield base.__array_interface__["data"][0], base.nbytes


@pytest.mark.parametrize("sync", [{}, {"sync": "models", "sync_every": 3}])
def test_a_shard_holds_one_hashed_state_which_its_share_of_the_plan_pays(hashed_data, sync):
    """What a shard holds of the hashed table is one ``pack_hashed`` (its copy of u, or of the
    tables, lives in the scratch's columns): exactly ``state_bytes``, which the plan charges
    each shard's share of --memory-limit (before, a shard held 56 or 96 bytes a weight
    against the 48 charged)."""
    from streamsgd.compute.sparse import pack_hashed, state_bytes
    from streamsgd.train.setup import table_bytes

    bits = 14
    assert sum(dict(_buffers(pack_hashed(bits))).values()) == state_bytes(bits) + 8 * 4  # + the 4 scalars
    share = FitConfig(hash_bits=bits, memory_limit=32 << 20)
    assert table_bytes(open_source(hashed_data, target="y"), share) == state_bytes(bits)
    _Kept.made = []
    _hashed_fit(hashed_data, hooks=Hooks(backend=_Kept), shards=2, hash_bits=bits, lr=0.3, l2=1e-3, **sync)
    lanes = [lane for backend in _Kept.made for lane in backend.worker.lanes.values()]
    assert len(lanes) == 2
    for lane in lanes:
        held = {}
        for name, value in vars(lane).items():
            if name != "order":  # the window's row order: the window plan's (ROW_OVERHEAD_BYTES)
                held.update(_buffers(value))
        assert state_bytes(bits) <= sum(held.values()) < state_bytes(bits) + (1 << 12)


def test_hashed_shards_too_big_for_their_share_are_refused_naming_a_limit_that_works(hashed_data):
    """4 shards of --hash-bits 16 (3 MiB of hashed state each) under 16 MiB: 4 MiB a shard,
    less than twice its table: one line naming --hash-bits, --shards and a --memory-limit;
    rerun at that limit, the run trains."""
    import re

    options = {"shards": 4, "hash_bits": 16, "epochs": 1}
    with pytest.raises(UsageError) as refused:
        _hashed_fit(hashed_data, memory_limit="16MiB", **options)
    message = str(refused.value)
    assert "\n" not in message and "--hash-bits 16 on --shards 4" in message and "lower --hash-bits to 15" in message
    limit = re.search(r"raise --memory-limit to (\d+)MiB", message)
    assert limit is not None and int(limit.group(1)) >= 4 * 2 * 3  # each share holds twice its table
    assert _hashed_fit(hashed_data, memory_limit=f"{limit.group(1)}MiB", **options).model.hashed is not None


def test_local_rounds_find_the_changed_entries_from_the_stamps(hashed_data, monkeypatch):
    """A local round reports the entries stamped after its start, or all of them when u was
    rescaled (wscale folded in: its scale (1 - 0.1)^t passes RENORMALIZE at update 66 of an
    epoch's 88, inside a round; at the epoch's end the shards' scales differ and the driver folds);
    the model is the one of shards that report every entry every round (of which the driver
    keeps those whose bits moved, as a compare of the whole tables would), bit for bit."""
    from streamsgd.compute.sparse import FOLDS, HF, HI, HW
    from streamsgd.train.shards import TABLES, _Lane

    options = {"shards": 2, "sync": "models", "sync_every": 5, "l2": 0.2, "lr": 0.5, "batch": 32}
    _Kept.made = []
    stamped = _hashed_fit(hashed_data, hooks=Hooks(backend=_Kept), **options)
    assert all(lane.scratch[HI][FOLDS] > 0 for lane in _Kept.made[0].worker.lanes.values())  # u was rescaled

    def everything(self, hashed, t, folds):
        ids = np.arange(hashed[HW].size)
        return ids, tuple(hashed[slot][ids] for slot in TABLES), hashed[HF].copy()

    monkeypatch.setattr(_Lane, "_changes", everything)
    _same_hashed(stamped, _hashed_fit(hashed_data, **options))


def test_the_tables_merge_is_numpys_average_of_the_changed_entries_bit_for_bit():
    """``merge_hashed``'s compiled merge against the NumPy one it replaced (the entries some
    shard changed, each Σ_k w_k·c_k in shard order, c_k the shard's value or the start's),
    given reports that also hold entries whose bits did not move (kept as they were; +0.0 to
    -0.0 is a change): 200 random draws of 1-5 shards, values from 1e-8 to 1e8."""
    from streamsgd.compute.sparse import HF, HSQ, HSUM, HW, pack_hashed
    from streamsgd.train.shards import merge_hashed

    rng = np.random.default_rng(0)
    slots = (HW, HSQ, HSUM)
    for _ in range(200):
        bits, shards = int(rng.integers(3, 11)), int(rng.integers(1, 6))
        hashed = pack_hashed(bits)
        for slot in slots:
            hashed[slot][:] = rng.normal(size=1 << bits) * rng.choice([1.0, 1e-8, 1e8])
        hashed[HW][0] = -0.0
        rows = rng.integers(1, 700, shards)
        parts, moved_parts = [], []
        for n in rows:
            ids = np.sort(rng.choice(1 << bits, int(rng.integers(0, 1 << bits)), replace=False))
            values = tuple(hashed[slot][ids].copy() for slot in slots)
            for v in values:
                change = rng.random(ids.size) < 0.6
                v[change] = rng.normal(size=int(change.sum()))
            values[0][ids == 0] = 0.0
            moved = np.zeros(ids.size, dtype=bool)
            for slot, v in zip(slots, values):
                moved |= hashed[slot][ids].view(np.int64) != v.view(np.int64)
            parts.append(((ids, values, hashed[HF].copy()), int(n)))
            moved_parts.append((ids[moved], tuple(v[moved] for v in values)))
        expected = [hashed[slot].copy() for slot in slots]
        union = np.unique(np.concatenate([ids for ids, _ in moved_parts]))
        for i, table in enumerate(expected):
            merged = None
            for (ids, values), n in zip(moved_parts, rows):
                column = table[union]
                column[np.searchsorted(union, ids)] = values[i]
                merged = column * (n / rows.sum()) if merged is None else merged + column * (n / rows.sum())
            table[union] = merged
        assert np.array_equal(merge_hashed(hashed, parts, int(rows.sum())), union)
        for slot, table in zip(slots, expected):
            assert np.array_equal(hashed[slot].view(np.int64), table.view(np.int64))


def test_the_lazy_tables_merge_averages_each_shards_caught_up_figures():
    """``merge_lazy`` (AdaGrad's lazy L2) against NumPy: each shard's figures at an entry (its
    report, else the round's start) are first brought to the shard's last update by the
    skipped updates' shrinkage 1 / (1 + η·l2 / (√G + ε)) one update at a time (adding the
    averaged iterates to the sum), then averaged by rows; shards that ended at different
    updates bring every entry, changed or not. 1e-12 relative: the closed form's roundings."""
    from streamsgd.compute.sparse import HF, HSQ, HSUM, HW, STAMP, pack_hashed
    from streamsgd.train.shards import merge_lazy

    rng = np.random.default_rng(1)
    lr_l2, eps, average_from = 0.05, 1e-8, 12
    for ends in ([20, 20, 20], [20, 17]):
        bits = 6
        hashed = pack_hashed(bits)
        hashed[HW][:], hashed[HSQ][:] = rng.normal(size=64), rng.random(64) + 0.1
        hashed[HSUM][:], hashed[STAMP][:] = rng.normal(size=64), rng.integers(0, 10, 64)
        start = [hashed[slot].copy() for slot in (HW, HSQ, HSUM, STAMP)]
        rows = rng.integers(1, 500, len(ends))
        parts = []
        for end in ends:
            ids = np.sort(rng.choice(64, 20, replace=False))
            values = (rng.normal(size=20), rng.random(20) + 0.1, rng.normal(size=20), rng.integers(10, end + 1, 20))
            parts.append(((ids, values, hashed[HF].copy()), int(rows[len(parts)])))
        changed = merge_lazy(hashed, parts, int(rows.sum()), np.array(ends), (lr_l2, eps, average_from))
        union = np.unique(np.concatenate([p[0][0] for p in parts]))
        entries = union if ends[0] == ends[-1] else np.arange(64)
        for h in entries:
            w = v2 = sum2 = 0.0
            for ((ids, values, _), n), end in zip(parts, ends):
                at = np.flatnonzero(ids == h)
                v, g, total, stamp = (values[i][at[0]] for i in range(4)) if at.size else (t[h] for t in start)
                for update in range(int(stamp) + 1, end + 1):
                    v /= 1 + lr_l2 / (np.sqrt(g) + eps)
                    total += v if update > average_from else 0.0
                w, v2, sum2 = w + g * n / rows.sum(), v2 + v * n / rows.sum(), sum2 + total * n / rows.sum()
            np.testing.assert_allclose([hashed[HW][h], hashed[HSQ][h], hashed[HSUM][h]], [v2, w, sum2], rtol=1e-12)
            assert hashed[STAMP][h] == max(ends)
        untouched = np.setdiff1d(np.arange(64), entries)
        assert np.array_equal(hashed[HW][untouched], start[0][untouched])
        assert (changed is None) == (ends[0] != ends[-1])


def test_auto_measures_the_shards_compute_and_the_rounds_latency_apart(monkeypatch):
    """auto's H ≥ ⌈19·L/c⌉ from the slowest shard's own time per update (c) and the rest of a
    round's wall time (L), each a median of five rounds of ten updates: a noisy round leaves
    both near their true values (the difference of a one-update and a ten-update round's
    times, the old rule, gave c = (wall₁₀ − wall₁)/9 and an H off by 10x under such noise).
    H is then the least that cuts the epoch into equal rounds: 3,800 would leave a short
    third round of 2,400 updates in an epoch of 10,000, so two rounds of 5,000."""
    from types import SimpleNamespace

    import streamsgd.train.shards as shards

    clock = [0.0]
    own, latency = 1e-3, 20e-3  # 0.1 ms an update, a 20 ms round trip: H = 19 * 20 / 0.1 = 3,800
    noise = iter([0.0, 0.0, 30e-3, -5e-3, 0.0, 45e-3])  # two rounds slowed by the machine, one quick

    class Feed:
        def ask(self, method, *args):
            if method != "local":
                return []
            clock[0] += latency + own + next(noise)
            return [SimpleNamespace(seconds=own * 0.5), SimpleNamespace(seconds=own)]

    monkeypatch.setattr(shards.time, "perf_counter", lambda: clock[0])
    events = []
    run = SimpleNamespace(config=SimpleNamespace(sync_every="auto"), st=SimpleNamespace(counters=np.zeros(16, np.int64)),
                          local_start=lambda full: None, schedule=SimpleNamespace(ipe=10_000), emit=events.append,
                          tables_base=())
    assert shards.ShardedRun.choose_every(run, Feed()) == 5000  # ⌈19·L/c⌉ = 3,800 (±1: float timings)
    noise = iter([0.0, 0.0, 30e-3, -5e-3, 0.0, 45e-3])
    run.schedule.ipe = 7_700  # two rounds of 3,850 (3,800 would leave a third of 100)
    assert shards.ShardedRun.choose_every(run, Feed()) == 3850
    assert events[0]["update_seconds"] == pytest.approx(1e-4) and events[0]["round_seconds"] == pytest.approx(0.02)
