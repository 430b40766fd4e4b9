"""The trainer's stream as a product: shuffled, memory-bounded, resumable mini-batches.

:class:`BatchStream` runs the same plan and readers the trainer runs (``EpochStream``) and
cuts each epoch's rows into batches exactly as the trainer's loop does: consecutive runs of
``batch`` rows in plan order, a batch straddling two windows copied whole, the epoch's
last batch short. So the same seed gives the same batches the trainer sees, and its state
is a few integers (epoch, batches taken, seed, shard): resuming reads nothing twice.

A batch inside one window is a view of the window's rows (no copy). The memory bound
counts a window as freed once the next batch is asked for: copy a batch to keep it longer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import UsageError
from ..plan.shards import SHARD_TAG, shard_chunks
from ..sources import Source, n_rows
from ..sources.subset import ChunkSubset
from .epochs import EpochStream

#: The layout of ``state_dict()``; a state of another version is refused.
STATE_VERSION = 1


@dataclass(frozen=True)
class Batch:
    """Rows of one mini-batch: features ``X`` (rows, features), target ``y``, optional
    per-row ``weight``, and where the batch sits (its epoch, its index in the epoch).

    With categorical columns (k of them, hashed into 2^bits ids: ``sources.encoding``),
    their one-hot features as CSR rows of width 2^bits: ``indices`` (int32, rows·k),
    ``indptr`` (int64, rows + 1: row i holds entries k·i … k·i + k − 1) and ``values``
    (float32 ±1, the hash's sign; 0 for the padding of a list column's shorter rows), e.g.
    ``scipy.sparse.csr_matrix((values, indices, indptr))`` or ``torch.sparse_csr_tensor``;
    None without categorical columns.
    """

    X: NDArray
    y: NDArray | None
    weight: NDArray | None
    epoch: int
    index: int
    indices: NDArray[np.int32] | None = None
    indptr: NDArray[np.int64] | None = None
    values: NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class StreamPlan:
    """What the memory plan fixed for a stream: rows per window, the bytes read ahead, readers."""

    window_rows: int
    buffer_bytes: int
    readers: int


class BatchStream:
    """Batches of ``source`` for epochs ``0 … epochs-1``: iterate it, or call ``state_dict()``
    to save where it is and ``load_state_dict()`` on a new one to continue from there.

    ``shard=(i, S)`` keeps the rows of shard ``i`` of ``S`` (whole chunks dealt by the seed,
    balanced by rows, anew each epoch): the S shards together hold every row once per epoch.
    ``strata`` (per-chunk target means) stratify the plan as the trainer's do for classifiers.
    Call :meth:`close` (or use ``with``) to stop the readers early.
    """

    def __init__(self, source: Source, plan: StreamPlan, *, batch: int, epochs: int, seed: int = 0,
                 shuffle: bool = True, dtype: DTypeLike = np.float32, model: str = "linear",
                 strata: NDArray[np.float64] | None = None, shard: tuple[int, int] = (0, 1)) -> None:
        self._stream: EpochStream | None = None
        index, count = (int(shard[0]), int(shard[1]))
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"shard: expected (i, S) with 0 <= i < S; got {tuple(shard)!r}")
        if batch < 1 or epochs < 0:
            raise UsageError(f"batch must be >= 1 and epochs >= 0; got batch={batch}, epochs={epochs}")
        self.source, self.plan = source, plan
        self.batch, self.epochs, self.seed, self.shuffle = int(batch), int(epochs), int(seed), bool(shuffle)
        self.dtype, self.model, self.strata, self.shard = np.dtype(dtype), model, strata, (index, count)
        self._epoch = 0    # the epoch in progress
        self._taken = 0    # batches of it handed out
        self._stream_epoch = -1
        self._batches: Iterator[Batch] | None = None

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches)

    def _generate(self) -> Iterator[Batch]:
        while self._epoch < self.epochs:
            stream = self._epoch_stream(self._epoch)
            if stream is not None:
                with closing(stream.epoch(self._epoch, self._taken * self.batch)) as windows:
                    yield from self._cut(windows)
            self._epoch, self._taken = self._epoch + 1, 0
        self.close()

    def _cut(self, windows: Iterator[tuple[Any, NDArray[np.int64]]]) -> Iterator[Batch]:
        """The epoch's rows, window after window, in ``batch``-row pieces (see the module)."""
        B, held = self.batch, None
        for window, order in windows:
            contiguous = order.size > 0 and int(order[-1]) - int(order[0]) == order.size - 1 \
                and bool(np.all(np.diff(order) == 1))
            pos = 0
            while pos < order.size:
                if held is not None or order.size - pos < B:  # a batch that straddles windows
                    held = held or _Held(B, window)
                    pos += held.add(window, order[pos:pos + B - held.filled])
                    if held.filled == B:
                        yield self._hand_out(*held.arrays())
                        held = None
                    continue
                rows = slice(int(order[pos]), int(order[pos]) + B) if contiguous else order[pos:pos + B]
                yield self._hand_out(window.X[rows], None if window.y is None else window.y[rows],
                                     None if window.w is None else window.w[rows], window.idx[rows],
                                     window.sign[rows])
                pos += B
        if held is not None:  # the epoch's short last batch
            yield self._hand_out(*held.arrays())

    def _hand_out(self, X: NDArray, y: NDArray | None, w: NDArray | None, idx: NDArray, sign: NDArray) -> Batch:
        n, k = idx.shape
        csr = (None, None, None) if k == 0 else (
            idx.reshape(-1), np.arange(0, n * k + 1, k, dtype=np.int64), sign.reshape(-1).astype(np.float32))
        batch = Batch(X, y, w, self._epoch, self._taken, *csr)
        self._taken += 1  # counted before the caller has it: a state saved now resumes after it
        return batch

    # -- shards and epochs ------------------------------------------------------------------
    def _epoch_stream(self, epoch: int) -> EpochStream | None:
        """The stream of ``epoch``'s rows of this shard (None when the shard has none). One
        shard's stream runs its readers on into later epochs; a shard's chunks change every
        epoch, so a sharded stream is made anew each epoch."""
        if self.shard[1] == 1 and self._stream is not None:
            return self._stream
        self.close()
        self._stream = shard_stream(self.source, self.model, self.seed, self.shuffle, self.plan, self.dtype,
                                    self.strata, epoch, self.shard, self.epochs - 1)
        return self._stream

    def rows(self, epoch: int = 0, shard: int | None = None) -> int:
        """Rows of this shard (or of shard ``shard`` of the same deal) in ``epoch``."""
        index, count = self.shard
        if count == 1:
            return n_rows(self.source)
        chunks = shard_chunks(self.source.chunk_rows, self.seed, epoch, count,
                              getattr(self.source, "chunk_groups", None))[index if shard is None else shard]
        return int(sum(self.source.chunk_rows[c] for c in chunks))

    def batches_per_epoch(self, epoch: int = 0, shard: int | None = None) -> int:
        """⌈rows / batch⌉: the batches of this shard (or of shard ``shard``) in ``epoch``."""
        return -(-self.rows(epoch, shard) // self.batch)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Where the stream is: the epoch in progress and the batches of it handed out, with
        the seed, shard and batch size they count in."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "batches": self._taken, "seed": self.seed,
                "shard": self.shard[0], "shards": self.shard[1], "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of a stream of the same data,
        seed, shard and batch size): the next batch is the one that would have come next."""
        if state.get("version") != STATE_VERSION:
            raise UsageError(f"state_dict: version {state.get('version')!r}, but this streamsgd reads version "
                             f"{STATE_VERSION}; start the stream afresh")
        mine = self.state_dict()
        for key in ("seed", "shard", "shards", "batch"):
            if int(state[key]) != mine[key]:
                raise UsageError(f"state_dict: it was saved with {key}={state[key]}, but this stream has "
                                 f"{key}={mine[key]}; open the stream with the same {key}")
        self.close()
        self._batches = None
        self._epoch, self._taken = int(state["epoch"]), int(state["batches"])

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the readers (joining their threads); iterating again starts them afresh."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def shard_stream(source: Source, model: str, seed: int, shuffle: bool, plan: StreamPlan, dtype: DTypeLike,
                 strata: NDArray[np.float64] | None, epoch: int, shard: tuple[int, int],
                 last_epoch: int | None, recycle: bool = False) -> EpochStream | None:
    """The stream of shard ``shard = (i, S)``'s rows in ``epoch`` (None when it has none).

    S = 1 is the whole data under the run's own seed, its readers running on up to
    ``last_epoch``: exactly the single-process trainer's stream. For S > 1 the shard's
    chunks (``plan.shards.shard_chunks``, dealt anew each epoch) get a stream of their own,
    seeded by (seed, shard, S), that ends with the epoch. The trainer's shards, the batch
    iterator's and a cluster worker's are all made here, so they agree row for row.
    ``recycle``: windows reuse the buffers of those done with (``EpochStream.recycle``).
    """
    index, count = shard
    if count > 1:
        chunks = shard_chunks(source.chunk_rows, seed, epoch, count, getattr(source, "chunk_groups", None))[index]
        if chunks.size == 0:
            return None
        source = ChunkSubset(source, chunks.tolist())
        strata = None if strata is None else strata[chunks]
        seed = int(np.random.SeedSequence([seed, SHARD_TAG, index, count]).generate_state(1)[0])
        last_epoch = epoch
    return EpochStream(source, model, seed, shuffle, plan.window_rows, plan.buffer_bytes, plan.readers,
                       np.dtype(dtype), strata, last_epoch, recycle)


class _Held:
    """A batch being filled from the end of one window and the start of the next (a copy)."""

    def __init__(self, rows: int, window: Any) -> None:
        d = window.X.shape[1]
        self.X = np.empty((rows, d), dtype=window.X.dtype)
        self.y = None if window.y is None else np.empty(rows, dtype=window.y.dtype)
        self.w = None if window.w is None else np.empty(rows, dtype=window.w.dtype)
        self.idx = np.empty((rows, window.idx.shape[1]), np.int32)
        self.sign = np.empty((rows, window.idx.shape[1]), np.int8)
        self.filled = 0

    def add(self, window: Any, order: NDArray[np.int64]) -> int:
        n, lo = order.size, self.filled
        self.X[lo:lo + n] = window.X[order]
        if self.y is not None:
            self.y[lo:lo + n] = window.y[order]
        if self.w is not None:
            self.w[lo:lo + n] = window.w[order]
        self.idx[lo:lo + n], self.sign[lo:lo + n] = window.idx[order], window.sign[order]
        self.filled += n
        return n

    def arrays(self) -> tuple[NDArray, NDArray | None, NDArray | None, NDArray, NDArray]:
        k = self.filled
        return (self.X[:k], None if self.y is None else self.y[:k], None if self.w is None else self.w[:k],
                self.idx[:k], self.sign[:k])
