"""Training throughput of streamsgd against the speed limit of the disk format and scikit-learn.

One command, one run, one Parquet file for every row of the table:

  (a) pyarrow decode only: read every row group and touch its columns. Nothing that reads
      this file can be faster, so this is "the limit".
  (b) pyarrow decode + convert each row group to a row-major float32 matrix, which is what
      any row-wise learner needs before it can start.
  (c) ``streamsgd.fit`` for one epoch at batch 512 (logistic), timed end to end wall-clock,
      standardisation pass included; (c') is the same run's training loop alone (the
      summary's ``rows_per_second``).
  (d) scikit-learn ``SGDClassifier(loss="log_loss").partial_fit`` on batches of 512 rows, fed
      from row-major matrices read per row group and standardised with a mean/std computed
      beforehand (outside the timing), so it does the same work as (c') and no more.
  (e) the same ``partial_fit`` fed one whole row group per call (fewer, larger calls).

Methods are timed round-robin (a, b, c, d, e, a, b, ...) so that drift of a shared machine
hits them all alike; each figure is the median of ``--runs`` runs, and ratios are taken
between medians of the same run of this script. After the last round the held-out log
loss of streamsgd and scikit-learn is computed on a second file drawn from the same model.

Usage:
  python benchmarks/throughput.py            # 2,000,000 rows x 100 features, 3 runs
  python benchmarks/throughput.py --quick    # 200,000 rows x 20 features, 1 run (make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import provenance  # benchmarks/ is on sys.path when a script there runs
import streamsgd
from streamsgd import train
from streamsgd.apply import evaluate
from streamsgd.generate import generate

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROW_GROUP_ROWS = 65536
BATCH = 512
SEED = 0  # seeds the true weights of both files
TRAIN_SAMPLE_SEED = 0  # rows of the training file
HELDOUT_SAMPLE_SEED = 1  # fresh rows from the same model for the held-out file
L2 = 1e-4  # streamsgd's default --l2; the same penalty as scikit-learn's alpha

LABELS = {
    "decode": "(a) pyarrow decode only (limit)",
    "convert": "(b) pyarrow decode + row-major f32",
    "streamsgd": "(c) streamsgd fit, end to end",
    "streamsgd_loop": "(c') streamsgd training loop",
    "sklearn_batch": f"(d) sklearn partial_fit, batch {BATCH}",
    "sklearn_group": "(e) sklearn partial_fit, row group",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="training rows (default 2,000,000)")
    p.add_argument("--features", type=int, default=100, help="feature columns (default 100)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per method; medians are reported (default 3)")
    p.add_argument("--quick", action="store_true", help="small and fast: 200,000 rows x 20 features, 1 run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the data files and the JSON")
    p.add_argument("--regenerate", action="store_true", help="rewrite the data files even if matching ones exist")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.features, args.runs = 200_000, 20, 1
    if min(args.rows, args.features, args.runs) < 1:
        p.error("--rows, --features and --runs must be >= 1")
    return args


# ---------------------------------------------------------------------------- data files


def ensure_file(path: Path, rows: int, features: int, sample_seed: int, regenerate: bool) -> tuple[dict, bool]:
    """Write the file with ``generate`` unless a file of exactly this recipe is already there.

    Returns the generator's info (true weights etc.) and whether the file was written now.
    Reuse only saves time on repeated runs; the recipe check keeps it from reusing a stale file.
    """
    if path.exists() and not regenerate:
        try:
            meta = pq.read_metadata(path)
            info = json.loads(meta.metadata[b"streamsgd"])
            same = (
                info.get("task") == "logistic" and info.get("seed") == SEED
                and info.get("sample_seed") == sample_seed and meta.num_rows == rows
                and meta.num_columns == features + 1
                and meta.row_group(0).num_rows == min(rows, ROW_GROUP_ROWS)
                and meta.row_group(0).column(0).compression == "UNCOMPRESSED"
            )
            if same:
                return info, False
        except Exception:  # unreadable or foreign file: write it again
            pass
    info = generate(
        str(path), rows=rows, features=features, task="logistic", seed=SEED, sample_seed=sample_seed,
        row_group_rows=ROW_GROUP_ROWS, compression="none",
    )
    return info, True


def feature_names(path: Path) -> list[str]:
    return [n for n in pq.read_schema(path).names if n != "y"]


def read_matrix(pf: pq.ParquetFile, i: int, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row group ``i`` as a row-major float32 feature matrix (pyarrow's own converter) and labels."""
    table = pf.read_row_group(i)
    parts = [np.asarray(b.to_tensor(row_major=True)) for b in table.select(names).to_batches()]
    X = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return X, table.column("y").to_numpy()


# ---------------------------------------------------------------------------- the methods


def decode_only(path: Path) -> int:
    """(a) Decode every row group and touch each column; returns the rows read."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    rows = touched = 0
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i)
        for column in table.columns:
            touched += column.nbytes
        rows += table.num_rows
    assert touched > 0
    return rows


def decode_convert(path: Path, names: list[str]) -> int:
    """(b) Decode every row group into a row-major float32 matrix; returns the rows read."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    rows = 0
    for i in range(pf.num_row_groups):
        X, _ = read_matrix(pf, i, names)
        rows += X.shape[0]
    return rows


def streamsgd_fit(path: Path) -> streamsgd.FitResult:
    """(c) One epoch of streamsgd through its public API, standardisation pass included."""
    return train.fit(streamsgd.open_source(str(path)), epochs=1, batch=BATCH, model="logistic")


def sklearn_fit(path: Path, names: list[str], mean: np.ndarray, std: np.ndarray, batch: int | None):
    """(d)/(e) ``partial_fit`` over one epoch, ``batch`` rows per call or a row group per call."""
    from sklearn.linear_model import SGDClassifier

    clf = SGDClassifier(loss="log_loss", alpha=L2, random_state=SEED)
    classes = np.array([0, 1])
    pf = pq.ParquetFile(path, pre_buffer=False)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    for i in range(pf.num_row_groups):
        X, y = read_matrix(pf, i, names)
        X = (X - mean32) / std32  # float32, as streamsgd trains; scikit-learn keeps float32
        step = batch or X.shape[0]
        for start in range(0, X.shape[0], step):
            clf.partial_fit(X[start:start + step], y[start:start + step], classes=classes)
    return clf


def column_stats(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each feature (StandardScaler's), in float64, one pass."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    n, total, total_sq = 0, np.zeros(len(names)), np.zeros(len(names))
    for i in range(pf.num_row_groups):
        X, _ = read_matrix(pf, i, names)
        X64 = X.astype(np.float64)
        total += X64.sum(axis=0)
        total_sq += np.einsum("ij,ij->j", X64, X64)
        n += X.shape[0]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


# ---------------------------------------------------------------------------- held-out loss


def log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss from margins, the same formula streamsgd's ``evaluate`` uses."""
    y = y.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def heldout_matrix(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pf = pq.ParquetFile(path, pre_buffer=False)
    parts = [read_matrix(pf, i, names) for i in range(pf.num_row_groups)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def true_model_loss(info: dict, X: np.ndarray, y: np.ndarray) -> float:
    """Held-out log loss of the weights the data was drawn from: the floor any fit can reach."""
    Z = (X.astype(np.float64) - np.array(info["loc"])) / np.array(info["scale"])
    return log_loss(Z @ np.array(info["coef"][0]) + info["intercept"][0], y)


# ---------------------------------------------------------------------------- driver


def warm_up(features: int) -> None:
    """Load (or compile) the Numba kernels on a tiny array so no timed run pays for it."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4096, features)).astype(np.float32)
    y = (rng.random(4096) < 0.5).astype(np.float32)
    train.fit(streamsgd.ArraySource(X, y, chunk_rows=1024), epochs=1, batch=BATCH, model="logistic")


def machine() -> dict[str, Any]:
    import numba
    import sklearn

    return provenance.machine(numpy=np.__version__, pyarrow=pa.__version__, numba=numba.__version__,
                              sklearn=sklearn.__version__, streamsgd=streamsgd.__version__)


def print_table(rows: int, medians: dict[str, float], losses: dict[str, float]) -> None:
    limit, sk = rows / medians["decode"], rows / medians["sklearn_batch"]
    print(f"{'method':<38}{'seconds':>9}{'rows/s':>13}{'vs (a)':>9}{'vs (d)':>9}{'held-out loss':>15}")
    for key, label in LABELS.items():
        rate = rows / medians[key]
        loss = f"{losses[key]:.4f}" if key in losses else ""
        print(f"{label:<38}{medians[key]:>9.2f}{rate:>13,.0f}{rate / limit:>9.2f}{rate / sk:>9.2f}{loss:>15}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]  # other work on a shared machine skews timings; record it
    args.out.mkdir(parents=True, exist_ok=True)
    shape = f"{args.rows}x{args.features}"
    train = args.out / f"train-{shape}.parquet"
    heldout_rows = max(10_000, args.rows // 20)
    heldout = args.out / f"heldout-{heldout_rows}x{args.features}.parquet"

    t0 = time.perf_counter()
    info, made = ensure_file(train, args.rows, args.features, TRAIN_SAMPLE_SEED, args.regenerate)
    ensure_file(heldout, heldout_rows, args.features, HELDOUT_SAMPLE_SEED, args.regenerate)
    print(f"data: {train} ({train.stat().st_size / 2**20:,.0f} MiB on disk, "
          f"{'written' if made else 'reused'} in {time.perf_counter() - t0:.1f} s); held-out {heldout_rows:,} rows")

    names = feature_names(train)
    if not made:
        decode_only(train)  # untimed: a reused file is brought into the page cache first
    warm_up(args.features)
    t0 = time.perf_counter()
    mean, std = column_stats(train, names)
    stats_seconds = time.perf_counter() - t0

    loop_rates: list[float] = []
    last: dict[str, Any] = {}  # the latest trained model of each learner, for the held-out loss

    def run_streamsgd() -> None:
        result = streamsgd_fit(train)
        loop_rates.append(result.summary["rows_per_second"])
        last["streamsgd"] = result.model

    def run_sklearn(key: str, batch: int | None) -> None:
        last[key] = sklearn_fit(train, names, mean, std, batch)

    methods: dict[str, Callable[[], Any]] = {
        "decode": lambda: decode_only(train),
        "convert": lambda: decode_convert(train, names),
        "streamsgd": run_streamsgd,
        "sklearn_batch": lambda: run_sklearn("sklearn_batch", BATCH),
        "sklearn_group": lambda: run_sklearn("sklearn_group", None),
    }
    times: dict[str, list[float]] = {key: [] for key in methods}
    for run in range(args.runs):
        for key, method in methods.items():
            t0 = time.perf_counter()
            method()
            times[key].append(time.perf_counter() - t0)
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    medians = {key: statistics.median(v) for key, v in times.items()}
    medians["streamsgd_loop"] = args.rows / statistics.median(loop_rates)

    X_test, y_test = heldout_matrix(heldout, names)
    losses = {"streamsgd": evaluate(last["streamsgd"], streamsgd.open_source(str(heldout)))["loss"]}
    for key in ("sklearn_batch", "sklearn_group"):
        losses[key] = log_loss(last[key].decision_function((X_test - mean) / std), y_test)
    floor = true_model_loss(info, X_test, y_test)

    print(f"\n{args.rows:,} rows x {args.features} features, batch {BATCH}, logistic, 1 epoch, "
          f"median of {args.runs} run(s); uncompressed Parquet, row groups of {ROW_GROUP_ROWS:,} rows, warm page cache")
    print_table(args.rows, medians, losses)
    print(f"held-out log loss of the true weights (floor): {floor:.4f}; "
          f"sklearn's mean/std pass (untimed above) took {stats_seconds:.2f} s")

    report = {
        "benchmark": "throughput",
        "quick": args.quick,
        "rows": args.rows, "features": args.features, "batch": BATCH, "runs": args.runs,
        "row_group_rows": ROW_GROUP_ROWS, "heldout_rows": heldout_rows,
        "train_file": str(train), "train_file_bytes": train.stat().st_size,
        "seconds": times,
        "median_seconds": medians,
        "rows_per_second": {k: args.rows / v for k, v in medians.items()},
        "ratio_vs_decode": {k: medians["decode"] / v for k, v in medians.items()},
        "ratio_vs_sklearn_batch": {k: medians["sklearn_batch"] / v for k, v in medians.items()},
        "streamsgd_loop_rows_per_second": loop_rates,
        "heldout_log_loss": {**losses, "true_weights": floor},
        "sklearn_stats_seconds": stats_seconds,
        "labels": LABELS,
        "machine": machine(),
        "total_seconds": time.perf_counter() - started,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }
    json_path = args.out / ("throughput-quick.json" if args.quick else "throughput.json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {json_path} (total {report['total_seconds']:.0f} s; 1-min load average "
          f"{load_start:.1f} at start, {report['load_average_1min']['end']:.1f} at end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
