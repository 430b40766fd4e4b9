"""The training loop: plan → prefetch → kernel → update, with exact iteration counting.

An iteration is one update; an epoch is one full pass of ``ceil(N / B)`` iterations, the
short last batch counting as one (DESIGN.md §2.2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import FitConfig
from .errors import DataError, DivergenceError
from .kernels import GRADIENTS
from .metrics import Meter, MetricsLog, peak_rss_bytes
from .model import Model
from .optim import default_lr, learning_rate, sgd_step
from .prefetch import Prefetcher
from .shuffle import batch_segments, epoch_plan, iterations_per_epoch, row_order
from .sources import Source, n_rows
from .stats import check_labels, scan
from .windows import read_window, window_bytes

#: Without ``--epochs`` a run makes at least this many updates (SGD converges in updates,
#: not in passes), within [1, MAX_AUTO_EPOCHS] epochs.
MIN_AUTO_UPDATES = 3000
MAX_AUTO_EPOCHS = 1000

#: Share of --memory-limit for the two live windows (one trained on, one being filled);
#: the rest covers Arrow's decode buffers for the chunks in flight.
WINDOW_SHARE = 2 / 3


@dataclass(frozen=True)
class MemoryPlan:
    """How --memory-limit is spent: window size in rows and the bound on live windows."""

    window_rows: int
    buffer_bytes: int
    row_bytes: int

    @classmethod
    def for_source(cls, source: Source, config: FitConfig) -> "MemoryPlan":
        itemsize = np.dtype(config.dtype).itemsize
        # features + target in the buffer, plus the window's int64 row permutation
        row_bytes = (len(source.features) + 1) * itemsize + 8
        buffer_bytes = int(config.memory_limit * WINDOW_SHARE)
        return cls(max(1, buffer_bytes // 2 // row_bytes), buffer_bytes, row_bytes)


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

    if config.standardize:
        stats = scan(source, config.model, config.dtype, plan.window_rows, plan.buffer_bytes, config.readers)
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
    epoch_loss = float("nan")
    log = MetricsLog(metrics)
    meter = Meter()
    train_start = time.perf_counter()

    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_progress is not None:
            on_progress(record)

    def produce(chunks):
        window = read_window(source, chunks, dtype, True, pool)
        check_labels(config.model, source, window)
        return window

    try:
        for epoch in range(n_epochs):
            windows = epoch_plan(source.chunk_rows, config.seed, epoch, plan.window_rows, config.shuffle, strata)
            window_rows = [int(sum(source.chunk_rows[c] for c in chunks)) for chunks in windows]
            meter.reset_epoch()
            with ThreadPoolExecutor(config.readers) as pool, Prefetcher(
                windows, produce, lambda c: window_bytes(source, c, dtype, True), plan.buffer_bytes
            ) as stream:
                arriving = iter(stream)
                live: dict[int, tuple[Any, np.ndarray]] = {}
                for segments in batch_segments(window_rows, B):
                    gw[:] = 0.0
                    loss_sum = rsum = 0.0
                    rows = 0
                    for wi, start, stop in segments:
                        if wi not in live:
                            live[wi] = (next(arriving), row_order(window_rows[wi], config.seed, epoch, wi, config.shuffle))
                        window, order = live[wi]
                        ls, rs = kernel(window.X, window.y, order[start:stop], w_eff, b_eff, gw)
                        loss_sum += ls
                        rsum += rs
                        rows += stop - start
                    last, _, end = segments[-1]
                    for wi in [k for k in live if k < last or (k == last and end == window_rows[k])]:
                        stream.release(live.pop(wi)[0].nbytes)
                    if not math.isfinite(loss_sum):
                        raise DivergenceError(
                            f"training diverged at iteration {t + 1} (epoch {epoch + 1}): the loss became "
                            f"{loss_sum}; lower --lr (it was {lr0:.4g}) or keep --standardize on"
                        )
                    t += 1
                    b, b_eff = sgd_step(
                        w, b, gw, rsum, rows, mean, scale, config.l2, learning_rate(config.lr_schedule, lr0, t, config.power_t), w_eff
                    )
                    rows_seen += rows
                    meter.add(loss_sum, rows)
                    if t % config.log_every == 0:
                        emit({"event": "progress", "epoch": epoch + 1, "iteration": t, "rows_seen": rows_seen,
                              "lr": learning_rate(config.lr_schedule, lr0, t, config.power_t),
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
