"""What the gradient-noise statistics cost: the training loop with and without them.

One command: ``.venv/bin/python benchmarks/noise_overhead.py [--quick] [--hidden 64]``. The same in-memory
data (so no I/O), batch sizes 1, 16 and 512, the loop's rows/s with ``noise_stats`` on and
off, interleaved, median of several runs; prints the ratio per batch size and writes
benchmarks/out/noise_overhead.json. The statistics add O(d) work per update to the O(B·d) of
the batch, so their share falls like 1/B. ``--hidden``: the same for an MLP of those layers,
where the statistics add O(P) per update (P parameters) to the batch's O(B·P).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from streamsgd.config import FitConfig
from streamsgd.sources.arrays import ArraySource
from streamsgd.train.trainer import fit

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--hidden", default="", help="an MLP's hidden widths, e.g. 64 (default: linear)")
    args = parser.parse_args()
    hidden = tuple(int(w) for w in args.hidden.split(",")) if args.hidden else ()
    rows, d = (50_000, 20) if args.quick else (400_000, 100)
    runs = args.runs or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, d)).astype(np.float32)
    y = (X @ rng.standard_normal(d) + rng.logistic(size=rows) > 0).astype(np.float32)
    source = ArraySource(X, y, chunk_rows=10_000)
    table = {}
    for batch in (1, 16, 512):
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(runs):
            for on in (True, False):
                config = FitConfig(batch=batch, epochs=1, noise_stats=on, in_memory=True, hidden=hidden,
                                   lr=0.01 if hidden else None)
                summary = fit(source, config).summary
                rates[on].append(summary["rows_per_second"])
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        table[batch] = {"rows_per_second_on": on, "rows_per_second_off": off, "ratio": on / off}
        print(f"batch {batch:>4}: {on:>12,.0f} rows/s with statistics, {off:>12,.0f} without, ratio {on / off:.3f}")
    OUT.mkdir(exist_ok=True)
    report = {"rows": rows, "features": d, "hidden": list(hidden), "runs": runs, "load_average": os.getloadavg()[0],
              "batches": table}
    name = "noise_overhead" + ("-mlp" if hidden else "") + ("-quick" if args.quick else "")
    (OUT / f"{name}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
