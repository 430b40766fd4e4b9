"""How fast categorical strings hash to feature ids, next to decoding them and to scikit-learn.

One command: ``.venv/bin/python benchmarks/hashing.py [--rows 1000000] [--distinct 50000]
[--runs 5] [--quick]``. One Parquet column of strings (pyarrow's default writer: dictionary
pages, snappy, row groups of 100,000 rows) with ``--distinct`` values of 4 to 40 characters
drawn with Zipf frequencies (exponent 1.1, the shape of click-log categories), and on one
thread each:

  decode          ``pq.read_table(columns=[c], use_threads=False)``: the strings materialised
                  (the reader's share of a categorical column without hashing);
  hash            ``sources.hashing.hash_column`` on that string column: Numba over the
                  offsets and data buffers;
  decode, dict    the same read keeping the dictionary (``read_dictionary``): codes plus one
                  dictionary per row group;
  hash, dict      ``hash_column`` on the dictionary column: each row group's dictionary hashed
                  once, then gathered by code;
  sklearn         ``FeatureHasher(2**20, input_type="string").transform`` on the same values as
                  Python lists (built once, outside the timing; ``to_pylist`` is timed
                  separately as ``to_pylist``).

Methods run round-robin, each figure the median of ``--runs``. Both hashes are checked equal.
Writes benchmarks/out/hashing.json (``hashing-quick.json`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from sklearn.feature_extraction import FeatureHasher

import provenance  # benchmarks/ is on sys.path when a script there runs
from streamsgd.sources.hashing import column_seed, hash_column

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
SEED = 20261206
BITS = 20
ZIPF_EXPONENT = 1.1
ROW_GROUP_ROWS = 100_000
ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789-_.", dtype=np.uint8)


def values_table(rows: int, distinct: int) -> pa.Table:
    """``rows`` draws from ``distinct`` random strings (4-40 characters, log-normal lengths)
    with Zipf frequencies: a few values take most rows, most values are rare."""
    rng = np.random.default_rng([SEED, rows, distinct])
    lengths = np.clip(rng.lognormal(np.log(12), 0.5, distinct).astype(int), 4, 40)
    chars = ALPHABET[rng.integers(0, ALPHABET.size, lengths.sum())]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    words = pa.StringArray.from_buffers(distinct, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
    words = pa.array(sorted(set(words.to_pylist())))  # distinct for certain
    weights = 1.0 / np.arange(1, len(words) + 1) ** ZIPF_EXPONENT
    picks = rng.choice(len(words), size=rows, p=weights / weights.sum())
    return pa.table({"c": words.take(pa.array(picks))})


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of ``fn()`` (CPU time drifts less when other processes
    share the cores), and its result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def run(path: Path, runs: int) -> dict[str, Any]:
    seed = column_seed("c", 0)
    plain = pq.read_table(path, columns=["c"], use_threads=False).column("c")
    as_lists = [[v] for v in plain.to_pylist()]
    hasher = FeatureHasher(n_features=2**BITS, input_type="string")
    methods: dict[str, Callable[[], Any]] = {
        "decode": lambda: pq.read_table(path, columns=["c"], use_threads=False).column("c"),
        "hash": lambda: hash_column(plain, seed, BITS),
        "decode_dict": lambda: pq.read_table(path, columns=["c"], use_threads=False,
                                             read_dictionary=["c"]).column("c"),
        "to_pylist": lambda: plain.to_pylist(),
        "sklearn": lambda: hasher.transform(as_lists),
    }
    dictionary = methods["decode_dict"]()
    methods["hash_dict"] = lambda: hash_column(dictionary, seed, BITS)
    hash_column(plain[:10], seed, BITS), hash_column(dictionary[:10], seed, BITS)  # compile or load the kernels
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, Any] = {}
    for _ in range(runs):
        for name, fn in methods.items():
            seconds, cpu_seconds, results[name] = timed(fn)
            times[name].append(seconds)
            cpu[name].append(cpu_seconds)
    for a, b in zip(results["hash"], results["hash_dict"]):
        np.testing.assert_array_equal(a, b)
    n = len(plain)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "rows": n, "row_groups": pq.ParquetFile(path).num_row_groups, "seconds": times, "cpu_seconds": cpu,
        "median_seconds": med, "median_cpu_seconds": med_cpu, "rows_per_second": {k: n / v for k, v in med.items()},
        "ratios": {clock: {"hash/decode": m["hash"] / m["decode"], "hash_dict/decode_dict": m["hash_dict"] / m["decode_dict"],
                           "sklearn/hash": m["sklearn"] / m["hash"]} for clock, m in (("wall", med), ("cpu", med_cpu))},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--distinct", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="100,000 rows, 5,000 values, 1 run (~5 s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.distinct, args.runs = 100_000, 5_000, 1
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"strings-{args.rows}x{args.distinct}.parquet"
    table = values_table(args.rows, args.distinct)
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
    r = run(path, args.runs)
    distinct = len(pa.compute.unique(table.column("c")))
    print(f"{r['rows']:,} rows, {distinct:,} distinct values (of {args.distinct:,}), {r['row_groups']} row groups, "
          f"{path.stat().st_size / 2**20:.1f} MiB; median of {args.runs}, one thread each:")
    print(f"  {'method':<12} {'wall s':>8} {'CPU s':>8} {'M rows/s':>9}")
    for name in ("decode", "hash", "decode_dict", "hash_dict", "to_pylist", "sklearn"):
        print(f"  {name:<12} {r['median_seconds'][name]:8.4f} {r['median_cpu_seconds'][name]:8.4f} "
              f"{r['rows_per_second'][name] / 1e6:9.2f}")
    for clock, ratios in r["ratios"].items():
        print(f"{clock:>4}: " + "; ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    report = {"benchmark": "hashing", "quick": args.quick, "runs": args.runs, "vocabulary": args.distinct,
              "distinct": distinct,
              "zipf_exponent": ZIPF_EXPONENT, "bits": BITS, **r,
              "machine": provenance.machine(pyarrow=pa.__version__, numpy=np.__version__,
                                            sklearn=sklearn.__version__)}
    provenance.write_report(args.out / ("hashing-quick.json" if args.quick else "hashing.json"), report, started,
                            load_start)
    path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
