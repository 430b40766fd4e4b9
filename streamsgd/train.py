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

from .batches import BatchStream
from .config import FitConfig
from .errors import DataError, DivergenceError, UsageError
from .kernels import GRADIENTS
from .metrics import Meter, MetricsLog, peak_rss_bytes
from .model import Model
from .optim import default_lr, learning_rate, sgd_step
from .shuffle import epoch_plan, iterations_per_epoch
from .sources import Source, n_rows
from .stats import scan
from .windows import read_window, return_freed_buffers_to_os

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


def batch_gradient(kernel, segments, w_eff, b_eff, gw) -> tuple[float, float, int]:
    """Sum the kernel over a batch's segments into ``gw`` (zeroed first).

    Returns (summed loss, summed residual, rows). A function of its own so that no
    reference to a window's buffers outlives the batch in the caller's frame.
    """
    gw[:] = 0.0
    loss_sum = rsum = 0.0
    rows = 0
    for X, y, idx in segments:
        loss, r = kernel(X, y, idx, w_eff, b_eff, gw)
        loss_sum += loss
        rsum += r
        rows += idx.size
    return loss_sum, rsum, rows


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
    source : a :class:`~streamsgd.sources.Source` (Parquet, arrays).
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
    dtype = np.dtype(config.dtype)
    return_freed_buffers_to_os()

    if config.standardize:
        stats = scan(source, config.model, config.dtype, plan.window_rows, plan.buffer_bytes, plan.readers)
        mean, scale, sample, strata = stats.mean, stats.scale, stats.sample, stats.chunk_target_mean
    else:
        strata = None
        mean, scale = np.zeros(d), np.ones(d)
        first = epoch_plan(source.chunk_rows, 0, 0, plan.window_rows, shuffle=False)[0][:1]
        sample = read_window(source, first, dtype, True).X[:4096]

    B = min(config.batch, N)
    ipe = iterations_per_epoch(N, B)
    if config.steps is not None:
        total_steps = config.steps
    else:
        total_steps = (config.epochs or auto_epochs(ipe)) * ipe
    n_epochs = math.ceil(total_steps / ipe)
    lr0 = config.lr if config.lr is not None else default_lr(config.model, sample, mean, scale, N, B, config.l2)

    kernel = GRADIENTS[config.model]
    w = np.zeros(d)
    b = 0.0
    w_eff = w / scale
    b_eff = 0.0
    gw = np.zeros(d)
    t = 0
    rows_seen = 0
    # Polyak-Ruppert tail averaging: the mean of the second half of the iterates cancels
    # most of the constant step's noise (its error shrinks like 1/updates averaged)
    average_from = total_steps // 2 if config.average else total_steps
    w_avg, b_avg, averaged = np.zeros(d), 0.0, 0
    epoch_loss = float("nan")
    log = MetricsLog(metrics)
    meter = Meter()
    train_start = time.perf_counter()

    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_progress is not None:
            on_progress(record)

    stream = BatchStream(source, config.model, B, config.seed, config.shuffle, plan.window_rows,
                         plan.buffer_bytes, plan.readers, dtype, strata)
    try:
        for epoch in range(n_epochs):
            meter.reset_epoch()
            with closing(stream.epoch(epoch)) as batches:  # closing joins the reader thread
                for segments in batches:
                    loss_sum, rsum, rows = batch_gradient(kernel, segments, w_eff, b_eff, gw)
                    if not math.isfinite(loss_sum):
                        raise DivergenceError(
                            f"training diverged at iteration {t + 1} (epoch {epoch + 1}): the loss became "
                            f"{loss_sum}; lower --lr (it was {lr0:.4g}) or keep --standardize on"
                        )
                    t += 1
                    lr = learning_rate(config.lr_schedule, lr0, t, config.power_t)
                    b, b_eff = sgd_step(w, b, gw, rsum, rows, mean, scale, config.l2, lr, w_eff)
                    if t > average_from:
                        averaged += 1
                        w_avg += (w - w_avg) / averaged
                        b_avg += (b - b_avg) / averaged
                    rows_seen += rows
                    meter.add(loss_sum, rows)
                    if t % config.log_every == 0:
                        emit({"event": "progress", "epoch": epoch + 1, "iteration": t, "rows_seen": rows_seen,
                              "lr": lr,
                              "total_iterations": total_steps, **meter.interval_record()})
                        meter.reset_interval()
                    if t == total_steps:
                        break
            penalty = 0.5 * config.l2 * float(w @ w)
            epoch_loss = meter.epoch_loss / max(meter.epoch_rows, 1) + penalty
            if not (math.isfinite(epoch_loss) and math.isfinite(b)):
                raise DivergenceError(
                    f"training diverged in epoch {epoch + 1}: the parameters overflowed; lower --lr "
                    f"(it was {lr0:.4g}) or keep --standardize on"
                )
            emit({"event": "epoch", "epoch": epoch + 1, "iteration": t, "rows_seen": rows_seen,
                  "loss": epoch_loss, "seconds": time.perf_counter() - started})
    finally:
        log.close()

    train_seconds = time.perf_counter() - train_start
    summary = {
        "iterations": t,
        "epochs": t / ipe,
        "iterations_per_epoch": ipe,
        "rows_seen": rows_seen,
        "loss": epoch_loss,
        "lr": lr0,
        "rows_per_second": rows_seen / max(train_seconds, 1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": time.perf_counter() - started,
    }
    if averaged:
        w, b = w_avg, b_avg
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
