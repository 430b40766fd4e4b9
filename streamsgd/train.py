"""The training loop: plan → prefetch → kernel → update, with exact iteration counting.

An iteration is one update; an epoch is one full pass of ``ceil(N / B)`` iterations, the
short last batch counting as one (DESIGN.md §2.2).
"""

from __future__ import annotations

import math
import time
from contextlib import closing
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import FitConfig
from .errors import DataError, DivergenceError, UsageError
from .kernels import LOSSES
from .loop import AVERAGED, DIVERGED, FILLED, LOSS, LR0, N_COUNTERS, N_SUMS, ROWS, T, finish_batch, train_rows
from .metrics import MetricsLog, peak_rss_bytes
from .model import Model
from .optim import SCHEDULES, default_lr, learning_rate
from .shuffle import iterations_per_epoch
from .sources import Source, n_rows
from .stats import chunk_target_means, row_sample, standardization
from .stream import EpochStream
from .windows import return_freed_buffers_to_os

#: Without ``--epochs`` a run makes at least this many updates (SGD converges in updates,
#: not in passes), within [1, MAX_AUTO_EPOCHS] epochs.
MIN_AUTO_UPDATES = 20_000
MAX_AUTO_EPOCHS = 20_000

#: Share of --memory-limit for the shuffle windows; the rest is for decoding.
WINDOW_SHARE = 2 / 3

#: While decoding a row group, pyarrow's memory pool peaks at 2.5-2.8x the row group's
#: uncompressed size (raw pages plus decoded arrays; measured with pyarrow 26, plain and
#: dictionary encodings). Each reader thread in flight is budgeted this much.
DECODE_FACTOR = 3


@dataclass(frozen=True)
class MemoryPlan:
    """How --memory-limit is spent: two thirds for shuffle windows (up to three alive: one
    or two trained on, one being filled), one third for the reader threads' decode buffers.

    The window size depends only on the limit and the row width, never on the number of
    readers, so the shuffle plan (and the model) is the same whatever ``--readers`` is;
    fewer reader threads run when the decode share cannot pay for them. A limit too
    small for one reader, or for a window of the largest chunk, is refused.
    """

    window_rows: int
    buffer_bytes: int
    row_bytes: int
    readers: int

    @classmethod
    def for_source(cls, source: Source, config: FitConfig) -> "MemoryPlan":
        itemsize = np.dtype(config.dtype).itemsize
        # features + target in the buffer, the window's int64 row permutation, and the
        # one-byte masks of the label and finite checks made on every window
        row_bytes = (len(source.features) + 1) * itemsize + 8 + 4
        buffer_bytes = int(config.memory_limit * WINDOW_SHARE)
        # three windows fit: the two a batch may straddle, plus the one the prefetcher may
        # start while the trainer waits (see prefetch.ByteBudget)
        window_rows = max(1, buffer_bytes // 3 // row_bytes)
        decode = DECODE_FACTOR * max(source.chunk_bytes, default=0)
        reserve = config.memory_limit - buffer_bytes
        readers = min(config.readers, reserve // decode) if decode else config.readers
        biggest = max(source.chunk_rows, default=0)
        if readers < 1 or biggest > window_rows:
            need = int(max(decode / (1 - WINDOW_SHARE), 3 * biggest * row_bytes / WINDOW_SHARE)) + 1
            raise UsageError(
                f"--memory-limit {config.memory_limit} bytes is too small for this data: its largest row "
                f"group ({biggest} rows) needs at least {need} bytes to decode and shuffle; raise "
                "--memory-limit or rewrite the data with smaller row groups"
            )
        return cls(window_rows, buffer_bytes, row_bytes, int(readers))


@dataclass
class FitResult:
    model: Model
    summary: dict[str, Any]


def auto_epochs(iters_per_epoch: int) -> int:
    return max(1, min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_UPDATES / iters_per_epoch)))


def fit(
    source: Source,
    config: FitConfig | None = None,
    *,
    metrics: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> FitResult:
    """Train a model on ``source`` by mini-batch SGD in fixed memory.

    Parameters
    ----------
    source : a :class:`~streamsgd.sources.Source` (Parquet, Zarr, arrays).
    config : the options; keyword ``options`` override its fields.
    metrics : path of a JSON-lines file to append progress and epoch records to.
    on_progress : called with each record as it is written (the CLI's progress bar).
    """
    config = replace(config or FitConfig(), **options)
    started = time.perf_counter()
    N = n_rows(source)
    if N == 0:
        raise DataError(f"{source.url}: the data set has no rows")
    if source.target is None:
        raise DataError(f"{source.url}: training needs a target column; set --target")
    d = len(source.features)
    plan = MemoryPlan.for_source(source, config)
    return_freed_buffers_to_os()
    strata = chunk_target_means(source, config.model, plan.readers)

    B = min(config.batch, N)
    ipe = iterations_per_epoch(N, B)
    if config.steps is not None:
        total_steps = config.steps
    else:
        total_steps = (config.epochs or auto_epochs(ipe)) * ipe
    n_epochs = math.ceil(total_steps / ipe)
    # Polyak-Ruppert tail averaging: the mean of the second half of the iterates cancels
    # most of the constant step's noise (its error shrinks like 1/updates averaged)
    average_from = total_steps // 2 if config.average else total_steps
    spec = np.array([LOSSES[config.model], B, SCHEDULES[config.lr_schedule], average_from], dtype=np.int64)
    theta, theta_eff, avg, gw = (np.zeros(d + 1) for _ in range(4))
    counters = np.zeros(N_COUNTERS, dtype=np.int64)
    sums = np.zeros(N_SUMS)
    mean = scale = hyper = None
    rows_seen = 0
    epoch_sums = np.zeros(2)  # loss and rows of the epoch's completed intervals
    epoch_loss = float("nan")
    log = MetricsLog(metrics)
    train_start = time.perf_counter()
    interval_start = train_start

    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_progress is not None:
            on_progress(record)

    def diverged(epoch: int) -> DivergenceError:
        return DivergenceError(
            f"training diverged at iteration {counters[T] + 1} (epoch {epoch + 1}): the loss became "
            f"not finite; lower --lr (it was {hyper[LR0]:.4g}) or keep --standardize on"
        )

    def fold_interval() -> None:
        nonlocal rows_seen
        rows_seen += int(sums[ROWS])
        epoch_sums[:] += sums[LOSS], sums[ROWS]
        sums[LOSS] = sums[ROWS] = 0.0

    def progress(epoch: int) -> None:
        nonlocal interval_start
        now = time.perf_counter()
        t = int(counters[T])
        emit({"event": "progress", "epoch": epoch + 1, "iteration": t, "rows_seen": rows_seen + int(sums[ROWS]),
              "lr": learning_rate(config.lr_schedule, hyper[LR0], t, config.power_t),
              "total_iterations": total_steps, "loss": sums[LOSS] / max(sums[ROWS], 1.0),
              "rows_per_second": sums[ROWS] / max(now - interval_start, 1e-9), "seconds": now - train_start})
        interval_start = now
        fold_interval()

    stream = EpochStream(source, config.model, config.seed, config.shuffle, plan.window_rows,
                         plan.buffer_bytes, plan.readers, np.dtype(config.dtype), strata)
    try:
        for epoch in range(n_epochs):
            epoch_sums[:] = 0.0
            with closing(stream.epoch(epoch)) as windows:  # closing joins the reader threads
                for window, order in windows:
                    if hyper is None:  # the first window: standardisation and step size from it
                        mean, scale = standardization(window.X, config.standardize)
                        lr0 = config.lr if config.lr is not None else default_lr(
                            config.model, row_sample(window.X), mean, scale, N, B, config.l2)
                        hyper = np.array([lr0, config.power_t, config.l2])
                        theta_eff[:d] = theta[:d] / scale
                    pos = 0
                    while pos < order.size and counters[T] < total_steps:
                        stop_at = min(total_steps, (counters[T] // config.log_every + 1) * config.log_every)
                        pos = train_rows(window.X, window.y, order, pos, order.size, stop_at, spec, hyper,
                                         theta, theta_eff, avg, gw, mean, scale, counters, sums)
                        if counters[DIVERGED]:
                            raise diverged(epoch)
                        if counters[T] == stop_at:
                            progress(epoch)
                    if counters[T] == total_steps:
                        break
            if counters[FILLED]:  # the epoch's short last batch
                finish_batch(spec, hyper, theta, theta_eff, avg, gw, mean, scale, counters, sums)
                if counters[DIVERGED]:
                    raise diverged(epoch)
                if counters[T] % config.log_every == 0:
                    progress(epoch)
            fold_interval()
            w, b = theta[:d], theta[d]
            epoch_loss = epoch_sums[0] / max(epoch_sums[1], 1.0) + 0.5 * config.l2 * float(w @ w)
            if not (math.isfinite(epoch_loss) and math.isfinite(b)):
                raise DivergenceError(
                    f"training diverged in epoch {epoch + 1}: the parameters overflowed; lower --lr "
                    f"(it was {hyper[LR0]:.4g}) or keep --standardize on"
                )
            emit({"event": "epoch", "epoch": epoch + 1, "iteration": int(counters[T]), "rows_seen": rows_seen,
                  "loss": epoch_loss, "seconds": time.perf_counter() - started})
    finally:
        log.close()

    train_seconds = time.perf_counter() - train_start
    t = int(counters[T])
    summary = {
        "iterations": t,
        "epochs": t / ipe,
        "iterations_per_epoch": ipe,
        "rows_seen": rows_seen,
        "loss": epoch_loss,
        "lr": float(hyper[LR0]),
        "rows_per_second": rows_seen / max(train_seconds, 1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": time.perf_counter() - started,
    }
    if counters[AVERAGED]:
        theta = avg
    w, b = theta[:d], float(theta[d])
    coef = w / scale
    model = Model(
        model=config.model,
        features=list(source.features),
        target=source.target,
        coef=coef,
        intercept=float(b - coef @ mean),
        mean=mean,
        scale=scale,
        metadata={
            # execution-only options do not change the model, so the file does not record them
            "config": {k: v for k, v in config.to_dict().items() if k not in ("readers", "log_every")},
            "data": {"url": source.url, "rows": N, "fingerprint": source.fingerprint()},
            "target_type": getattr(source, "target_type", None),
            "coef_standardized": w.tolist(),
            "intercept_standardized": b,
            # deterministic figures only: timings live in the summary and the metrics log
            "metrics": {k: summary[k] for k in ("iterations", "epochs", "rows_seen", "loss", "lr")},
        },
    )
    return FitResult(model, summary)
