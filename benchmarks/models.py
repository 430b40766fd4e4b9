"""Training throughput of every loss and optimizer of ``streamsgd.fit`` on one Parquet file.

One command, one data file for every row of the table: ``--rows`` rows x ``--features``
float32 features (default 1,000,000 x 100), uncompressed, plain encoding, row groups of
65,536 rows, written by ``streamsgd.tools.generate.generate(task="linear")`` and then rewritten
once with pyarrow to carry three target columns side by side:

  y      the linear task's real-valued target (true linear model + N(0, 0.5^2) noise):
         linear, huber, quantile;
  label  (y > 0) as 0/1 float32: logistic, hinge, modified_huber and the optimizer rows;
  count  Poisson counts drawn with the log link from the same y: count ~ Poisson(exp(y / 4))
         (y has a standard deviation of ~2, so the mean count is ~1 and few exceed 20),
         float32: poisson.

Every run names the 100 feature columns explicitly and one target column, so each reads
the same 101 columns' worth of bytes. Each configuration trains one epoch at batch 512
(default step, l2 1e-4, averaging on), through the public API:
``train.fit(streamsgd.open_source(path, target=..., features=...), FitConfig(epochs=1, batch=512, model=...))``.
Optimizers (sgd, momentum, adam, adamw) run on logistic; adam and adamw with ``lr=0.01``
(their default step is sized for plain SGD), sgd and momentum with the default step.

Figures per configuration: the end-to-end wall time of the ``fit`` call (opening, memory
plan, target scan, first-window standardisation, the epoch, the model) and the loop's own
rate, ``summary["rows_per_second"]``; the training loss at the end (the summary's ``loss``,
mean loss of the epoch's batches plus the l2 term) as a sanity check, not a comparison
across losses. Configurations run round-robin (linear, logistic, ..., adamw, linear, ...)
so a shared machine's drift hits them all alike; each figure is the median of ``--runs``.
Every configuration first trains once on a tiny in-memory array (untimed), so no timed run
loads or compiles a Numba kernel.

Usage:
  python benchmarks/models.py             # 1,000,000 x 100, 3 runs; JSON to benchmarks/out/models.json
  python benchmarks/models.py --quick     # 100,000 x 100, 1 run; benchmarks/out/models-quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance
from streamsgd.config import FitConfig
import streamsgd
from streamsgd.train import trainer as train
from streamsgd.tools.generate import generate

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROW_GROUP_ROWS = 65536
BATCH = 512
SEED = 0
COUNT_SCALE = 0.25  # count ~ Poisson(exp(COUNT_SCALE * y))
RECIPE = 1  # bump when the file's recipe changes, so an old file is rewritten

#: loss -> the target column it trains on
LOSS_TARGET = {
    "linear": "y", "logistic": "label", "huber": "y", "hinge": "label",
    "modified_huber": "label", "poisson": "count", "quantile": "y",
}
#: optimizer -> extra options (adam/adamw: their own step; the default is sized for SGD)
OPTIMIZERS = {"sgd": {}, "momentum": {}, "adam": {"lr": 0.01}, "adamw": {"lr": 0.01}}


def configurations() -> dict[str, dict[str, Any]]:
    """Name -> fit options. ``logistic`` doubles as the sgd row of the optimizer table."""
    configs = {loss: {"model": loss} for loss in LOSS_TARGET}
    for opt, extra in OPTIMIZERS.items():
        if opt != "sgd":
            configs[f"logistic+{opt}"] = {"model": "logistic", "optimizer": opt, **extra}
    return configs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="training rows (default 1,000,000)")
    p.add_argument("--features", type=int, default=100, help="feature columns (default 100)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per configuration; medians reported (default 3)")
    p.add_argument("--quick", action="store_true", help="100,000 rows, 1 run (under ~30 s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the data file and the JSON")
    p.add_argument("--regenerate", action="store_true", help="rewrite the data file even if a matching one exists")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.runs = 100_000, 1
    if min(args.rows, args.features, args.runs) < 1:
        p.error("--rows, --features and --runs must be >= 1")
    return args


# ---------------------------------------------------------------------------- the data file


def ensure_file(path: Path, rows: int, features: int, regenerate: bool) -> tuple[bool, float]:
    """Write the three-target file unless one of exactly this recipe is there.
    Returns (written, seconds)."""
    if path.exists() and not regenerate:
        try:
            meta = pq.read_metadata(path)
            info = json.loads(meta.metadata[b"streamsgd_models"])
            if (info.get("recipe") == RECIPE and meta.num_rows == rows and meta.num_columns == features + 3
                    and meta.row_group(0).column(0).compression == "UNCOMPRESSED"):
                return False, 0.0
        except Exception:  # unreadable or foreign file: write it again
            pass
    t0 = time.perf_counter()
    base = path.with_name(path.stem + ".linear.parquet")
    info = generate(str(base), rows=rows, features=features, task="linear", seed=SEED,
                    row_group_rows=ROW_GROUP_ROWS, compression="none")
    rng = np.random.default_rng([SEED, 7])
    src = pq.ParquetFile(base, pre_buffer=False)
    schema = src.schema_arrow
    meta = dict(schema.metadata or {})
    meta[b"streamsgd_models"] = json.dumps({
        "recipe": RECIPE, "targets": LOSS_TARGET, "count": f"Poisson(exp({COUNT_SCALE} * y))",
        "label": "y > 0", "generate": {k: info[k] for k in ("task", "seed", "sample_seed", "rows")},
    }).encode()
    schema = (schema.append(pa.field("label", pa.float32())).append(pa.field("count", pa.float32()))
              .with_metadata(meta))
    tmp = path.with_name(".tmp-" + path.name)
    with pq.ParquetWriter(tmp, schema, compression="none", use_dictionary=False) as w:
        for i in range(src.num_row_groups):
            t = src.read_row_group(i)
            y = t.column("y").to_numpy().astype(np.float64)
            label = (y > 0).astype(np.float32)
            count = rng.poisson(np.exp(COUNT_SCALE * y)).astype(np.float32)
            t = t.append_column("label", pa.array(label)).append_column("count", pa.array(count))
            w.write_table(t.cast(schema), row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, path)
    base.unlink()
    return True, time.perf_counter() - t0


def feature_names(path: Path) -> list[str]:
    return [n for n in pq.read_schema(path).names if n not in ("y", "label", "count")]


def target_summary(path: Path) -> dict[str, Any]:
    """Mean of each target column (label: the positive share; count: mean and max)."""
    t = pq.read_table(path, columns=["y", "label", "count"])
    y, label, count = (t.column(c).to_numpy() for c in ("y", "label", "count"))
    return {"y_mean": float(y.mean()), "y_std": float(y.std()), "label_positive_share": float(label.mean()),
            "count_mean": float(count.mean()), "count_max": float(count.max()),
            "count_zero_share": float((count == 0).mean())}


# ---------------------------------------------------------------------------- runs


def fit_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"epochs": 1, "batch": BATCH, **options}


def warm_up(configs: dict[str, dict[str, Any]], features: int) -> None:
    """Each configuration once on a small array: load (or compile) its kernels untimed."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4096, features)).astype(np.float32)
    ys = {"y": X[:, 0] + 0.5 * rng.standard_normal(4096).astype(np.float32)}
    ys["label"] = (ys["y"] > 0).astype(np.float32)
    ys["count"] = rng.poisson(np.exp(COUNT_SCALE * ys["y"])).astype(np.float32)
    for options in configs.values():
        y = ys[LOSS_TARGET[options["model"]]]
        train.fit(streamsgd.ArraySource(X, y, chunk_rows=1024), FitConfig(**fit_options(options)))


def run_fit(path: Path, names: list[str], options: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    source = streamsgd.open_source(str(path), target=LOSS_TARGET[options["model"]], features=names)
    wall, result = _common.seconds(train.fit, source, FitConfig(**fit_options(options)))
    return wall, result.summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = _common.begin(args.out)
    path = args.out / f"models-{args.rows}x{args.features}.parquet"
    written, write_seconds = ensure_file(path, args.rows, args.features, args.regenerate)
    print(f"{path.name} ({path.stat().st_size / 2**20:,.0f} MiB): "
          f"{f'written in {write_seconds:.1f} s' if written else 'reused'}", flush=True)
    names = feature_names(path)
    targets = target_summary(path)
    configs = configurations()
    pq.read_table(path)  # untimed: bring the file into the page cache
    t0 = time.perf_counter()
    warm_up(configs, args.features)
    print(f"warm-up (kernels loaded per configuration, untimed) {time.perf_counter() - t0:.1f} s", flush=True)

    walls: dict[str, list[float]] = {k: [] for k in configs}
    loops: dict[str, list[float]] = {k: [] for k in configs}
    losses: dict[str, list[float]] = {k: [] for k in configs}
    rows_seen: dict[str, int] = {}
    failed: dict[str, str] = {}
    for run in range(args.runs):
        for key, options in configs.items():
            if key in failed:
                continue
            try:
                wall, summary = run_fit(path, names, options)
            except Exception as e:  # one refused configuration must not lose the rest of the table
                failed[key] = f"{type(e).__name__}: {e}"
                print(f"{key} failed: {failed[key]}", flush=True)
                continue
            walls[key].append(wall)
            loops[key].append(summary["rows_per_second"])
            losses[key].append(summary["loss"])
            rows_seen[key] = summary["rows_seen"]
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items() if v),
              flush=True)

    table: dict[str, dict[str, Any]] = {}
    for key, options in configs.items():
        if not walls[key]:
            continue
        wall = statistics.median(walls[key])
        table[key] = {
            "model": options["model"], "optimizer": options.get("optimizer", "sgd"), "lr": options.get("lr"),
            "target": LOSS_TARGET[options["model"]], "rows_seen": rows_seen[key],
            "wall_seconds": wall, "end_to_end_rows_per_second": args.rows / wall,
            "loop_rows_per_second": statistics.median(loops[key]), "final_loss": losses[key][-1],
        }
    ref = table.get("logistic")

    print(f"\n{args.rows:,} rows x {args.features} features, uncompressed Parquet (row groups of "
          f"{ROW_GROUP_ROWS:,}), 1 epoch, batch {BATCH}, median of {args.runs} run(s), warm page cache")
    print(f"{'configuration':<26}{'target':>7}{'wall s':>8}{'rows/s e2e':>13}{'loop rows/s':>13}"
          f"{'vs logistic':>12}{'loss':>9}")
    for key, r in table.items():
        rel = f"{r['loop_rows_per_second'] / ref['loop_rows_per_second']:.2f}" if ref else ""
        label = key if "+" not in key else f"{r['model']}, {r['optimizer']}" + (f" lr={r['lr']}" if r["lr"] else "")
        print(f"{label:<26}{r['target']:>7}{r['wall_seconds']:>8.2f}{r['end_to_end_rows_per_second']:>13,.0f}"
              f"{r['loop_rows_per_second']:>13,.0f}{rel:>12}{r['final_loss']:>9.4f}")
    for key, why in failed.items():
        print(f"{key}: FAILED: {why}")
    print(f"targets: label positive share {targets['label_positive_share']:.3f}; count mean "
          f"{targets['count_mean']:.2f}, max {targets['count_max']:.0f}, zeros {targets['count_zero_share']:.2f}")

    report = {
        "benchmark": "models", "quick": args.quick, "rows": args.rows, "features": args.features,
        "batch": BATCH, "epochs": 1, "runs": args.runs, "row_group_rows": ROW_GROUP_ROWS,
        "file": str(path), "file_bytes": path.stat().st_size, "file_written": written,
        "file_write_seconds": write_seconds, "targets": targets, "loss_target": LOSS_TARGET,
        "configurations": configs, "table": table, "failed": failed,
        "raw": {"wall_seconds": walls, "loop_rows_per_second": loops, "final_loss": losses},
        "machine": provenance.machine(**_common.versions()),
    }
    provenance.write_report(args.out / ("models-quick.json" if args.quick else "models.json"), report, started, load_start)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
