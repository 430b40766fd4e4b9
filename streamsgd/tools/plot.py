"""Figures: loss curves from metrics logs, and the batch-size tuning figure.

The loss curve is where the mini-batch noise is visible (DESIGN.md §2.6): small batches
give jagged curves. Runs of different batch sizes compare fairly against ``rows_seen``
(the same compute, §2.8) rather than against iterations.

matplotlib is an optional extra (``pip install 'streamsgd[plot]'``), imported only here,
inside the functions, with the non-interactive Agg canvas (no display, no pyplot state).
Images are written to a temporary file beside the target and renamed over it, so a
reader never sees half a PNG.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from ..errors import DataError, UsageError

X_AXES = ("iteration", "rows_seen", "seconds", "batch")
_LABELS = {"iteration": "iteration (updates)", "rows_seen": "rows seen", "seconds": "seconds",
           "batch": "batch size B"}


def _figure(size: tuple[int, int], dpi: int = 100):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError(
            "plotting needs matplotlib, an optional extra; install it with: pip install 'streamsgd[plot]'"
        ) from exc
    width, height = size
    if width < 50 or height < 50:
        raise UsageError(f"size: expected at least 50 x 50 pixels; got {width} x {height}")
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: str) -> None:
    """Write ``fig`` as PNG to ``out`` atomically: a temporary file in the same directory, renamed."""
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UsageError(f"{out}: the directory {directory} does not exist; create it first")
    from ..persist.atomic import atomic_file

    with atomic_file(out) as fh:
        fig.savefig(fh, format="png", dpi=fig.dpi)


def read_runs(path: str) -> list[list[dict[str, Any]]]:
    """The runs in a metrics log: lists of records with a loss, in file order.

    ``fit --metrics`` appends, so one file may hold several runs; a new run starts where
    the iteration count goes back (or the epoch records restart at 1). Progress records
    (interval means) are kept; a run with none falls back to its epoch records.
    """
    return [run["progress"] or run["epoch"] for run in _run_records(path)]


def _run_records(path: str) -> list[dict[str, list[dict[str, Any]]]]:
    """Each run's ``progress`` and ``epoch`` records (see ``read_runs``); at least one run."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such metrics file; give a file written by streamsgd fit --metrics")
    runs: list[dict[str, list]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: not a JSON object ({exc.msg}); is it a metrics log?") from exc
            if not isinstance(record, dict) or record.get("event") not in ("progress", "epoch"):
                continue
            if not isinstance(record.get("loss"), (int, float)) or not isinstance(record.get("iteration"), int):
                continue
            if not runs or _starts_run(record, runs[-1]):
                runs.append({"progress": [], "epoch": []})
            runs[-1][record["event"]].append(record)
    if not runs:
        raise DataError(
            f"{path}: no loss records (event 'progress' or 'epoch' with a 'loss'); "
            "write one with streamsgd fit --metrics FILE"
        )
    return runs


def _starts_run(record: dict[str, Any], run: dict[str, list]) -> bool:
    """Whether ``record`` begins a new run appended after ``run``."""
    if record["event"] == "progress":
        return bool(run["progress"]) and record["iteration"] <= run["progress"][-1]["iteration"]
    return record.get("epoch") == 1 and bool(run["epoch"])


def _batch_of(run: list[dict[str, Any]]) -> float:
    """The run's batch size: rows per update, exact for the first records (full batches)."""
    first = run[0]
    return first["rows_seen"] / max(first["iteration"], 1)


def plot_metrics(
    paths: Sequence[str], out: str, x: str = "iteration", *, size: tuple[int, int] = (900, 560),
    labels: Sequence[str] | None = None, log_y: bool = False,
) -> str:
    """Draw the loss curves of metrics logs, one line per run, into a PNG.

    Parameters
    ----------
    paths : metrics JSON-lines files written by ``fit --metrics``.
    out : the PNG to write (atomically).
    x : the horizontal axis: ``iteration``, ``rows_seen``, ``seconds`` (since training
        started), or ``batch``: one point per run, its final loss against its batch size
        (the diminishing-returns view of §2.13).
    size : (width, height) of the image in pixels.
    labels : one legend entry per path; default: the file names.
    log_y : logarithmic loss axis.

    Returns
    -------
    The path written.
    """
    if x not in X_AXES:
        raise UsageError(f"x: expected one of {', '.join(X_AXES)}; got {x!r}")
    if not paths:
        raise UsageError("give at least one metrics file")
    if labels is not None and len(labels) != len(paths):
        raise UsageError(f"labels: expected {len(paths)} labels, one per file; got {len(labels)}")
    names = list(labels) if labels is not None else [os.path.basename(p) for p in paths]
    series, validation = [], []
    for path, name in zip(paths, names):
        runs = _run_records(path)
        for k, run in enumerate(runs):
            series.append((name if len(runs) == 1 else f"{name} (run {k + 1})", run["progress"] or run["epoch"]))
            # the held-out loss of each epoch (--validation-fraction), where the run measured it
            validation.append([r for r in run["epoch"] if isinstance(r.get("val_loss"), (int, float))])
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    if x == "batch":
        points = sorted((_batch_of(run), run[-1]["loss"], label) for label, run in series)
        ax.plot([p[0] for p in points], [p[1] for p in points], color="0.6", zorder=1)
        for batch, loss, label in points:
            ax.scatter([batch], [loss], label=label, zorder=2)
        ax.set_xscale("log", base=2)
        ax.set_ylabel("final loss")
    else:
        for (label, records), held in zip(series, validation):
            line, = ax.plot([r.get(x, math.nan) for r in records], [r["loss"] for r in records], label=label,
                            linewidth=1)
            if held:  # dashed, in the run's colour, one marker per epoch
                ax.plot([r.get(x, math.nan) for r in held], [r["val_loss"] for r in held], "--o", markersize=3,
                        color=line.get_color(), linewidth=1, label=f"{label} validation")
        ax.set_ylabel("loss: training (interval mean), validation (dashed, per epoch)"
                      if any(validation) else "training loss (interval mean)")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(_LABELS[x])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, out)
    return out


def plot_tuning(result: dict[str, Any], path: str, *, size: tuple[int, int] = (1100, 460)) -> str:
    """The figure of ``streamsgd tune-batch``: validation loss against 1/B with its fit
    a + c/B and the knee, and time per iteration against B with its fit τ_f + τ_d·B.

    ``result`` is the dict returned by :func:`streamsgd.tune.tune`.
    """
    for key in ("trials", "timings", "tau_f", "tau_d", "loss_fit"):
        if key not in result:
            raise UsageError(f"result: expected the dict returned by tune(), which has {key!r}")
    fig = _figure(size)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)

    trials = sorted(result["trials"], key=lambda t: t["batch"])
    inv = [1.0 / t["batch"] for t in trials]
    left.plot(inv, [t["val_loss"] for t in trials], "o", label="short trials")
    a, c = result["loss_fit"]["a"], result["loss_fit"]["c"]
    if trials and math.isfinite(a) and math.isfinite(c):
        grid = [min(inv) + (max(inv) - min(inv)) * i / 50 for i in range(51)]
        left.plot(grid, [a + c * v for v in grid], "-", label=f"{a:.4g} + {c:.3g}/B")
    knee = result.get("knee_batch")
    if knee:
        left.axvline(1.0 / knee, color="0.5", linestyle=":", label=f"knee B = {knee}")
    for t in trials:
        left.annotate(str(t["batch"]), (1.0 / t["batch"], t["val_loss"]), fontsize="x-small",
                      textcoords="offset points", xytext=(3, 3))
    left.set_xlabel("1 / B")
    left.set_ylabel("validation loss")
    left.set_title("diminishing returns")
    left.legend(fontsize="small")
    left.grid(True, alpha=0.3)

    timings = sorted(result["timings"], key=lambda t: t["batch"])
    batches = [t["batch"] for t in timings]
    right.plot(batches, [t["seconds_per_iteration"] * 1e3 for t in timings], "o", label="measured")
    tau_f, tau_d = result["tau_f"], result["tau_d"]
    if batches:
        lo, hi = min(batches), max(batches)
        grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
        right.plot(grid, [(tau_f + tau_d * g) * 1e3 for g in grid], "-",
                   label=f"τ_f = {tau_f * 1e6:.3g} µs, τ_d = {tau_d * 1e9:.3g} ns/row")
    b_opt = result.get("b_opt")
    if b_opt and math.isfinite(b_opt):
        right.axvline(b_opt, color="0.5", linestyle=":", label=f"b_opt = {b_opt:.0f}")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("batch size B")
    right.set_ylabel("ms per iteration")
    right.set_title("T_iter(B) = τ_f + τ_d·B")
    right.legend(fontsize="small")
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path
