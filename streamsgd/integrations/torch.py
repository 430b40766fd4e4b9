"""PyTorch: the stream as an ``IterableDataset`` that divides its shards among DataLoader
workers and distributed ranks, so every row is seen exactly once per epoch in total.

Rank ``r`` of ``R`` with ``W`` DataLoader workers reads shard ``r·W + w`` of ``R·W`` in worker
``w`` (:func:`streamsgd.batches` with ``shard=``): the deal of chunks to shards is a function
of the seed and the epoch, so no process talks to another. Batches come whole from the
stream: give the DataLoader ``batch_size=None``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..api import batches
from ..errors import UsageError

#: The layout of ``StreamDataset.state_dict()``.
STATE_VERSION = 1


class StreamDataset(IterableDataset):
    """Shuffled, memory-bounded mini-batches of ``data`` as ``(X, y)`` float32 tensors (or
    ``(X, y, weight)`` with a weight column), one epoch per iteration.

    Parameters
    ----------
    data : a path or URL of Parquet or Zarr data, as for :func:`streamsgd.batches`.
    rank, world_size : this process's place among distributed ranks; by default taken from
        ``torch.distributed`` when it is initialised, else 0 of 1.
    **options : :func:`streamsgd.batches` options (``batch``, ``seed``, ``target``,
        ``features``, ``memory_limit``, ``shuffle``, ``model`` …). Each worker's memory plan
        applies ``memory_limit`` on its own.

    Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``). To resume
    mid-epoch, count the batches this rank's DataLoader has yielded, save
    ``state_dict(batches)``, and call :meth:`load_state_dict` on a new dataset before
    iterating its DataLoader (same ``num_workers``).
    """

    def __init__(self, data: Any, *, rank: int | None = None, world_size: int | None = None,
                 **options: Any) -> None:
        super().__init__()
        if "shard" in options or "epochs" in options:
            raise UsageError("StreamDataset: shards and epochs are its own (set_epoch, rank, world_size); "
                             "drop shard=/epochs=")
        self.data, self.options = data, options
        self.rank, self.world_size = rank, world_size
        # [epoch, batches of it this rank's loader has yielded already], in shared memory: the
        # workers of a DataLoader with persistent_workers keep the copy of the dataset they
        # started with, and read set_epoch's value from here at each iteration
        self._shared = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._shared[0])

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (its deal of shards and its row order)."""
        self._shared[0], self._shared[1] = int(epoch), 0

    def state_dict(self, batches: int) -> dict[str, int]:
        """Where this rank is: ``batches`` yielded by its DataLoader in the current epoch."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue mid-epoch: the next iteration leaves out the batches ``state`` counts."""
        if state.get("version") != STATE_VERSION:
            raise UsageError(f"state_dict: version {state.get('version')!r}, but this streamsgd reads version "
                             f"{STATE_VERSION}; start the epoch afresh")
        self._shared[0], self._shared[1] = int(state["epoch"]), int(state["batches"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        rank, world = self._place()
        epoch, resume = (int(v) for v in self._shared)
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        shards = world * workers
        stream = batches(self.data, epochs=epoch + 1, shard=(rank * workers + worker, shards), **self.options)
        skip = 0
        if resume:  # which worker's part this one plays now, and how far that part had gone
            counts = [stream.batches_per_epoch(epoch, rank * workers + w) for w in range(workers)]
            taken, turns = worker_skips(counts, resume)
            role = turns[worker]
            skip = taken[role]
            if role != worker:
                stream.close()
                stream = batches(self.data, epochs=epoch + 1, shard=(rank * workers + role, shards), **self.options)
        with stream:
            stream.load_state_dict({**stream.state_dict(), "epoch": epoch, "batches": skip})
            for batch in stream:
                tensors = [torch.from_numpy(batch.X)]
                if batch.y is not None:
                    tensors.append(torch.from_numpy(batch.y))
                if batch.weight is not None:
                    tensors.append(torch.from_numpy(batch.weight))
                yield tuple(tensors)

    def _place(self) -> tuple[int, int]:
        if self.rank is not None or self.world_size is not None:
            rank, world = int(self.rank or 0), int(self.world_size or 1)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise UsageError(f"StreamDataset: rank {rank} is not one of world_size {world}'s ranks 0 … {world - 1}")
        return rank, world


def worker_skips(counts: Sequence[int], consumed: int) -> tuple[list[int], list[int]]:
    """Where a DataLoader's workers stood after it had handed out ``consumed`` batches: the
    batches each had yielded, and the order in which the loader turns to them next.

    A DataLoader takes one batch from each worker in turn, skipping workers that have run
    out (``counts`` batches each); whole rounds are counted at once, so this is cheap
    for any epoch length. A resumed loader starts its turns at worker 0, so the resumed
    workers take on the roles in the returned order (workers with nothing left last).
    """
    taken = [0] * len(counts)
    left, done, turns = int(consumed), 0, list(range(len(counts)))
    while left > 0:
        active = [w for w, n in enumerate(counts) if n > done]
        if not active:
            break
        rounds = min(counts[w] for w in active) - done
        if left >= rounds * len(active):
            for w in active:
                taken[w] += rounds
            left -= rounds * len(active)
            done += rounds
            continue
        full, first = divmod(left, len(active))
        for k, w in enumerate(active):
            taken[w] += full + (1 if k < first else 0)
        turns = active[first:] + active[:first]  # the round in progress goes on from active[first]
        break
    turns = [w for w in turns if counts[w] > taken[w]]
    return taken, turns + [w for w in range(len(counts)) if w not in turns]
