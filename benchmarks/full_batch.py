"""Full-batch GD (streamed) vs mini-batch SGD for the same compute, and the memory each needs.

Part 1, convergence for the same number of gradient evaluations (DESIGN.md §2, claims 1, 3, 8):
one Parquet file of N rows (logistic, d features), trained for E epochs, i.e. E·N row visits
for every batch size b:

  b = N    streamed full-batch GD (``batch=N``: the gradient accumulates across the shuffle
           windows at a fixed θ; one update per pass, E updates in all)
  b = 512, b = 32, b = 1   mini-batch / plain SGD (E·N/b updates)

each with its own default step (1/L_B measured on the data) and ``average=False`` (the bare
update rule θ ← θ − η·ĝ; tail averaging would blur the comparison). The loss plotted is the
epoch's training loss from the metrics log (for b = N exactly the full loss at the epoch's
θ; for b < N the mean of the batch losses during the epoch), against epochs and against
wall time since the start of ``fit``. After training, the full training objective of each
final model is evaluated in one more (untimed) pass. Runs are round-robin, ``--runs`` times;
times are medians.

Part 2, memory: what in-memory full-batch GD must hold, N·(d+1)·4 + N·8 bytes (float32 rows
and target, float64 margins) for d = 100, against streamsgd's measured peak RSS (from
``benchmarks/out/memory*.json``, written by memory.py) for N from 10^6 to 10^12; where N was not
measured, the memory plan's bound (that run's --memory-limit plus its idle footprint), marked so.

Writes benchmarks/out/full_batch.json and benchmarks/figures/full_batch.png.

Usage:
  python benchmarks/full_batch.py            # N = 1,000,000 x 20 features, 10 epochs, 3 runs
  python benchmarks/full_batch.py --quick    # N = 100,000 x 20, 3 epochs, 1 run (make bench)
  python benchmarks/full_batch.py --replot   # after memory.py: refresh the memory table and the figure
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance
from streamsgd.config import FitConfig
from streamsgd.train import Hooks
import streamsgd
from streamsgd.train import trainer as train
from streamsgd.tools.inference import evaluate

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
FIGURES = Path(__file__).resolve().parent / "figures"
ROW_GROUP_ROWS = 65536
MEMORY_FEATURES = 100  # the memory table's d, as in memory.py
COLORS = {"N": "tab:red", 512: "tab:blue", 32: "tab:green", 1: "tab:purple"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10, help="passes for every batch size (default 10)")
    p.add_argument("--b1-epochs", type=int, default=None,
                   help="passes for b = 1 if it is too slow for --epochs (default: the same)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="100,000 rows, 3 epochs, 1 run, no figure")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--figure", type=Path, default=None, help="PNG (default benchmarks/figures/full_batch.png)")
    p.add_argument("--replot", action="store_true",
                   help="train nothing: reread full_batch.json, refresh its memory table from memory*.json, redraw")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.runs = 100_000, 3, 1
    if args.figure is None and not args.quick:
        args.figure = FIGURES / "full_batch.png"
    args.b1_epochs = args.b1_epochs or args.epochs
    return args


def ensure_file(path: Path, rows: int, features: int) -> None:
    if not (path.exists() and _common.is_uncompressed(path, rows, features)):
        _common.write_uncompressed(path, rows, features, ROW_GROUP_ROWS)


def run(path: Path, batch: int, epochs: int, rows: int) -> dict[str, Any]:
    """One ``fit``; returns its epoch records (loss, seconds), summary and model."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
        metrics = f.name
    try:
        result = train.fit(streamsgd.open_source(str(path)),
                           FitConfig(epochs=epochs, batch=batch, model="logistic", average=False,
                                     log_every=max(1, rows // batch)),
                           hooks=Hooks(metrics=metrics))
        records = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    finally:
        os.unlink(metrics)
    epochs_ = [r for r in records if r.get("event") == "epoch"]
    return {"loss": [r["loss"] for r in epochs_], "seconds": [r["seconds"] for r in epochs_],
            "summary": result.summary, "model": result.model}


def memory_table(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Full-batch bytes vs streamsgd's peak RSS, N = 10^6 .. 10^12 at d = 100."""
    measured: dict[int, int] = {}
    sources = []
    bound = None
    for name in ("memory.json", "memory-1e8.json"):
        path = out / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if data.get("features") != MEMORY_FEATURES or data.get("quick"):
            continue
        sources.append({"file": str(path), "memory_limit": data["memory_limit"],
                        "commit": data["machine"].get("commit")})
        for n, s in data["sets"].items():
            measured[int(n)] = int(s["peak_rss_bytes_median"])
        if "memory_limit_bytes" in data and "idle_peak_rss_bytes" in data:
            bound = int(data["memory_limit_bytes"] + data["idle_peak_rss_bytes"])
    # Beyond the largest measured N: the plan's bound, --memory-limit plus the idle footprint
    # (measured flat within 2 % from 10^6 to 10^8; the memory plan charges Parquet footers, the
    # one thing that grew with N, to the limit). It holds for data stored in files of up to
    # ~1.7 x 10^8 rows x 100 columns each (65,536-row groups) at the default 512MiB: a larger single
    # file's footer needs a proportionally larger --memory-limit (see benchmarks/README.md, memory.py).
    rows = []
    for k in range(6, 13):
        n = 10**k
        full = n * (MEMORY_FEATURES + 1) * 4 + n * 8
        peak = measured.get(n, bound)
        rows.append({"rows": n, "full_batch_bytes": full, "streamsgd_peak_rss_bytes": peak,
                     "measured": n in measured, "full_over_peak": full / peak if peak else None})
    return rows, {"sources": sources, "extrapolation": "the plan's bound, --memory-limit + idle peak RSS",
                  "bound_bytes": bound}


def plot(path: Path, curves: dict[str, dict[str, Any]], rows: int, features: int, mem_rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), dpi=90)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for label, c in curves.items():
        key = "N" if label == "N" else int(label)
        name = f"b = N ({rows:,})" if label == "N" else f"b = {label}"
        ep = np.arange(1, len(c["loss"]) + 1)
        ax1.plot(ep, c["loss"], "o-", ms=3, color=COLORS[key], label=name)
        ax2.plot(c["seconds_median"], c["loss"], "o-", ms=3, color=COLORS[key], label=name)
    ax1.set_xlabel("epochs (N gradient evaluations each)")
    ax2.set_xlabel("wall seconds (median of runs)")
    for ax in (ax1, ax2):
        ax.set_ylabel("training log loss (epoch)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_title(f"same compute: {rows:,} x {features}, logistic", fontsize=9)
    ax2.set_title("loss vs time", fontsize=9)
    n = [r["rows"] for r in mem_rows]
    ax3.plot(n, [r["full_batch_bytes"] / 2**30 for r in mem_rows], "--", color="tab:red",
             label="in-memory full batch needs")
    m = [r for r in mem_rows if r["streamsgd_peak_rss_bytes"]]
    ax3.plot([r["rows"] for r in m if r["measured"]], [r["streamsgd_peak_rss_bytes"] / 2**30 for r in m if r["measured"]],
             "o-", color="tab:blue", label="streamsgd peak RSS (measured)")
    ax3.plot([r["rows"] for r in m], [r["streamsgd_peak_rss_bytes"] / 2**30 for r in m], ":", color="tab:blue",
             label="streamsgd (bound: limit + idle)")
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ax3.set_xlabel(f"rows N (d = {MEMORY_FEATURES})")
    ax3.set_ylabel("GiB")
    ax3.set_title("memory: full batch vs streamed", fontsize=9)
    ax3.grid(True, alpha=0.3)
    ax3.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def print_memory(mem_rows: list[dict[str, Any]], mem_info: dict[str, Any]) -> None:
    print(f"\nmemory, d = {MEMORY_FEATURES}: in-memory full batch vs streamsgd peak RSS "
          f"(measured from {', '.join(s['file'].split('/')[-1] for s in mem_info['sources']) or 'nothing: run memory.py'})")
    print(f"{'rows':>19}{'full batch':>13}{'streamsgd':>12}{'ratio':>12}  source")
    for r in mem_rows:
        ratio = f"{r['full_over_peak']:,.0f}x" if r["full_over_peak"] else ""
        print(f"{r['rows']:>19,}{_common.human(r['full_batch_bytes']):>13}{_common.human(r['streamsgd_peak_rss_bytes']):>12}"
              f"{ratio:>12}  {'measured' if r['measured'] else 'bound (limit + idle)'}")


def replot(args: argparse.Namespace) -> int:
    json_path = args.out / "full_batch.json"
    report = json.loads(json_path.read_text())
    mem_rows, mem_info = memory_table(args.out)
    report["memory_table"], report["memory_sources"] = mem_rows, mem_info
    print_memory(mem_rows, mem_info)
    figure = args.figure or FIGURES / "full_batch.png"
    plot(figure, report["curves"], report["rows"], report["features"], mem_rows)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {figure} and {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args)
    started, load_start = _common.begin(args.out)
    data = args.out / f"fullbatch-{args.rows}x{args.features}.parquet"
    ensure_file(data, args.rows, args.features)
    batches = {"N": args.rows, "512": 512, "32": 32, "1": 1}
    epochs = {k: (args.b1_epochs if k == "1" else args.epochs) for k in batches}
    # untimed warm-up: load (or compile) every kernel path once
    tiny = args.out / f"fullbatch-warmup-{args.features}.parquet"
    ensure_file(tiny, 2000, args.features)
    for b in (2000, 512, 32, 1):
        run(tiny, b, 1, 2000)

    results: dict[str, list[dict[str, Any]]] = {k: [] for k in batches}
    for r in range(args.runs):
        for key, b in batches.items():
            results[key].append(run(data, b, epochs[key], args.rows))
        print(f"run {r + 1}/{args.runs}: " + ", ".join(f"b={k} {v[-1]['summary']['seconds']:.1f} s"
                                                       for k, v in results.items()), flush=True)

    curves = {}
    for key, rs in results.items():
        first = rs[0]
        for other in rs[1:]:  # same seed, same data: the loss path must be the same
            if not np.allclose(other["loss"], first["loss"], rtol=1e-6):
                print(f"note: b={key}: loss paths differ between runs")
        final = evaluate(rs[-1]["model"], streamsgd.open_source(str(data)))["loss"]
        curves[key] = {
            "batch": batches[key], "epochs": epochs[key], "loss": first["loss"],
            "seconds_median": [statistics.median(r["seconds"][i] for r in rs) for i in range(len(first["seconds"]))],
            "fit_seconds_runs": [r["summary"]["seconds"] for r in rs],
            "iterations": first["summary"]["iterations"], "lr": first["summary"]["lr"],
            "row_visits": first["summary"]["rows_seen"], "final_training_loss": final,
        }
    mem_rows, mem_info = memory_table(args.out)

    print(f"\n{args.rows:,} rows x {args.features} features, logistic, {args.epochs} epochs each "
          f"(b = 1: {args.b1_epochs}), average off, default step 1/L_B; times median of {args.runs}")
    print(f"{'batch':<14}{'updates':>11}{'row visits':>13}{'lr':>9}{'fit s':>8}{'epoch-1 loss':>14}"
          f"{'last epoch':>12}{'final full loss':>17}")
    for key, c in curves.items():
        print(f"{'b = ' + key:<14}{c['iterations']:>11,}{c['row_visits']:>13,}{c['lr']:>9.3g}"
              f"{statistics.median(c['fit_seconds_runs']):>8.1f}{c['loss'][0]:>14.4f}{c['loss'][-1]:>12.4f}"
              f"{c['final_training_loss']:>17.4f}")
    print_memory(mem_rows, mem_info)

    if args.figure:
        plot(args.figure, curves, args.rows, args.features, mem_rows)
        print(f"wrote {args.figure}")
    report = {
        "benchmark": "full_batch", "quick": args.quick, "rows": args.rows, "features": args.features,
        "epochs": args.epochs, "b1_epochs": args.b1_epochs, "runs": args.runs, "curves": curves,
        "memory_table": mem_rows, "memory_sources": mem_info,
        "machine": provenance.machine(),
    }
    provenance.write_report(args.out / ("full_batch-quick.json" if args.quick else "full_batch.json"), report, started, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
