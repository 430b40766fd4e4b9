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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..compute.loop import (BATCH, BATCH_LOSS, BLOCKS, DIVERGED, EPOCH_ROWS, FILLED, GW, N_COUNTERS, N_SUMS, T,
                            fill_batch, finish_batch, pack_params)
from ..pipeline.batches import StreamPlan, shard_stream
from ..pipeline.epochs import EpochStream
from ..pipeline.windows import Window
from ..sources import Source
from . import guard
from .inputs import Hooks
from .run import Run
from .setup import Setup
from .stepsize import lower_step, start

#: One shard's answer to a round: (gradient sums, rows, loss sum, largest row curvature of
#: the windows it opened in epoch 0, else 0).
ShardPart = tuple[NDArray[np.float64], int, float, float]


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


class Backend(Protocol):
    """Where the shards run: every round's S answers, ordered by shard."""

    def round(self, epoch: int, rnd: int, theta_eff: NDArray[np.float64]) -> list[ShardPart]: ...

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

    def batch(self, epoch: int, rnd: int, theta_eff: NDArray[np.float64]) -> ShardPart:
        """The gradient sums of this shard's rows [rnd·B, (rnd+1)·B) of ``epoch``."""
        job, B = self.job, int(self.job.spec[BATCH])
        if self.place != (epoch, rnd * B):
            self._seek(epoch, rnd * B)
        params = pack_params(theta=theta_eff, theta_eff=theta_eff, avg=theta_eff, gw=self.gw, l1_q=self.gw,
                             l1_u=self.gw, cw=job.cw, classes=job.classes)
        self.gw[:] = 0.0
        self.counters[FILLED], self.sums[BATCH_LOSS], top = 0, 0.0, 0.0
        while self.counters[FILLED] < B:
            if self.window is None or self.pos == self.order.size:
                if not self._next_window():
                    break
                if epoch == 0:  # the driver lowers the default step before a rare row hurts (see_rows)
                    assert self.window is not None and self.window.y is not None
                    top = max(top, guard.max_row_curvature(self.window.X, self.window.y, job.mean, job.scale,
                                                           guard.row_weighting(job.model)))
            assert self.window is not None and self.window.y is not None
            sw = _UNWEIGHTED if self.window.w is None else self.window.w
            self.pos = fill_batch(self.window.X, self.window.y, sw, self.order, self.pos, self.order.size, job.spec,
                                  job.hyper, params, self.counters, self.sums)
        n = int(self.counters[FILLED])
        self.place = (epoch, rnd * B + n)
        return self.gw.copy(), n, float(self.sums[BATCH_LOSS]), top

    def _seek(self, epoch: int, skip: int) -> None:
        """Open ``epoch``'s rows of this shard at row ``skip`` (a later epoch, or a round rerun)."""
        job = self.job
        self._close_epoch()
        if job.shards > 1 or self.stream is None:
            if self.stream is not None:
                self.stream.close()
            self.stream = shard_stream(job.source, job.model, job.seed, job.shuffle, job.plan, job.dtype, job.strata,
                                       epoch, (self.shard, job.shards), job.last_epoch)
        self.windows = None if self.stream is None else self.stream.epoch(epoch, skip)
        self.place = (epoch, skip)

    def _next_window(self) -> bool:
        self.window, self.pos = None, 0
        if self.windows is None:
            return False
        try:
            self.window, self.order = next(self.windows)
        except StopIteration:
            self.windows = None
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

    def accumulate(self, epoch: int, rnd: int, theta_eff: NDArray[np.float64]) -> list[ShardPart]:
        """For each hosted shard, in the order given: its answer to round ``rnd`` of ``epoch``."""
        return [self.lanes[k].batch(epoch, rnd, theta_eff) for k in self.shards]

    def close(self) -> None:
        """Stop every shard's readers (joining their threads)."""
        for lane in self.lanes.values():
            lane.close()


class InProcess:
    """The exact reference: every shard in this process, one after another."""

    def __init__(self, job: ShardJob) -> None:
        self.worker = ShardWorker(job, range(job.shards))

    def round(self, epoch: int, rnd: int, theta_eff: NDArray[np.float64]) -> list[ShardPart]:
        return self.worker.accumulate(epoch, rnd, theta_eff)

    def close(self) -> None:
        self.worker.close()


class ShardedRun(Run):
    """A :class:`Run` whose updates come from S shards' summed gradients (see the module).

    The first window of shard 0 sets the standardisation and the step size (for S = 1,
    the single-process run's first window); the rounds' place is ``st.shard_round``, which
    a checkpoint stores, so ``--resume`` continues at the same round with any backend.
    """

    def __init__(self, setup: Setup, hooks: Hooks, resume: dict[str, NDArray] | None, started: float,
                 backend: BackendFactory | None) -> None:
        super().__init__(setup, hooks, resume, started)
        self.factory: BackendFactory = backend or InProcess
        self.shards = setup.config.n_shards
        self.shard_batch = int(setup.config.batch)  # rows per shard and round

    def stream_plan(self) -> StreamPlan:
        plan = self.setup.plan
        return StreamPlan(plan.window_rows, plan.buffer_bytes, plan.readers)

    def begin(self) -> None:
        """Standardisation and step size from the first window of shard 0 (read here once)."""
        setup, config, st = self.setup, self.config, self.st
        stream = shard_stream(setup.source, config.model, config.seed, config.shuffle, self.stream_plan(),
                              config.dtype, setup.strata, 0, (0, self.shards), 0)
        assert stream is not None  # shard 0 holds the first unit of every deal
        try:
            with closing(stream.epoch(0)) as windows:
                window, _ = next(windows)
                start(st, window, config, setup.init, self.schedule.N, self.schedule.B)
        finally:
            stream.close()

    def job(self) -> ShardJob:
        setup, config, st = self.setup, self.config, self.st
        assert st.spec is not None and st.hyper is not None and st.mean is not None and st.scale is not None
        assert st.classes is not None
        spec = st.spec.copy()
        spec[BATCH] = self.shard_batch
        return ShardJob(setup.source, config.model, config.seed, config.shuffle, self.stream_plan(), config.dtype,
                        setup.strata, self.shards, self.schedule.last_epoch, spec, st.hyper.copy(), st.cw,
                        st.classes, st.mean, st.scale)

    def open_feed(self) -> Backend:
        if self.st.hyper is None:
            self.begin()
        return self.factory(self.job())

    def train_epoch(self, feed: Any, epoch: int) -> None:
        """Rounds from where the counters stand until every shard has run out."""
        st = self.st
        while not self.done():
            stop = self.next_stop()
            parts = feed.round(epoch, int(st.shard_round[0]), st.theta_eff)
            if sum(part[1] for part in parts) == 0:
                st.shard_round[0] = 0  # the epoch is over: the next starts at round 0
                break
            self.update(parts, epoch)
            st.shard_round[0] += 1
            if st.counters[DIVERGED]:
                raise self.diverged(epoch)
            if st.counters[T] == stop:
                self.at_boundary(epoch)
        self.check_interval(epoch)  # the updates since the last log line
        self.fold_interval()

    def update(self, parts: list[ShardPart], epoch: int) -> None:
        """One update from the shards' answers, added in shard order."""
        st = self.st
        assert st.spec is not None and st.hyper is not None and st.mean is not None and st.scale is not None
        gw = self.params[GW]
        gw[:] = parts[0][0]
        for g, _, _, _ in parts[1:]:
            gw += g
        loss = parts[0][2]
        for _, _, part_loss, _ in parts[1:]:
            loss += part_loss
        rows = sum(part[1] for part in parts)
        if epoch == 0:
            lower_step(st, max(part[3] for part in parts), self.config, self.schedule.N)
        st.counters[FILLED] = rows
        st.counters[EPOCH_ROWS] += rows
        st.sums[BATCH_LOSS] = loss
        finish_batch(st.spec, st.hyper, self.params, st.opt_state, st.mean, st.scale, st.counters, st.sums,
                     self.noise)


#: train_rows' sample weights when the data has no --weight column
_UNWEIGHTED = np.zeros(0)
