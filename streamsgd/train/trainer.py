"""The training loop: plan → prefetch → kernel → update, with exact iteration counting.

An iteration is one update; an epoch is one full pass of ``ceil(N / B)`` iterations, the
short last batch counting as one (DESIGN.md §2.2).
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import closing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .classes import class_weights, label_values, softmax_classes
from ..config import EXECUTION_ONLY, FitConfig
from ..errors import DataError, DivergenceError, RunStopped, SourceError, UsageError
from . import guard
from ..compute.losses import CURVATURE, LOSSES, row_loss
from ..compute.loop import (AVERAGE_FROM, AVERAGED, BATCH, BLOCKS, DIVERGED, EPOCH, EPOCH_ROWS, FILLED, LOSS, LR0, N_COUNTERS, N_SUMS,
                   ROWS, T, finish_batch, train_rows)
from ..compute.noise import NoiseMeter, reported
from .metrics import MetricsLog, peak_rss_bytes
from ..persist.model import Model
from ..compute.optim import OPTIMIZERS, SCHEDULES, batch_step, default_lr, refresh_effective, schedule_lr, smoothness
from ..plan.shuffle import iterations_per_epoch
from ..plan.rng import SPLIT, SPLIT_ROWS, stream
from ..sources import ParquetSource, Source, n_rows
from ..sources.parquet import DECODE_FACTOR
from ..sources.labels import ClassIndexSource, is_text_type, not_numeric_target
from ..sources.subset import ChunkSubset, RowSubset, holds_whole_chunks, split_rows
from .targets import chunk_target_means, max_sample_weight, standardization
from ..pipeline.epochs import EpochStream
from ..pipeline.windows import WEIGHT_BYTES, Window, read_window, return_freed_buffers_to_os, sample_weight_column

#: Without ``--epochs`` a run makes at least this many updates (SGD converges in updates,
#: not in passes), within [1, MAX_AUTO_EPOCHS] epochs.
MIN_AUTO_UPDATES = 20_000
MAX_AUTO_EPOCHS = 20_000

#: Parsed format metadata (Parquet footers) the plan does not charge: what the idle footprint
#: of a run (~200 MiB of libraries) absorbs. Peak RSS at 10^7 rows in one file (a 15 MB
#: footer) was within 3 % of 10^6 rows' (benchmarks/memory.py); at 10^8 (150 MB) it was 31 %
#: higher until the excess was charged. Below it the plan, hence the model, does not depend
#: on the container: the same rows in Parquet, Zarr or arrays train identically.
METADATA_ALLOWANCE = 16 << 20

#: Share of --memory-limit for the shuffle windows; the rest is for decoding.
WINDOW_SHARE = 2 / 3

@dataclass(frozen=True)
class MemoryPlan:
    """How --memory-limit is spent: first the parsed footers the source holds, then of the
    rest two thirds for shuffle windows (up to three alive: one or two trained on, one
    being filled) and one third for the reader threads' decode buffers.

    The window size depends only on the limit, the row width and the largest chunk's
    decode cost, never on the number of readers, so the shuffle plan (and the model) is
    the same whatever ``--readers`` is; fewer reader threads run when the decode share
    cannot pay for them. When even one reader needs more than a third (a streamed row
    group of many columns holds a page and a dictionary per column), the windows give up
    what it needs. A limit too small for one reader and a window of the largest chunk is
    refused, naming a limit that works.
    """

    window_rows: int
    buffer_bytes: int
    row_bytes: int
    readers: int

    @staticmethod
    def max_chunk_bytes(memory_limit: int) -> int:
        """What one reader may hold decoding a chunk within the limit: larger Parquet row
        groups are read in slices."""
        return int(memory_limit * (1 - WINDOW_SHARE))

    @staticmethod
    def max_row_group_bytes(memory_limit: int) -> int:
        """The decoded size of the largest Parquet row group one reader decodes whole within
        the limit (``streamsgd convert`` writes row groups of this size)."""
        return MemoryPlan.max_chunk_bytes(memory_limit) // DECODE_FACTOR

    @classmethod
    def for_source(cls, source: Source, config: FitConfig) -> "MemoryPlan":
        plan = cls._solve(source, config)
        if plan is None:
            biggest = max(source.chunk_rows, default=0)
            raise UsageError(
                f"--memory-limit {config.memory_limit} bytes is too small for {source.url}: its largest chunk "
                f"({biggest} rows) needs {max(source.chunk_bytes, default=0)} bytes to decode and "
                f"{3 * biggest * _row_bytes(source, config)} to shuffle; {_working_limit(source, config)}"
            )
        return plan

    @classmethod
    def _solve(cls, source: Source, config: FitConfig) -> "MemoryPlan | None":
        """The plan, or None when the limit cannot pay for one reader and the windows."""
        row_bytes = _row_bytes(source, config)
        limit = _data_limit(source, config)
        buffer_bytes = int(limit * WINDOW_SHARE)
        decode = max(source.chunk_bytes, default=0)
        if decode > limit - buffer_bytes:  # one reader's decode comes before the windows' share
            buffer_bytes = max(0, limit - decode)
        # three windows fit: the one trained on, one read ahead, and the one the prefetcher
        # may start while the trainer waits (see prefetch.ByteBudget)
        window_rows = max(1, buffer_bytes // 3 // row_bytes)
        if config.in_memory:
            window_rows = _in_memory_rows(source, row_bytes, buffer_bytes)
        readers = min(config.readers, (limit - buffer_bytes) // decode) if decode else config.readers
        if readers < 1 or max(source.chunk_rows, default=0) > window_rows:
            return None
        return cls(window_rows, buffer_bytes, row_bytes, int(readers))


def _row_bytes(source: Source, config: FitConfig) -> int:
    """Window bytes per row: features + target (and a float64 sample weight), the window's
    int64 row permutation, and the one-byte masks of the label and finite checks made on
    every window."""
    weight = WEIGHT_BYTES if sample_weight_column(source) else 0
    return (len(source.features) + 1) * np.dtype(config.dtype).itemsize + 8 + 4 + weight


def _data_limit(source: Source, config: FitConfig) -> int:
    """The limit less the format metadata held while reading (Parquet footers) beyond an
    allowance, so peak memory stays put however many row groups a file has."""
    metadata = max(0, source.metadata_bytes - METADATA_ALLOWANCE)
    limit = config.memory_limit - metadata
    if limit < config.memory_limit / 2:
        raise UsageError(
            f"--memory-limit {config.memory_limit} bytes is too small for this data: the footers of "
            f"{source.url} take about {metadata + METADATA_ALLOWANCE} bytes once parsed (one entry per row "
            f"group and column); raise --memory-limit to at least {2 * metadata} bytes or write the data "
            "with fewer, larger row groups"
        )
    return limit


def cut_to_limit(source: Source, config: FitConfig) -> None:
    """Cut a Parquet source's row groups into chunks this run's limit can decode and
    shuffle (a no-op for other sources, whose chunks are fixed by their layout)."""
    if not isinstance(source, ParquetSource):
        return
    limit = _data_limit(source, config)
    source.cut(MemoryPlan.max_chunk_bytes(limit), int(limit * WINDOW_SHARE) // 3 // _row_bytes(source, config))


def _working_limit(source: Source, config: FitConfig) -> str:
    """The fix for a refused plan: the smallest limit (in steps of 1/8) under which the
    data, cut again for that limit, plans; and the rewrite that avoids the need."""
    rewrite = "or rewrite the data with smaller row groups"
    if isinstance(source, ParquetSource):
        rows = source.whole_rows(MemoryPlan.max_chunk_bytes(config.memory_limit))
        rewrite = (f"or rewrite the data with row groups of at most {rows} rows and no dictionary encoding "
                   f"(pyarrow.parquet.write_table(table, path, row_group_size={rows}, use_dictionary=False))")
    limit = config.memory_limit
    try:
        for _ in range(64):
            limit += max(limit // 8, 1 << 20)
            trial = replace(config, memory_limit=limit)
            try:
                cut_to_limit(source, trial)
                if MemoryPlan._solve(source, trial) is None:
                    continue
            except UsageError:  # the footers alone are too much for this limit
                continue
            return f"raise --memory-limit to {math.ceil(limit / 2**20)}MiB {rewrite}"
    finally:
        cut_to_limit(source, config)
    return f"raise --memory-limit {rewrite}"


def _in_memory_rows(source: Source, row_bytes: int, buffer_bytes: int) -> int:
    """All rows in one window, read once and kept: refused when they would not fit."""
    import psutil

    rows = n_rows(source)
    need = rows * row_bytes
    available = psutil.virtual_memory().available
    if need > min(buffer_bytes, available):
        raise UsageError(
            f"--in-memory: the data needs {need / 2**20:,.0f} MiB in memory, more than the "
            f"{buffer_bytes / 2**20:,.0f} MiB --memory-limit gives the data ({available / 2**20:,.0f} MiB of RAM are "
            "free); drop --in-memory to stream it, or raise --memory-limit"
        )
    return rows


@dataclass
class FitResult:
    model: Model
    summary: dict[str, Any]


@dataclass
class Checkpointing:
    """When and where the trainer hands its state over (``save`` gets the state arrays).

    A checkpoint is taken every ``every`` updates, every ``seconds`` of training (checked
    between compiled calls, at batch boundaries), at the end of each epoch, and when
    ``stop`` is set, after which the run raises :class:`~streamsgd.errors.RunStopped`.
    """

    save: Callable[[dict[str, NDArray]], None] | None = None
    every: int | None = None
    seconds: float | None = None
    stop: threading.Event | None = None


class _State:
    """Everything a resumed run needs to continue bit for bit: plain arrays only.

    The place in the plan is two integers (epoch, rows of it consumed); the plan itself is
    a function of the seed, so nothing about the data's order needs storing.
    """

    ARRAYS = ("theta", "theta_eff", "avg", "gw", "l1_q", "l1_u", "cw", "opt_state", "counters", "sums",
              "epoch_sums", "rows_seen", "mean", "scale", "hyper", "spec", "guard", "sample", "sample_y")
    #: arrays a checkpoint written before they existed may lack (their defaults then stay);
    #: the step-size sample is drawn from the first window, which a resumed run does not read
    #: again, and a growing batch (``--batch auto``) sizes its step from it
    OPTIONAL = ("guard", "sample", "sample_y")

    def __init__(self, d: int, blocks: int = 1):
        self.theta, self.theta_eff, self.avg, self.gw = (np.zeros(blocks * (d + 1)) for _ in range(4))
        # the L1 penalty received by each weight of every block (the intercepts get none)
        self.l1_q, self.l1_u, self.cw = np.zeros(blocks * d), np.zeros(1), np.ones(2)
        self.opt_state = np.zeros((2, blocks * (d + 1)))
        self.counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self.sums = np.zeros(N_SUMS)
        self.epoch_sums = np.zeros(2)  # loss and rows of the epoch's completed intervals
        self.rows_seen = np.zeros(1, dtype=np.int64)
        # standardisation and step-size figures: set by the first window (_start) or a checkpoint
        self.mean: NDArray[np.float64] | None = None
        self.scale: NDArray[np.float64] | None = None
        self.hyper: NDArray[np.float64] | None = None
        self.spec: NDArray[np.int64] | None = None
        self.sample: NDArray | None = None  # rows for the step size: kept when the batch size may change
        self.sample_y: NDArray | None = None  # their labels (Poisson's curvature, the starting loss)
        # guard.REFERENCE, ROW_MAX, SMOOTH: the starting model's loss (NaN: not measured), the
        # largest row curvature seen, and the sample's smoothness L (NaN: not measured)
        self.guard = np.array([np.nan, 0.0, np.nan])
        # softmax's label values as the kernel sees them (class indices for text labels)
        self.classes: NDArray | None = None
        # the loss's curvature bound, when the data sets it (poisson, class weights)
        self.curvature: float | None = None

    def arrays(self) -> dict[str, NDArray]:
        return {name: getattr(self, name).copy() for name in self.ARRAYS if getattr(self, name) is not None}

    def restore(self, arrays: dict[str, NDArray]) -> None:
        for name in self.ARRAYS:
            if name in self.OPTIONAL and name not in arrays:
                continue
            old, new = getattr(self, name), np.asarray(arrays[name])
            if old is not None and (new.shape != old.shape or new.dtype != old.dtype):
                raise DataError(f"the checkpoint's {name} has shape {new.shape}, this run needs {old.shape}; "
                                "it was written for other data or options: start without --resume")
            setattr(self, name, new.copy())


def auto_epochs(iters_per_epoch: int) -> int:
    return max(1, min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_UPDATES / iters_per_epoch)))


def fit(
    source: Source,
    config: FitConfig | None = None,
    *,
    metrics: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    init: Model | None = None,
    resume: dict[str, NDArray] | None = None,
    checkpointing: Checkpointing | None = None,
    step_offset: int = 0,
    classes: Sequence[Any] | NDArray | None = None,
    **options: Any,
) -> FitResult:
    """Train a model on ``source`` by mini-batch SGD in fixed memory.

    Parameters
    ----------
    source : a :class:`~streamsgd.sources.Source` (Parquet, Zarr, arrays).
    config : the options; keyword ``options`` override its fields.
    metrics : path of a JSON-lines file to append progress and epoch records to.
    on_progress : called with each record as it is written (the CLI's progress bar).
    init : a model to start from (warm start): its parameters and its standardisation;
        the step size is chosen afresh unless ``lr`` is set.
    resume : the state arrays of a checkpoint of this same run; training continues from
        its update count exactly as if it had never stopped.
    checkpointing : when to hand the state to a checkpoint writer, and a stop flag.
    step_offset : updates already made to ``init`` (``partial_fit``): the learning-rate
        schedule continues from them instead of starting again.
    classes : softmax only: the class labels, fixed by the caller instead of found in the
        data (``partial_fit``, whose batch may lack some classes). A label of the data
        outside them is refused. A softmax ``init`` fixes them the same way.
    """
    config = replace(config or FitConfig(), **options)
    started = time.perf_counter()
    N = n_rows(source)
    if N == 0:
        raise DataError(f"{source.url}: the data set has no rows")
    if source.target is None:
        raise DataError(f"{source.url}: training needs a target column; set --target")
    target = source.target
    text = is_text_type(getattr(source, "target_type", None))
    if text and config.model != "softmax":
        raise not_numeric_target(source, config.model)
    if classes is not None and config.model != "softmax":
        raise UsageError(f"classes= fixes the classes of a softmax model; this run trains {config.model!r}: drop it")
    if config.weight is not None and sample_weight_column(source) != config.weight:
        raise UsageError(f"--weight {config.weight}: open the data with weight={config.weight!r} "
                         "(streamsgd.sources.open_source) so the column is read with the target")
    d = len(source.features)
    if init is not None:
        _check_init(init, source, config)
    cut_to_limit(source, config)
    full_source = source
    source, held_out = split_validation(source, config.validation_fraction, config.seed)
    split = "chunks" if isinstance(held_out, ChunkSubset) else "rows"  # before a text target wraps it
    held_chunks = None if held_out is None else held_out.chunks
    validation: Source | None = held_out
    N = n_rows(source)
    plan = MemoryPlan.for_source(source, config)
    return_freed_buffers_to_os(8 * max(source.chunk_rows, default=0))  # a decoded float64 column
    labels: NDArray | None = None
    counts: NDArray[np.int64] | None = None
    if config.model == "softmax":  # one block of parameters per class, its labels from a pass over the target
        labels, counts = softmax_classes(source, validation, plan.readers, classes, init)
        if text:  # the trainer sees each label's index
            source = ClassIndexSource(source, labels)
            validation = None if validation is None else ClassIndexSource(validation, labels)
    strata = chunk_target_means(source, config.model, plan.readers)

    B = _batch_rows(config, N)
    ipe = iterations_per_epoch(N, B)
    n_epochs = config.epochs or auto_epochs(ipe)
    if config.steps is not None:
        total_steps = config.steps
    elif config.batch != "auto":
        total_steps = n_epochs * ipe
    else:  # the batch grows: the run is measured in epochs, the number of updates is open
        total_steps = None
    # Polyak-Ruppert tail averaging: the mean of the second half of the iterates cancels
    # most of the constant step's noise (its error shrinks like 1/updates averaged).
    # With a growing batch the second half is counted in rows (see at_boundary).
    never = np.iinfo(np.int64).max
    average_from = never if not config.average or total_steps is None else total_steps // 2
    # the kernel's classes: the label values, or class indices 0 … C-1 for text labels
    blocks = 1 if labels is None else labels.size
    if labels is None:
        kernel_classes = np.zeros(1)
    else:
        kernel_classes = np.arange(blocks, dtype=np.float64) if text else labels.astype(np.float64)
    st = _State(d, blocks)
    st.classes = kernel_classes
    st.spec = np.array([LOSSES[config.model], B, SCHEDULES[config.lr_schedule], average_from, N,
                        OPTIMIZERS[config.optimizer], config.warmup, total_steps or 0, config.step_every,
                        int(config.noise_stats), step_offset, blocks], dtype=np.int64)
    st.cw = class_weights(config.class_weight, strata, source.chunk_rows, config.model, labels, counts)
    # the default step must be safe for the heaviest row: its loss counts w_max times
    top_weight = max_sample_weight(source, plan.readers) if sample_weight_column(source) else 1.0
    st.curvature = _curvature(config.model, strata, source.chunk_rows, st.cw) * top_weight
    if resume is not None:
        st.restore(resume)
    spec = st.spec
    ck = checkpointing or Checkpointing()
    counters, sums = st.counters, st.sums
    params = (st.theta, st.theta_eff, st.avg, st.gw, st.l1_q, st.l1_u, st.cw, kernel_classes)
    # gradient-noise statistics of every logging interval (DESIGN.md §2: B_simple, η/B)
    meter = NoiseMeter(n_rows=N, n_params=st.theta.size)
    assert meter.total is not None  # sized by n_params
    if resume is not None and "noise_total" in resume:  # the interval in progress, which --batch auto grows by
        meter.total[:], meter.sums[:] = resume["noise_total"], resume["noise_sums"]
    noise = (meter.total, meter.sums, np.zeros(st.theta.size))
    epoch_loss = float("nan")
    log = MetricsLog(metrics)
    compiling = _CompileTime()
    train_start = time.perf_counter()
    interval_start = last_checkpoint = train_start
    first_rows = int(st.rows_seen[0])

    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_progress is not None:
            on_progress(record)

    def diverged(epoch: int, reason: str = "the loss became not finite", t: int | None = None) -> DivergenceError:
        lr = config.lr
        if lr is None:
            assert st.hyper is not None  # set by the first window (or the checkpoint), before any update
            lr = float(st.hyper[LR0])
        fix = guard.advice(lr, config.lr is not None, config.optimizer, int(spec[BATCH]), config.standardize,
                           st.sample, list(source.features))
        return DivergenceError(f"training diverged at iteration {counters[T] + 1 if t is None else t} "
                               f"(epoch {epoch + 1}): {reason}; {fix}")

    def check_interval(epoch: int) -> None:
        """Stop when the interval's mean loss or the parameters have blown up (guard.py)."""
        loss = sums[LOSS] / sums[ROWS] if sums[ROWS] else 0.0
        reason = guard.divergence(loss, float(st.guard[guard.REFERENCE]), st.theta)
        if reason is not None:
            raise diverged(epoch, reason, int(counters[T]))

    def fold_interval() -> None:
        st.rows_seen[0] += int(sums[ROWS])
        st.epoch_sums[:] += sums[LOSS], sums[ROWS]
        sums[LOSS] = sums[ROWS] = 0.0

    def progress(epoch: int) -> dict[str, Any]:
        nonlocal interval_start
        now = time.perf_counter()
        t = int(counters[T])
        estimate = meter.close_interval()
        assert st.hyper is not None  # intervals close after updates, which need the step size
        emit({"event": "progress", "epoch": epoch + 1, "iteration": t,
              "rows_seen": int(st.rows_seen[0] + sums[ROWS]), "batch": int(spec[BATCH]),
              "lr": schedule_lr(int(spec[2]), st.hyper[LR0], t, config.power_t, config.warmup, total_steps or 0,
                                config.step_every, config.gamma),
              "total_iterations": total_steps, "loss": sums[LOSS] / max(sums[ROWS], 1.0),
              "rows_per_second": sums[ROWS] / max(now - interval_start, 1e-9), "seconds": now - train_start,
              **_noise_fields(estimate)})
        interval_start = now
        check_interval(epoch)
        fold_interval()
        return estimate

    def save_checkpoint() -> None:
        nonlocal last_checkpoint
        if ck.save is not None:
            ck.save({**st.arrays(), "noise_total": noise[0].copy(), "noise_sums": noise[1].copy()})
            emit({"event": "checkpoint", "iteration": int(counters[T]),
                  "rows_seen": int(st.rows_seen[0] + sums[ROWS])})
        last_checkpoint = time.perf_counter()

    def next_stop() -> int:
        t = int(counters[T])
        stops = [(t // config.log_every + 1) * config.log_every]
        if total_steps is not None:
            stops.append(total_steps)
        if ck.every:
            stops.append((t // ck.every + 1) * ck.every)
        if ck.stop is not None and ck.stop.is_set():
            stops.append(t + 1)  # finish the batch in progress, then stop
        return min(stops)

    def at_boundary(epoch: int) -> None:
        """After an update that ended a compiled call: log, checkpoint, or stop."""
        t = int(counters[T])
        if t % config.log_every == 0:
            estimate = progress(epoch)
            if config.batch == "auto":
                _grow_batch(st, estimate, config, N)
        if config.average and total_steps is None and spec[AVERAGE_FROM] == never:
            if st.rows_seen[0] + sums[ROWS] >= n_epochs * N / 2:  # the second half, in rows
                spec[AVERAGE_FROM] = t
        stopping = ck.stop is not None and ck.stop.is_set()
        timed = ck.seconds is not None and time.perf_counter() - last_checkpoint >= ck.seconds
        if stopping or timed or (ck.every and t % ck.every == 0):
            save_checkpoint()
        if stopping:
            raise RunStopped(f"stopped at iteration {t} of {total_steps}")

    best_val, stale, stopped_early = math.inf, 0, None

    def done() -> bool:
        if total_steps is not None and counters[T] >= total_steps:
            return True
        return config.steps is None and counters[EPOCH] >= n_epochs

    # the readers read ahead into the next epoch, up to the last one the run should reach
    # (only the read-ahead depends on it: a run that goes further starts its readers afresh)
    last_epoch = n_epochs - 1 if total_steps is None else math.ceil(total_steps / ipe) - 1
    unweighted = np.zeros(0)  # train_rows' sw when the data has no --weight column
    stream = EpochStream(source, config.model, config.seed, config.shuffle, plan.window_rows,
                         plan.buffer_bytes, plan.readers, np.dtype(config.dtype), strata, last_epoch)
    try:
        while not done():
            epoch = int(counters[EPOCH])
            # a checkpoint may fall inside a batch that straddles two windows: its rows so far
            # are in gw and FILLED, and the stream resumes right after them
            with closing(stream.epoch(epoch, int(counters[EPOCH_ROWS]))) as windows:  # left early: stops the readers
                for window, order in windows:
                    assert window.y is not None  # training windows are read with the target
                    if st.hyper is None:  # the first window: standardisation and step size from it
                        _start(st, window, config, init, N, B)
                    if epoch == 0:  # every row is seen once: lower the default step before a rare row hurts
                        _see_rows(st, window.X, window.y, config, N)
                    pos = 0
                    while pos < order.size and not done():
                        sw = unweighted if window.w is None else window.w
                        pos = train_rows(window.X, window.y, sw, order, pos, order.size, next_stop(), spec,
                                         st.hyper, params, st.opt_state, st.mean, st.scale, counters, sums, noise)
                        if counters[DIVERGED]:
                            raise diverged(epoch)
                        if counters[FILLED] == 0:
                            at_boundary(epoch)
                    if done():
                        break
            if counters[FILLED]:  # the epoch's short last batch
                finish_batch(spec, st.hyper, params, st.opt_state, st.mean, st.scale, counters, sums, noise)
                if counters[DIVERGED]:
                    raise diverged(epoch)
                if counters[T] % config.log_every == 0:
                    progress(epoch)
            check_interval(epoch)  # the updates since the last log line
            fold_interval()
            w = st.theta.reshape(blocks, d + 1)[:, :d]
            epoch_loss = st.epoch_sums[0] / max(st.epoch_sums[1], 1.0) + 0.5 * config.l2 * float((w * w).sum())
            if not (math.isfinite(epoch_loss) and np.isfinite(st.theta).all()):
                raise diverged(epoch, "the parameters overflowed", int(counters[T]))
            record = {"event": "epoch", "epoch": epoch + 1, "iteration": int(counters[T]),
                      "rows_seen": int(st.rows_seen[0]), "loss": epoch_loss, "batch": int(spec[BATCH]),
                      "seconds": time.perf_counter() - started}
            if validation is not None:
                record["val_loss"] = val_loss = validation_loss(validation, config, st)
                if val_loss < best_val - config.tol:
                    best_val, stale = val_loss, 0
                else:
                    stale += 1
                record["stop"] = config.early_stopping and stale >= config.patience
            emit(record)
            if record.get("stop"):  # no improvement by --tol for --patience epochs
                stopped_early = epoch + 1
                break
            if counters[EPOCH_ROWS] < N:  # stopped by --steps inside the epoch
                break
            counters[EPOCH] += 1
            counters[EPOCH_ROWS] = 0
            st.epoch_sums[:] = 0.0
            if not done():
                save_checkpoint()
    except SourceError:
        # the store failed between windows: keep what was trained so far, so that --resume
        # continues from here once the store is back
        if st.hyper is not None and not counters[DIVERGED]:
            save_checkpoint()
        raise
    finally:
        stream.close()  # joins the readers running ahead
        log.close()
        compiling.close()

    train_seconds = time.perf_counter() - train_start - compiling.seconds
    # set by the first window or the checkpoint: the run has no rows without them
    assert st.hyper is not None and st.mean is not None and st.scale is not None
    t = int(counters[T])
    summary = {
        "iterations": t,
        "epochs": t / ipe if config.batch != "auto" else int(st.rows_seen[0]) / N,
        "iterations_per_epoch": ipe if config.batch != "auto" else None,
        "rows_seen": int(st.rows_seen[0]),
        "loss": epoch_loss,
        "lr": float(st.hyper[LR0]),
        "rows_per_second": (int(st.rows_seen[0]) - first_rows) / max(train_seconds, 1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": time.perf_counter() - started,
    }
    theta = st.avg if counters[AVERAGED] else st.theta
    standardized = theta.reshape(blocks, d + 1)
    coef, intercept = raw_parameters(theta, blocks, st.mean, st.scale)
    metadata = {
        # execution-only options do not change the model, so the file does not record them
        "config": {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY},
        "data": {"url": full_source.url, "rows": n_rows(full_source), "fingerprint": full_source.fingerprint()},
        "target_type": getattr(source, "target_type", None),
        "coef_standardized": (standardized[:, :d] if blocks > 1 else standardized[0, :d]).tolist(),
        "intercept_standardized": standardized[:, d].tolist() if blocks > 1 else float(standardized[0, d]),
        # deterministic figures only: timings live in the summary and the metrics log
        "metrics": {k: summary[k] for k in ("iterations", "epochs", "rows_seen", "loss", "lr")},
    }
    if validation is not None:
        metadata["validation"] = {"split": split, "chunks": held_chunks, "rows": n_rows(validation),
                                  "stopped_early_at_epoch": stopped_early}
    if init is not None:
        metadata["init"] = {"data": init.metadata.get("data"), "lineage": init.metadata.get("lineage", []),
                            "metrics": init.metadata.get("metrics")}
    model = Model(model=config.model, features=list(source.features), target=target, coef=coef,
                  intercept=intercept, mean=st.mean, scale=st.scale, metadata=metadata,
                  classes=None if labels is None else label_values(labels, getattr(source, "target_type", None)))
    return FitResult(model, summary)


def _curvature(model: str, strata: NDArray[np.float64], chunk_rows: list[int], cw: NDArray) -> float:
    """The loss's curvature bound for the default step: class weights scale the loss.
    (Poisson's e^z, which grows to about y near the optimum, is weighted per row instead:
    ``guard.row_weights``.)"""
    return CURVATURE[model] * float(cw.max())


def split_validation(source: Source, fraction: float, seed: int) -> tuple[Source, ChunkSubset | RowSubset | None]:
    """(training part, validation part), chosen by the seed, so validation rows are never
    trained on and the split is the same on every resume.

    Whole chunks are held out when there are enough of them to come close to ``fraction``
    (``holds_whole_chunks``); otherwise ``fraction`` of every chunk's rows (a file with one
    row group, or a few).
    """
    if fraction == 0:
        return source, None
    n = len(source.chunk_rows)
    if not holds_whole_chunks(n, fraction):
        return split_rows(source, fraction, seed, SPLIT_ROWS)
    held = round(fraction * n)
    order = stream(seed, SPLIT).permutation(n)
    return ChunkSubset(source, sorted(order[held:])), ChunkSubset(source, sorted(order[:held]))


def raw_parameters(theta: NDArray, blocks: int, mean: NDArray, scale: NDArray):
    """coef and intercept in raw feature space: (d,) and a float, or (C, d) and (C,) for softmax."""
    d = theta.size // blocks - 1
    standardized = theta.reshape(blocks, d + 1)
    coef = standardized[:, :d] / scale
    intercept = standardized[:, d] - coef @ mean
    if blocks == 1:
        return coef[0], float(intercept[0])
    return coef, intercept


def validation_loss(validation: Source, config: FitConfig, st: _State) -> float:
    """Mean loss of the current parameters (the running average once it has started) on
    the held-out chunks, read one at a time; no penalty, as scikit-learn reports it. With
    sample weights, the weighted mean Σ w ℓ / Σ w (scikit-learn's metrics' sample_weight)."""
    assert st.spec is not None and st.mean is not None and st.scale is not None  # measured after an epoch
    theta = st.avg if st.counters[AVERAGED] else st.theta
    blocks = int(st.spec[BLOCKS])
    coef, intercept = raw_parameters(theta, blocks, st.mean, st.scale)
    param = config.epsilon if config.model == "huber" else config.quantile
    total, rows = 0.0, 0.0
    for c in range(len(validation.chunk_rows)):
        window = read_window(validation, np.array([c]), np.float64, True)
        assert window.y is not None  # read with the target
        y = window.y if blocks == 1 else np.searchsorted(np.asarray(st.classes), window.y)
        losses = row_loss(config.model, window.X @ coef.T + intercept, y, param)
        total += float(losses.sum() if window.w is None else losses @ window.w)
        rows += window.y.size if window.w is None else float(window.w.sum())
    return total / rows if rows > 0 else 0.0


class _CompileTime:
    """Seconds Numba spends compiling (not loading from its cache) while it is open: one-time
    work the run's rows/s must not count. With a cold cache it was 42 of the 44 s of
    `make demo`'s fit, which then reported 13,510 rows/s for a loop that runs 220,000.

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


def _batch_rows(config: FitConfig, N: int) -> int:
    """Rows per update: the number given, N for ``full``, the starting size for ``auto``."""
    if config.batch == "full":
        return N
    if config.batch == "auto":
        return min(config.batch_min, N)
    assert isinstance(config.batch, int)  # FitConfig makes any other value an int >= 1
    return min(config.batch, N)


def _grow_batch(st: _State, estimate: dict[str, Any], config: FitConfig, N: int) -> None:
    """The norm test (Byrd et al. 2012): grow B until the batch gradient's variance
    tr(Σ)/B is at most θ²‖G‖², i.e. B ≥ B_simple/θ². Never shrinks; at most N. With the
    default step size, η = 1/L_B follows the new batch size.

    When the interval's ‖G‖² cannot be told from zero (its estimate is not positive: the
    iterates wander in SGD's noise ball around the optimum), the noise dominates by
    definition and B doubles.
    """
    if not math.isfinite(estimate["trace_sigma"]):
        return
    assert st.spec is not None  # set by fit before training
    b_simple = estimate["b_simple"]
    if math.isfinite(b_simple) and estimate["grad_norm2"] > 0:
        wanted = math.ceil(b_simple / config.batch_theta**2)
    else:
        wanted = 2 * int(st.spec[BATCH])
    wanted = min(N, wanted)
    if wanted > st.spec[BATCH]:
        st.spec[BATCH] = wanted
        if config.lr is None:
            # set by the first window or the checkpoint (the batch grows after updates)
            assert st.hyper is not None and st.mean is not None and st.scale is not None
            if st.sample is None or st.sample_y is None:
                # drawn by _start and kept in checkpoints; one written before they kept it lacks it
                raise DataError("the checkpoint holds no step-size sample (it was written by an older "
                                "streamsgd); resume without --batch auto, or start afresh")
            st.hyper[LR0] = default_lr(config.model, st.sample, st.mean, st.scale, N, wanted, config.l2,
                                       st.curvature, guard.row_weights(config.model, st.sample_y),
                                       float(st.guard[guard.ROW_MAX]))


def _noise_fields(estimate: dict[str, Any]) -> dict[str, Any]:
    """The interval's noise figures for the metrics record (null where not estimable)."""
    keys = ("trace_sigma", "batch_grad_var", "grad_norm2", "b_simple", "temperature")
    shown = reported(estimate)  # a |G|² estimate <= 0 is null, never negative
    return {k: (float(shown[k]) if math.isfinite(shown[k]) else None) for k in keys}


def _start(st: _State, window: Window, config: FitConfig, init: Model | None, N: int, B: int) -> None:
    """Standardisation, step size and starting point, from the first window (or ``init``),
    its rows taken chunk after chunk: the figures do not depend on the shuffle's layout."""
    X, y, rows = window.X, window.y, window.slots
    assert y is not None and st.classes is not None  # a training window has the target; fit sets classes
    d = X.shape[1]
    if init is not None:  # its parameters in its standardised space, one block per class for softmax
        st.mean, st.scale = np.asarray(init.mean, dtype=np.float64), np.asarray(init.scale, dtype=np.float64)
        coef = np.asarray(init.coef, dtype=np.float64).reshape(-1, d)
        intercept = np.atleast_1d(np.asarray(init.intercept, dtype=np.float64))
        for c in range(coef.shape[0]):
            st.theta[c * (d + 1):c * (d + 1) + d] = coef[c] * st.scale
            st.theta[c * (d + 1) + d] = intercept[c] + float(coef[c] @ st.mean)
    else:
        st.mean, st.scale = standardization(X, config.standardize, rows)
    st.sample, st.sample_y = guard.sample_rows(X, y, order=rows)
    st.guard[guard.SMOOTH] = smoothness(config.model, st.sample, st.mean, st.scale, config.l2, st.curvature,
                                        guard.row_weights(config.model, st.sample_y))[0]
    if config.lr is None:
        lr0 = _default_step(st, config, N, B)
    else:  # the linear scaling rule, when asked: the given lr was tuned at the reference batch
        lr0 = config.lr * (B / config.lr_reference_batch if config.lr_reference_batch else 1.0)
    param = config.epsilon if config.model == "huber" else config.quantile
    st.hyper = np.array([lr0, config.power_t, config.l2, config.l1, param, config.beta1, config.beta2,
                         config.eps, config.gamma])
    for c in range(st.theta.size // (d + 1)):
        refresh_effective(st.theta[c * (d + 1):(c + 1) * (d + 1)], st.theta_eff[c * (d + 1):(c + 1) * (d + 1)],
                          st.mean, st.scale)
    coef, intercept = raw_parameters(st.theta, st.theta.size // (d + 1), st.mean, st.scale)
    st.guard[guard.REFERENCE] = guard.reference_loss(config.model, st.sample, st.sample_y, coef, intercept, param,
                                                     st.cw, st.classes)


def _default_step(st: _State, config: FitConfig, N: int, B: int) -> float:
    """``default_lr`` for the run's sample, worst row seen so far and optimizer."""
    # _start sets them before it asks for the step
    assert st.sample is not None and st.sample_y is not None and st.mean is not None and st.scale is not None
    return _for_optimizer(default_lr(config.model, st.sample, st.mean, st.scale, N, B, config.l2, st.curvature,
                                     guard.row_weights(config.model, st.sample_y), float(st.guard[guard.ROW_MAX])),
                          config)


def _for_optimizer(lr0: float, config: FitConfig) -> float:
    """A default step as the optimizer takes it: the heavy ball's step is η / (1 − β) in effect."""
    return lr0 * (1.0 - config.beta1) if config.optimizer in ("momentum", "nesterov") else lr0


def _see_rows(st: _State, X: NDArray, y: NDArray, config: FitConfig, N: int) -> None:
    """Track the largest row curvature of the first epoch's windows; when a window holds a
    row worse than any before (a rare one-hot column the first window's sample missed),
    lower the default step before training on it. Deterministic: a window's rows are a
    function of the seed, and a resumed window finds the maximum it already recorded."""
    top = guard.max_row_curvature(X, y, st.mean, st.scale, guard.row_weighting(config.model))
    if top <= st.guard[guard.ROW_MAX]:
        return
    st.guard[guard.ROW_MAX] = top
    if config.lr is None and math.isfinite(st.guard[guard.SMOOTH]):
        # fit sets spec; the first window (_start) or the checkpoint sets hyper
        assert st.spec is not None and st.hyper is not None
        c = CURVATURE[config.model] if st.curvature is None else st.curvature
        lr0 = _for_optimizer(batch_step(float(st.guard[guard.SMOOTH]), c * top + config.l2, N, int(st.spec[BATCH])),
                             config)
        st.hyper[LR0] = min(float(st.hyper[LR0]), lr0)


def _check_init(init: Model, source: Source, config: FitConfig) -> None:
    if init.model != config.model:
        raise UsageError(f"--init: the model is {init.model!r}, this run trains {config.model!r}; "
                         f"use --model {init.model} or start without --init")
    if list(init.features) != list(source.features) or init.target != source.target:
        raise UsageError(f"--init: the model was trained on features {init.features[:5]}… and target "
                         f"{init.target!r}, which differ from this data's; choose matching --features/--target")
    if init.model == "softmax" and np.shape(init.coef) != (len(init.classes_), len(source.features)):
        raise UsageError(f"--init: the softmax model's coef has shape {np.shape(init.coef)}, not (classes, features) = "
                         f"({len(init.classes_)}, {len(source.features)}); give a model file written by streamsgd fit")
