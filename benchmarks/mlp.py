"""One epoch of an MLP (d = 100 -> 64 ReLU -> 1, logistic, batch 512) from one Parquet file:
``streamsgd fit --hidden 64`` against PyTorch and scikit-learn, by rows/s and held-out loss.

The file: ``--rows`` rows of 100 float32 features from ``streamsgd generate`` (logistic task),
uncompressed, 65,536-row groups; a held-out file of fresh rows from the same true weights.
Every learner trains one epoch at batch 512 with plain SGD at η = 0.05 (streamsgd's default
MLP step, ``train.mlp.MLP_LR``) and the same L2 1e-4 on the weights; all see standardised
features (the peers with a mean/std computed beforehand, outside the timing).

  (f) ``streamsgd.train.fit`` with ``hidden=(64,)``: the command's run, end to end (open,
      plan, standardise from the first window, the epoch), its defaults otherwise
      (the running average over the second half, the 512MiB memory limit).
  (f') the same run's training loop alone (its summary's ``rows_per_second``).
  (f2) (f) with ``--no-average``: the last iterate, whose held-out loss is the peers' kind.
  (t) PyTorch (CPU) ``nn.Sequential(Linear(100, 64), ReLU(), Linear(64, 1))`` +
      ``optim.SGD(lr=0.05, weight_decay=1e-4)`` + ``BCEWithLogitsLoss``, fed as a user writes it:
      ``ParquetFile.iter_batches(65_536)`` -> a row-major float32 matrix, standardised -> a
      tensor -> shuffled within (``torch.randperm``) -> 512-row slices. Wall clock.
  (m) streamsgd's compute alone: the same fit on the rows already in memory
      (``ArraySource`` of the decoded matrix), its loop's ``rows_per_second``.
  (tm) PyTorch's compute alone: the same network and optimizer over the same rows already
      in memory as shuffled 512-row tensors (made before the clock starts).
  (ti) (tm) started from streamsgd's own initial parameters (``compute.mlp.init_params`` for the
      seed: PyTorch's weight distribution, zero biases): whether a held-out gap comes from the
      trainer or from the starting point.
  (s) scikit-learn ``MLPClassifier(hidden_layer_sizes=(64,), solver="sgd",
      learning_rate_init=0.05, momentum=0, alpha=1e-4 * 512, batch_size=512).partial_fit``
      on each 512-row slice of each shuffled row group (its penalty is alpha/2 ‖W‖² / n per
      call of n = 512 rows, hence alpha = l2 · 512).

Threads: PyTorch runs with ``torch.set_num_threads(1)`` (``--torch-threads``) and scikit-learn
under ``threadpool_limits(1)``: one thread computes, as streamsgd's single trainer thread does,
while pyarrow decodes on its own threads (streamsgd's readers likewise). On a shared 2-core
machine more compute threads only contend.

Methods run round-robin (f, f2, t, m, tm, ti, s, f, ...), median of ``--runs``; ratios are between
medians of the same invocation. Before anything large is loaded, ``streamsgd fit --hidden 64
--json`` runs as a child process on files of ``--rss-rows`` rows at ``--memory-limit 128MiB``
and reports its peak RSS (VmHWM), which must not grow with N.

Usage:
  python benchmarks/mlp.py                  # 1,048,576 rows, 3 runs; RSS at 262k / 1M / 4M rows
  python benchmarks/mlp.py --quick          # 131,072 rows, 1 run, RSS at 131k / 262k
  python benchmarks/mlp.py --seeds 5        # and the held-out losses over seeds 0-4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

import _common

BATCH, HIDDEN, FEATURES, GROUP_ROWS = 512, 64, 100, 65_536
LR, L2, SEED = 0.05, 1e-4, 0
TORCH_THREADS = 1
RSS_LIMIT = "128MiB"
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def ensure_file(path: Path, rows: int, sample_seed: int) -> None:
    """The logistic file of ``rows`` rows from ``generate`` unless it is already there."""
    if path.exists():
        try:
            info = json.loads(pq.read_metadata(path).metadata[b"streamsgd"])
            if _common.is_uncompressed(path, rows, FEATURES, GROUP_ROWS) and info.get("sample_seed") == sample_seed:
                return
        except Exception:  # foreign or unreadable: write it again
            pass
    from streamsgd.tools.generate import generate

    generate(str(path), rows=rows, features=FEATURES, task="logistic", seed=SEED, sample_seed=sample_seed,
             row_group_rows=GROUP_ROWS, compression="none")


def streamsgd_command() -> tuple[list[str], dict[str, str]]:
    """``python -m streamsgd`` of the copy this script imports (found without importing it, so
    this process stays small), and the environment that makes the child import the same copy."""
    spec = importlib.util.find_spec("streamsgd")
    assert spec is not None and spec.origin is not None, "streamsgd is not importable"
    root = str(Path(spec.origin).resolve().parents[1])
    return [sys.executable, "-m", "streamsgd"], {**os.environ, "PYTHONPATH": root}


def peak_rss(command: list[str], env: dict[str, str], path: Path, out: Path) -> dict[str, Any]:
    """Peak RSS and wall time of ``streamsgd fit --hidden 64`` in a child process."""
    t0 = time.perf_counter()
    proc = subprocess.run([*command, "fit", str(path), "--hidden", str(HIDDEN), "--epochs", "1", "--batch", str(BATCH),
                           "--memory-limit", RSS_LIMIT, "-o", str(out / "rss-model.npz"), "--json"],
                          capture_output=True, text=True, check=True, env=env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_bytes": summary["peak_rss_bytes"], "seconds": time.perf_counter() - t0}


def matrix(record_batch: Any, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A record batch as a row-major float32 matrix and its float32 target."""
    X = np.asarray(record_batch.select(names).to_tensor(row_major=True), dtype=np.float32)
    return X, record_batch.column("y").to_numpy().astype(np.float32)


def column_stats(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and population std over the file (float32, as the peers use them)."""
    n, total, total_sq = 0, np.zeros(len(names)), np.zeros(len(names))
    for rb in pq.ParquetFile(path).iter_batches(GROUP_ROWS, columns=names + ["y"]):
        X = matrix(rb, names)[0].astype(np.float64)
        total, total_sq, n = total + X.sum(axis=0), total_sq + np.einsum("ij,ij->j", X, X), n + X.shape[0]
    mean = total / n
    return mean.astype(np.float32), np.sqrt(np.maximum(total_sq / n - mean**2, 1e-12)).astype(np.float32)


def streamsgd_fit(source: Any, average: bool = True, seed: int = SEED) -> Any:
    """(f)/(f2)/(m) One epoch of ``fit --hidden 64`` on a source (``average``: ``--no-average``
    when False); the FitResult."""
    from streamsgd.config import FitConfig
    from streamsgd.train import fit

    return fit(source, FitConfig(model="logistic", hidden=(HIDDEN,), epochs=1, batch=BATCH, seed=seed,
                                 average=average))


def torch_network(streamsgd_init: bool = False, seed: int = SEED) -> tuple[Any, Any, Any]:
    """The peers' network, optimizer and loss, from a fixed seed; ``streamsgd_init``: the
    parameters streamsgd's run starts from (``compute.mlp.init_params`` on the seed's
    ``MLP_INIT`` stream, as ``train.mlp`` draws them) instead of PyTorch's own draw."""
    import torch

    from streamsgd.compute.mlp import init_params, layout
    from streamsgd.plan.rng import MLP_INIT, stream

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
    if streamsgd_init:
        lay = layout(FEATURES, (HIDDEN,), 1)
        theta = init_params(lay, stream(seed, MLP_INIT))
        with torch.no_grad():
            for linear, (n_in, n_out, w_at, b_at) in zip((model[0], model[2]), lay):
                linear.weight.copy_(torch.tensor(theta[w_at:b_at].reshape(n_out, n_in)))
                linear.bias.copy_(torch.tensor(theta[b_at:b_at + n_out]))
    return model, torch.optim.SGD(model.parameters(), lr=LR, weight_decay=L2), torch.nn.BCEWithLogitsLoss()


def torch_step(model: Any, optimizer: Any, loss_fn: Any, X: Any, y: Any) -> None:
    optimizer.zero_grad()
    loss_fn(model(X).squeeze(1), y).backward()
    optimizer.step()


def torch_from_pyarrow(path: Path, names: list[str], mean: np.ndarray, std: np.ndarray) -> Any:
    """(t) The loop a user writes: record batches -> standardised tensors -> shuffled -> 512-row slices."""
    import torch

    model, optimizer, loss_fn = torch_network()
    for rb in pq.ParquetFile(path).iter_batches(GROUP_ROWS, columns=names + ["y"]):
        X, y = matrix(rb, names)
        Xt, yt = torch.from_numpy((X - mean) / std), torch.from_numpy(y)
        order = torch.randperm(Xt.shape[0])
        Xt, yt = Xt[order], yt[order]
        for lo in range(0, Xt.shape[0], BATCH):
            torch_step(model, optimizer, loss_fn, Xt[lo:lo + BATCH], yt[lo:lo + BATCH])
    return model


def torch_batches(Xs: np.ndarray, y: np.ndarray) -> list[tuple[Any, Any]]:
    """(tm)'s input, made before the clock: the standardised rows, shuffled, as 512-row tensors."""
    import torch

    order = np.random.default_rng(SEED).permutation(len(y))
    Xt, yt = torch.from_numpy(np.ascontiguousarray(Xs[order])), torch.from_numpy(y[order])
    return [(Xt[lo:lo + BATCH], yt[lo:lo + BATCH]) for lo in range(0, len(y), BATCH)]


def torch_in_memory(batches: list[tuple[Any, Any]], streamsgd_init: bool = False, seed: int = SEED) -> Any:
    """(tm)/(ti) PyTorch's compute alone: one epoch over batches already in memory."""
    model, optimizer, loss_fn = torch_network(streamsgd_init, seed)
    for X, y in batches:
        torch_step(model, optimizer, loss_fn, X, y)
    return model


def sklearn_partial_fit(path: Path, names: list[str], mean: np.ndarray, std: np.ndarray) -> Any:
    """(s) ``MLPClassifier.partial_fit`` per 512-row slice of each shuffled, standardised row group."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), solver="sgd", learning_rate_init=LR, momentum=0.0,
                        alpha=L2 * BATCH, batch_size=BATCH, random_state=SEED)
    rng, classes = np.random.default_rng(SEED), np.array([0.0, 1.0])
    with threadpool_limits(1):
        for rb in pq.ParquetFile(path).iter_batches(GROUP_ROWS, columns=names + ["y"]):
            X, y = matrix(rb, names)
            order = rng.permutation(len(y))
            X, y = ((X - mean) / std)[order], y[order]
            for lo in range(0, len(y), BATCH):
                clf.partial_fit(X[lo:lo + BATCH], y[lo:lo + BATCH], classes=classes)
    return clf


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def heldout_loss(key: str, model: Any, X: np.ndarray, Xs: np.ndarray, y: np.ndarray) -> float:
    """Held-out log loss: streamsgd's model on raw rows (it keeps its scaling), peers' on standardised."""
    if key in ("fit", "fit_last", "memory"):
        return log_loss(model.predict_proba(X), y)
    if key == "sklearn":
        return log_loss(model.predict_proba(Xs)[:, 1], y)
    import torch

    with torch.no_grad():
        return log_loss(torch.sigmoid(model(torch.from_numpy(Xs)).squeeze(1)).numpy(), y)


def heldout_by_seed(seeds: int, train: Path, batches: list[tuple[Any, Any]],
                    test: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    """``--seeds``: the held-out loss of (f), (f2), (tm) and (ti) for seeds 0 … seeds − 1, not
    timed. streamsgd's seed draws its initialisation and its shuffle; PyTorch's its
    initialisation (streamsgd's for (ti)) over (tm)'s one shuffle."""
    import streamsgd

    out: dict[str, list[float]] = {"fit": [], "fit_last": [], "torch_memory": [], "torch_init": []}
    for seed in range(seeds):
        out["fit"].append(heldout_loss("fit", streamsgd_fit(streamsgd.open_source(str(train)), True, seed).model, *test))
        out["fit_last"].append(heldout_loss("fit_last", streamsgd_fit(streamsgd.open_source(str(train)), False,
                                                                      seed).model, *test))
        out["torch_memory"].append(heldout_loss("torch_memory", torch_in_memory(batches, False, seed), *test))
        out["torch_init"].append(heldout_loss("torch_init", torch_in_memory(batches, True, seed), *test))
        print(f"  seed {seed}: held-out " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in out.items()), flush=True)
    print("  medians: " + ", ".join(f"{k} {statistics.median(v):.4f}" for k, v in out.items()), flush=True)
    return out


def read_all(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [matrix(rb, names) for rb in pq.ParquetFile(path).iter_batches(GROUP_ROWS, columns=names + ["y"])]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_048_576)
    p.add_argument("--heldout-rows", type=int, default=65_536)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=0, help="also the held-out loss over seeds 0 … N-1 (not timed)")
    p.add_argument("--rss-rows", default="262144,1048576,4194304", help="file sizes for the peak-RSS check")
    p.add_argument("--torch-threads", type=int, default=TORCH_THREADS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="131,072 rows, 1 run, RSS at 131k and 262k rows")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.runs, args.rss_rows, args.heldout_rows = 131_072, 1, "131072,262144", 16_384
    args.rss_rows = [int(n) for n in args.rss_rows.split(",") if n]
    return args


def rss_check(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Peak RSS of the command at each size, measured before this process loads anything large."""
    command, env = streamsgd_command()
    out: dict[int, dict[str, Any]] = {}
    for rows in args.rss_rows:
        path = args.out / f"mlp-train-{rows}x{FEATURES}.parquet"
        ensure_file(path, rows, 0)
        peak_rss(command, env, path, args.out)  # warm: the page cache and Numba's cache
        out[rows] = peak_rss(command, env, path, args.out)
        print(f"  fit --hidden 64 --memory-limit {RSS_LIMIT}, {rows:>9,} rows: peak RSS "
              f"{_common.mib(out[rows]['peak_rss_bytes'])}, {out[rows]['seconds']:.1f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started, load = _common.begin(args.out)
    print(f"mlp.py: d = {FEATURES}, hidden {HIDDEN}, batch {BATCH}, one epoch; 1-min load {load:.1f}", flush=True)
    rss = rss_check(args)
    train = args.out / f"mlp-train-{args.rows}x{FEATURES}.parquet"
    heldout = args.out / f"mlp-heldout-{args.heldout_rows}x{FEATURES}.parquet"
    ensure_file(train, args.rows, 0)
    ensure_file(heldout, args.heldout_rows, 1)
    import torch

    import streamsgd

    torch.set_num_threads(args.torch_threads)
    names = [c for c in pq.read_schema(train).names if c != "y"]
    mean, std = column_stats(train, names)
    X_mem, y_mem = read_all(train, names)
    batches = torch_batches((X_mem - mean) / std, y_mem)
    X_test, y_test = read_all(heldout, names)
    Xs_test = (X_test - mean) / std
    streamsgd_fit(streamsgd.ArraySource(X_mem[:4096], y_mem[:4096], chunk_rows=1024))  # load Numba's cache
    torch_in_memory(batches[:4])  # PyTorch's first call sets up what later calls reuse
    methods: dict[str, Callable[[], Any]] = {
        "fit": lambda: streamsgd_fit(streamsgd.open_source(str(train))),
        "fit_last": lambda: streamsgd_fit(streamsgd.open_source(str(train)), average=False),
        "torch": lambda: torch_from_pyarrow(train, names, mean, std),
        "memory": lambda: streamsgd_fit(streamsgd.ArraySource(X_mem, y_mem, chunk_rows=GROUP_ROWS)),
        "torch_memory": lambda: torch_in_memory(batches),
        "torch_init": lambda: torch_in_memory(batches, streamsgd_init=True),
        "sklearn": lambda: sklearn_partial_fit(train, names, mean, std),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    loops: dict[str, list[float]] = {"fit": [], "fit_last": [], "memory": []}
    last: dict[str, Any] = {}
    for run in range(args.runs):
        for key, method in methods.items():
            seconds, result = _common.seconds(method)
            times[key].append(seconds)
            if key in loops:
                loops[key].append(result.summary["rows_per_second"])
                result = result.model
            last[key] = result
            print(f"  run {run + 1} {key:<13}{seconds:8.2f} s", flush=True)
    result = report(args, started, load, rss, times, loops, last, (X_test, Xs_test, y_test))
    if args.seeds:
        result["heldout_by_seed"] = heldout_by_seed(args.seeds, train, batches, (X_test, Xs_test, y_test))
        (args.out / "mlp.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def report(args: argparse.Namespace, started: float, load: float, rss: dict[int, dict[str, Any]],
           times: dict[str, list[float]], loops: dict[str, list[float]], last: dict[str, Any],
           test: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Print the table and the issue's ratios; write the JSON next to the data."""
    med = _common.medians(times)
    rate = {k: args.rows / v for k, v in med.items()}
    rate["fit_loop"], rate["memory"] = statistics.median(loops["fit"]), statistics.median(loops["memory"])
    losses = {k: heldout_loss(k, m, *test) for k, m in last.items()}
    labels = {"fit": "(f) streamsgd fit --hidden 64, end to end", "fit_last": "(f2) the same, --no-average",
              "torch": "(t) PyTorch fed from pyarrow",
              "memory": "(m) streamsgd loop, rows in memory", "torch_memory": "(tm) PyTorch, batches in memory",
              "torch_init": "(ti) (tm) from streamsgd's initial parameters",
              "sklearn": "(s) scikit-learn MLPClassifier.partial_fit"}
    print(f"\n{args.rows:,} rows x {FEATURES}, median of {args.runs}; torch threads {args.torch_threads}")
    print(f"{'method':<46}{'seconds':>9}{'rows/s':>12}{'held-out':>10}")
    for key, label in labels.items():
        print(f"{label:<46}{med[key]:9.2f}{rate[key]:12,.0f}{losses[key]:10.4f}")
    print(f"{'(f) its training loop alone':<46}{'':>9}{rate['fit_loop']:12,.0f}")
    ratios = {"fit vs PyTorch from pyarrow (>= 2)": med["torch"] / med["fit"],
              "fit --no-average vs PyTorch from pyarrow": med["torch"] / med["fit_last"],
              "fit vs scikit-learn partial_fit (>= 10)": med["sklearn"] / med["fit"],
              "compute alone vs PyTorch in memory (>= 0.7)": rate["memory"] / rate["torch_memory"]}
    for name, value in ratios.items():
        print(f"{name:<46}{value:9.2f}x")
    peaks = [v["peak_rss_bytes"] for v in rss.values()]
    if peaks:  # --rss-rows "" skips the check
        print(f"peak RSS at {', '.join(f'{n:,}' for n in rss)} rows: {', '.join(_common.mib(p) for p in peaks)} "
              f"(largest / smallest {max(peaks) / min(peaks):.2f})")
    result = {"rows": args.rows, "runs": args.runs, "load_1min": load, "torch_threads": args.torch_threads,
              "seconds": times, "rows_per_second": rate, "heldout_loss": losses, "ratios": ratios,
              "peak_rss": {str(n): v for n, v in rss.items()}, "versions": _common.versions(),
              "wall_seconds": time.perf_counter() - started}
    (args.out / "mlp.json").write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
