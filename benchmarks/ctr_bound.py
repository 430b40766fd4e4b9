"""What bounds a fit with categorical columns on this machine's cores: reading alone, and the trainer's kernel in place.

``.venv/bin/python benchmarks/ctr_bound.py DATA --target click [--runs 3]`` alternates, in one
process, ``--runs`` times:

* **reading**: ``streamsgd.batches`` over DATA (the fit's own plan and readers, nulls imputed and
  text hashed as ``fit`` does, batch 512, no training): rows/s, and CPU µs a row over all threads;
* **fit**: one epoch of ``fit`` (logistic, batch 512, the other options at their defaults), with
  the trainer's compiled calls (``train_rows_hashed``) timed where they run: the fit's seconds,
  its CPU µs a row over all threads, and the kernel's µs a row, slowed as it is by the readers
  beside it.

The report gives the medians and the bounds they set with ``os.cpu_count()`` cores: the fit
cannot train more than cores / (its CPU a row) rows a second, nor its one trainer thread more
than 1 / kernel, however many cores there are. Reading alone allocates every window afresh
(``batches`` hands its windows to the caller, so it reuses none): its CPU a row may exceed
what the fit's readers spend.

Why: benchmarks/ctr.py compares the fit with Vowpal Wabbit reading its own pre-hashed cache;
this says how far the fit itself could go here (issue 16; benchmarks/README.md, ctr.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import hashed_kernel_through


def reading(data: str, target: str) -> dict[str, float]:
    """One pass of ``streamsgd.batches`` over ``data``: rows, wall seconds, CPU seconds."""
    import streamsgd

    wall, cpu, rows = time.perf_counter(), time.process_time(), 0
    with streamsgd.batches(data, target=target, batch=512, model="logistic") as stream:
        for batch in stream:
            rows += len(batch.y)
    return {"rows": rows, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def fit(data: str, target: str) -> dict[str, float]:
    """One epoch of ``fit`` with the trainer's compiled calls timed in place."""
    import streamsgd
    from streamsgd.config import FitConfig
    from streamsgd.train import trainer

    kernel = [0.0]

    def timing(compiled: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return compiled(*a)
            finally:
                kernel[0] += time.perf_counter() - t0

        return call

    with hashed_kernel_through(timing):
        wall, cpu = time.perf_counter(), time.process_time()
        result = trainer.fit(streamsgd.open_source(data, target=target),
                             FitConfig(epochs=1, batch=512, model="logistic"))
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows": result.summary["rows_seen"], "seconds": seconds, "cpu_seconds": cpu_seconds,
            "kernel_seconds": kernel[0]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a Parquet file with categorical columns")
    parser.add_argument("--target", default="click")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="directory for ctr_bound.json")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"reading": [], "fit": []}
    for r in range(args.runs):
        runs["reading"].append(reading(args.data, args.target))
        runs["fit"].append(fit(args.data, args.target))
        read, trained = runs["reading"][-1], runs["fit"][-1]
        print(f"run {r + 1}: reading {read['rows'] / read['seconds']:,.0f} rows/s, "
              f"{read['cpu_seconds'] / read['rows'] * 1e6:.2f} µs CPU a row; fit {trained['seconds']:.2f} s, "
              f"{trained['cpu_seconds'] / trained['rows'] * 1e6:.2f} µs CPU a row, "
              f"kernel {trained['kernel_seconds'] / trained['rows'] * 1e6:.2f} µs a row", flush=True)
    cores = os.cpu_count() or 1
    read_us = statistics.median(r["cpu_seconds"] / r["rows"] * 1e6 for r in runs["reading"])
    kernel_us = statistics.median(f["kernel_seconds"] / f["rows"] * 1e6 for f in runs["fit"])
    fit_us = statistics.median(f["cpu_seconds"] / f["rows"] * 1e6 for f in runs["fit"])
    report: dict[str, Any] = {
        "cores": cores,
        "reading_rows_per_second": statistics.median(r["rows"] / r["seconds"] for r in runs["reading"]),
        "reading_cpu_us_per_row": read_us,
        "fit_rows_per_second": statistics.median(f["rows"] / f["seconds"] for f in runs["fit"]),
        "fit_cpu_us_per_row": fit_us,
        "kernel_us_per_row": kernel_us,
        "cpu_bound_rows_per_second": cores / fit_us * 1e6,
        "kernel_bound_rows_per_second": 1e6 / kernel_us,
        "load": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ctr_bound.json").write_text(json.dumps({**report, "runs": runs}, indent=1))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
