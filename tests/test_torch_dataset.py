"""streamsgd.torch.StreamDataset: shards divided among DataLoader workers and ranks, every row
exactly once per epoch (issue 18 item 2)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from streamsgd.torch import StreamDataset, worker_skips  # noqa: E402

N, B = 30_000, 256


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    """Feature ``row`` = the row's id; 15 row groups of 2,000 rows, so 4 shards get 3-4 each."""
    path = tmp_path_factory.mktemp("torch") / "ids.parquet"
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"row": np.arange(N, dtype=np.float32), "x": rng.normal(size=N).astype(np.float32),
                             "y": rng.normal(size=N)}), path, row_group_size=2_000)
    return str(path)


def rows_of(loader):
    return [X[:, 0].numpy().astype(np.int64) for X, _ in loader]


def loader(dataset, workers, **options):
    return DataLoader(dataset, batch_size=None, num_workers=workers, **options)


def test_two_workers_times_two_ranks_see_every_row_once_per_epoch(ids_file):
    for epoch in (1,):  # not the first: set_epoch reaches the workers (epoch 2 of persistent ones below)
        seen = []
        for rank in (0, 1):
            dataset = StreamDataset(ids_file, rank=rank, world_size=2, batch=B, seed=4)
            dataset.set_epoch(epoch)
            seen += rows_of(loader(dataset, 2))
        rows = np.concatenate(seen)
        assert np.array_equal(np.sort(rows), np.arange(N))
        assert all(b.size <= B for b in seen)


def test_persistent_workers_follow_set_epoch(ids_file):
    dataset = StreamDataset(ids_file, batch=B, seed=4)
    data = loader(dataset, 2, persistent_workers=True)
    epochs = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        epochs.append(np.concatenate(rows_of(data)))
    for rows in epochs:
        assert np.array_equal(np.sort(rows), np.arange(N))
    assert not np.array_equal(epochs[0], epochs[1])  # the second epoch has its own deal and order


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_from_state_dict(ids_file, workers):
    whole = rows_of(loader(StreamDataset(ids_file, batch=B, seed=6), workers))
    first = StreamDataset(ids_file, batch=B, seed=6)
    taken = []
    for X, _ in loader(first, workers):
        taken.append(X[:, 0].numpy().astype(np.int64))
        if len(taken) == 41:
            break
    state = first.state_dict(len(taken))
    second = StreamDataset(ids_file, batch=B, seed=6)
    second.load_state_dict(state)
    rest = rows_of(loader(second, workers))
    assert len(taken) + len(rest) == len(whole)
    for a, b in zip(taken + rest, whole):
        assert np.array_equal(a, b)


def test_worker_skips_follow_the_dataloaders_turns():
    # workers of 3, 1 and 2 batches hand out w0 w1 w2 | w0 w2 | w0
    order = [0, 1, 2, 0, 2, 0]
    for consumed in range(len(order) + 1):
        taken, turns = worker_skips([3, 1, 2], consumed)
        assert taken == [order[:consumed].count(w) for w in range(3)]
        rest = [w for w in order[consumed:]]
        assert turns[:len(set(rest))] == list(dict.fromkeys(rest))  # the loader's next turns, in order


def test_a_trained_torch_model_learns(ids_file, tmp_path):
    """The README's example in small: a torch.nn model trained on the stream fits y = 2x + 1."""
    path = tmp_path / "line.parquet"
    rng = np.random.default_rng(2)
    x = rng.normal(size=20_000).astype(np.float32)
    pq.write_table(pa.table({"x": x, "y": (2 * x + 1).astype(np.float32)}), path, row_group_size=4_000)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = StreamDataset(str(path), batch=128, memory_limit="64MiB")
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for X, y in DataLoader(dataset, batch_size=None):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(X).squeeze(1), y)
            loss.backward()
            opt.step()
    assert abs(model.weight.item() - 2) < 1e-3 and abs(model.bias.item() - 1) < 1e-3
