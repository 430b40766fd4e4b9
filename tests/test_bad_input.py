"""Malformed input never ends in a traceback: property-based, through the real CLI in-process.

Hypothesis draws small data sets (one file or a directory of files) and breaks them:
truncated, bit-flipped, wrong magic bytes, empty files, garbage, schemas that change from
one file to the next, empty row groups, all-null columns, huge or non-finite values,
non-numeric columns; and it draws option sets, valid and invalid. Each case runs
``streamsgd fit``, ``info`` or ``evaluate`` through :func:`streamsgd.cli.main` inside
click's ``CliRunner`` isolation (real argv parsing, real exit codes, no process start, so
200 cases take seconds). Every run must end in success or in one of the documented exit
codes with exactly one ``streamsgd: error:`` line on stderr, and a failed fit must leave
no model file (nor a temporary) behind. A successful fit must have written a model whose
parameters are finite, and ``info`` must count the rows that were written.
"""

from __future__ import annotations

import gc
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import Outcome, invoke

USAGE, DATA, SOURCE, DIVERGED, MODEL_FILE = 2, 3, 4, 5, 6
DOCUMENTED = {USAGE, DATA, SOURCE, DIVERGED, MODEL_FILE}

SPECIAL = [np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, None]


def assert_clean(outcome: Outcome, out_dir: str | None = None, leaks_ok: bool = False,
                 overflow_ok: bool = False) -> None:
    report = outcome.report()
    assert "Traceback" not in outcome.stderr, report
    assert leaks_ok or not outcome.leaks, report
    # a warning is more lines on the user's stderr; overflow_ok: see test_huge_finite_value_float32
    assert all(overflow_ok and "overflow" in w for w in outcome.warnings), report
    if outcome.code == 0:
        return
    assert outcome.code in DOCUMENTED, report
    # a warning about a column (a constant, an id) is the log's line before the run's, not part of the error
    lines = [line for line in outcome.stderr.splitlines() if " warning: column '" not in line]
    assert len(lines) == 1 and lines[0].startswith("streamsgd: error: ") and len(lines[0]) > 20, report
    if out_dir is not None:
        assert os.listdir(out_dir) == [], f"left behind {os.listdir(out_dir)}\n{report}"


# -- data -------------------------------------------------------------------------------------

@dataclass
class FileSpec:
    rows: int
    group: int
    features: dict[str, str]  # name -> kind
    target: str  # kind
    empty_group_at: int | None
    values: list = field(default_factory=list)  # (column, row, special value)


FEATURE_KINDS = ["normal"] * 6 + ["int", "bool", "string", "allnull", "nulltype", "huge"]
TARGET_KINDS = ["binary"] * 5 + ["float"] * 2 + ["string", "allnull", "three", "nulltype"]


@st.composite
def file_specs(draw, names=("x0", "x1", "x2")) -> FileSpec:
    rows = draw(st.integers(0, 30))
    d = draw(st.integers(1, len(names)))
    features = {n: draw(st.sampled_from(FEATURE_KINDS)) for n in names[:d]}
    spec = FileSpec(
        rows=rows,
        group=draw(st.integers(1, max(rows, 1))),
        features=features,
        target=draw(st.sampled_from(TARGET_KINDS)),
        empty_group_at=draw(st.none() | st.integers(0, 3)),
    )
    if rows:
        n_special = draw(st.integers(0, 3))
        for _ in range(n_special):
            column = draw(st.sampled_from([*features, "y"]))
            spec.values.append((column, draw(st.integers(0, rows - 1)), draw(st.sampled_from(SPECIAL))))
    return spec


def column(kind: str, rows: int, rng: np.random.Generator) -> pa.Array:
    if kind == "normal":
        return pa.array(rng.normal(size=rows))
    if kind == "huge":
        return pa.array(rng.normal(size=rows) * 1e300)
    if kind == "int":
        return pa.array(rng.integers(-5, 5, size=rows))
    if kind == "bool":
        return pa.array(rng.integers(0, 2, size=rows).astype(bool))
    if kind == "string":
        return pa.array([f"s{i}" for i in range(rows)])
    if kind == "allnull":
        return pa.array([None] * rows, pa.float64())
    if kind == "nulltype":
        return pa.nulls(rows)
    if kind == "binary":
        return pa.array(rng.integers(0, 2, size=rows))
    if kind == "float":
        return pa.array(rng.normal(size=rows))
    if kind == "three":
        return pa.array(rng.integers(0, 3, size=rows))
    raise AssertionError(kind)


def build_table(spec: FileSpec, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {n: column(k, spec.rows, rng) for n, k in spec.features.items()}
    cols["y"] = column(spec.target, spec.rows, rng)
    for name, row, value in spec.values:
        array = cols[name]
        if not (pa.types.is_floating(array.type) or pa.types.is_integer(array.type)):
            continue
        values = array.to_pylist()
        values[row] = value if value is None or pa.types.is_floating(array.type) else None
        cols[name] = pa.array(values, array.type)
    return pa.table(cols)


def write_table(path: str, table: pa.Table, spec: FileSpec) -> None:
    with pq.ParquetWriter(path, table.schema) as writer:
        starts = list(range(0, table.num_rows, spec.group)) or [0]
        for k, start in enumerate(starts):
            if spec.empty_group_at == k:
                writer.write_table(table.slice(0, 0), row_group_size=1)  # a row group of 0 rows
            writer.write_table(table.slice(start, spec.group), row_group_size=spec.group)


CORRUPTIONS = ["none"] * 6 + ["truncate", "flip", "magic-head", "magic-tail", "empty", "garbage"]
STRUCTURAL = {"truncate", "magic-tail", "empty", "garbage"}  # the footer cannot be read


def corrupt(path: str, how: str, where: float, bit: int) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if how == "truncate":
        data = data[: int(where * (len(data) - 1))]
    elif how == "flip":
        data[int(where * (len(data) - 1))] ^= 1 << bit
    elif how == "magic-head":
        data[:4] = b"PAR0"
    elif how == "magic-tail":
        data[-4:] = b"RAP1"
    elif how == "empty":
        data = bytearray()
    elif how == "garbage":
        data = bytearray(np.random.default_rng(bit).integers(0, 256, size=64, dtype=np.uint8).tobytes())
    with open(path, "wb") as f:
        f.write(data)


@st.composite
def datasets(draw):
    """(layout, [FileSpec], corruption, where, bit, schema change)."""
    layout = draw(st.sampled_from(["file", "file", "dir"]))
    n_files = 1 if layout == "file" else draw(st.integers(1, 3))
    specs = [draw(file_specs()) for _ in range(n_files)]
    change = "none"
    if n_files > 1:
        change = draw(st.sampled_from(["none", "none", "drop", "retype", "rename"]))
    return {
        "layout": layout,
        "specs": specs,
        "corruption": draw(st.sampled_from(CORRUPTIONS)),
        "victim": draw(st.integers(0, n_files - 1)),
        "where": draw(st.floats(0, 1)),
        "bit": draw(st.integers(0, 7)),
        "change": change,
    }


def materialise(root: str, ds: dict) -> tuple[str, int]:
    """Write the data set under ``root``; its path and the rows written (before corruption)."""
    paths = []
    rows = 0
    for k, spec in enumerate(ds["specs"]):
        table = build_table(spec, seed=k)
        if k > 0 and ds["change"] != "none":  # the second and later files differ from the first
            name = table.column_names[0]
            if ds["change"] == "drop" and table.num_columns > 1:
                table = table.drop([name])
            elif ds["change"] == "retype":
                table = table.set_column(0, name, pa.array([str(v) for v in table.column(0).to_pylist()]))
            elif ds["change"] == "rename":
                table = table.rename_columns(["renamed", *table.column_names[1:]])
        path = os.path.join(root, "data.parquet") if ds["layout"] == "file" else os.path.join(root, "data", f"part-{k}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_table(path, table, spec)
        paths.append(path)
        rows += table.num_rows
    if ds["corruption"] != "none":
        corrupt(paths[ds["victim"]], ds["corruption"], ds["where"], ds["bit"])
    return (paths[0] if ds["layout"] == "file" else os.path.join(root, "data")), rows


# -- options ----------------------------------------------------------------------------------

# (flags, certainly a usage error whatever the data)
FIT_OPTIONS = [
    ([], False), ([], False), ([], False),
    (["--model", "linear"], False), (["--model", "logistic"], False),
    (["--batch", "1"], False), (["--batch", "7"], False), (["--batch", "0"], True), (["--batch", "-2"], True),
    (["--batch", "x"], True),
    (["--lr", "0.5"], False), (["--lr", "1e300"], False), (["--lr", "0"], True), (["--lr", "nan"], True),
    (["--lr", "-1"], True),
    (["--epochs", "0"], True), (["--steps", "0"], True),
    (["--l2", "-1"], True), (["--l2", "inf"], True), (["--l2", "1e300"], False),
    (["--no-standardize"], False), (["--no-average"], False), (["--no-shuffle"], False),
    (["--lr-schedule", "invscaling"], False), (["--power-t", "-1"], True),
    (["--memory-limit", "1KB"], False), (["--memory-limit", "0"], True), (["--memory-limit", "lots"], True),
    (["--readers", "0"], True), (["--dtype", "float64"], False), (["--dtype", "int8"], True),
    (["--features", "x0"], False), (["--features", "x0,x9"], False), (["--features", "y"], True),
    (["--features", ","], False), (["--target", "nope"], False), (["--target", "x0"], False),
    (["--format", "zarr"], False), (["--bogus"], True), (["--log-every", "0"], True),
]
INFO_OPTIONS = [
    ([], False), ([], False), (["--batch", "3"], False), (["--batch", "0"], True), (["--steps", "10"], False),
    (["--steps", "0"], True), (["--memory-limit", "1KB"], False), (["--memory-limit", "-5"], True),
    (["--features", "x1"], False), (["--target", "nope"], False), (["--dtype", "float64"], False),
    (["--format", "zarr"], False), (["--bogus"], True),
]
EVALUATE_OPTIONS = [([], False), ([], False), (["--format", "parquet"], False), (["--bogus"], True)]


@st.composite
def commands(draw):
    command = draw(st.sampled_from(["fit", "fit", "fit", "info", "evaluate"]))
    pool = {"fit": FIT_OPTIONS, "info": INFO_OPTIONS, "evaluate": EVALUATE_OPTIONS}[command]
    # one value per option: click keeps the last of a repeated option, so "--batch 0 --batch 1"
    # is not a usage error
    picks = draw(st.lists(st.sampled_from(pool), max_size=3, unique_by=lambda p: p[0][0] if p[0] else ""))
    flags = [flag for flags, _ in picks for flag in flags]
    usage = any(bad for _, bad in picks)
    model = None
    if command == "evaluate":
        model = ["good"] * 6 + ["corrupt"] * 2 + ["missing"] * 2
        model = model[draw(st.integers(0, len(model) - 1))]
    return command, flags, usage, model, draw(st.booleans())


# -- the property -----------------------------------------------------------------------------

def has_huge(ds: dict) -> bool:
    """Whether the data holds finite values too large for float32 (the default dtype)."""
    return any(
        "huge" in spec.features.values()
        or any(v is not None and np.isfinite(v) and abs(v) > 1e38 for _, _, v in spec.values)
        for spec in ds["specs"]
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model trained on clean data (x0 -> y), a corrupt model file, and a missing one."""
    d = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=50)
    pq.write_table(pa.table({"x0": x0, "y": (x0 > 0).astype(np.int64)}), str(d / "clean.parquet"))
    outcome = invoke(["fit", str(d / "clean.parquet"), "--steps", "5", "-o", str(d / "good.npz")])
    assert outcome.code == 0, outcome.report()
    good = (d / "good.npz").read_bytes()
    (d / "corrupt.npz").write_bytes(good[: len(good) // 2])
    return {"good": str(d / "good.npz"), "corrupt": str(d / "corrupt.npz"), "missing": str(d / "absent.npz")}


@pytest.fixture(scope="module", autouse=True)
def frozen_heap(models):
    """Each run ends with a full garbage collection (to catch files left open); with the
    modules every command imports already loaded and frozen out of the collector's reach,
    that costs microseconds instead of a tenth of a second."""
    clean = os.path.join(os.path.dirname(models["good"]), "clean.parquet")
    for args in (["info", clean], ["evaluate", models["good"], clean]):  # import what they use
        assert invoke(args).code == 0
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def earlier_file_unusable(ds, outcome):
    """Whether the run stopped, rightly, at a file before the corrupt one: files are opened in
    order and the first file's schema fixes the columns, so a data error in an earlier file
    (no usable feature, a column of another type) is reported before the corrupt footer is
    read. Both are errors the user must fix; the line names the file at fault."""
    named = re.search(r"part-(\d+)\.parquet", outcome.stderr)
    return outcome.code == DATA and named is not None and int(named.group(1)) < ds["victim"]


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ds=datasets(), cmd=commands())
def test_malformed_input_fails_cleanly(models, ds, cmd):
    command, flags, usage, model, as_json = cmd
    with tempfile.TemporaryDirectory() as root:
        data, rows = materialise(root, ds)
        out_dir = os.path.join(root, "out")
        os.mkdir(out_dir)
        output = os.path.join(out_dir, "model.npz")
        if command == "fit":
            args = ["fit", data, "--steps", "3", *flags, "-o", output]
        elif command == "info":
            args = ["info", data, *flags]
        else:
            args = ["evaluate", models[model], data, *flags]
        if as_json:
            args.append("--json")
        outcome = invoke(args)
        # known bug, pinned by its own xfail test below: values beyond float32's range warn
        # while being cast
        assert_clean(outcome, out_dir, overflow_ok=has_huge(ds))
        report = outcome.report()
        event(f"{command} exit {outcome.code}")  # the mix, shown by --hypothesis-show-statistics

        # where the outcome is certain, it must be exactly that
        if usage:
            assert outcome.code == USAGE, report
        elif command == "evaluate" and model != "good":
            assert outcome.code == MODEL_FILE, report
        elif ds["corruption"] in STRUCTURAL and not earlier_file_unusable(ds, outcome):
            assert outcome.code == SOURCE, report

        if outcome.code == 0 and command == "fit":
            from streamsgd.persist.model import load

            assert os.listdir(out_dir) == ["model.npz"], report
            fitted = load(output)
            assert np.isfinite(fitted.coef).all() and np.isfinite(fitted.intercept), report
        if outcome.code == 0 and command == "info" and as_json and ds["corruption"] == "none":
            assert json.loads(outcome.stdout)["rows"] == rows, report


# -- fixed examples: each corruption once, so a regression names its case -------------------------

@pytest.mark.parametrize("how", ["truncate", "flip", "magic-head", "magic-tail", "empty", "garbage"])
@pytest.mark.parametrize("command", ["fit", "info"])
def test_each_corruption_once(tmp_path, how, command):
    spec = FileSpec(rows=20, group=5, features={"x0": "normal", "x1": "normal"}, target="binary", empty_group_at=None)
    path = str(tmp_path / "d.parquet")
    write_table(path, build_table(spec, 0), spec)
    corrupt(path, how, 0.5, 3)
    out = tmp_path / "out"
    out.mkdir()
    args = [command, path] + (["--steps", "3", "-o", str(out / "m.npz")] if command == "fit" else [])
    outcome = invoke(args)
    assert_clean(outcome, str(out))
    if how in STRUCTURAL:
        assert outcome.code == SOURCE, outcome.report()


def test_the_runner_reports_a_traceback_as_an_exception(monkeypatch, tmp_path):
    """The harness itself: an unexpected exception inside a command is not swallowed."""
    import streamsgd.tools.describe

    def boom(*args, **kwargs):
        raise KeyError("unexpected")

    monkeypatch.setattr(streamsgd.tools.describe, "describe", boom)
    spec = FileSpec(rows=4, group=2, features={"x0": "normal"}, target="binary", empty_group_at=None)
    path = str(tmp_path / "d.parquet")
    write_table(path, build_table(spec, 0), spec)
    with pytest.raises(KeyError, match="unexpected"):
        invoke(["info", path])


def test_corrupt_model_file_is_closed(models, tmp_path):
    spec = FileSpec(rows=10, group=5, features={"x0": "normal"}, target="binary", empty_group_at=None)
    path = str(tmp_path / "d.parquet")
    write_table(path, build_table(spec, 0), spec)
    outcome = invoke(["evaluate", models["corrupt"], path])
    assert outcome.code == MODEL_FILE, outcome.report()
    assert outcome.leaks == [], outcome.report()


def test_huge_finite_value_float32(tmp_path):
    x = np.random.default_rng(0).normal(size=20)
    x[3] = 1e300
    path = str(tmp_path / "huge.parquet")
    pq.write_table(pa.table({"x0": x, "x1": np.ones(20), "y": np.arange(20) % 2}), path, row_group_size=5)
    out = tmp_path / "out"
    out.mkdir()
    outcome = invoke(["fit", path, "--steps", "3", "-o", str(out / "m.npz")])
    assert_clean(outcome, str(out))
    assert outcome.code == DATA and "1e+300" in outcome.stderr, outcome.report()
