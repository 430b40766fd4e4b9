"""A click log with the shape of Criteo: streamsgd against Vowpal Wabbit and scikit-learn (issue 16).

One command: ``.venv/bin/python benchmarks/ctr.py [--rows 1000000,3000000] [--runs 3] [--quick]``.

The table (written once per size, seeded, one row group at a time so the writer's memory is
fixed): 13 numeric columns ``I1..I13`` (float64, 0-45 % nulls), 26 categorical columns
``C1..C26`` with Criteo's cardinalities capped at 10^6 (five columns of 1.4-10 x 10^5 values
and one of 10^6), 8-hex-digit values drawn with finite-Zipf frequencies (exponent 1.05-1.4), 0-40 %
nulls; ``C1, C2, C4, C5, C6, C9, C14, C16, C17, C20, C22, C23, C25`` are Arrow dictionary columns
(as a writer that keeps categories writes them: each row group holds its own dictionary), the rest
plain strings. ``click`` is drawn from a logistic model: a hidden weight per value of every
column, a slope per numeric column, a weight for each null, ~26 % positives. A separate held-out
file (200,000 rows, other row seeds, the same hidden model) scores every method; its log loss
under the true probabilities (the floor) is reported.

Methods, each in its own process under ``/usr/bin/time`` (its peak RSS), round-robin, median of
``--runs``; rows/s is rows trained per second of the training itself (process start and imports
left out of all three):

* ``streamsgd fit DATA --target click --model logistic --epochs 1 --batch 512`` (defaults
  otherwise: 2^20 hashed weights, nulls imputed, lr from the data); seconds from its summary.
* Vowpal Wabbit from its own cache file: the rows are written once as VW text (``|n I1:v ... |c
  C1=v ...``, nulls left out) and one untimed pass builds the cache; the timed pass is
  ``--cache_file CACHE -b 20 --loss_function logistic`` (VW's defaults otherwise: adaptive,
  normalised, invariant updates, one pass). Held-out: ``-t -i MODEL --link logistic``.
* scikit-learn: ``FeatureHasher(2**20, input_type="pair")`` on each row's (name, value) pairs
  (numeric as values, text as ``name=value``, nulls left out) and
  ``SGDClassifier(loss="log_loss").partial_fit`` at batch 512, on the first ``--sklearn-rows``
  rows of the smallest file (its per-row speed is what is compared), read with pyarrow.
* The defaults before issue 16's ``--optimizer auto``, for the loss: ``streamsgd fit ... --optimizer sgd
  --l2 1e-4`` on the smallest file (the defaults now train adagrad with l2 = min(1e-4, 1/rows) here).

Writes benchmarks/out/ctr.json (ctr-quick.json for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import provenance  # benchmarks/ is on sys.path when a script there runs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "out"
SEED = 20261206
NUMERIC = [f"I{j}" for j in range(1, 14)]
TEXT = [f"C{j}" for j in range(1, 27)]
#: Criteo (Kaggle) cardinalities, the largest capped at 10^6.
CARDS = (1460, 583, 1_000_000, 500_000, 305, 24, 12_517, 633, 3, 93_145, 5_683, 800_000, 3_194, 27, 14_992,
         600_000, 10, 5_652, 2_173, 4, 700_000, 18, 15, 286_181, 105, 142_572)
DICTIONARY = {"C1", "C2", "C4", "C5", "C6", "C9", "C14", "C16", "C17", "C20", "C22", "C23", "C25"}
ROW_GROUP = 131_072
HELDOUT = 200_000
BATCH = 512
#: The non-default streamsgd run also measured: the defaults before --optimizer auto (one SGD step for all).
PREVIOUS = ("--optimizer", "sgd", "--l2", "1e-4")
HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


class World:
    """The hidden model, drawn from ``seed``: each column's values, frequencies and weights."""

    def __init__(self, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.vocab, self.cdf, self.weight, self.cat_null, self.cat_null_weight = [], [], [], [], []
        for card in CARDS:
            k = np.arange(card, dtype=np.uint64)
            self.vocab.append(hex_strings((k * np.uint64(2_654_435_761) + rng.integers(2**32, dtype=np.uint64))
                                          % np.uint64(2**32)))
            p = np.arange(1, card + 1, dtype=np.float64) ** -rng.uniform(1.05, 1.4)
            self.cdf.append(np.cumsum(p) / p.sum())
            self.weight.append(rng.standard_normal(card) * rng.uniform(0.2, 0.6))
            self.cat_null.append(rng.uniform(0.0, 0.4) * (rng.random() < 0.6))
            self.cat_null_weight.append(rng.standard_normal() * 0.3)
        self.shape = rng.uniform(0.5, 4.0, len(NUMERIC))
        self.slope = rng.standard_normal(len(NUMERIC)) * 0.25
        self.num_null = rng.uniform(0.0, 0.45, len(NUMERIC)) * (rng.random(len(NUMERIC)) < 0.8)
        self.num_null_weight = rng.standard_normal(len(NUMERIC)) * 0.2
        self.intercept = -1.6

    def rows(self, rng: np.random.Generator, n: int) -> tuple[pa.Table, float]:
        """``n`` rows and the sum of their log losses under the true probabilities."""
        score = np.full(n, self.intercept)
        columns: dict[str, pa.Array] = {}
        for j, name in enumerate(NUMERIC):
            x = rng.gamma(self.shape[j], 1.0, n)
            null = rng.random(n) < self.num_null[j]
            score += np.where(null, self.num_null_weight[j], self.slope[j] * (x - self.shape[j]))
            columns[name] = pa.array(x, mask=null)
        for j, name in enumerate(TEXT):
            codes = np.searchsorted(self.cdf[j], rng.random(n)).astype(np.int32)
            np.minimum(codes, CARDS[j] - 1, out=codes)
            null = rng.random(n) < self.cat_null[j]
            score += np.where(null, self.cat_null_weight[j], self.weight[j][codes])
            if name in DICTIONARY:  # this row group's own dictionary: the values it holds
                seen, inverse = np.unique(codes, return_inverse=True)
                columns[name] = pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32), mask=null),
                                                               self.vocab[j].take(pa.array(seen)))
            else:
                columns[name] = self.vocab[j].take(pa.array(codes, mask=null))
        p = 1.0 / (1.0 + np.exp(-score))
        click = rng.random(n) < p
        loss = float(-np.sum(np.where(click, np.log(p), np.log1p(-p))))
        columns["click"] = pa.array(click.astype(np.int64))
        return pa.table(columns), loss


def hex_strings(values: np.ndarray) -> pa.Array:
    """Each uint32 as 8 lower-case hex digits, built in NumPy (a million values in milliseconds)."""
    digits = (values[:, None] >> (np.arange(7, -1, -1, dtype=np.uint64) * np.uint64(4))) & np.uint64(15)
    data = HEX[digits.astype(np.intp)].reshape(-1)
    offsets = np.arange(0, 8 * len(values) + 1, 8, dtype=np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


def write_table(world: World, path: Path, rows: int, seed: int) -> float:
    """``rows`` rows to ``path`` (pyarrow's default writer), one row group at a time; returns the
    mean log loss of the true probabilities (the floor no model beats on average)."""
    rng = np.random.default_rng(seed)
    loss, writer, done = 0.0, None, 0
    try:
        while done < rows:
            n = min(ROW_GROUP, rows - done)
            table, part = world.rows(rng, n)
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table, row_group_size=n)
            loss, done = loss + part, done + n
    finally:
        if writer is not None:
            writer.close()
    return loss / rows


def ensure_table(world: World, path: Path, rows: int, seed: int) -> float:
    """The file, written unless there already (its floor kept in a side file)."""
    floor = path.with_suffix(".floor")
    if path.exists() and floor.exists() and pq.read_metadata(path).num_rows == rows:
        return float(floor.read_text())
    t0 = time.perf_counter()
    loss = write_table(world, path, rows, seed)
    floor.write_text(repr(loss))
    print(f"wrote {path.name}: {rows:,} rows, {path.stat().st_size / 2**20:,.0f} MiB, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return loss


# ---------------------------------------------------------------------------- Vowpal Wabbit


def write_vw_text(parquet: Path, text: Path) -> None:
    """VW text, ``±1 |n I1:v ... |c C1=v ...`` with nulls left out, a row group at a time (in Arrow)."""
    import pyarrow.csv as pcsv

    pf = pq.ParquetFile(parquet)
    opts = pcsv.WriteOptions(include_header=False, delimiter=" ", quoting_style="none")
    with pa.OSFile(str(text), "wb") as f:
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i)
            n = t.num_rows
            cols = [pa.array(np.where(t.column("click").to_numpy() == 1, "1", "-1")), pa.array(np.full(n, "|n"))]
            cols += [pc.fill_null(pc.binary_join_element_wise(f"{c}:", pc.cast(t.column(c), pa.string()), ""), "")
                     for c in NUMERIC]
            cols.append(pa.array(np.full(n, "|c")))
            cols += [pc.fill_null(pc.binary_join_element_wise(f"{c}=", pc.cast(t.column(c), pa.string()), ""), "")
                     for c in TEXT]
            pcsv.write_csv(pa.table(cols, names=[f"k{k}" for k in range(len(cols))]), f, opts)


VW_CHILD = """
import json, sys, time
from vowpalwabbit import pyvw
t0 = time.perf_counter()
pyvw.Workspace(sys.argv[1]).finish()
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

VW_OPTIONS = "-b 20 --loss_function logistic --quiet"


def ensure_vw_cache(parquet: Path, cache: Path) -> None:
    """VW's cache of ``parquet``: text written once, one VW pass builds the cache, the text goes."""
    if cache.exists() and cache.stat().st_mtime > parquet.stat().st_mtime:
        return
    t0 = time.perf_counter()
    text = cache.with_suffix(".vw")
    write_vw_text(parquet, text)
    cache.unlink(missing_ok=True)
    timed([sys.executable, "-c", VW_CHILD, f"{VW_OPTIONS} -d {text} --cache_file {cache}"], cache.parent)
    text.unlink()
    print(f"built {cache.name} in {time.perf_counter() - t0:.0f} s", flush=True)


def vw_heldout_loss(model: Path, heldout: Path, work: Path) -> float:
    text, preds = work / "heldout.vw", work / "heldout.vwpred"
    if not text.exists() or text.stat().st_mtime < heldout.stat().st_mtime:
        write_vw_text(heldout, text)
    timed([sys.executable, "-c", VW_CHILD, f"-t -i {model} -d {text} -p {preds} --link logistic --quiet"], work)
    p = np.loadtxt(preds).reshape(-1)
    preds.unlink()
    return log_loss(pq.read_table(heldout, columns=["click"]).column("click").to_numpy(), p)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


# ---------------------------------------------------------------------------- scikit-learn


SKLEARN_CHILD = """
import json, sys, time
import numpy as np, pyarrow.parquet as pq
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import SGDClassifier

path, rows, batch, heldout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
names = [f"I{j}" for j in range(1, 14)] + [f"C{j}" for j in range(1, 27)]
hasher = FeatureHasher(2**20, input_type="pair", alternate_sign=True)

def pairs(table):
    cols = [(n, table.column(n).to_pylist()) for n in names]
    return [[(n, v[i]) for n, v in cols if v[i] is not None] for i in range(table.num_rows)]

t0 = time.perf_counter()
model, pf, seen = SGDClassifier(loss="log_loss"), pq.ParquetFile(path), 0
for i in range(pf.num_row_groups):
    group = pf.read_row_group(i)
    for lo in range(0, min(group.num_rows, rows - seen), batch):
        part = group.slice(lo, min(batch, rows - seen - lo))
        model.partial_fit(hasher.transform(pairs(part)), part.column("click").to_numpy(), classes=[0, 1])
    seen += min(group.num_rows, rows - seen)
    if seen >= rows:
        break
seconds = time.perf_counter() - t0
test = pq.read_table(heldout)
p = np.concatenate([model.predict_proba(hasher.transform(pairs(test.slice(lo, 65536))))[:, 1]
                    for lo in range(0, test.num_rows, 65536)])
print(json.dumps({"seconds": seconds, "rows": seen, "p": p.round(7).tolist()}))
"""


# ---------------------------------------------------------------------------- running the methods


def timed(argv: list[str], work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` under ``/usr/bin/time``: its last stdout line (JSON) with its peak RSS (bytes)
    and wall seconds. ``time`` forks the command from its own small process, so the peak is the
    command's alone, not this (larger) process's copy."""
    stats = work / "time.txt"
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %e", "-o", str(stats), *argv], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"ctr.py: {' '.join(argv[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    kib, wall = stats.read_text().split()[-2:]
    lines = proc.stdout.strip().splitlines()
    return {"out": json.loads(lines[-1]) if lines else {}, "peak_rss_bytes": int(kib) * 1024,
            "wall_seconds": float(wall)}


def streamsgd_env() -> dict[str, str]:
    """This checkout's streamsgd (the venv's console script may import another)."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_streamsgd(data: Path, heldout: Path, work: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    model = work / "ctr-streamsgd.npz"
    cli = [sys.executable, "-m", "streamsgd"]
    out = timed([*cli, "fit", str(data), "--target", "click", "--model", "logistic", "--epochs", "1", "--batch",
                 str(BATCH), "--json", "--quiet", "-o", str(model), *extra], work, streamsgd_env())
    ev = json.loads(subprocess.run([*cli, "evaluate", str(model), str(heldout), "--json"], capture_output=True,
                                   text=True, check=True, env=streamsgd_env()).stdout)
    summary = out["out"]
    return {"seconds": summary["seconds"], "rows": summary["rows_seen"], "peak_rss_bytes": out["peak_rss_bytes"],
            "heldout_log_loss": ev["loss"], "summary_peak_rss_bytes": summary["peak_rss_bytes"]}


def run_vw(cache: Path, rows: int, heldout: Path, work: Path) -> dict[str, Any]:
    model = work / "ctr.vwmodel"
    # -d names the text the cache was built from (deleted): VW reads the cache in its stead, and
    # without a -d it reads nothing at all
    out = timed([sys.executable, "-c", VW_CHILD,
                 f"{VW_OPTIONS} -d {cache.with_suffix('.vw')} --cache_file {cache} -f {model}"], work)
    return {"seconds": out["out"]["seconds"], "rows": rows, "peak_rss_bytes": out["peak_rss_bytes"],
            "heldout_log_loss": vw_heldout_loss(model, heldout, work)}


def run_sklearn(data: Path, rows: int, heldout: Path, work: Path) -> dict[str, Any]:
    out = timed([sys.executable, "-c", SKLEARN_CHILD, str(data), str(rows), str(BATCH), str(heldout)], work)
    y = pq.read_table(heldout, columns=["click"]).column("click").to_numpy()
    return {"seconds": out["out"]["seconds"], "rows": out["out"]["rows"], "peak_rss_bytes": out["peak_rss_bytes"],
            "heldout_log_loss": log_loss(y, np.asarray(out["out"]["p"]))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,3000000", help="training file sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sklearn-rows", type=int, default=200_000,
                        help="rows scikit-learn trains on (of the smallest file); 0 leaves it out")
    parser.add_argument("--heldout", type=int, default=HELDOUT)
    parser.add_argument("--no-vw", action="store_true", help="leave Vowpal Wabbit out")
    parser.add_argument("--no-previous", action="store_true",
                        help=f"leave out the extra streamsgd run with {' '.join(PREVIOUS)} (smallest file)")
    parser.add_argument("--quick", action="store_true", help="50,000 and 100,000 rows, one run (a smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.sizes = [50_000, 100_000] if args.quick else [int(r) for r in args.rows.split(",")]
    if args.quick:
        args.runs, args.heldout, args.sklearn_rows = 1, 20_000, min(args.sklearn_rows, 20_000)
    return args


def vw_available(args: argparse.Namespace) -> tuple[bool, str]:
    if args.no_vw:
        return False, "left out (--no-vw)"
    try:
        import vowpalwabbit
    except ImportError as e:
        return False, f"vowpalwabbit is not installed ({e})"
    return True, getattr(vowpalwabbit, "__version__", "installed")


def prepare(args: argparse.Namespace, use_vw: bool) -> dict[str, Any]:
    """The files (and VW caches) every run reads, written once; the held-out floor."""
    world = World()
    files = {"heldout": args.out / f"ctr-heldout-{args.heldout}.parquet"}
    floor = ensure_table(world, files["heldout"], args.heldout, SEED + 1)
    for rows in args.sizes:
        files[rows] = args.out / f"ctr-{rows}.parquet"
        ensure_table(world, files[rows], rows, SEED + 2 + rows)
        if use_vw:
            ensure_vw_cache(files[rows], files[rows].with_suffix(".vwcache"))
    return {"files": files, "floor": floor}


def methods(args: argparse.Namespace, files: dict[Any, Path], use_vw: bool) -> dict[str, Any]:
    """Each (method, size) as a call; scikit-learn on the smallest file only."""
    held, work = files["heldout"], args.out
    calls: dict[str, Any] = {}
    for rows in args.sizes:
        calls[f"streamsgd {rows}"] = lambda rows=rows: run_streamsgd(files[rows], held, work)
        if use_vw:
            calls[f"vw {rows}"] = lambda rows=rows: run_vw(files[rows].with_suffix(".vwcache"), rows, held, work)
    smallest = min(args.sizes)
    if not args.no_previous:  # the defaults before --optimizer auto: one SGD step for every weight
        calls[f"streamsgd sgd {smallest}"] = lambda: run_streamsgd(files[smallest], held, work, PREVIOUS)
    if args.sklearn_rows:
        calls["sklearn"] = lambda: run_sklearn(files[smallest], min(args.sklearn_rows, smallest), held, work)
    return calls


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method: medians of rows/s and peak RSS, the held-out loss (the same every run for
    streamsgd and VW, which are deterministic; the median otherwise), and every raw figure."""
    table = {}
    for name, results in runs.items():
        table[name] = {"rows": results[0]["rows"],
                       "rows_per_second": statistics.median(r["rows"] / r["seconds"] for r in results),
                       "peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in results) / 2**20,
                       "heldout_log_loss": statistics.median(r["heldout_log_loss"] for r in results),
                       "raw": results}
    return table


def paired(table: dict[str, dict[str, Any]], ours: str, theirs: str) -> float:
    """The median over the rounds of ours / theirs rows/s, each ratio within one round (the
    two ran a minute apart: the machine's load moves both alike)."""
    def speed(r: dict[str, Any]) -> float:
        return r["rows"] / r["seconds"]

    return statistics.median(speed(a) / speed(b) for a, b in zip(table[ours]["raw"], table[theirs]["raw"]))


def marks(table: dict[str, dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Issue 16's done-when figures: at each size, streamsgd / VW rows/s and the loss gap;
    streamsgd / scikit-learn per row; streamsgd's and VW's peak RSS, largest / smallest file."""
    out: dict[str, Any] = {}
    for rows in sizes:
        ours, vw = table[f"streamsgd {rows}"], table.get(f"vw {rows}")
        if vw:
            out[f"vs_vw_{rows}"] = paired(table, f"streamsgd {rows}", f"vw {rows}")
            out[f"loss_minus_vw_{rows}"] = ours["heldout_log_loss"] - vw["heldout_log_loss"]
        if "sklearn" in table:
            out[f"vs_sklearn_{rows}"] = paired(table, f"streamsgd {rows}", "sklearn")
    lo, hi = min(sizes), max(sizes)
    for method in ("streamsgd", "vw"):
        if f"{method} {hi}" in table:
            out[f"{method}_rss_{hi}_over_{lo}"] = (table[f"{method} {hi}"]["peak_rss_mib"]
                                                   / table[f"{method} {lo}"]["peak_rss_mib"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load = time.perf_counter(), os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    use_vw, vw_note = vw_available(args)
    if not use_vw:
        print(f"Vowpal Wabbit skipped: {vw_note}")
    prepared = prepare(args, use_vw)
    calls = methods(args, prepared["files"], use_vw)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
    for _ in range(args.runs):
        for name, call in calls.items():
            runs[name].append(call())
            r = runs[name][-1]
            print(f"  {name:>18}: {r['rows'] / r['seconds']:>10,.0f} rows/s  peak RSS "
                  f"{r['peak_rss_bytes'] / 2**20:>6,.0f} MiB  held-out log loss {r['heldout_log_loss']:.5f}", flush=True)
    table = summarise(runs)
    figures = marks(table, args.sizes)
    print(f"\nmedians of {args.runs} run(s); held-out floor (true probabilities) {prepared['floor']:.5f}")
    for name, row in table.items():
        print(f"{name:>18}: {row['rows_per_second']:>10,.0f} rows/s  peak RSS {row['peak_rss_mib']:>6,.0f} MiB  "
              f"held-out log loss {row['heldout_log_loss']:.5f}")
    for key, value in figures.items():
        print(f"{key}: {value:+.5f}" if key.startswith("loss") else f"{key}: {value:.2f}x")
    import sklearn

    versions = {"pyarrow": pa.__version__, "scikit-learn": sklearn.__version__}
    if use_vw:
        versions["vowpalwabbit"] = vw_note
    report = {"sizes": args.sizes, "runs": args.runs, "heldout_rows": args.heldout,
              "sklearn_rows": args.sklearn_rows, "heldout_floor": prepared["floor"], "vw": vw_note,
              "results": table, "marks": figures, "machine": provenance.machine(**versions)}
    provenance.write_report(args.out / ("ctr-quick.json" if args.quick else "ctr.json"), report, started, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
