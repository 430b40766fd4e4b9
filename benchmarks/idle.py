"""Where a one-epoch ``fit`` spends its time, stage by stage, with and without epoch 0's ramp.

Issue 14, item 2: on throughput.py's 2M x 10 uncompressed file the whole file is one shuffle
window, so without the ramp (``plan.shuffle.ramp_up``) the trainer waits for all of it before
its first update. This script alternates, in one process, pyarrow's decode-only pass (throughput.py's
(a)), ``fit`` as it is, and ``fit`` with ``ramp_up`` switched off (one whole first window, the
plan before the ramp), and times each stage of every fit by wrapping the functions the trainer
calls (wall time on the trainer's thread; the readers' work shows as the trainer's wait):

* prepare: the checks, the memory plan and the target pass over every chunk (``chunk_target_means``);
* first window: from the start of ``fit`` until the trainer holds its first window;
* start: standardisation (a pass over the first window in chunk order) and the default step;
* see_rows: the worst-row pass of every window of epoch 0 (``guard.max_row_curvature``);
* kernel: the compiled training calls; waits: the trainer waiting for windows, first one included.

Also the process CPU time per row of each fit and of the decode (both cores' work together).

    python benchmarks/idle.py [--features 10] [--runs 5]     # reuses throughput.py's file
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (its file recipe and decode-only pass)

import streamsgd  # noqa: E402
import streamsgd.pipeline.epochs as epochs  # noqa: E402
import streamsgd.plan.shuffle as shuffle  # noqa: E402
import streamsgd.train.run as run  # noqa: E402
import streamsgd.train.setup as setup  # noqa: E402
import streamsgd.train.stepsize as stepsize  # noqa: E402
from streamsgd.config import FitConfig  # noqa: E402
from streamsgd.train import trainer  # noqa: E402

STAGES: dict[str, float] = {}


def timed(owner: Any, name: str, stage: str) -> None:
    """Wrap ``owner.name`` so that its wall time adds to ``STAGES[stage]``."""
    inner = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            STAGES[stage] = STAGES.get(stage, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


def instrument(fit_started: list[float]) -> None:
    timed(trainer, "prepare", "prepare")
    timed(setup, "chunk_target_means", "prepare: target pass")
    timed(run, "start", "start")
    timed(stepsize, "standardization", "start: standardisation")
    timed(run, "see_rows", "see_rows")
    timed(run, "train_rows", "kernel")
    plain = epochs.EpochStream.epoch

    def epoch(self: Any, *args: Any, **kwargs: Any) -> Any:
        windows = plain(self, *args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(windows)
            except StopIteration:
                return
            finally:
                STAGES["waits"] = STAGES.get("waits", 0.0) + time.perf_counter() - t0
            STAGES.setdefault("first window", time.perf_counter() - fit_started[0])
            yield item

    epochs.EpochStream.epoch = epoch  # type: ignore[method-assign]


def measure(f: Callable[[], Any]) -> dict[str, float]:
    STAGES.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    f()
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, **STAGES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=throughput.DEFAULT_OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train-{args.rows}x{args.features}.parquet"
    throughput.ensure_file(path, args.rows, args.features, throughput.TRAIN_SAMPLE_SEED, False)
    fit_started = [0.0]
    instrument(fit_started)
    ramp = shuffle.ramp_up

    def fit(ramped: bool) -> None:
        shuffle.ramp_up = ramp if ramped else (lambda chunk_rows, windows, window_rows: windows)
        fit_started[0] = time.perf_counter()
        trainer.fit(streamsgd.open_source(str(path)), FitConfig(epochs=1, batch=throughput.BATCH, model="logistic"))

    methods = {"decode": lambda: throughput.decode_only(path), "fit, ramp": lambda: fit(True),
               "fit, no ramp": lambda: fit(False)}
    for f in methods.values():  # warm-up: page cache, Numba's cache
        f()
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in methods}
    for _ in range(args.runs):
        for key, f in methods.items():
            runs[key].append(measure(f))
    decode = statistics.median(r["wall"] for r in runs["decode"])
    print(f"{args.rows:,} x {args.features}, uncompressed, median of {args.runs}; ms (ns per row)")
    stages = ["wall", "cpu", "first window", "waits", "prepare", "prepare: target pass", "start",
              "start: standardisation", "see_rows", "kernel"]
    print(f"{'':24}" + "".join(f"{k:>20}" for k in methods))
    for stage in stages:
        cells = []
        for key in methods:
            values = [r.get(stage, 0.0) for r in runs[key]]
            m = statistics.median(values)
            cells.append(f"{m * 1e3:9.0f} ({m / args.rows * 1e9:5.0f})" if any(values) else "")
        print(f"{stage:24}" + "".join(f"{c:>20}" for c in cells))
    for key in ("fit, ramp", "fit, no ramp"):
        print(f"{key}: decode-only / fit = {decode / statistics.median(r['wall'] for r in runs[key]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
