"""The epoch loop: windows from the stream, compiled calls between stops, and what happens at
a stop (log, checkpoint, grow the batch, stop on request), at an epoch's end (validation,
early stopping) and on divergence.

An iteration is one update; an epoch is one full pass of ``ceil(N / B)`` iterations, the
short last batch counting as one (DESIGN.md §2.2).
"""

from __future__ import annotations

import math
import time
from contextlib import closing
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..compute.loop import (AVERAGE_FROM, AVERAGED, BATCH, BLOCKS, DIVERGED, EPOCH, EPOCH_ROWS, FILLED, LOSS, LR0,
                            NOISE_SUMS, NOISE_TOTAL, ROWS, SCHEDULE, T, finish_batch, pack_params, train_rows)
from ..compute.losses import row_loss
from ..compute.noise import NoiseMeter
from ..compute.optim import schedule_lr
from ..compute.sparse import finish_batch_hashed
from ..compute.sparse_multi import hashed_kernels
from ..config import FitConfig
from ..errors import DivergenceError, RunStopped, SourceError
from ..persist.model import hashed_margins
from ..pipeline.epochs import EpochStream
from ..pipeline.windows import Window, read_window
from ..sources import Source
from . import guard
from .hashed import warn_row_names
from .inputs import Hooks
from .metrics import MetricsLog
from .setup import NEVER, Setup
from .state import State
from .stepsize import grow_batch, noise_fields, raw_parameters, see_rows, start


class Run:
    """One training run from a :class:`~streamsgd.train.setup.Setup`: the loop and its stops.

    Its methods share the state the loop advances (``st``: parameters, counters, sums), the
    metrics log and the checkpoint clock; :meth:`train` runs the epochs.
    """

    def __init__(self, setup: Setup, hooks: Hooks, resume: dict[str, NDArray] | None, started: float) -> None:
        self.setup, self.config, self.st = setup, setup.config, setup.st
        self.schedule, self.started = setup.schedule, started
        self.ck, self.on_progress = hooks.checkpointing, hooks.on_progress
        st = self.st
        assert st.classes is not None  # set by setup
        self.params = pack_params(theta=st.theta, theta_eff=st.theta_eff, avg=st.avg, gw=st.gw, l1_q=st.l1_q,
                                  l1_u=st.l1_u, cw=st.cw, classes=st.classes)
        self.hashed = st.hashed()  # the categorical columns' weights (compute.sparse), or None
        assert st.spec is not None  # set by setup
        self.train_hashed = hashed_kernels(st.spec)[1]  # the scalar table's loop, or softmax's (2**bits, C)
        # gradient-noise statistics of every logging interval (DESIGN.md §2: B_simple, η/B)
        self.meter = meter = NoiseMeter(n_rows=self.schedule.N, n_params=st.theta.size)
        assert meter.total is not None  # sized by n_params
        if resume is not None and "noise_total" in resume:  # the interval in progress, which --batch auto grows by
            meter.total[:], meter.sums[:] = resume["noise_total"], resume["noise_sums"]
        self.noise = (meter.total, meter.sums, np.zeros(st.theta.size))
        self.epoch_loss = float("nan")
        self.stopped_early: int | None = None  # the epoch early stopping ended the run at
        self.log = MetricsLog(hooks.metrics)
        self.compiling = _CompileTime()
        self.train_start = time.perf_counter()
        self.interval_start = self.last_checkpoint = self.train_start
        self.first_rows = int(st.rows_seen[0])

    @property
    def train_seconds(self) -> float:
        """Seconds spent training, less Numba's compilation."""
        return time.perf_counter() - self.train_start - self.compiling.seconds

    def emit(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        if self.on_progress is not None:
            self.on_progress(record)

    def diverged(self, epoch: int, reason: str = "the loss became not finite", t: int | None = None) -> DivergenceError:
        config, st = self.config, self.st
        lr = config.lr
        if lr is None:
            assert st.hyper is not None  # set by the first window (or the checkpoint), before any update
            lr = float(st.hyper[LR0])
        assert st.spec is not None  # set by setup
        fix = guard.advice(lr, config.lr is not None, config.optimizer, int(st.spec[BATCH]), config.standardize,
                           st.sample, list(self.setup.source.features))
        return DivergenceError(f"training diverged at iteration {st.counters[T] + 1 if t is None else t} "
                               f"(epoch {epoch + 1}): {reason}; {fix}")

    def check_interval(self, epoch: int) -> None:
        """Stop when the interval's mean loss or the parameters have blown up (guard.py)."""
        sums = self.st.sums
        loss = sums[LOSS] / sums[ROWS] if sums[ROWS] else 0.0
        reason = guard.divergence(loss, float(self.st.guard[guard.REFERENCE]), self.st.theta)
        if reason is not None:
            raise self.diverged(epoch, reason, int(self.st.counters[T]))

    def fold_interval(self) -> None:
        st, sums = self.st, self.st.sums
        st.rows_seen[0] += int(sums[ROWS])
        st.epoch_sums[:] += sums[LOSS], sums[ROWS]
        sums[LOSS] = sums[ROWS] = 0.0

    def progress(self, epoch: int) -> dict[str, Any]:
        """Log the interval since the last log line, check it, and fold it into the epoch."""
        config, st, sums, total_steps = self.config, self.st, self.st.sums, self.schedule.total_steps
        now = time.perf_counter()
        t = int(st.counters[T])
        estimate = self.meter.close_interval()
        assert st.hyper is not None and st.spec is not None  # intervals close after updates
        self.emit({"event": "progress", "epoch": epoch + 1, "iteration": t,
                   "rows_seen": int(st.rows_seen[0] + sums[ROWS]), "batch": int(st.spec[BATCH]),
                   "lr": schedule_lr(int(st.spec[SCHEDULE]), st.hyper[LR0], t, config.power_t, config.warmup,
                                     total_steps or 0, config.step_every, config.gamma),
                   "total_iterations": total_steps, "loss": sums[LOSS] / max(sums[ROWS], 1.0),
                   "rows_per_second": sums[ROWS] / max(now - self.interval_start, 1e-9),
                   "seconds": now - self.train_start, **noise_fields(estimate)})
        self.interval_start = now
        self.check_interval(epoch)
        self.fold_interval()
        return estimate

    def save_checkpoint(self) -> None:
        st = self.st
        if self.ck.save is not None:
            self.ck.save({**st.arrays(), "noise_total": self.noise[NOISE_TOTAL].copy(),
                          "noise_sums": self.noise[NOISE_SUMS].copy()})
            self.emit({"event": "checkpoint", "iteration": int(st.counters[T]),
                       "rows_seen": int(st.rows_seen[0] + st.sums[ROWS])})
        self.last_checkpoint = time.perf_counter()

    def next_stop(self) -> int:
        """The update the next compiled call stops after: a log line, the end, a checkpoint."""
        t, ck = int(self.st.counters[T]), self.ck
        stops = [(t // self.config.log_every + 1) * self.config.log_every]
        if self.schedule.total_steps is not None:
            stops.append(self.schedule.total_steps)
        if ck.every:
            stops.append((t // ck.every + 1) * ck.every)
        if ck.stop is not None and ck.stop.is_set():
            stops.append(t + 1)  # finish the batch in progress, then stop
        return min(stops)

    def at_boundary(self, epoch: int, before: int | None = None) -> None:
        """After an update that ended a compiled call: log, checkpoint, or stop. ``before``:
        the update count before the call, when it made several (a local-SGD round)."""
        config, st, ck, schedule = self.config, self.st, self.ck, self.schedule
        assert st.spec is not None  # set by setup
        t = int(st.counters[T])
        last = t - 1 if before is None else before

        def crossed(every: int) -> bool:  # a multiple of ``every`` in (last, t]
            return t // every > last // every

        if crossed(config.log_every):
            estimate = self.progress(epoch)
            if config.batch == "auto":
                grow_batch(st, estimate, config, schedule.N)
        if config.average and schedule.total_steps is None and st.spec[AVERAGE_FROM] == NEVER:
            if st.rows_seen[0] + st.sums[ROWS] >= schedule.n_epochs * schedule.N / 2:  # the second half, in rows
                st.spec[AVERAGE_FROM] = t
        stopping = ck.stop is not None and ck.stop.is_set()
        timed = ck.seconds is not None and time.perf_counter() - self.last_checkpoint >= ck.seconds
        if stopping or timed or (ck.every and crossed(ck.every)):
            self.save_checkpoint()
        if stopping:
            raise RunStopped(f"stopped at iteration {t} of {schedule.total_steps}")

    def done(self) -> bool:
        counters, total_steps = self.st.counters, self.schedule.total_steps
        if total_steps is not None and counters[T] >= total_steps:
            return True
        return self.config.steps is None and counters[EPOCH] >= self.schedule.n_epochs

    def train(self) -> None:
        """Run epochs until done; a store that fails between windows leaves a checkpoint, so
        that --resume continues from here once the store is back."""
        st = self.st
        feed = None
        try:
            feed = self.open_feed()
            while not self.done():
                epoch = int(st.counters[EPOCH])
                self.train_epoch(feed, epoch)
                if self.end_epoch(epoch):
                    break
        except SourceError:
            if st.hyper is not None and not st.counters[DIVERGED]:
                self.save_checkpoint()
            raise
        finally:
            if feed is not None:
                feed.close()  # joins the readers running ahead
            self.log.close()
            self.compiling.close()

    def open_feed(self) -> Any:
        """Where the epochs' rows come from: the run's one stream (closed by :meth:`train`)."""
        setup, config = self.setup, self.config
        return EpochStream(setup.source, config.model, config.seed, config.shuffle, setup.plan.window_rows,
                           setup.plan.buffer_bytes, setup.plan.readers, np.dtype(config.dtype), setup.strata,
                           self.schedule.last_epoch, recycle=True)  # train_epoch keeps no window past its turn

    def train_epoch(self, stream: Any, epoch: int) -> None:
        """Train on the epoch's windows from where the counters stand, then its short last batch."""
        st = self.st
        # a checkpoint may fall inside a batch that straddles two windows: its rows so far
        # are in gw and FILLED, and the stream resumes right after them
        with closing(stream.epoch(epoch, int(st.counters[EPOCH_ROWS]))) as windows:  # left early: stops the readers
            for window, order in windows:
                self.train_window(window, order, epoch)
                if self.done():
                    break
        if st.counters[FILLED]:  # the epoch's short last batch
            assert st.spec is not None and st.hyper is not None and st.mean is not None and st.scale is not None
            if self.hashed is not None:
                finish_batch_hashed(st.spec, st.hyper, self.params, st.opt_state, st.mean, st.scale, st.counters,
                                    st.sums, self.noise, self.hashed)
            else:
                finish_batch(st.spec, st.hyper, self.params, st.opt_state, st.mean, st.scale, st.counters, st.sums,
                             self.noise)
            if st.counters[DIVERGED]:
                raise self.diverged(epoch)
            if st.counters[T] % self.config.log_every == 0:
                self.progress(epoch)
        self.check_interval(epoch)  # the updates since the last log line
        self.fold_interval()

    def train_window(self, window: Window, order: NDArray, epoch: int) -> None:
        """The window's rows in ``order``, one compiled call between stops."""
        st, config, schedule = self.st, self.config, self.schedule
        assert window.y is not None  # training windows are read with the target
        if st.hyper is None:  # the first window: standardisation and step size from it
            start(st, window, config, self.setup.init, schedule.N, schedule.B)
            warn_row_names(self.setup.full_source, window.idx)
        if epoch == 0:  # every row is seen once: lower the default step before a rare row hurts
            see_rows(st, window.X, window.y, config, schedule.N)
        assert st.spec is not None and st.hyper is not None and st.mean is not None and st.scale is not None
        pos = 0
        while pos < order.size and not self.done():
            sw = _UNWEIGHTED if window.w is None else window.w
            if self.hashed is not None:
                pos = self.train_hashed(window.X, window.y, sw, window.idx, window.sign, order, pos, order.size,
                                        self.next_stop(), st.spec, st.hyper, self.params, st.opt_state, st.mean,
                                        st.scale, st.counters, st.sums, self.noise, self.hashed)
            else:
                pos = train_rows(window.X, window.y, sw, order, pos, order.size, self.next_stop(), st.spec,
                                 st.hyper, self.params, st.opt_state, st.mean, st.scale, st.counters, st.sums,
                                 self.noise)
            if st.counters[DIVERGED]:
                raise self.diverged(epoch)
            if st.counters[FILLED] == 0:
                self.at_boundary(epoch)

    def weight_norm2(self) -> float:
        """‖w‖² of the penalised weights (not the intercepts): the epoch loss's L2 term."""
        d = len(self.setup.source.features)
        w = self.st.theta.reshape(self.setup.blocks, d + 1)[:, :d]
        return float((w * w).sum())

    def validation_loss(self) -> float:
        """The model's mean loss on the held-out chunks (see :func:`validation_loss`)."""
        assert self.setup.validation is not None
        return validation_loss(self.setup.validation, self.config, self.st)

    def end_epoch(self, epoch: int) -> bool:
        """The epoch's record (and validation loss); True when the run stops here."""
        config, st, counters = self.config, self.st, self.st.counters
        assert st.spec is not None  # set by setup
        self.epoch_loss = st.epoch_sums[0] / max(st.epoch_sums[1], 1.0) + 0.5 * config.l2_strength * self.weight_norm2()
        if not (math.isfinite(self.epoch_loss) and np.isfinite(st.theta).all()):
            raise self.diverged(epoch, "the parameters overflowed", int(counters[T]))
        record = {"event": "epoch", "epoch": epoch + 1, "iteration": int(counters[T]),
                  "rows_seen": int(st.rows_seen[0]), "loss": self.epoch_loss, "batch": int(st.spec[BATCH]),
                  "seconds": time.perf_counter() - self.started}
        if self.setup.validation is not None:
            record["val_loss"] = val_loss = self.validation_loss()
            best, stale = st.early
            st.early[:] = (val_loss, 0) if val_loss < best - config.tol else (best, stale + 1)
            record["stop"] = bool(config.early_stopping and st.early[1] >= config.patience)
        self.emit(record)
        if record.get("stop"):  # no improvement by --tol for --patience epochs
            self.stopped_early = epoch + 1
            return True
        if counters[EPOCH_ROWS] < self.schedule.N:  # stopped by --steps inside the epoch
            return True
        counters[EPOCH] += 1
        counters[EPOCH_ROWS] = 0
        st.epoch_sums[:] = 0.0
        if not self.done():
            self.save_checkpoint()
        return False


#: train_rows' sample weights when the data has no --weight column
_UNWEIGHTED = np.zeros(0)


def validation_loss(validation: Source, config: FitConfig, st: State) -> float:
    """Mean loss of the current parameters (the running average once it has started) on
    the held-out chunks, read one at a time; no penalty, as scikit-learn reports it. With
    sample weights, the weighted mean Σ w ℓ / Σ w (scikit-learn's metrics' sample_weight)."""
    assert st.spec is not None and st.mean is not None and st.scale is not None  # measured after an epoch
    theta = st.avg if st.counters[AVERAGED] else st.theta
    blocks = int(st.spec[BLOCKS])
    coef, intercept = raw_parameters(theta, blocks, st.mean, st.scale)
    weights = st.hashed_weights()  # the categorical columns' weights, the average's when theta is
    param = config.epsilon if config.model == "huber" else config.quantile
    total, rows = 0.0, 0.0
    for c in range(len(validation.chunk_rows)):
        window = read_window(validation, np.array([c]), np.float64, True)
        assert window.y is not None  # read with the target
        y = window.y if blocks == 1 else np.searchsorted(np.asarray(st.classes), window.y)
        z = window.X @ coef.T + intercept
        if weights is not None:
            z = z + hashed_margins(weights, window.idx, window.sign)
        losses = row_loss(config.model, z, y, param)
        total += float(losses.sum() if window.w is None else losses @ window.w)
        rows += window.y.size if window.w is None else float(window.w.sum())
    return total / rows if rows > 0 else 0.0


class _CompileTime:
    """Seconds Numba spends compiling (not loading from its cache) while it is open: one-time
    work the run's rows/s must not count (with a cold cache, most of a short fit's time).

    Numba's event hooks observe compilation without changing it; compiles are serialised by
    Numba's own lock, so the reader threads' ones add up too. Closed, it stops listening.
    """

    def __init__(self) -> None:
        from numba.core import event

        self._event = event
        self._timer = event.TimingListener()
        event.register("numba:compile", self._timer)

    @property
    def seconds(self) -> float:
        return self._timer.duration if self._timer.done else 0.0

    def close(self) -> None:
        self._event.unregister("numba:compile", self._timer)
