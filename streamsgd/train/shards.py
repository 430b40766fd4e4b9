"""Training on S logical shards (DESIGN.md §7): the data dealt to shards by the seed, each
round one batch from every shard, one update from their summed gradients.

The shards fix the mathematics; where they run (one process, or the workers of a cluster)
fixes only the speed. Every round, shard k feeds rows ``[r·B, (r+1)·B)`` of its epoch to
the loss (``compute.loop.fill_batch``) and answers with the gradient *sum* and the row
count (n = 0 once it has run out); the driver adds the answers in shard order (float64)
and makes one update of Σn rows (``finish_batch``): exactly one batch of S·B rows, never a
mean of means. A shard's place is a function of (epoch, round) alone, so a round can be
rerun anywhere (a replacement worker, a resumed run) and give the same bits.

With S = 1 the one shard is the single-process stream and its rounds are the batches of
:class:`~streamsgd.train.run.Run`: the same model, bit for bit.

``--sync models`` (local SGD): in a round every shard makes H updates of its own from the
driver's state (parameters, optimizer moments, averaging sums, update count), on its rows
``[r·H·B, (r+1)·H·B)``; the driver averages the shards' states weighted by their rows, in
shard order. H is ``--sync-every``, or chosen once from two timed dry rounds (``auto``)
and kept in the checkpoint. The default step is lowered after the round whose windows
held a worse row (with gradients, before the update), so a rare heavy row weighs on up to
H local updates first; the divergence check still stops a run that blows up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import math
import time

import numpy as np
from numpy.typing import NDArray

from ..compute.codes import SGD
from ..compute.loop import (AVERAGE_FROM, AVERAGED, BATCH, BATCH_LOSS, BLOCKS, DIVERGED, EPOCH, EPOCH_ROWS, EPS, FILLED,
                            GW, L2, LOSS, LR0, N_COUNTERS, N_SUMS, NOISE, OPTIMIZER, ROWS, T, fill_batch, finish_batch,
                            pack_params, train_rows)
from ..compute.sparse import (AVG_B, FOLDS, HF, HG, HI, HSQ, HSUM, HW, N_TOUCHED, STAMP, TOUCHED, WSCALE, add_lazy_sums,
                              average_entries, average_lazy_entries, finish_batch_hashed, lazy_l2,
                              pack_hashed)
from ..compute.sparse_multi import hashed_kernels
from ..pipeline.batches import StreamPlan, shard_stream
from ..pipeline.epochs import EpochStream
from ..pipeline.windows import Window
from ..config import FitConfig
from ..errors import DataError, UsageError
from ..sources import Source
from . import guard
from .inputs import Hooks
from .run import Run
from .setup import Setup
from .hashed import MOMENTUM_OPTIMIZERS, categorical_columns
from .state import State
from .stepsize import lower_step, start

#: The hashed weights' sums of a shard's batch: (their ids, distinct, in the order first
#: touched; the sums), for ``compute.sparse.add_hashed_sums``.
SparseSums = tuple[NDArray[np.int64], NDArray[np.float64]]
#: One shard's answer to a round: (gradient sums, rows, loss sum, largest row curvature of
#: the windows it opened in epoch 0, else 0, the hashed weights' sums or None).
ShardPart = tuple[NDArray[np.float64], int, float, float, SparseSums | None]
#: What a round of ``--sync gradients`` tells the shards of the hashed weights u: (updates made
#: t, all of the ``VIEWED`` tables or None, else the ids the last update moved and their values
#: in each, u's scalars HF, the step η), or None without categorical columns. A shard keeps its
#: copy of u, so a round carries the last update's O(B·k) changes, not the 2**bits table (all
#: of it after a rescale of u or a catch-up of every weight, or to a shard whose copy is not
#: current: a new one answers ``STALE`` rows and is sent all). Under AdaGrad's lazy L2 the
#: copy holds each weight's stamp and AdaGrad sum too: a shard brings a weight up to date
#: before its margin reads it, as the driver does before the update (``compute.sparse``).
HashedView = tuple[int, tuple[NDArray, ...] | None, NDArray[np.int64] | None, tuple[NDArray, ...] | None,
                   NDArray[np.float64], float] | None
#: the hashed tables a ``--sync gradients`` view carries: u, and under the lazy L2 the stamps
#: and AdaGrad's sums its catch-up reads
VIEWED, VIEWED_LAZY = (HW,), (HW, STAMP, HSQ)
#: the rows of a shard's answer when its copy of the hashed weights is not current (see HashedView)
STALE = -1


@dataclass(frozen=True)
class ShardJob:
    """What a shard needs to compute its gradients: picklable (sources pickle), so a cluster
    ships it to its workers once; the parameters travel with each round."""

    source: Source
    model: str
    seed: int
    shuffle: bool
    plan: StreamPlan
    dtype: str
    strata: NDArray[np.float64] | None
    shards: int
    last_epoch: int
    spec: NDArray[np.int64]  # the loop's spec, its BATCH the rows per shard
    hyper: NDArray[np.float64]
    cw: NDArray[np.float64]
    classes: NDArray[np.float64]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    #: bytes each shard's windows, readers and hashed state (``compute.sparse.state_bytes``) may
    #: hold: --memory-limit // S, planned by ``train.setup.plan_memory`` on S shards
    shard_memory: int
    hash_bits: int = 0  # the categorical columns' table of 2**hash_bits buckets (0: none)
    hash_outputs: int = 1  # weights per bucket: one, or softmax's C (compute.sparse_multi)


@dataclass(frozen=True)
class LocalState:
    """A model's state in a ``--sync models`` round: what the driver starts every shard from,
    and what each shard answers with after its updates."""

    theta: NDArray[np.float64]
    theta_eff: NDArray[np.float64]
    avg: NDArray[np.float64]
    opt_state: NDArray[np.float64]
    l1_q: NDArray[np.float64]
    l1_u: NDArray[np.float64]
    t: int  # updates made
    averaged: int  # iterates in the average
    lr0: float  # the step, lowered as the first epoch's windows are seen
    #: the hashed tables: from the driver a ``TablesView``, from a shard a ``TablesChange``
    hashed: Any = None


#: the state arrays a local-SGD round changes and the driver averages
LOCAL_ARRAYS = ("theta", "theta_eff", "avg", "opt_state", "l1_q", "l1_u")
#: the hashed tables a local-SGD round changes (compute.sparse): weights u, AdaGrad's sums, the
#: average's sums; their scalars HF travel beside them
TABLES = (HW, HSQ, HSUM)
#: ... and under AdaGrad's lazy L2 the stamps, which say how far each weight lags
TABLES_LAZY = (*TABLES, STAMP)


def _tables(spec: NDArray[np.int64], hyper: NDArray[np.float64]) -> tuple[int, ...]:
    """The hashed tables a local-SGD round carries: with the stamps under AdaGrad's lazy L2."""
    return TABLES_LAZY if hyper.size and lazy_l2(spec, hyper) > 0 else TABLES
#: What a ``--sync models`` round tells the shards of the hashed tables: (base t, the tables
#: whole or None, else the ids the last merge changed and their values in each table, HF). A
#: shard keeps its tables: those of the round that started at update ``base`` with its own
#: changes, all of which the merge's ids cover; the whole tables go to a shard without them.
TablesView = tuple[int, tuple[NDArray, ...] | None, NDArray[np.int64] | None, tuple[NDArray, ...] | None, NDArray]
#: A shard's answer about its tables after a round: (the ids it changed, their values in each
#: table, its HF).
TablesChange = tuple[NDArray[np.int64], tuple[NDArray, ...], NDArray]


@dataclass(frozen=True)
class LocalPart:
    """One shard's answer to a ``--sync models`` round."""

    state: LocalState
    rows: int
    loss: float
    diverged: bool
    top: float  # the largest row curvature of the windows it opened in epoch 0, else 0
    seconds: float = 0.0  # the shard's own time in the round (reading and training), without messages
    ended: bool = False  # the shard has no rows of the epoch left after this round


class Backend(Protocol):
    """Where the shards run: ``ask(method, *args)`` calls :class:`ShardWorker`'s ``method``
    on every shard and gives the S answers, ordered by shard."""

    def ask(self, method: str, *args: Any) -> list[Any]: ...

    def rejob(self, job: ShardJob) -> None: ...

    def close(self) -> None: ...


#: Builds a backend for a job's S shards (``InProcess``, or a cluster's).
BackendFactory = Callable[[ShardJob], Backend]


class _Lane:
    """One shard's stream and its place in it: (epoch, rows consumed), the open window."""

    def __init__(self, job: ShardJob, shard: int) -> None:
        self.job, self.shard = job, shard
        self.gw = np.zeros(int(job.spec[BLOCKS]) * (job.mean.size + 1))  # one block per softmax class
        self.counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self.sums = np.zeros(N_SUMS)
        self.place = (-1, 0)  # (epoch, rows of it consumed)
        self.stream: EpochStream | None = None
        self.windows: Any = None  # the epoch's (window, order) generator
        self.window: Window | None = None
        self.order: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self.ended = False  # the open epoch has no rows left after ``place``
        self.pending = 0.0  # the curvature of a window opened by :meth:`begin`, reported with the next round
        # this shard's hashed state (compute.sparse), None without: the scratch for a batch's sums,
        # and in its columns the shard's copy of the weights u (--sync gradients) or of the tables
        # (--sync models); all a shard holds of the hashed table, ``state_bytes`` (the plan's charge)
        self.scratch = pack_hashed(job.hash_bits, job.hash_outputs) if job.hash_bits else None
        self.weights_t = -1  # --sync gradients: the update its copy of u is current at (-1: none)
        self.saved: tuple[Any, ...] | None = None  # where :meth:`mark` found the lane
        # --sync models: the update its tables (see TablesView) started the round at (-1: none);
        # the highest stamp a round left in them (older stamps must not pass for this round's)
        self.tables_t, self.stamped = -1, 0

    def begin(self, st: State, config: FitConfig, init: Any, N: int, B: int) -> State:
        """Standardisation and step size (``start``) from this shard's first window of epoch 0,
        which stays open for the first round: the run reads it once."""
        self._at(0, 0)
        if not self._next_window():
            raise DataError("the first shard has no rows to start from; check the data")  # S ≥ 1 deals it the first unit
        assert self.window is not None
        start(st, self.window, config, init, N, B)
        assert st.mean is not None and st.scale is not None  # set by start
        self.pending = self._top(0, st.mean, st.scale)
        return st

    def rejob(self, job: ShardJob) -> None:
        """Take the job's figures that :meth:`begin` fixed (the stream stays where it is)."""
        self.job = job

    def mark(self) -> None:
        """Remember where the lane stands (before ``auto``'s dry rounds)."""
        self.saved = (self.window, self.pos, self.place, self.ended, self.pending)

    def rewind(self) -> None:
        """Stand where :meth:`mark` found the lane again when the rounds since stayed in its
        window (same window, same order: the rows from there are the same); else the next
        round seeks, as it would have."""
        if self.saved is not None and self.window is not None and self.window is self.saved[0]:
            _, self.pos, self.place, self.ended, self.pending = self.saved
        self.saved = None

    def _at(self, epoch: int, skip: int) -> None:
        """Stand at row ``skip`` of ``epoch``: seek unless the lane is there already, or has
        run out of ``epoch`` before ``skip`` (the rows from there are none either way, and a
        seek would stop the readers already reading the next epoch)."""
        at_epoch, consumed = self.place
        if (epoch, skip) != self.place and not (self.ended and at_epoch == epoch and skip >= consumed):
            self._seek(epoch, skip)

    def batch(self, epoch: int, rnd: int, theta_eff: NDArray[np.float64], view: HashedView = None) -> ShardPart:
        """The gradient sums of this shard's rows [rnd·B, (rnd+1)·B) of ``epoch`` (and of the
        hashed weights ``view`` gives, when there are categorical columns)."""
        job, B = self.job, int(self.job.spec[BATCH])
        self._at(epoch, rnd * B)
        params = pack_params(theta=theta_eff, theta_eff=theta_eff, avg=theta_eff, gw=self.gw, l1_q=self.gw,
                             l1_u=self.gw, cw=job.cw, classes=job.classes)
        hashed, hyper = None, job.hyper
        if self.scratch is not None:
            assert view is not None  # the driver sends the weights' changes with every round
            if not self._update_weights(view):
                return self.gw, STALE, 0.0, 0.0, None
            self.counters[T] = view[0]  # the batch's stamp is update t + 1, as on the driver
            hashed = _with_scalars(self.scratch, view[4])
            hyper = job.hyper.copy()
            hyper[LR0] = view[5]  # the lazy L2's catch-up takes the driver's step, lowered or not
        self.gw[:] = 0.0
        self.counters[FILLED], self.sums[BATCH_LOSS] = 0, 0.0
        top = max(self._fill(epoch, params, hashed, hyper), self._pending())
        n = int(self.counters[FILLED])
        if n or not self.ended:
            self.place = (epoch, rnd * B + n)
        return self.gw.copy(), n, float(self.sums[BATCH_LOSS]), top, None if hashed is None else _take_sums(hashed)

    def local(self, epoch: int, rnd: int, every: int, limit: int, start: LocalState) -> LocalPart:
        """Up to ``limit`` updates of this shard's own, from ``start``, on its rows from
        ``rnd·every·B`` of ``epoch`` (each B rows, the epoch's last one shorter)."""
        job, began = self.job, time.perf_counter()
        current, hashed, folds = self._local_hashed(start)
        if not current:
            return LocalPart(start, rows=STALE, loss=0.0, diverged=False, top=0.0)
        skip = rnd * every * int(job.spec[BATCH])
        self._at(epoch, skip)
        state = {name: getattr(start, name).copy() for name in LOCAL_ARRAYS}
        params = pack_params(theta=state["theta"], theta_eff=state["theta_eff"], avg=state["avg"], gw=self.gw,
                             l1_q=state["l1_q"], l1_u=state["l1_u"], cw=job.cw, classes=job.classes)
        counters, sums = self.counters, self.sums
        counters[:], sums[:], self.gw[:] = 0, 0.0, 0.0
        counters[T], counters[AVERAGED] = start.t, start.averaged
        hyper = job.hyper.copy()
        hyper[LR0] = start.lr0
        noise = (np.zeros(1), np.zeros(1), np.zeros_like(self.gw))  # spec[NOISE] is 0: the step's scratch only
        stop_at, top, opt_state = start.t + limit, self._pending(), state["opt_state"]
        while counters[T] < stop_at and not counters[DIVERGED]:  # whole windows per compiled call
            if self.window is None or self.pos == self.order.size:
                if not self._next_window():
                    if counters[FILLED]:  # the shard's short last batch of the epoch
                        _finish(job, hyper, params, opt_state, counters, sums, noise, hashed)
                    break
                top = max(top, self._top(epoch))
            assert self.window is not None
            self.pos = _train(self.window, self.order, self.pos, stop_at, job, hyper, params, opt_state, counters,
                              sums, noise, hashed)
        rows = int(sums[ROWS])
        if rows or not self.ended:
            self.place = (epoch, skip + rows)
        after = LocalState(**state, t=int(counters[T]), averaged=int(counters[AVERAGED]), lr0=start.lr0,
                           hashed=None if hashed is None else self._changes(hashed, start.t, folds))
        return LocalPart(after, rows=rows, loss=float(sums[LOSS] + sums[BATCH_LOSS]),
                         diverged=bool(counters[DIVERGED]), top=top, seconds=time.perf_counter() - began,
                         ended=self.ended)

    def _update_weights(self, view: HashedView) -> bool:
        """Bring this shard's copy of the hashed weights to update t (``view``); False when
        it cannot (a delta for a copy that is not at t - 1)."""
        assert view is not None and self.scratch is not None
        t, full, ids, values, *_ = view
        tables = full if full is not None else values
        slots = VIEWED_LAZY if tables is not None and len(tables) == len(VIEWED_LAZY) else VIEWED
        if full is not None:
            for slot, table in zip(slots, full):
                self.scratch[slot][:] = table
            self.weights_t = t
        elif self.weights_t == t - 1:
            assert ids is not None and values is not None
            for slot, table in zip(slots, values):
                self.scratch[slot][ids] = table
            self.weights_t = t
        return self.weights_t == t

    def _local_hashed(self, start: LocalState) -> tuple[bool, tuple[NDArray, ...] | None, int]:
        """(False, None, 0) when this shard's tables cannot follow ``start``'s (a new lane: the
        round is asked again with them whole), else (True, the hashed state the round trains:
        its scratch, whose columns hold the tables, brought to the driver's; the folds so far).
        Stamps left by a round that reached past ``start`` (a rerun, ``auto``'s dry rounds)
        are cleared, so that a stamp above ``start.t`` means touched in this round (under the
        lazy L2 the driver's stamps come with the tables, and cover every entry a round changed)."""
        scratch = self.scratch
        if scratch is None:
            return True, None, 0
        base, whole, ids, values, scalars = start.hashed
        slots = _tables(self.job.spec, self.job.hyper)
        tables = [scratch[slot] for slot in slots]
        if whole is not None:
            for table, new in zip(tables, whole):
                table[:] = new
        elif self.tables_t >= 0 and self.tables_t == base:
            assert ids is not None and values is not None
            for table, new in zip(tables, values):
                table[ids] = new
        else:
            return False, None, 0
        self.tables_t = start.t
        if self.stamped > start.t and slots == TABLES:
            scratch[STAMP][:] = 0
            self.stamped = 0
        scratch[HI][N_TOUCHED] = 0
        return True, _with_scalars(scratch, scalars.copy()), int(scratch[HI][FOLDS])

    def _changes(self, hashed: tuple[NDArray, ...], t: int, folds: int) -> TablesChange:
        """The entries of the tables this round touched: those stamped after update ``t`` (the
        round's start), or all of them when u was rescaled (wscale folded in, ``FOLDS``). A
        superset of the entries that changed: ``merge_hashed`` drops those whose bits did not."""
        counters = self.counters
        self.stamped = max(self.stamped, int(counters[T]) + (1 if counters[FILLED] else 0))
        if int(hashed[HI][FOLDS]) != folds:
            ids = np.arange(hashed[HW].size, dtype=np.int64)
        else:
            ids = np.flatnonzero(hashed[STAMP] > t)
        return ids, tuple(hashed[slot][ids] for slot in _tables(self.job.spec, self.job.hyper)), hashed[HF].copy()

    def _fill(self, epoch: int, params: tuple[NDArray, ...], hashed: tuple[NDArray, ...] | None, hyper: NDArray
              ) -> float:
        """Feed this shard's next rows to the batch in progress until it holds B rows or the
        epoch ends; returns the largest row curvature of the windows opened in epoch 0."""
        job, B, top = self.job, int(self.job.spec[BATCH]), 0.0
        while self.counters[FILLED] < B:
            if self.window is None or self.pos == self.order.size:
                if not self._next_window():
                    break
                top = max(top, self._top(epoch))
            window = self.window
            assert window is not None and window.y is not None
            sw = _UNWEIGHTED if window.w is None else window.w
            if hashed is None:
                self.pos = fill_batch(window.X, window.y, sw, self.order, self.pos, self.order.size, job.spec,
                                      hyper, params, self.counters, self.sums)
            else:
                fill = hashed_kernels(job.spec)[0]  # the scalar table's, or softmax's (2**bits, C)
                self.pos = fill(window.X, window.y, sw, window.idx, window.sign, self.order, self.pos, self.order.size,
                                job.spec, hyper, params, self.counters, self.sums, hashed)
        return top

    def _pending(self) -> float:
        top, self.pending = self.pending, 0.0
        return top

    def _top(self, epoch: int, mean: NDArray[np.float64] | None = None, scale: NDArray[np.float64] | None = None
             ) -> float:
        """The open window's largest row curvature in epoch 0 (the driver lowers the default
        step by it, see_rows), else 0; standardised by the job's figures unless given."""
        if epoch != 0:
            return 0.0
        job, window = self.job, self.window
        assert window is not None and window.y is not None
        return guard.max_row_curvature(window.X, window.y, job.mean if mean is None else mean,
                                       job.scale if scale is None else scale, guard.row_weighting(job.model))

    def _seek(self, epoch: int, skip: int) -> None:
        """Open ``epoch``'s rows of this shard at row ``skip`` (a later epoch, or a round rerun)."""
        job = self.job
        self._close_epoch()
        if job.shards > 1 or self.stream is None:
            if self.stream is not None:
                self.stream.close()
            # a lane keeps a window only until it asks for the next (mark/rewind compare windows, not buffers)
            self.stream = shard_stream(job.source, job.model, job.seed, job.shuffle, job.plan, job.dtype, job.strata,
                                       epoch, (self.shard, job.shards), job.last_epoch, recycle=True)
        self.windows = None if self.stream is None else self.stream.epoch(epoch, skip)
        self.place, self.ended, self.pending = (epoch, skip), self.windows is None, 0.0

    def _next_window(self) -> bool:
        self.window, self.pos = None, 0
        if self.windows is None:
            return False
        try:
            self.window, self.order = next(self.windows)
        except StopIteration:
            self.windows, self.ended = None, True
            return False
        return True

    def _close_epoch(self) -> None:
        if self.windows is not None:
            self.windows.close()  # leaves the epoch early: stops its readers
        self.windows, self.window, self.pos = None, None, 0

    def close(self) -> None:
        self._close_epoch()
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class ShardWorker:
    """Hosts some of a job's shards (in one process: a cluster worker's, or the driver's)."""

    def __init__(self, job: ShardJob, shards: Sequence[int]) -> None:
        self.shards = [int(k) for k in shards]
        self.lanes = {k: _Lane(job, k) for k in self.shards}

    def begin(self, st: State, config: FitConfig, init: Any, N: int, B: int) -> list[State | None]:
        """Shard 0 (where hosted) starts the run's state from its first window
        (:meth:`_Lane.begin`); the other shards answer None."""
        return [self.lanes[k].begin(st, config, init, N, B) if k == 0 else None for k in self.shards]

    def rejob(self, job: ShardJob) -> list[None]:
        """Every hosted shard takes ``job`` (the figures :meth:`begin` fixed)."""
        for lane in self.lanes.values():
            lane.rejob(job)
        return [None] * len(self.shards)

    def mark(self) -> list[None]:
        """Every hosted shard remembers where it stands (:meth:`_Lane.mark`)."""
        for lane in self.lanes.values():
            lane.mark()
        return [None] * len(self.shards)

    def rewind(self) -> list[None]:
        """Every hosted shard goes back there when it can (:meth:`_Lane.rewind`)."""
        for lane in self.lanes.values():
            lane.rewind()
        return [None] * len(self.shards)

    def accumulate(self, epoch: int, rnd: int, theta_eff: NDArray[np.float64], view: HashedView = None
                   ) -> list[ShardPart]:
        """For each hosted shard, in the order given: its answer to round ``rnd`` of ``epoch``."""
        return [self.lanes[k].batch(epoch, rnd, theta_eff, view) for k in self.shards]

    def local(self, epoch: int, rnd: int, every: int, limit: int, start: LocalState) -> list[LocalPart]:
        """For each hosted shard, in the order given: its state after a local-SGD round."""
        return [self.lanes[k].local(epoch, rnd, every, limit, start) for k in self.shards]

    def close(self) -> None:
        """Stop every shard's readers (joining their threads)."""
        for lane in self.lanes.values():
            lane.close()


class InProcess:
    """The exact reference: every shard in this process, one after another."""

    def __init__(self, job: ShardJob) -> None:
        self.worker = ShardWorker(job, range(job.shards))

    def ask(self, method: str, *args: Any) -> list[Any]:
        return list(getattr(self.worker, method)(*args))

    def rejob(self, job: ShardJob) -> None:
        self.worker.rejob(job)

    def close(self) -> None:
        self.worker.close()


class ShardedRun(Run):
    """A :class:`Run` whose updates come from S shards: their summed gradients, or their
    averaged models (``--sync models``; see the module).

    The first window of shard 0 sets the standardisation and the step size (for S = 1,
    the single-process run's first window); the rounds' place is ``st.shard_round``, which
    a checkpoint stores, so ``--resume`` continues at the same round with any backend.
    """

    def __init__(self, setup: Setup, hooks: Hooks, resume: dict[str, NDArray] | None, started: float,
                 backend: BackendFactory | None) -> None:
        config = setup.config
        if categorical_columns(setup.source):  # train.hashed.check's refusals, for a backend given in code
            if config.optimizer in ("adam", "adamw") and config.sync == "models":
                raise UsageError(f"--sync models: --optimizer {config.optimizer} on categorical columns does not "
                                 "average its moments across shards yet; give --sync gradients")
            if config.l1 > 0 or config.optimizer in MOMENTUM_OPTIMIZERS:
                option = "--l1" if config.l1 > 0 else f"--optimizer {config.optimizer}"
                raise UsageError(f"{option}: on categorical columns trains in one process for now; train without "
                                 "the shards' backend, or with --optimizer sgd or adagrad and no --l1")
        super().__init__(setup, hooks, resume, started)
        self.factory: BackendFactory = backend or InProcess
        self.shards = setup.config.n_shards
        self.shard_batch = int(setup.config.batch)  # rows per shard and round
        #: the hashed weights the last update moved: (t after it, their ids, their values in the
        #: viewed tables), None: unknown
        #: --sync models: the update the last merged round started at and the ids it changed (None: send all)
        self.tables_base: tuple[int, NDArray[np.int64]] | None = None
        self.moved: tuple[int, NDArray[np.int64], tuple[NDArray, ...]] | None = None

    def stream_plan(self) -> StreamPlan:
        plan = self.setup.plan
        return StreamPlan(plan.window_rows, plan.buffer_bytes, plan.readers)

    def begin(self, feed: Backend) -> None:
        """Standardisation and step size from the first window of shard 0, read once: by the
        shard's own lane, wherever it runs, which keeps the window for its first round."""
        setup, st = self.setup, self.st
        started = feed.ask("begin", st, self.config, setup.init, self.schedule.N, self.schedule.B)[0]
        if started is not st:  # a cluster's worker started a copy
            adopt(st, started)
        feed.rejob(self.job())

    def job(self) -> ShardJob:
        """The shards' job; before :meth:`begin` its standardisation and step are placeholders
        (the stream's fields are final, and ``rejob`` gives the rest)."""
        setup, config, st = self.setup, self.config, self.st
        assert st.spec is not None and st.classes is not None  # set by setup
        d = len(setup.source.features)
        hyper = np.zeros(0) if st.hyper is None else st.hyper.copy()
        mean = np.zeros(d) if st.mean is None else st.mean
        scale = np.ones(d) if st.scale is None else st.scale
        spec = st.spec.copy()
        spec[BATCH] = self.shard_batch
        if config.sync == "models":
            spec[NOISE] = 0  # the noise meter reads the driver's update gradients: local updates have none
        return ShardJob(setup.source, config.model, config.seed, config.shuffle, self.stream_plan(), config.dtype,
                        setup.strata, self.shards, self.schedule.last_epoch, spec, hyper, st.cw, st.classes, mean,
                        scale, config.memory_limit // self.shards,
                        0 if st.hw is None else int(st.hw.size // spec[BLOCKS]).bit_length() - 1, int(spec[BLOCKS]))

    def open_feed(self) -> Backend:
        fresh = self.st.hyper is None
        feed = self.factory(self.job())
        try:
            if fresh:
                self.begin(feed)
            if self.config.sync == "models" and not self.st.sync_every[0]:
                self.st.sync_every[0] = self.choose_every(feed)
        except BaseException:
            feed.close()  # train() closes only a feed it was given
            raise
        return feed

    def train_epoch(self, feed: Any, epoch: int) -> None:
        """Rounds from where the counters stand until every shard has run out."""
        st, total = self.st, self.schedule.total_steps
        every = int(st.sync_every[0])
        while not self.done():
            stop, before, rnd = self.next_stop(), int(st.counters[T]), int(st.shard_round[0])
            ended = False  # every shard said it has run out: no empty round to ask for
            if self.config.sync == "models":
                limit = every if total is None else min(every, total - before)
                parts = self.local_round(feed, epoch, rnd, every, limit)
                rows, ended = self.merge(parts, epoch), all(part.ended for part in parts)
            else:
                rows = self.update(self.accumulate(feed, epoch, rnd), epoch)
            if rows == 0:
                st.shard_round[0] = 0  # the epoch is over: the next starts at round 0
                break
            st.shard_round[0] += 1
            if st.counters[DIVERGED]:
                raise self.diverged(epoch)
            if st.counters[T] >= stop:
                self.at_boundary(epoch, before)
            if ended:
                st.shard_round[0] = 0
                break
        self.check_interval(epoch)  # the updates since the last log line
        self.fold_interval()

    def accumulate(self, feed: Backend, epoch: int, rnd: int) -> list[ShardPart]:
        """The shards' answers to a ``--sync gradients`` round; asked again with the whole
        hashed table when a shard's copy was not current (a new lane: its state is untouched)."""
        parts = feed.ask("accumulate", epoch, rnd, self.st.theta_eff, self.view())
        if any(part[1] == STALE for part in parts):
            parts = feed.ask("accumulate", epoch, rnd, self.st.theta_eff, self.view(full=True))
        return parts

    def update(self, parts: list[ShardPart], epoch: int) -> int:
        """One update from the shards' answers, added in shard order; returns its rows (0:
        every shard has run out, and nothing changes)."""
        st = self.st
        rows = sum(part[1] for part in parts)
        if rows == 0:
            return 0
        assert st.spec is not None and st.hyper is not None and st.mean is not None and st.scale is not None
        gw = self.params[GW]
        gw[:] = parts[0][0]
        for g, *_ in parts[1:]:
            gw += g
        loss = parts[0][2]
        for _, _, part_loss, *_ in parts[1:]:
            loss += part_loss
        folds = -1 if self.hashed is None else int(self.hashed[HI][FOLDS])
        if epoch == 0:
            lower_step(st, max(part[3] for part in parts), self.config, self.schedule.N)
        st.counters[FILLED] = rows
        st.counters[EPOCH_ROWS] += rows
        st.sums[BATCH_LOSS] = loss
        if self.hashed is None:
            finish_batch(st.spec, st.hyper, self.params, st.opt_state, st.mean, st.scale, st.counters, st.sums,
                         self.noise)
            return rows
        hashed, stamp = self.hashed, int(st.counters[T]) + 1
        lr_l2 = lazy_l2(st.spec, st.hyper)
        for *_, sparse in parts:  # in shard order
            assert sparse is not None  # every shard of a hashed run answers with its sums
            add_lazy_sums(hashed, sparse[0], sparse[1], stamp, lr_l2, st.hyper[EPS], st.spec[AVERAGE_FROM])
        moved = hashed[TOUCHED][:hashed[HI][N_TOUCHED]].copy()
        finish_batch_hashed(st.spec, st.hyper, self.params, st.opt_state, st.mean, st.scale, st.counters, st.sums,
                            self.noise, hashed)
        # SGD with L2: wscale < 1 after every update unless it was folded into all of u (_renormalize);
        # a lowered step caught every weight up (FOLDS, lower_step above)
        rescaled = (st.spec[OPTIMIZER] == SGD and st.hyper[L2] > 0 and hashed[HF][WSCALE] == 1.0) or \
            int(hashed[HI][FOLDS]) != folds
        slots = VIEWED_LAZY if lr_l2 > 0 else VIEWED
        self.moved = None if rescaled else (int(st.counters[T]), moved, tuple(hashed[slot][moved] for slot in slots))
        return rows

    def view(self, full: bool = False) -> HashedView:
        """The hashed weights as a ``--sync gradients`` round sends them (None without): the
        last update's changes, or all of u (``full``, or when those changes are not known)."""
        if self.hashed is None:
            return None
        st = self.st
        assert st.spec is not None and st.hyper is not None
        t, hf, lr0 = int(st.counters[T]), self.hashed[HF], float(st.hyper[LR0])
        if full or self.moved is None or self.moved[0] != t:
            slots = VIEWED_LAZY if lazy_l2(st.spec, st.hyper) > 0 else VIEWED
            return t, tuple(self.hashed[slot] for slot in slots), None, None, hf, lr0
        return t, None, self.moved[1], self.moved[2], hf, lr0

    def local_round(self, feed: Backend, epoch: int, rnd: int, every: int, limit: int) -> list[LocalPart]:
        """The shards' answers to a ``--sync models`` round; asked again with the whole hashed
        tables when a shard's were not current (a new lane: its state is untouched)."""
        parts = feed.ask("local", epoch, rnd, every, limit, self.local_start())
        if any(part.rows == STALE for part in parts):
            parts = feed.ask("local", epoch, rnd, every, limit, self.local_start(full=True))
        return parts

    def local_start(self, full: bool = False) -> LocalState:
        st = self.st
        assert st.hyper is not None
        hashed: TablesView | None = None
        if self.hashed is not None:
            assert st.spec is not None
            tables = tuple(self.hashed[slot] for slot in _tables(st.spec, st.hyper))
            if full or self.tables_base is None:
                hashed = (-1, tables, None, None, self.hashed[HF])
            else:
                base, ids = self.tables_base
                hashed = (base, None, ids, tuple(table[ids] for table in tables), self.hashed[HF])
        return LocalState(theta=st.theta, theta_eff=st.theta_eff, avg=st.avg, opt_state=st.opt_state, l1_q=st.l1_q,
                          l1_u=st.l1_u, t=int(st.counters[T]), averaged=int(st.counters[AVERAGED]),
                          lr0=float(st.hyper[LR0]), hashed=hashed)

    def merge(self, parts: list[LocalPart], epoch: int) -> int:
        """The shards' states averaged by their rows, in shard order (a shard that has run
        out weighs nothing); returns the round's rows."""
        st = self.st
        rows = sum(part.rows for part in parts)
        live = [part for part in parts if part.rows]
        if self.hashed is not None and not live:  # no shard changed its tables
            self.tables_base = int(st.counters[T]), np.zeros(0, dtype=np.int64)
        if not live:
            return 0
        for name in LOCAL_ARRAYS:  # in place: the loop's params tuple holds these arrays
            mine = getattr(st, name)
            mine[...] = getattr(live[0].state, name) * (live[0].rows / rows)  # x 1.0 exactly for one shard
            for part in live[1:]:
                mine += getattr(part.state, name) * (part.rows / rows)
        if self.hashed is not None:
            assert st.spec is not None and st.hyper is not None
            reports = [(part.state.hashed, part.rows) for part in live]
            if _tables(st.spec, st.hyper) == TABLES_LAZY:
                changed = merge_lazy(self.hashed, reports, rows, np.array([part.state.t for part in live]),
                                     (lazy_l2(st.spec, st.hyper), float(st.hyper[EPS]), int(st.spec[AVERAGE_FROM])))
            else:
                changed = merge_hashed(self.hashed, reports, rows)
            self.tables_base = None if changed is None else (int(st.counters[T]), changed)
        st.counters[T] = max(part.state.t for part in live)
        st.counters[AVERAGED] = max(part.state.averaged for part in live)
        st.counters[EPOCH_ROWS] += rows
        st.counters[DIVERGED] = int(any(part.diverged for part in parts))
        st.sums[LOSS] += sum(part.loss for part in live)
        st.sums[ROWS] += rows
        if epoch == 0:
            folds = -1 if self.hashed is None else int(self.hashed[HI][FOLDS])
            lower_step(st, max(part.top for part in parts), self.config, self.schedule.N)
            if self.hashed is not None and int(self.hashed[HI][FOLDS]) != folds:
                self.tables_base = None  # every weight was caught up: the next round sends the tables whole
        return rows

    def choose_every(self, feed: Backend) -> int:
        """--sync-every, or for ``auto`` the least H whose rounds spend at most 5 % of their
        time in synchronisation: five timed rounds of ten updates (dry runs from the current
        state on the epoch's first rows, discarded; a first one of one update opens the
        readers) give the compute per update c (the slowest shard's own time, a median) and
        the round's latency L (the rest of the round's wall time, a median), and H the least
        number of updates of at least ⌈19·L/c⌉ that cuts an epoch into equal rounds, within
        [1, one epoch] (a short last round would cost a whole latency for a few updates).
        Each is measured, not a difference of two noisy round times: under load that
        difference came out negative or 10x c, and H a tenth of what the latency called for."""
        if self.config.sync_every != "auto":
            return int(self.config.sync_every)
        epoch, begin, place = int(self.st.counters[EPOCH]), self.local_start(full=True), [0]

        def dry(updates: int) -> tuple[float, float]:
            """A round of ``updates`` from the rows where the last one stopped (round 1 of a
            round length of ``place`` batches starts there: the shards read on, no seek):
            its wall time and its slowest shard's own time."""
            t0 = time.perf_counter()
            parts = feed.ask("local", epoch, 1 if place[0] else 0, max(place[0], 1), updates, begin)
            place[0] += updates
            return time.perf_counter() - t0, max(part.seconds for part in parts)

        feed.ask("mark")
        dry(1)
        rounds = [dry(10) for _ in range(5)]
        feed.ask("rewind")
        self.tables_base = None  # the dry rounds changed the shards' tables: the first round sends them whole
        compute = float(np.median([own for _, own in rounds])) / 10
        latency = max(float(np.median([wall - own for wall, own in rounds])), 0.0)
        ipe = self.schedule.ipe
        least = ipe if compute <= 0 else min(max(math.ceil(19 * latency / compute), 1), ipe)
        every = math.ceil(ipe / (ipe // least))  # the epoch in equal rounds of at least that: no short last one
        self.emit({"event": "sync", "sync_every": every, "round_seconds": latency, "update_seconds": compute})
        return every


def merge_hashed(hashed: tuple[NDArray, ...], parts: list[tuple[TablesChange, int]], rows: int
                 ) -> NDArray[np.int64] | None:
    """The shards' hashed tables (u, AdaGrad's sums, the average's sums) averaged by their rows
    into ``hashed`` (which holds the round's start), in shard order, at every entry a shard
    changed: the others stay as they were. The weights are wscale·u: shards with the same
    scalars (wscale, the average's B) average u as it is (one shard's × 1.0: exactly);
    otherwise each shard's tables are folded first (wscale into u, B·u into the sums), which
    changes every entry. A shard reports every entry its round touched (ascending); where
    every report carries the start's bits the entry keeps them (``compute.sparse.
    average_entries``). Returns the ids changed, or None when all may have."""
    tables = [hashed[slot] for slot in TABLES]
    changes = [change for change, _ in parts]
    weights = [n / rows for _, n in parts]
    if any(not np.array_equal(change[2], changes[0][2]) for change in changes[1:]):
        folded_tables = []
        for ids, values, scalars in changes:
            whole = [table.copy() for table in tables]
            for table, new in zip(whole, values):
                table[ids] = new
            folded_tables.append(_folded(whole[0], whole[1], whole[2], scalars))
        for i, table in enumerate(tables):
            table[...] = folded_tables[0][i] * weights[0]
            for shard, w in zip(folded_tables[1:], weights[1:]):
                table += shard[i] * w
        hashed[HF][...] = folded_tables[0][-1]
        return None
    ids = np.concatenate([change[0] for change in changes])
    offsets = np.cumsum([0] + [change[0].size for change in changes])
    stacked = np.concatenate([np.stack(change[1]) for change in changes], axis=1)
    bits = [table.view(np.int64) for table in tables]
    union = average_entries(tables[0], bits[0], tables[1], bits[1], tables[2], bits[2], ids, offsets, stacked,
                            stacked.view(np.int64), np.array(weights))
    hashed[HF][...] = changes[0][2]
    return union


def merge_lazy(hashed: tuple[NDArray, ...], parts: list[tuple[TablesChange, int]], rows: int, ends: NDArray[np.int64],
               lazy: tuple[float, float, int]) -> NDArray[np.int64] | None:
    """``merge_hashed`` under AdaGrad's lazy L2 (``lazy`` = (η·l2, ε, AVERAGE_FROM)): one
    shard's tables (× 1.0) are taken as they are, stamps included; otherwise every entry a
    shard changed is averaged after each shard's figures are brought up to its last update
    (``compute.sparse.average_lazy_entries``), all entries when the shards ended at
    different updates (an entry none changed lags each by a different count). Returns the
    ids changed, or None when all may have."""
    tables = [hashed[slot] for slot in TABLES_LAZY]
    changes = [change for change, _ in parts]
    if len(parts) == 1:
        ids, values, _ = changes[0]
        for table, new in zip(tables, values):
            table[ids] = new
        return ids
    ids = np.concatenate([change[0] for change in changes])
    offsets = np.cumsum([0] + [change[0].size for change in changes])
    stacked = np.concatenate([np.stack(change[1][:3]) for change in changes], axis=1)
    stamps = np.concatenate([change[1][3] for change in changes])
    whole = bool(np.any(ends != ends[0]))
    union = np.arange(tables[0].size, dtype=np.int64) if whole else np.unique(ids)
    weights = np.array([n / rows for _, n in parts])
    average_lazy_entries(tables[0], tables[1], tables[2], tables[3], ids, offsets, stacked, stamps, weights, ends,
                         union, lazy[0], lazy[1], lazy[2])
    hashed[HF][...] = changes[0][2]
    return None if whole else union


def _folded(u: NDArray, sq: NDArray, total: NDArray, scalars: NDArray) -> tuple[NDArray, ...]:
    """One shard's hashed state with wscale and the average's B folded in (``_renormalize``)."""
    flat = np.zeros_like(scalars)
    flat[WSCALE] = 1.0
    return scalars[WSCALE] * u, sq, total + scalars[AVG_B] * u, flat


def _with_scalars(scratch: tuple[NDArray, ...], scalars: NDArray) -> tuple[NDArray, ...]:
    """A shard's hashed state with the driver's scalars (wscale, the average's B)."""
    state = list(scratch)
    state[HF] = scalars
    return tuple(state)


def _take_sums(hashed: tuple[NDArray, ...]) -> SparseSums:
    """The batch's hashed sums (ids first touched first), leaving the scratch empty."""
    n = int(hashed[HI][N_TOUCHED])
    ids = hashed[TOUCHED][:n].copy()
    hashed[HI][N_TOUCHED] = 0
    return ids, hashed[HG][ids]


def _train(window: Window, order: NDArray, pos: int, stop_at: int, job: ShardJob, hyper: NDArray,
           params: tuple[NDArray, ...], opt_state: NDArray, counters: NDArray, sums: NDArray, noise: tuple[NDArray, ...],
           hashed: tuple[NDArray, ...] | None) -> int:
    """``train_rows`` (or its hashed twin) over the rest of ``window``, stopping at update ``stop_at``."""
    assert window.y is not None
    sw = _UNWEIGHTED if window.w is None else window.w
    if hashed is None:
        return int(train_rows(window.X, window.y, sw, order, pos, order.size, stop_at, job.spec, hyper, params,
                              opt_state, job.mean, job.scale, counters, sums, noise))
    train_hashed = hashed_kernels(job.spec)[1]  # the scalar table's, or softmax's (2**bits, C)
    return int(train_hashed(window.X, window.y, sw, window.idx, window.sign, order, pos, order.size, stop_at, job.spec,
                            hyper, params, opt_state, job.mean, job.scale, counters, sums, noise, hashed))


def _finish(job: ShardJob, hyper: NDArray, params: tuple[NDArray, ...], opt_state: NDArray, counters: NDArray,
            sums: NDArray, noise: tuple[NDArray, ...], hashed: tuple[NDArray, ...] | None) -> None:
    """The update of the batch in progress (the epoch's short last one)."""
    if hashed is None:
        finish_batch(job.spec, hyper, params, opt_state, job.mean, job.scale, counters, sums, noise)
    else:
        finish_batch_hashed(job.spec, hyper, params, opt_state, job.mean, job.scale, counters, sums, noise, hashed)


def adopt(st: State, other: State) -> None:
    """Make ``st`` hold ``other``'s values, its arrays in place (the loop's params tuple holds
    them)."""
    for name, value in vars(other).items():
        mine = getattr(st, name, None)
        if isinstance(mine, np.ndarray) and isinstance(value, np.ndarray) and mine.shape == value.shape \
                and mine.dtype == value.dtype:
            mine[...] = value
        else:
            setattr(st, name, value)


#: train_rows' sample weights when the data has no --weight column
_UNWEIGHTED = np.zeros(0)
