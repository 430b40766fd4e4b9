"""The trainer's entry point: setup → run → model, with exact iteration counting.

:func:`fit` checks and prepares the run (:mod:`.setup`), trains it (:mod:`.run`) and turns
its state into a :class:`~streamsgd.persist.model.Model` and a summary of the run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..compute.loop import AVERAGED, LR0, T
from ..config import EXECUTION_ONLY, FitConfig
from ..persist.model import Model
from ..sources import Source, n_rows
from .classes import label_values
from .hashed import resolve_defaults, model_fields
from .inputs import Checkpointing, FitResult, Hooks, WarmStart
from .metrics import peak_rss_bytes
from .run import Run
from .setup import Setup, prepare, split_validation
from .shards import ShardedRun
from .stepsize import raw_parameters

# the run's arguments and the validation split, for callers that import this module
__all__ = ["Checkpointing", "FitResult", "Hooks", "WarmStart", "fit", "split_validation"]


def fit(
    source: Source,
    config: FitConfig | None = None,
    *,
    warm: WarmStart | None = None,
    hooks: Hooks | None = None,
    resume: dict[str, NDArray] | None = None,
) -> FitResult:
    """Train a model on ``source`` by mini-batch SGD in fixed memory.

    Parameters
    ----------
    source : a :class:`~streamsgd.sources.Source` (Parquet, Zarr, arrays).
    config : the options (default: :class:`~streamsgd.config.FitConfig`'s defaults).
    warm : where to start instead of from zero (a model, its update count, its classes).
    hooks : a metrics file, a progress callback, checkpointing and a stop flag.
    resume : the state arrays of a checkpoint of this same run; training continues from
        its update count exactly as if it had never stopped.
    """
    started = time.perf_counter()
    hooks = hooks or Hooks()
    config, why = resolve_defaults(source, config or FitConfig())
    if config.hidden:
        return _fit_mlp(source, config, warm or WarmStart(), hooks, resume, started, why)
    setup = prepare(source, config, warm or WarmStart(), resume)
    if config.sharded or hooks.backend is not None:
        run: Run = ShardedRun(setup, hooks, resume, started, hooks.backend)
    else:
        run = Run(setup, hooks, resume, started)
    run.train()
    return _result(run, why)


def _fit_mlp(source: Source, config: FitConfig, warm: WarmStart, hooks: Hooks,
             resume: dict[str, NDArray] | None, started: float, why: str) -> FitResult:
    """An MLP run (``config.hidden``): the same setup and summary, the layers in the model."""
    from .mlp import MLPRun, check_mlp

    check_mlp(config, warm.init)
    run = MLPRun(prepare(source, config, warm, None), hooks, resume, started)
    run.train()
    result = _result(run, why)
    result.model.layers = run.layers()
    result.model.metadata["mlp"] = {"hidden": list(config.hidden), "activation": config.activation}
    result.model.embedding = run.embedding_table()
    encoding = getattr(run.setup.full_source, "encoding", None)
    if result.model.embedding is not None and encoding is not None:  # the hashing predict must repeat
        result.model.metadata["categorical"] = encoding.to_json()
    return result


def _summary(run: Run) -> dict[str, Any]:
    """The run's figures: counts, the final loss and step, speed and peak memory."""
    st, config, schedule = run.st, run.config, run.schedule
    assert st.hyper is not None  # set by the first window or the checkpoint: the run has no rows without it
    t = int(st.counters[T])
    auto = config.batch == "auto"
    return {
        "iterations": t,
        "epochs": t / schedule.ipe if not auto else int(st.rows_seen[0]) / schedule.N,
        "iterations_per_epoch": schedule.ipe if not auto else None,
        "rows_seen": int(st.rows_seen[0]),
        "skipped_rows": int(getattr(run.setup.full_source, "skipped_rows", 0)),  # null targets
        "loss": run.epoch_loss,
        "lr": float(st.hyper[LR0]),
        "rows_per_second": (int(st.rows_seen[0]) - run.first_rows) / max(run.train_seconds, 1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": time.perf_counter() - run.started,
        **({"sync_every": int(st.sync_every[0])} if config.sync == "models" else {}),
    }


def _stored_classes(setup: Setup, target_type: str | None) -> NDArray | None:
    """The labels the model keeps: softmax's classes, or a binary classifier's two text labels."""
    labels = setup.labels if setup.labels is not None else setup.text_classes
    return None if labels is None else label_values(labels, target_type)


def _result(run: Run, why: str) -> FitResult:
    """The model in raw feature space, its metadata (options, data, lineage) and the summary
    (with the optimizer that ran and ``why``: ``resolve_defaults``'s line)."""
    setup, st, config = run.setup, run.st, run.config
    summary = {**_summary(run), "optimizer": config.optimizer, "optimizer_why": why}
    assert st.mean is not None and st.scale is not None  # set by the first window or the checkpoint
    blocks, d = setup.blocks, len(setup.source.features)
    theta = st.avg if st.counters[AVERAGED] else st.theta
    if config.hidden:  # an MLP: its layers follow (_fit_mlp); no linear part to report
        theta = np.zeros(blocks * (d + 1))
    standardized = theta.reshape(blocks, d + 1)
    coef, intercept = raw_parameters(theta, blocks, st.mean, st.scale)
    full, target_type = setup.full_source, setup.source.target_type
    metadata: dict[str, Any] = {
        # execution-only options do not change the model, so the file does not record them
        "config": {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}
        | ({"sync_every": int(st.sync_every[0])} if config.sync == "models" else {}),  # auto's choice
        "data": {"url": full.url, "rows": n_rows(full), "fingerprint": full.fingerprint()},
        "target_type": target_type,
        **({} if config.hidden else {
            "coef_standardized": (standardized[:, :d] if blocks > 1 else standardized[0, :d]).tolist(),
            "intercept_standardized": standardized[:, d].tolist() if blocks > 1 else float(standardized[0, d])}),
        # deterministic figures only: timings live in the summary and the metrics log
        "metrics": {k: summary[k] for k in ("iterations", "epochs", "rows_seen", "loss", "lr")},
    }
    means = getattr(full, "imputation", None)  # a Parquet source's numeric nulls (sources.missing)
    if means:
        metadata["missing"] = {"means": means, "indicators": list(getattr(full, "indicated", []))}
    if setup.validation is not None:
        metadata["validation"] = {"split": setup.split, "chunks": setup.held_chunks,
                                  "rows": n_rows(setup.validation), "stopped_early_at_epoch": run.stopped_early}
    init = setup.init
    if init is not None:
        metadata["init"] = {"data": init.metadata.get("data"), "lineage": init.metadata.get("lineage", []),
                            "metrics": init.metadata.get("metrics")}
    assert full.target is not None  # setup refuses data without a target
    weights, encoding = model_fields(full, st)  # categorical columns' hashed weights (train.hashed)
    metadata.update(encoding)
    model = Model(model=config.model, features=list(setup.source.features), target=full.target, coef=coef,
                  intercept=intercept, mean=st.mean, scale=st.scale, metadata=metadata,
                  classes=_stored_classes(setup, target_type), hashed=weights)
    return FitResult(model, summary)
