"""Choosing the batch size on the machine and data at hand: the engine of ``streamsgd tune-batch``.

DESIGN.md §2.9 and §2.13 as measurements:

* **Time per iteration** T_iter(b) = τ_f + τ_d·b: a fixed cost per update (Python, the
  update, the loop) and a cost per row (reading, decoding, the kernel). Both are timed on
  this machine by short runs of the real trainer at several batch sizes, and fitted by
  least squares on relative error (the small batches pin τ_f, the large ones τ_d).
* **Iterations to a target** K(b) = N_iter + C_var / b. After McCandlish et al. 2018,
  C_var / N_iter is the gradient noise scale, estimated by B_simple = tr(Σ)/|G|² (see
  :mod:`streamsgd.noise`), measured in one pass at the parameters of the best trial. The
  total time K(b)·T_iter(b) is smallest at b_opt = sqrt(C_var·τ_f / (N_iter·τ_d)).
* **Diminishing returns**: short trials over a grid of B, each seeing the same number of
  rows, give validation losses roughly linear in 1/B: L(B) ≈ a + c/B. Doubling B gains
  c/(2B); the knee is the batch where that gain falls below ``min_gain``·a.

Validation uses held-out whole chunks (so no row of a chunk used for training is ever
scored) or a separate validation source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .inference import evaluate
from ..config import FitConfig
from ..sources.missing import impute_nulls, skip_null_targets
from ..errors import UsageError
from ..compute.codes import LOSSES, SOFTMAX
from ..compute.losses import accumulate
from ..persist.model import Model
from ..plan.rng import HOLDOUT, HOLDOUT_ROWS, NOISE_CHUNKS, NOISE_ROWS, stream
from ..compute.noise import NoiseMeter, reported
from ..sources.subset import ChunkSubset, holds_whole_chunks, split_rows  # ChunkSubset re-exported: tune's split
from ..compute.optim import standardized_gradient
from .plot import plot_tuning
from ..sources import Source, n_rows
from ..train import Hooks, fit
from ..train.setup import plan_memory
from ..train.hashed import resolve_defaults
from ..pipeline.windows import hashed_columns, read_window
from ..sources.validate import check_target

__all__ = ["ChunkSubset", "fit_inverse_batch", "fit_iteration_time", "measure_noise", "optimal_batch",
           "plot_tuning", "TuneOptions", "tune"]

DEFAULT_TRIAL_BATCHES = (16, 32, 64, 128, 256, 512, 1024)
DEFAULT_TIMING_BATCHES = (16, 64, 256, 1024, 4096)


def fit_iteration_time(batches: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """(τ_f, τ_d) of T_iter(b) = τ_f + τ_d·b, least squares on relative error.

    Weighting each point by 1/T makes the fit care about the small batches' times (which
    pin τ_f) as much as about the large ones (which pin τ_d). Raw least-squares values;
    either may come out negative on a noisy machine.
    """
    b = np.asarray(batches, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if b.size < 2 or np.unique(b).size < 2:
        raise UsageError("timing needs at least two different batch sizes")
    A = np.column_stack([np.ones_like(b), b]) / t[:, None]
    (tau_f, tau_d), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    return float(tau_f), float(tau_d)


def fit_inverse_batch(batches: Sequence[int], losses: Sequence[float]) -> tuple[float, float]:
    """(a, c) of L(B) ≈ a + c/B by least squares: a is the large-batch limit."""
    inv = 1.0 / np.asarray(batches, dtype=np.float64)
    L = np.asarray(losses, dtype=np.float64)
    if inv.size < 2 or np.unique(inv).size < 2:
        raise UsageError("the loss fit needs trials at two or more batch sizes")
    (a, c), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(inv), inv]), L, rcond=None)
    return float(a), float(c)


def knee_batch(a: float, c: float, min_gain: float) -> float:
    """Smallest B where doubling it gains less than ``min_gain`` of the loss: c/(2B) < min_gain·a."""
    if c <= 0:
        return 1.0  # larger batches do not help at all
    scale = a if a > 0 else c  # a loss level to measure the gain against
    return c / (2.0 * min_gain * scale)


def optimal_batch(c_var: float, n_iter: float, tau_f: float, tau_d: float) -> float:
    """b_opt = sqrt(C_var·τ_f / (N_iter·τ_d)), the minimum of (N_iter + C_var/b)(τ_f + τ_d·b)."""
    if not (c_var > 0 and n_iter > 0 and tau_f > 0 and tau_d > 0):
        return math.nan
    return math.sqrt(c_var * tau_f / (n_iter * tau_d))


def _run(source: Source, config: FitConfig, batch: int, steps: int, log_every: int) -> tuple[Any, list[dict]]:
    records: list[dict[str, Any]] = []
    result = fit(source, replace(config, batch=batch, steps=steps, epochs=None, log_every=log_every),
                 hooks=Hooks(on_progress=lambda r: records.append(r) if r.get("event") == "progress" else None))
    return result, records


def time_iterations(source: Source, config: FitConfig, batches: Sequence[int], rows: int,
                    min_steps: int = 64, repeats: int = 2) -> list[dict[str, Any]]:
    """Seconds per iteration at each batch size, amortised over the same rows for every b.

    Each run logs about nine progress records; T_iter is the time from the first record to
    the last over the updates between them. That span leaves out the costs paid once per
    run (standardisation, thread start, the first window's read) but keeps the reads of
    later windows and epochs, which are paid per row. The fastest of ``repeats`` runs is
    kept: interference from other processes only ever adds time.
    """
    out = []
    for b in batches:
        steps = max(min_steps, math.ceil(rows / b))
        best = math.inf
        for _ in range(repeats):
            result, records = _run(source, config, b, steps, max(1, steps // 9))
            if len(records) >= 2 and records[-1]["iteration"] > records[0]["iteration"]:
                first, last = records[0], records[-1]
                per = (last["seconds"] - first["seconds"]) / (last["iteration"] - first["iteration"])
            else:
                s = result.summary
                per = s["rows_seen"] / max(s["rows_per_second"], 1e-12) / max(s["iterations"], 1)
            best = min(best, float(per))
        out.append({"batch": int(b), "steps": steps, "seconds_per_iteration": best})
    return out


def measure_noise(source: Source, model: Model, l2: float, batch: int, max_rows: int, seed: int,
                  dtype: str = "float64") -> dict[str, Any]:
    """tr(Σ), |G|² and B_simple at the parameters of ``model``, in the optimizer's (standardised) space.

    Reads randomly chosen whole chunks, up to ``max_rows`` rows, into one buffer; its rows
    are the population. One pass over a random permutation cut into disjoint batches of
    ``batch`` rows feeds a :class:`~streamsgd.noise.NoiseMeter` with the sampling factor of
    that population: the mean of all batches is then (nearly) its exact gradient.
    """
    order = stream(seed, NOISE_CHUNKS).permutation(len(source.chunk_rows))
    chosen: list[int] = []
    rows = 0
    for c in order:
        if chosen and rows + source.chunk_rows[c] > max_rows:
            continue
        chosen.append(int(c))
        rows += source.chunk_rows[c]
    window = read_window(source, np.array(chosen), np.dtype(dtype), True)
    assert window.y is not None  # read with the target
    check_target(source, model.model, window.y, source.url)
    n = window.X.shape[0]
    b = max(1, min(batch, n // 2))
    perm = stream(seed, NOISE_ROWS).permutation(n)
    loss = LOSSES[model.model]
    if loss == SOFTMAX:
        raise UsageError("tune-batch measures the gradient noise of one-output models; softmax is not supported")
    w_eff = np.ascontiguousarray(model.coef, dtype=np.float64)
    theta = np.append(w_eff * model.scale, model.intercept + w_eff @ model.mean)  # standardised
    gw = np.zeros(theta.size)
    g = np.empty(theta.size)
    meter = NoiseMeter(n_rows=n)
    for k in range(n // b):
        gw[:] = 0.0
        _, gw[-1] = accumulate(loss, window.X, window.y, perm[k * b:(k + 1) * b], w_eff, model.intercept, gw[:-1])
        standardized_gradient(gw, float(b), model.mean, model.scale, l2, theta, g)
        meter.add(g, b)
    return {**meter.estimate(), "noise_rows": n}


@dataclass(frozen=True)
class TuneOptions:
    """What the tuner tries, beside the training options.

    batches : the trial grid of B.
    timing_batches : batch sizes timed for T_iter(b).
    trial_rows : rows each trial sees (the same for every B, so equal compute); default
        one pass over the training chunks.
    timing_rows : rows each timing run processes (at least 64 updates).
    holdout : without a validation source, this fraction of the chunks is held out, chosen
        at random, or of every chunk's rows when there are too few chunks (``holds_whole_chunks``).
    min_gain : the knee is where doubling B improves the validation loss by less than
        this fraction of its large-batch limit.
    noise_batch, noise_rows : batch size and rows of the noise pass (at most one shuffle
        window under the memory limit).
    average : Polyak averaging in the trials; off by default, so the trials' final iterates
        show the noise each batch size leaves.
    """

    batches: Sequence[int] = DEFAULT_TRIAL_BATCHES
    timing_batches: Sequence[int] = DEFAULT_TIMING_BATCHES
    trial_rows: int | None = None
    timing_rows: int = 200_000
    holdout: float = 0.2
    min_gain: float = 0.01
    noise_batch: int = 32
    noise_rows: int = 262_144
    average: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_gain < 1:
            raise UsageError(f"min_gain: expected a fraction in (0, 1); got {self.min_gain!r}")


def _dense_only(*sources: Source | None) -> None:
    """Leave categorical columns out, with the reason: the noise meter reads the dense block alone."""
    for data in sources:
        if data is not None and hashed_columns(data):
            data.skip_categorical("categorical: tune-batch measures dense columns only; "  # type: ignore[attr-defined]
                                  "fit takes it")


def _prepare(source: Source, validation: Source | None, config: FitConfig) -> None:
    """Refuse data tuning cannot use; leave out rows without a target and impute numeric
    nulls as fit does (the training data's means, for a --validation set too)."""
    if source.target is None:
        raise UsageError(f"{source.url}: tuning needs a target column; set --target")
    _dense_only(source, validation)
    if config.missing == "impute":
        skip_null_targets(source, validation)
        impute_nulls(source, validation)


def tune(
    source: Source,
    config: FitConfig | None = None,
    options: TuneOptions | None = None,
    *,
    validation: Source | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure τ_f, τ_d, the noise scale and the diminishing returns of B; suggest a batch.

    ``config``: the training options of every run (``batch``, ``steps`` and ``epochs`` are
    set by the tuner); ``options``: what the tuner tries; ``validation``: a held-out source
    (default: ``options.holdout`` of the data); ``on_trial``: called with each trial's record.

    Returns ``tau_f``, ``tau_d`` (seconds), ``timings``, ``trials`` (each ``batch``, ``steps``,
    ``val_loss``, ``train_loss``, ``seconds``, ``lr``, ``steps_to_target``), ``loss_fit``
    (``a``, ``c``), ``knee_batch``, ``b_simple``, ``trace_sigma``, ``grad_norm2``,
    ``temperature``, ``noise_at`` (where the noise was measured), ``n_iter``, ``c_var``,
    ``b_opt`` (the formula on those inputs) and ``batch`` (b_opt rounded and clipped to N).
    """
    config, options = config or FitConfig(), options or TuneOptions()
    _prepare(source, validation, config)
    train, validation = _holdout(source, validation, options.holdout, config.seed)
    N = n_rows(train)
    grid, timing_grid, rows = _grids(N, options)

    # (a) τ_f, τ_d on this machine
    timings = time_iterations(train, config, timing_grid, options.timing_rows)
    tau_f, tau_d = fit_iteration_time([t["batch"] for t in timings], [t["seconds_per_iteration"] for t in timings])

    # (c) short trials, same rows each
    trials, curves, models = _trials(train, validation, replace(config, average=options.average), grid, rows,
                                     on_trial)
    a, c = fit_inverse_batch([t["batch"] for t in trials], [t["val_loss"] for t in trials])
    knee = knee_batch(a, c, options.min_gain)

    # (b) the noise scale where the best trial ended, and K(b) = N_iter + C_var / b
    best = min(range(len(trials)), key=lambda k: trials[k]["val_loss"])
    noise = _noise(train, config, options, models[best])
    _steps_to_target(trials, curves)
    n_iter, c_var = _iterations_model(trials, noise["b_simple"])
    b_opt = optimal_batch(c_var, n_iter, tau_f, tau_d)
    return {
        "rows": N, "validation_rows": n_rows(validation),
        "tau_f": tau_f, "tau_d": tau_d,
        "timings": timings,
        "trials": trials,
        "loss_fit": {"a": a, "c": c},
        "min_gain": options.min_gain,
        # the fit a + c/B only holds over the trials: never a knee below the smallest one
        "knee_batch": int(min(max(math.ceil(knee), grid[0]), N)),
        **_noise_report(noise, trials[best], models[best], options.noise_batch),
        "n_iter": n_iter, "c_var": c_var, "b_opt": b_opt,
        "batch": int(min(max(round(b_opt), 1), N)) if math.isfinite(b_opt) else None,
    }


def _holdout(source: Source, validation: Source | None, holdout: float, seed: int) -> tuple[Source, Source]:
    """(training part, validation part): all of ``source`` and ``validation`` when one is
    given, else ``holdout`` of its chunks (or of every chunk's rows, with too few chunks)."""
    if validation is not None:
        return source, validation
    n_chunks = len(source.chunk_rows)
    if not 0 < holdout < 1:
        raise UsageError(f"holdout: expected a fraction in (0, 1); got {holdout!r}")
    if holds_whole_chunks(n_chunks, holdout):
        order = stream(seed, HOLDOUT).permutation(n_chunks)
        held = round(holdout * n_chunks)
        return ChunkSubset(source, sorted(order[held:])), ChunkSubset(source, sorted(order[:held]))
    # too few chunks to hold out whole ones (one row group): rows of every chunk
    train, held_rows = split_rows(source, holdout, seed, HOLDOUT_ROWS)
    return train, held_rows


def _grids(N: int, options: TuneOptions) -> tuple[list[int], list[int], int]:
    """(trial grid, timing grid, rows per trial), the grids within the ``N`` training rows."""
    grid = sorted({int(b) for b in options.batches if 1 <= b <= N})
    if len(grid) < 2:
        raise UsageError(f"batches: need two or more trial batch sizes between 1 and {N} (the training rows)")
    timing_grid = sorted({int(b) for b in options.timing_batches if 1 <= b <= N})
    if len(timing_grid) < 2:
        raise UsageError(f"timing_batches: need two or more batch sizes between 1 and {N} (the training rows)")
    rows = N if options.trial_rows is None else int(options.trial_rows)
    if rows < max(grid):
        raise UsageError(f"trial_rows: {rows} rows are fewer than one batch of {max(grid)}")
    return grid, timing_grid, rows


def _trials(train: Source, validation: Source, config: FitConfig, grid: Sequence[int], rows: int,
            on_trial: Callable[[dict[str, Any]], None] | None,
            ) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], list[Model]]:
    """One short run per batch size, each seeing ``rows`` rows: (records, loss curves, models)."""
    trials, curves, models = [], [], []
    for b in grid:
        steps = math.ceil(rows / b)
        result, records = _run(train, config, b, steps, max(1, steps // 20))
        trial: dict[str, Any] = {"batch": b, "steps": steps, "val_loss": float(evaluate(result.model, validation)["loss"]),
                 "train_loss": float(result.summary["loss"]), "seconds": float(result.summary["seconds"]),
                 "lr": float(result.summary["lr"])}
        trials.append(trial)
        curves.append(records)
        models.append(result.model)
        if on_trial is not None:
            on_trial(trial)
    return trials, curves, models


def _noise(train: Source, config: FitConfig, options: TuneOptions, model: Model) -> dict[str, Any]:
    """The gradient noise at ``model``'s parameters, as reported (|G|² <= 0 is NaN)."""
    # the noise pass holds its rows in one buffer: no more than a shuffle window's worth
    noise_cap = min(options.noise_rows, plan_memory(train, config).window_rows)
    l2 = resolve_defaults(train, config)[0].l2_strength  # the penalty the trials trained with
    return reported(measure_noise(train, model, l2, options.noise_batch, noise_cap, config.seed, config.dtype))


def _noise_report(noise: dict[str, Any], trial: dict[str, Any], model: Model, noise_batch: int) -> dict[str, Any]:
    """The noise figures and where they were measured: the best trial's final model."""
    return {
        "b_simple": noise["b_simple"],
        "trace_sigma": noise["trace_sigma"],
        "grad_norm2": noise["grad_norm2"],
        "temperature": trial["lr"] / trial["batch"],
        "noise_at": {"batch": trial["batch"], "rows": noise["noise_rows"], "noise_batch": noise_batch,
                     "coef_standardized": (model.coef * model.scale).tolist(),
                     "intercept_standardized": float(model.intercept + model.coef @ model.mean)},
    }


def _steps_to_target(trials: list[dict[str, Any]], curves: list[list[dict[str, Any]]]) -> None:
    """Add ``steps_to_target`` to each trial: its first logged update at or below a common
    target, the highest final training loss of all trials (so every trial reaches it).

    The progress records' loss is the mean over the interval's rows, and every trial logs
    every 1/20 of its rows, so the curves are equally smoothed whatever B.
    """
    finals = [curve[-1]["loss"] for curve in curves if curve]
    target = max(finals) if finals else math.nan
    for trial, curve in zip(trials, curves):
        hit = [r["iteration"] for r in curve if r["loss"] <= target]
        trial["steps_to_target"] = int(hit[0]) if hit else None


def _iterations_model(trials: list[dict[str, Any]], b_simple: float) -> tuple[float, float]:
    """(N_iter, C_var) of K(b) = N_iter + C_var/b, with C_var/N_iter = B_simple.

    Each trial's steps to the target gives N_iter = K(b) / (1 + B_simple/b); the median
    over trials is robust to the noisiest one. Without a finite B_simple, K(b) is fitted
    by least squares on the trials alone.
    """
    pairs = [(t["batch"], t["steps_to_target"]) for t in trials if t.get("steps_to_target")]
    if not pairs:
        return math.nan, math.nan
    if math.isfinite(b_simple) and b_simple > 0:
        n_iter = float(np.median([k / (1.0 + b_simple / b) for b, k in pairs]))
        return n_iter, n_iter * b_simple
    if len({b for b, _ in pairs}) < 2:
        return math.nan, math.nan
    inv = np.array([1.0 / b for b, _ in pairs])
    K = np.array([k for _, k in pairs], dtype=np.float64)
    (n_iter, c_var), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(inv), inv]), K, rcond=None)
    return float(n_iter), float(c_var)
