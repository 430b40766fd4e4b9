"""Training on a Dask cluster (``--workers K``) against the single process on the same file.

One file (2,000,000 x 20 logistic, uncompressed, row groups of 65,536 rows; 200,000 rows with
``--quick``), one epoch at each per-shard batch B in 512, 4,096 and 32,768, these methods:

  single   ``fit`` in one process, no shards (batch B): the reference for rows/s;
  s1       ``--shards 1`` in process (the sharded run's machinery with its in-process backend:
           one round = one batch of B rows, the same model as ``single``);
  s1k1     ``--shards 1 --workers 1``: the same rounds on a LocalCluster of one worker;
  s2       ``--shards 2`` in process (two shards' batches one after another, one update of 2B rows);
  s2k2     ``--shards 2 --workers 2``: the same rounds on a LocalCluster of two workers.

The clusters are the ones ``--workers K`` starts (``integrations.dask.DaskCluster``: single-threaded
worker processes, ``NUMBA_NUM_THREADS=1``, Dask memory limit = the share of ``--memory-limit`` plus
1 GiB), started once before the timings and given one warm-up fit on a 4,096-row file, so that
the timed fits only place their actors: rows/s is the summary's ``rows_per_second`` (the training
loop: from the run's start to its end, less Numba's compilation; the cluster's start is outside
it, and is timed separately, with the first fit on fresh workers). A sharded run reads its first
window once, on shard 0's lane (in process or on its worker), as the single process does. Methods
run round-robin (every batch, every method, then the next run); each figure is the median of
``--runs`` runs.

Per fit, the time per update t = loop seconds / updates. Compute per update
c(B) = t of ``s1`` (one shard's batch and the update, in process); round latency round(1) =
t(s1k1) - c(B); round(2) = t(s2k2) - c(B) (the two workers compute their shards at once, each one
shard's batch); the per-extra-actor increment = round(2) - round(1) = t(s2k2) - t(s1k1). These,
and the marks' ratios, are medians of each run's own difference or ratio (the five methods of a
batch run back to back), which drift on a shared machine disturbs less. "Empty rounds": one
no-op actor per worker, called as ``DaskBackend`` calls its actors, answering a gradient-sized
array: the round trip of the messages alone. The projection to K = 8 ... 256
workers (one shard each, per-shard batch B): rows/s(K) = K B / (c(B) + round(1) + (K - 1) inc),
efficiency = rows/s(K) / (K B / c(B)), with round(1) and inc from the B = 512 runs (the round's
messages carry d + 1 numbers whatever B is, and at B = 512 the difference of the two times is
least disturbed by compute). It assumes a worker per core and the driver's per-actor cost
growing linearly, which a 2-core machine cannot check: it is a projection, not a measurement.

``--sync models`` (local SGD): on the K = 2 cluster, two shards at per-shard batch 512, one
epoch with ``--sync-every`` H in 1, 10, 100, 1000 and auto, next to ``--sync gradients`` on the
same cluster and the single process: rows/s (median of runs; each run's H, as auto's choice is
timed), the loss against rows processed (the progress records' interval loss, every 10 updates:
each row's loss under a model that had not yet learned from it; figure
``figures/cluster_sync_every.png``) and the final model's log loss on 200,000 fresh rows from
the same true weights.

K = 1 with local SGD (``--only k1``): ``--sync models --sync-every auto`` on one shard, in process,
on the K = 1 cluster, and on it with H = one epoch, ``--k1-epochs`` epochs of the file at per-shard
batch 512, against the single process: the paired median cost 1 - rows/s / rows/s(single).

Hashed tables (``--only hashed``): 2 shards at per-shard batch 512 on a file of numeric and
categorical columns (``--hashed-rows``), the categorical columns excluded or hashed into 2^16 and
2^20 weights, ``--sync gradients`` and ``--sync models --sync-every 10``, in process and on the K = 2
cluster: the loop's seconds per round, and the cluster's cost per round (K = 2 less in process),
whose growth with the table is the cost of shipping and reducing the hashed state.

Memory: each worker's RSS when the cluster has started (bare), its peak after the warm-up fit on
the small file (its idle footprint: the interpreter, Dask, streamsgd and every code path of a
fit, with negligible data), and its peak (Linux's VmHWM, read on the worker by ``client.run``)
after every timed fit (the sweep's too), against its share of ``--memory-limit`` (the trainer gives each shard
``memory_limit // S``; a worker hosts one shard here) plus that idle footprint.

Usage:
  python benchmarks/cluster.py              # 2M x 20, batches 512/4096/32768, 5 runs
  python benchmarks/cluster.py --quick      # 200k x 20, 1 run (make bench)
  python benchmarks/cluster.py --only k1 --runs 5 --k1-epochs 10   # the K = 1 local-SGD part alone

From a git worktree whose venv's editable install points at another checkout, prefix
``PYTHONPATH=.``: the workers must import the streamsgd being measured (checked at start).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import _common  # benchmarks/ is on sys.path when a script there runs
import provenance
from streamsgd.config import DEFAULT_MEMORY_LIMIT, FitConfig, parse_bytes
from streamsgd.integrations.dask import DaskCluster
from streamsgd.sources import open_source
from streamsgd.train.inputs import Hooks
from streamsgd.train.shards import InProcess
from streamsgd.train.trainer import fit

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
ROW_GROUP_ROWS = 65536
#: the warm-up file: every code path of a fit on the fresh workers, no data to speak of; four
#: row groups, so that each of two shards reads some
WARM_ROWS, WARM_GROUP_ROWS = 4096, 1024
WARM_ROUNDS = 20
BATCHES = (512, 4096, 32768)
PROJECT_K = (8, 16, 32, 64, 128, 256)
#: the batch whose runs give the cost model's round latency and per-actor increment
MODEL_BATCH = 512
LABELS = {
    "single": "fit, one process (no shards)",
    "s1": "--shards 1, in process",
    "s1k1": "--shards 1 --workers 1",
    "s2": "--shards 2, in process",
    "s2k2": "--shards 2 --workers 2",
}
#: method -> (shards, workers: None = in process)
METHODS: dict[str, tuple[int | None, int | None]] = {
    "single": (None, None), "s1": (1, None), "s1k1": (1, 1), "s2": (2, None), "s2k2": (2, 2)}
#: --sync models: the sweep of --sync-every on the K = 2 cluster (two shards, per-shard batch 512),
#: against --sync gradients on the same cluster and the single process
SYNC_EVERY: tuple[int | str, ...] = (1, 10, 100, 1000, "auto")
SWEEP_BATCH = 512
#: the sweep's models are also scored after only this many rows (a ``--steps`` run each, once)
BUDGET_ROWS = (16_384, 131_072, 1_048_576)
HELDOUT_ROWS, HELDOUT_SAMPLE_SEED = 200_000, 1  # fresh rows from the training file's true weights
FIGURES = Path(__file__).resolve().parent / "figures"
#: local SGD at K = 1 (--sync models --sync-every auto, per-shard batch SWEEP_BATCH): epochs per fit,
#: so that the start (reading the first window, the standardisation) weighs as in a longer run
K1_EPOCHS = 3
#: the hashed tables' rounds: a file of HASHED_ROWS rows (--hashed-rows), HASHED_FEATURES numeric and HASHED_COLUMNS
#: categorical columns (HASHED_LEVELS levels each), trained with 2**bits weights for bits in HASH_BITS
HASHED_ROWS, HASHED_FEATURES, HASHED_COLUMNS, HASHED_LEVELS = 400_000, 10, 3, 50_000
HASH_BITS = (16, 20)
HASHED_EVERY = 10  # --sync-every of the hashed local-SGD fits (40 rounds an epoch)
#: done-when marks of issue 17 item 7 (printed and recorded; this script measures, the README judges)
MAX_K1_COST = 0.10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="training rows (default 2,000,000)")
    p.add_argument("--features", type=int, default=20, help="features (default 20)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)),
                   help="comma-separated per-shard batches (default 512,4096,32768)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per method; medians are reported (default 5)")
    p.add_argument("--memory-limit", default=str(DEFAULT_MEMORY_LIMIT),
                   help="--memory-limit of every fit (default: fit's default, 512 MiB)")
    p.add_argument("--empty-rounds", type=int, default=2000,
                   help="timed rounds of the no-op actors per run and K (default 2,000)")
    p.add_argument("--quick", action="store_true", help="small and fast: 200,000 rows, 1 run, 300 empty rounds")
    p.add_argument("--only", default="", help="comma-separated parts to run alone: k1 (local SGD at K = 1), "
                   "hashed (the hashed tables' rounds); default: everything")
    p.add_argument("--hashed-rows", type=int, default=HASHED_ROWS,
                   help="rows of the hashed tables' file (default 400,000; 100,000 with --quick)")
    p.add_argument("--k1-epochs", type=int, default=K1_EPOCHS, help="epochs of each K = 1 local-SGD fit (default 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the data files and the JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.runs, args.empty_rounds, args.hashed_rows = 200_000, 1, 300, 100_000
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.memory_limit = parse_bytes(args.memory_limit)
    return args


def ensure_file(path: Path, rows: int, features: int, row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    if not _common.is_uncompressed(path, rows, features, row_group_rows):
        _common.write_uncompressed(path, rows, features, row_group_rows)
    return path


def worker_memory() -> dict[str, int]:
    """This process's RSS and peak RSS (VmHWM) in bytes: run on each worker by ``client.run``."""
    import os

    out = {"pid": os.getpid()}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024  # the kernel reports kB
    return out


def streamsgd_path() -> str:
    """Where ``streamsgd`` was imported from (compared between the driver and the workers)."""
    import streamsgd

    return str(streamsgd.__file__)


class Echo:
    """A trainer actor without the training: answers a round's parameters with a gradient-sized
    array, so that a round of these is the messages' round trip alone (no data, no compute)."""

    def accumulate(self, epoch: int, rnd: int, theta: Any) -> list[tuple[Any, int, float, float]]:
        return [(theta.copy(), 0, 0.0, 0.0)]


def empty_round(cluster: DaskCluster, rounds: int, features: int) -> float:
    """Seconds per round of one :class:`Echo` actor per worker, called as ``DaskBackend`` calls
    its actors (every call sent, then every answer awaited in order)."""
    import numpy as np

    client = cluster.client
    futures = [client.submit(Echo, actor=True, workers=[w], pure=False) for w in sorted(client.nthreads())]
    actors = [future.result() for future in futures]
    theta = np.zeros(features + 1)
    t0 = 0.0
    for rnd in range(-WARM_ROUNDS, rounds):  # the first rounds open the connections: not timed
        if rnd == 0:
            t0 = time.perf_counter()
        for call in [actor.accumulate(0, rnd, theta) for actor in actors]:
            call.result()
    seconds = (time.perf_counter() - t0) / rounds
    del actors, futures
    return seconds


def one_fit(path: Path, batch: int, shards: int | None, backend: Any, limit: int) -> dict[str, Any]:
    """One epoch: the summary's rows/s and the training loop's time per update."""
    config = FitConfig(model="logistic", batch=batch, epochs=1, shards=shards, memory_limit=limit)
    s = fit(open_source(str(path)), config, hooks=Hooks(backend=backend)).summary
    loop_seconds = s["rows_seen"] / s["rows_per_second"]
    return {"rows_per_second": s["rows_per_second"], "updates": s["iterations"], "rows_seen": s["rows_seen"],
            "seconds_per_update": loop_seconds / max(s["iterations"], 1), "loss": s["loss"]}


def sweep_fit(path: Path, heldout: Path, every: int | str | None, cluster: DaskCluster | None,
              limit: int, rows: int | None = None) -> dict[str, Any]:
    """One epoch at batch 512 (or its first ``rows`` rows: ``--steps``): ``every`` None = the
    single process, "gradients" = --sync gradients on two shards, else --sync models
    --sync-every ``every`` on two shards; the rows/s, the progress records' (rows seen,
    interval loss) and the held-out loss."""
    from streamsgd.tools.inference import evaluate

    curve: list[tuple[int, float]] = []

    def progress(record: dict[str, Any]) -> None:
        if record.get("event") == "progress":
            curve.append((int(record["rows_seen"]), float(record["loss"])))

    options: dict[str, Any] = {} if every is None else {"shards": 2}
    if rows is not None:  # an update takes B rows from each shard (a local one too)
        options["steps"] = rows // (SWEEP_BATCH * options.get("shards", 1))
    if every not in (None, "gradients"):
        options.update(sync="models", sync_every=every)
    # a progress record every 10 updates (an execution-only option: the model is the same)
    config = FitConfig(model="logistic", batch=SWEEP_BATCH, epochs=1, memory_limit=limit, log_every=10, **options)
    result = fit(open_source(str(path)), config, hooks=Hooks(backend=cluster if every is not None else None,
                                                             on_progress=progress))
    s = result.summary
    return {"rows_per_second": s["rows_per_second"], "updates": s["iterations"], "sync_every": s.get("sync_every"),
            "curve": curve, "train_loss": s["loss"], "heldout_loss": evaluate(result.model, open_source(str(heldout)))["loss"]}


def sweep(args: argparse.Namespace, path: Path, heldout: Path, cluster: DaskCluster) -> dict[str, Any]:
    """The --sync-every sweep, round-robin over ``--runs``: per method, median rows/s, each
    run's H (auto's choice is timed, so it may differ), the last run's curve and losses."""
    methods: dict[str, int | str | None] = {"single": None, "gradients": "gradients",
                                             **{f"H={h}": h for h in SYNC_EVERY}}
    raw: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for run in range(args.runs):
        for name, every in methods.items():
            raw[name].append(sweep_fit(path, heldout, every, cluster, args.memory_limit))
        print(f"sweep run {run + 1}/{args.runs}: " + ", ".join(
            f"{m} {v[-1]['rows_per_second']:,.0f}" for m, v in raw.items()) + " rows/s", flush=True)
    budgets = [r for r in BUDGET_ROWS if r < args.rows]
    at = {name: {str(r): sweep_fit(path, heldout, every, cluster, args.memory_limit, r) for r in budgets}
          for name, every in methods.items()}
    out = {}
    for name, runs in raw.items():
        last = runs[-1]
        out[name] = {"rows_per_second": statistics.median(r["rows_per_second"] for r in runs),
                     "sync_every": [r["sync_every"] for r in runs], "updates": last["updates"],
                     "heldout_loss": last["heldout_loss"], "train_loss": last["train_loss"], "curve": last["curve"],
                     "heldout_loss_after": {r: f["heldout_loss"] for r, f in at[name].items()},
                     "sync_every_after": {r: f["sync_every"] for r, f in at[name].items()},
                     "vs_gradients": paired(raw, lambda r, n=name: r[n]["rows_per_second"]
                                            / r["gradients"]["rows_per_second"])}
    return out


def progressive(curve: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """The mean loss of all rows so far (each record's interval loss weighted by its rows)
    at each progress record: the progressive-validation loss against rows processed."""
    seen, mean, total, last = [], [], 0.0, 0
    for rows, loss in curve:
        total += loss * (rows - last)
        last = rows
        seen.append(rows)
        mean.append(total / rows)
    return seen, mean


def print_sweep(result: dict[str, Any], rows: int) -> None:
    budgets = list(next(iter(result.values()))["heldout_loss_after"]) + [str(rows)]
    print(f"\n--sync models on the K = 2 cluster, 2 shards, per-shard batch {SWEEP_BATCH}, 1 epoch: rows/s "
          f"(median) and the held-out log loss of the model after R rows (R < {rows:,}: a --steps run)")
    print(f"{'method':<11}{'H (each run)':>24}{'rows/s':>12}{'vs grad':>9}"
          + "".join(f"{f'R={int(r):,}':>15}" for r in budgets))
    for name, r in result.items():
        h = ",".join(str(v) for v in r["sync_every"]) if r["sync_every"][0] is not None else "-"
        losses = [*r["heldout_loss_after"].values(), r["heldout_loss"]]
        print(f"{name:<11}{h:>24}{r['rows_per_second']:>12,.0f}{r['vs_gradients']:>9.2f}"
              + "".join(f"{v:>15.5f}" for v in losses))


def plot_sweep(path: Path, result: dict[str, Any], rows: int, features: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=90)
    ax = fig.subplots()
    for name, r in result.items():
        if r["curve"]:
            seen, loss = progressive(r["curve"])
            label = name if r["sync_every"][0] is None or name != "H=auto" else f"H=auto ({r['sync_every'][-1]})"
            ax.plot(seen, loss, "o-", lw=1, ms=2, label=f"{label}: {r['rows_per_second'] / 1e3:,.0f}k rows/s")
    ax.set_xscale("log")
    ax.set_xlabel("rows processed")
    ax.set_ylabel("progressive log loss (rows so far, each before\na model had learned from it)", fontsize=8)
    ax.set_title(f"--sync models, 2 workers: {rows:,} x {features} logistic, batch {SWEEP_BATCH} per shard", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def k1_fit(path: Path, method: str, cluster: DaskCluster | None, limit: int, epochs: int) -> dict[str, Any]:
    """``single``: the plain fit; ``models``: --shards 1 --sync models --sync-every auto in process;
    ``models-k1``: the same on the K = 1 cluster; ``epoch-k1``: on the K = 1 cluster with H = one
    epoch's updates (no dry rounds, one round an epoch). Per-shard batch SWEEP_BATCH, ``epochs`` epochs."""
    options: dict[str, Any] = {} if method == "single" else {"shards": 1, "sync": "models", "sync_every": "auto"}
    if method == "epoch-k1":
        options["sync_every"] = -(-sum(open_source(str(path)).chunk_rows) // SWEEP_BATCH)
    backend = {"single": None, "models": InProcess, "models-k1": cluster, "epoch-k1": cluster}[method]
    config = FitConfig(model="logistic", batch=SWEEP_BATCH, epochs=epochs, memory_limit=limit, **options)
    s = fit(open_source(str(path)), config, hooks=Hooks(backend=backend)).summary
    return {"rows_per_second": s["rows_per_second"], "sync_every": s.get("sync_every"), "loss": s["loss"]}


def k1_local(args: argparse.Namespace, path: Path, cluster: DaskCluster) -> dict[str, Any]:
    """The K = 1 mark with local SGD: single, in process and K = 1, round-robin over ``--runs``;
    the medians, each run's H and the paired cost of the K = 1 path (see :func:`paired`)."""
    methods = ("single", "models", "models-k1", "epoch-k1")
    raw: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for run in range(args.runs):
        for m in methods:
            raw[m].append(k1_fit(path, m, cluster, args.memory_limit, args.k1_epochs))
        print(f"K = 1 local SGD, run {run + 1}/{args.runs}: " + ", ".join(
            f"{m} {v[-1]['rows_per_second']:,.0f} (H {v[-1]['sync_every']})" for m, v in raw.items()), flush=True)
    out: dict[str, Any] = {m: {"rows_per_second": statistics.median(r["rows_per_second"] for r in v),
                               "sync_every": [r["sync_every"] for r in v], "loss": v[-1]["loss"]}
                           for m, v in raw.items()}
    out["k1_cost_vs_single"] = paired(raw, lambda r: 1 - r["models-k1"]["rows_per_second"]
                                      / r["single"]["rows_per_second"])
    out["epoch_k1_cost_vs_single"] = paired(raw, lambda r: 1 - r["epoch-k1"]["rows_per_second"]
                                            / r["single"]["rows_per_second"])
    out["in_process_cost_vs_single"] = paired(raw, lambda r: 1 - r["models"]["rows_per_second"]
                                              / r["single"]["rows_per_second"])
    out["runs"] = raw
    print(f"K = 1, --sync models --sync-every auto, {args.k1_epochs} epochs: cost vs single "
          f"{out['k1_cost_vs_single']:.1%} (in process {out['in_process_cost_vs_single']:.1%}; with H = one epoch "
          f"{out['epoch_k1_cost_vs_single']:.1%}; paired medians)")
    return out


def write_hashed(path: Path, rows: int) -> Path:
    """``rows`` rows: numeric features, categorical columns (dictionary-encoded text, each
    level its own effect) and a logistic target."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, HASHED_FEATURES))
    z = X @ rng.normal(size=HASHED_FEATURES) / 3
    names = pa.array([f"v{i}" for i in range(HASHED_LEVELS)])
    columns: dict[str, Any] = {f"x{j}": X[:, j] for j in range(HASHED_FEATURES)}
    for c in range(HASHED_COLUMNS):
        levels = rng.integers(0, HASHED_LEVELS, rows)
        z += rng.normal(size=HASHED_LEVELS)[levels]
        columns[f"c{c}"] = pa.DictionaryArray.from_arrays(pa.array(levels.astype(np.int32)), names)
    columns["y"] = (z + rng.logistic(size=rows) > 0).astype(np.float64)
    pq.write_table(pa.table(columns), path, row_group_size=ROW_GROUP_ROWS // 4, compression="none")
    return path


def hashed_fit(path: Path, variant: str, mode: str, cluster: DaskCluster | None, limit: int) -> dict[str, Any]:
    """Two shards, one epoch at per-shard batch SWEEP_BATCH: ``variant`` "dense" (the categorical
    columns excluded) or a number of hash bits; ``mode`` gradients or models (H = HASHED_EVERY);
    in process (``cluster`` None) or on the K = 2 cluster. Seconds of the loop per round."""
    options: dict[str, Any] = {"shards": 2, "sync": mode}
    if mode == "models":
        options["sync_every"] = HASHED_EVERY
    if variant != "dense":
        options["hash_bits"] = int(variant)
    exclude = [f"c{c}" for c in range(HASHED_COLUMNS)] if variant == "dense" else None
    config = FitConfig(model="logistic", batch=SWEEP_BATCH, epochs=1, memory_limit=limit, **options)
    s = fit(open_source(str(path), exclude=exclude), config, hooks=Hooks(backend=cluster or InProcess)).summary
    rounds = -(-s["iterations"] // (HASHED_EVERY if mode == "models" else 1))
    return {"rows_per_second": s["rows_per_second"], "rounds": rounds,
            "seconds_per_round": s["rows_seen"] / s["rows_per_second"] / rounds}


def hashed_rounds(args: argparse.Namespace, cluster: DaskCluster) -> dict[str, Any]:
    """Per variant (dense, each hash size) and mode: the loop's seconds per round in process and
    on the K = 2 cluster; their difference is what a round costs on the cluster, and its growth
    with the table (2**bits weights) the cost of shipping and reducing the hashed state."""
    path = write_hashed(args.out / f"cluster-hashed-{args.hashed_rows}.parquet", args.hashed_rows)
    variants = ["dense", *map(str, HASH_BITS)]
    raw: dict[str, list[dict[str, Any]]] = {}
    for run in range(args.runs):
        for mode in ("gradients", "models"):
            for variant in variants:
                for where in ("in process", "K=2"):
                    key = f"{mode} {variant} {where}"
                    raw.setdefault(key, []).append(
                        hashed_fit(path, variant, mode, cluster if where == "K=2" else None, args.memory_limit))
        print(f"hashed rounds, run {run + 1}/{args.runs}: " + ", ".join(
            f"{k} {v[-1]['seconds_per_round'] * 1e3:.2f} ms" for k, v in raw.items()), flush=True)
    out: dict[str, Any] = {}
    for mode in ("gradients", "models"):
        for variant in variants:
            def cost(r: dict[str, Any], m: str = mode, v: str = variant) -> float:
                return float(r[f"{m} {v} K=2"]["seconds_per_round"] - r[f"{m} {v} in process"]["seconds_per_round"])

            out[f"{mode} {variant}"] = {
                "rounds": raw[f"{mode} {variant} K=2"][0]["rounds"],
                "in_process_seconds_per_round": statistics.median(
                    r["seconds_per_round"] for r in raw[f"{mode} {variant} in process"]),
                "k2_seconds_per_round": statistics.median(r["seconds_per_round"] for r in raw[f"{mode} {variant} K=2"]),
                "k2_rows_per_second": statistics.median(r["rows_per_second"] for r in raw[f"{mode} {variant} K=2"]),
                "cluster_cost_per_round": paired(raw, cost)}
    print(f"\nhashed tables, 2 shards, per-shard batch {SWEEP_BATCH}, {args.hashed_rows:,} rows: seconds per round")
    print(f"{'mode, table':<22}{'rounds':>8}{'in process ms':>15}{'K=2 ms':>10}{'cluster cost ms':>17}{'K=2 rows/s':>12}")
    for key, e in out.items():
        print(f"{key:<22}{e['rounds']:>8}{e['in_process_seconds_per_round'] * 1e3:>15.3f}"
              f"{e['k2_seconds_per_round'] * 1e3:>10.3f}{e['cluster_cost_per_round'] * 1e3:>17.3f}"
              f"{e['k2_rows_per_second']:>12,.0f}")
    out["runs"] = raw
    return out


def start_clusters(warm: Path, limit: int) -> tuple[dict[int, DaskCluster], dict[str, Any]]:
    """One LocalCluster per K (as ``--workers K`` starts it), each warmed by one fit on the
    small file; their start and warm-up times and each worker's bare and idle RSS."""
    clusters: dict[int, DaskCluster] = {}
    info: dict[str, Any] = {}
    for k in (1, 2):
        seconds, cluster = _common.seconds(DaskCluster, workers=k, memory_limit=limit, shards=k)
        clusters[k] = cluster
        theirs = set(cluster.client.run(streamsgd_path).values())
        if theirs != {streamsgd_path()}:
            sys.exit(f"cluster.py: the workers import streamsgd from {sorted(theirs)}, this process from "
                     f"{streamsgd_path()}: run from the checkout's root with PYTHONPATH=.")
        bare = cluster.client.run(worker_memory)
        warm_seconds, _ = _common.seconds(one_fit, warm, 512, k, cluster, limit)
        idle = cluster.client.run(worker_memory)
        info[str(k)] = {"start_seconds": seconds, "first_fit_seconds": warm_seconds,
                        "workers": {w: {"pid": idle[w]["pid"], "bare_rss": bare[w]["VmRSS"],
                                        "idle_peak_rss": idle[w]["VmHWM"]} for w in idle}}
        print(f"K = {k}: LocalCluster started in {seconds:.2f} s; first fit on the fresh workers "
              f"({WARM_ROWS:,} rows) {warm_seconds:.2f} s", flush=True)
    return clusters, info


def measure(args: argparse.Namespace, path: Path, clusters: dict[int, DaskCluster]) -> dict[str, Any]:
    """Every method at every batch, round-robin, ``--runs`` times: the raw figures."""
    raw: dict[str, Any] = {str(b): {m: [] for m in METHODS} for b in args.batches}
    raw["empty_round"] = {str(k): [] for k in clusters}
    for run in range(args.runs):
        for k, cluster in clusters.items():
            raw["empty_round"][str(k)].append(empty_round(cluster, args.empty_rounds, args.features))
        print(f"run {run + 1}/{args.runs}, empty rounds: " + ", ".join(
            f"K = {k} {v[-1] * 1e3:.2f} ms" for k, v in raw["empty_round"].items()), flush=True)
        for batch in args.batches:
            for method, (shards, workers) in METHODS.items():
                backend = clusters[workers] if workers else (InProcess if method == "s1" else None)
                raw[str(batch)][method].append(one_fit(path, batch, shards, backend, args.memory_limit))
            print(f"run {run + 1}/{args.runs}, B = {batch}: " + ", ".join(
                f"{m} {raw[str(batch)][m][-1]['rows_per_second']:,.0f}" for m in METHODS) + " rows/s", flush=True)
    return raw


def paired(methods: dict[str, list[dict[str, Any]]], fn: Any) -> float:
    """The median over runs of ``fn`` of one run's figures: a ratio or difference of methods
    timed minutes apart at most, which drift on a shared machine disturbs less than the
    ratio of medians taken over the whole invocation."""
    runs = len(next(iter(methods.values())))
    return statistics.median(fn({m: v[i] for m, v in methods.items()}) for i in range(runs))


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Per batch: median rows/s and time per update of each method; the compute per update,
    round latencies and the marks' ratios
    as medians of each run's own (see :func:`paired`)."""
    table: dict[str, Any] = {}
    for batch, methods in raw.items():
        if batch == "empty_round":
            continue

        def t(run: dict[str, Any], m: str) -> float:
            return float(run[m]["seconds_per_update"])

        def median(key: str) -> dict[str, float]:
            return {m: statistics.median(r[key] for r in v) for m, v in methods.items()}

        def cost(key: str) -> float:
            return paired(methods, lambda r: 1 - r["s1k1"][key] / r["single"][key])

        table[batch] = {
            "rows_per_second": median("rows_per_second"), "seconds_per_update": median("seconds_per_update"),
            "updates": {m: v[0]["updates"] for m, v in methods.items()},
            "compute_per_update": statistics.median(r["seconds_per_update"] for r in methods["s1"]),
            "round_latency": {"1": paired(methods, lambda r: t(r, "s1k1") - t(r, "s1")),
                              "2": paired(methods, lambda r: t(r, "s2k2") - t(r, "s1"))},
            "round_latency_2_vs_in_process_2_shards": paired(methods, lambda r: t(r, "s2k2") - t(r, "s2")),
            "per_actor_increment": paired(methods, lambda r: t(r, "s2k2") - t(r, "s1k1")),
            "k1_cost_vs_single": cost("rows_per_second"),
            "k2_vs_k1": paired(methods, lambda r: r["s2k2"]["rows_per_second"] / r["s1k1"]["rows_per_second"]),
            "s1_in_process_vs_single": paired(
                methods, lambda r: r["s1"]["rows_per_second"] / r["single"]["rows_per_second"]),
        }
    return table


def projection(table: dict[str, Any], model_batch: str) -> dict[str, Any]:
    """rows/s and efficiency at K = 8 ... 256 for each batch (see the module): a projection."""
    base = table[model_batch]
    round1, inc = base["round_latency"]["1"], max(base["per_actor_increment"], 0.0)
    out: dict[str, Any] = {"round_1": round1, "per_actor_increment": inc, "from_batch": int(model_batch), "rows": {}}
    for batch, entry in table.items():
        c, b = entry["compute_per_update"], int(batch)
        out["rows"][batch] = {str(k): {"rows_per_second": k * b / (c + round1 + (k - 1) * inc),
                                       "efficiency": c / (c + round1 + (k - 1) * inc)} for k in PROJECT_K}
    return out


def memory_check(clusters: dict[int, DaskCluster], started: dict[str, Any], limit: int) -> dict[str, Any]:
    """Each worker's peak RSS after every timed fit against its share of the limit + idle."""
    out: dict[str, Any] = {}
    for k, cluster in clusters.items():
        now = cluster.client.run(worker_memory)
        share = limit // k  # k shards on k workers: one shard, memory_limit // S, per worker
        for worker, before in started[str(k)]["workers"].items():
            if worker not in now or now[worker]["pid"] != before["pid"]:
                out[f"K{k} {worker}"] = {"error": "the worker was restarted during the timings"}
                continue
            peak, idle = now[worker]["VmHWM"], before["idle_peak_rss"]
            out[f"K{k} {worker}"] = {"bare_rss": before["bare_rss"], "idle_peak_rss": idle, "peak_rss": peak,
                                    "share": share, "budget": share + idle, "ok": peak <= share + idle}
    return out


def print_tables(table: dict[str, Any], proj: dict[str, Any]) -> None:
    print(f"\n{'batch':>6} {'method':<24}{'rows/s':>12}{'vs single':>10}{'updates':>9}{'ms/update':>11}")
    for batch, e in table.items():
        for m in METHODS:
            rate = e["rows_per_second"][m]
            print(f"{batch:>6} {LABELS[m]:<24}{rate:>12,.0f}{rate / e['rows_per_second']['single']:>10.2f}"
                  f"{e['updates'][m]:>9,}{e['seconds_per_update'][m] * 1e3:>11.3f}")
    print(f"\n{'batch':>6}{'compute/update ms':>19}{'round(1) ms':>13}{'round(2) ms':>13}{'increment ms':>14}"
          f"{'K=1 cost':>10}{'K=2 / K=1':>11}")
    for batch, e in table.items():
        print(f"{batch:>6}{e['compute_per_update'] * 1e3:>19.3f}{e['round_latency']['1'] * 1e3:>13.3f}"
              f"{e['round_latency']['2'] * 1e3:>13.3f}{e['per_actor_increment'] * 1e3:>14.3f}"
              f"{e['k1_cost_vs_single']:>10.1%}{e['k2_vs_k1']:>11.2f}")
    print(f"\nPROJECTION (not measured): round(K) = {proj['round_1'] * 1e3:.2f} ms + (K - 1) x "
          f"{proj['per_actor_increment'] * 1e3:.2f} ms (B = {proj['from_batch']} runs); rows/s (efficiency)")
    print(f"{'batch':>6}" + "".join(f"{'K=' + str(k):>20}" for k in PROJECT_K))
    for batch, rows in proj["rows"].items():
        print(f"{batch:>6}" + "".join(f"{r['rows_per_second']:>13,.0f} ({r['efficiency']:>3.0%})"
                                      for r in rows.values()))


def print_memory(memory: dict[str, Any]) -> None:
    print(f"\n{'worker':<30}{'bare RSS':>10}{'idle':>10}{'peak':>10}{'share':>10}{'share+idle':>12}")
    for worker, m in memory.items():
        if "error" in m:
            print(f"{worker:<30} {m['error']}")
            continue
        print(f"{worker:<30}{_common.mib(m['bare_rss']):>10}{_common.mib(m['idle_peak_rss']):>10}"
              f"{_common.mib(m['peak_rss']):>10}{_common.mib(m['share']):>10}{_common.mib(m['budget']):>12}"
              f"  {'ok' if m['ok'] else 'OVER'}")


def marks(table: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    """Item 7's marks per batch: the Dask path at K = 1 within 10 % of the single process;
    K = 2 no slower than K = 1; every worker within its share + idle footprint."""
    out: dict[str, Any] = {}
    for batch, e in table.items():
        out[f"K=1 cost <= 10% (B={batch})"] = {"value": e["k1_cost_vs_single"], "met": e["k1_cost_vs_single"] <= MAX_K1_COST}
        out[f"K=2 / K=1 >= 1 (B={batch})"] = {"value": e["k2_vs_k1"], "met": e["k2_vs_k1"] >= 1.0}
    out["workers within share + idle"] = {"met": all(m.get("ok", False) for m in memory.values())}
    print("\nmarks (issue 17 item 7):")
    for name, m in out.items():
        value = f"{m['value']:.3f} " if "value" in m else ""
        print(f"  {name:<32} {value}{'met' if m['met'] else 'NOT met'}")
    return out


def write_heldout(path: Path, features: int) -> Path:
    """Fresh rows from the training file's true weights (its seed; another sample seed)."""
    if not _common.is_uncompressed(path, HELDOUT_ROWS, features, ROW_GROUP_ROWS):
        from streamsgd.tools.generate import generate

        generate(str(path), rows=HELDOUT_ROWS, features=features, task="logistic", seed=0,
                 sample_seed=HELDOUT_SAMPLE_SEED, row_group_rows=ROW_GROUP_ROWS, compression="none")
    return path


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Start the clusters, time every method, sweep --sync-every, read the workers' peaks."""
    path = ensure_file(args.out / f"cluster-{args.rows}x{args.features}.parquet", args.rows, args.features)
    warm = ensure_file(args.out / f"cluster-{WARM_ROWS}x{args.features}.parquet", WARM_ROWS, args.features,
                       WARM_GROUP_ROWS)
    only = set(filter(None, args.only.split(",")))
    clusters, cluster_info = start_clusters(warm, args.memory_limit)
    out: dict[str, Any] = {"clusters": cluster_info}
    try:
        if not only:
            heldout = write_heldout(args.out / f"cluster-heldout-{HELDOUT_ROWS}x{args.features}.parquet",
                                    args.features)
            out["raw"] = measure(args, path, clusters)
            out["sweep"] = sweep(args, path, heldout, clusters[2])
        if not only or "k1" in only:
            out["k1_local_sgd"] = k1_local(args, path, clusters[1])
        if not only or "hashed" in only:
            out["hashed"] = hashed_rounds(args, clusters[2])
        if not only:
            out["memory"] = memory_check(clusters, cluster_info, args.memory_limit)
    finally:
        for cluster in clusters.values():
            cluster.close()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the scheduler runs in this process: keep its closing chatter and the second cluster's
    # "port 8787 in use" (its HTTP endpoints; the dashboard itself is off) out of the tables
    logging.getLogger("distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    started, load_start = _common.begin(args.out)
    runs = run_all(args)
    if args.only:  # the parts asked for, printed as they ran
        report_parts = {k: v for k, v in runs.items() if k != "clusters"}
        provenance.write_report(args.out / f"cluster-{args.only.replace(',', '-')}.json",
                                {"benchmark": "cluster", "only": args.only, "rows": args.rows, "runs": args.runs,
                                 "k1_epochs": args.k1_epochs, **report_parts,
                                 "machine": provenance.machine(**_common.versions())}, started, load_start)
        return 0
    raw, memory = runs["raw"], runs["memory"]
    table = summarise(raw)
    proj = projection(table, str(MODEL_BATCH) if MODEL_BATCH in args.batches else str(min(args.batches)))
    print(f"\n{args.rows:,} rows x {args.features} features, logistic, 1 epoch, median of {args.runs} run(s), "
          f"--memory-limit {_common.mib(args.memory_limit)}")
    empty = {k: statistics.median(v) for k, v in raw["empty_round"].items()}
    print_tables(table, proj)
    print(f"\nempty rounds (no-op actors, no data, no compute): K = 1 {empty['1'] * 1e3:.2f} ms, "
          f"K = 2 {empty['2'] * 1e3:.2f} ms (increment {(empty['2'] - empty['1']) * 1e3:.2f} ms)")
    print_sweep(runs["sweep"], args.rows)
    figure = (args.out if args.quick else FIGURES) / ("cluster_sync_every-quick.png" if args.quick
                                                      else "cluster_sync_every.png")
    plot_sweep(figure, runs["sweep"], args.rows, args.features)
    print_memory(memory)
    checks = marks(table, memory)
    import distributed

    report = {
        "benchmark": "cluster", "quick": args.quick, "rows": args.rows, "features": args.features,
        "row_group_rows": ROW_GROUP_ROWS, "batches": args.batches, "runs": args.runs,
        "memory_limit": args.memory_limit, "labels": LABELS, "clusters": runs["clusters"], "raw": raw,
        "empty_round_seconds": empty,
        "table": table, "projection": {"note": "projection from the measured round latency and compute, "
                                                "not a measurement", **proj},
        "sync_every_sweep": {"batch": SWEEP_BATCH, "shards": 2, "workers": 2, "heldout_rows": HELDOUT_ROWS,
                             "figure": str(figure), "methods": runs["sweep"]},
        "k1_local_sgd": runs["k1_local_sgd"], "hashed": runs["hashed"], "memory": memory, "marks": checks,
        "machine": provenance.machine(**_common.versions(distributed=distributed.__version__)),
    }
    provenance.write_report(args.out / ("cluster-quick.json" if args.quick else "cluster.json"), report, started,
                            load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
