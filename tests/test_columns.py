"""Columns, visible and controllable (DESIGN.md §4 "Columns"): which columns a run uses and
why it skips the others, ``--exclude`` and globs, and the column types other tools write
by default (DuckDB's DECIMAL, pandas' and Polars' dates, timestamps and booleans).

Type tests compare a file as its writer wrote it with a reference file holding the values
the contract says it stands for (seconds since the epoch, float64, 0/1) as plain float64
columns: with the same rows, layout and seed the two trainings must give the same model
*bit for bit*, so any misread value (a day taken for seconds, a unit lost, a decimal
scale ignored) fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamsgd
from streamsgd.errors import UsageError
from streamsgd.sources.cast import arrow_values
from streamsgd.sources.columns import numeric_kind

from helpers import STREAMSGD, run_cli

N = 600


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """A table as a pandas user has one: an id, a text column, a boolean, a timestamp, a
    constant, and rows filtered so that the index is no longer a range (pandas then writes
    it as ``__index_level_0__``)."""
    rng = np.random.default_rng(5)
    n = N + 100
    df = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "carrier_a": rng.standard_normal(n),
        "carrier_b": rng.standard_normal(n),
        "city": rng.choice(["oslo", "lima", "pune"], n),
        "express": rng.random(n) > 0.5,
        "when": pd.Timestamp("2024-03-01") + pd.to_timedelta(rng.integers(0, 86_400 * 30, n), unit="s"),
        "version": np.full(n, 3.0),
    })
    df["y"] = df["carrier_a"] - 2 * df["carrier_b"] + df["express"] + rng.standard_normal(n) * 0.1
    return df[df["carrier_a"] > -1.5].iloc[:N]


@pytest.fixture(scope="module")
def pandas_file(frame, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("pandas") / "trips.parquet")
    frame.to_parquet(path)  # pandas' defaults: the index is kept
    assert "__index_level_0__" in pq.read_schema(path).names
    return path


def info(*args) -> dict:
    return json.loads(run_cli("info", *args, "--json").stdout)


def start_event(stderr: str) -> dict:
    return next(e for e in map(json.loads, stderr.splitlines()) if e["event"] == "start")


def test_default_columns_are_stated_with_roles_and_reasons(pandas_file):
    """Without --features: every numeric column but the target, the text column as a
    categorical one; pandas' index is skipped with its reason; the constant and the id
    column are warned about."""
    out = info(pandas_file, "--target", "y")
    assert out["feature_names"] == ["id", "carrier_a", "carrier_b", "express", "when", "version"]
    assert out["features"] == 6 and out["rows"] == N  # §4's fixed keys keep their meaning
    columns = {c["name"]: c for c in out["columns"]}
    assert columns["express"] == {"name": "express", "role": "feature", "type": "bool", "read_as": "0/1",
                                  "null_count": 0}
    assert columns["when"]["read_as"] == "seconds since the epoch" and columns["when"]["type"].startswith("timestamp")
    assert columns["y"]["role"] == "target"
    assert columns["city"] == {"name": "city", "role": "categorical", "type": "large_string", "null_count": 0}
    assert out["categorical"] == ["city"] and "city" not in out["skipped"]
    assert out["skipped"]["__index_level_0__"].startswith("pandas index")
    warned = {w["column"]: w for w in out["warnings"]}
    assert set(warned) == {"id", "version"}
    assert warned["version"]["kind"] == "constant" and "--exclude version" in warned["version"]["message"]
    assert warned["id"]["kind"] == "id-like" and "--exclude id" in warned["id"]["message"]


def test_exclude_and_globs_choose_the_columns_and_the_fit_states_them(pandas_file, tmp_path):
    """--features takes globs (expanded in the file's order), --exclude names and globs,
    repeated or comma-separated; the JSON start event lists what the fit used and skipped."""
    model = tmp_path / "m.npz"
    proc = run_cli("fit", pandas_file, "--target", "y", "--model", "linear", "--steps", "20",
                   "--features", "carrier_*,express", "--features", "id", "--exclude", "id",
                   "--log-format", "json", "-o", model)
    start = start_event(proc.stderr)
    assert [(c["name"], c["role"]) for c in start["features"]] == [
        ("carrier_a", "feature"), ("carrier_b", "feature"), ("express", "feature"), ("y", "target")]
    assert start["skipped"]["id"] == "excluded by --exclude"
    assert start["skipped"]["city"] == "not in --features"
    assert start["warnings"] == []  # the id is out, the constant was not chosen
    assert streamsgd.load(model).features == ["carrier_a", "carrier_b", "express"]

    out = info(pandas_file, "--exclude", "id,when", "--exclude", "vers*")
    assert out["feature_names"] == ["carrier_a", "carrier_b", "express"]
    assert out["skipped"]["version"] == out["skipped"]["when"] == "excluded by --exclude"


@pytest.mark.parametrize("args, pattern", [
    (["--features", "carrier_a,train_*"], "--features: the pattern 'train_\\*' matches no column of .*; fix --features"),
    (["--exclude", "*_km"], "--exclude: the pattern '\\*_km' matches no column of .*; fix --exclude"),
    (["--exclude", "idd"], "--exclude: no column 'idd' of .*; fix --exclude"),
    (["--exclude", "y"], "--exclude: 'y' is the target column"),
    (["--features", "carrier_a,carrier_*", "--features", "carrier_a"], "--features: 'carrier_a' is given more than once"),
])
def test_a_pattern_or_exclusion_that_matches_nothing_is_a_usage_error(pandas_file, tmp_path, args, pattern):
    proc = run_cli("fit", pandas_file, *args, "-o", tmp_path / "m.npz", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamsgd: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    assert not os.listdir(tmp_path)


def test_tune_batch_and_info_take_exclude_and_globs_too(pandas_file):
    proc = run_cli("tune-batch", pandas_file, "--exclude", "nope*", check=False)
    assert proc.returncode == 2 and "--exclude: the pattern 'nope*' matches no column" in proc.stderr
    text = run_cli("info", pandas_file, "--features", "carrier_*,when", "--exclude", "carrier_b").stdout
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "column carrier_a feature double nulls 0" in lines
    assert any(re.fullmatch(r"column when feature timestamp\[.*\] as seconds since the epoch nulls 0", x) for x in lines)
    assert "skipped carrier_b excluded by --exclude" in lines and "skipped city not in --features" in lines


def test_a_binary_column_named_in_features_is_a_data_error(tmp_path):
    """Text named in --features is categorical; bytes are not a feature of any kind."""
    path = str(tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"carrier_a": [1.0, 2.0], "blob": pa.array([b"a", b"b"]), "y": [0.0, 1.0]}), path)
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("fit", path, "--features", "carrier_a,blob", "-o", out / "m.npz", check=False)
    assert proc.returncode == 3
    assert re.fullmatch(f"streamsgd: error: {re.escape(path)}: column 'blob' has type binary, not a "
                        r"number; fix --features \(or encode this column as numbers\)", proc.stderr.strip()), proc.stderr
    assert not os.listdir(out)


def test_the_index_can_still_be_named(pandas_file):
    """A glob does not take pandas' index (nor the target); naming it outright does."""
    every = info(pandas_file, "--features", "*")
    assert "__index_level_0__" not in every["feature_names"] and "y" not in every["feature_names"]
    assert every["skipped"]["__index_level_0__"].startswith("pandas index")
    assert info(pandas_file, "--features", "__index_level_0__,carrier_a")["feature_names"] == [
        "__index_level_0__", "carrier_a"]


_EPOCH = dt.datetime(1970, 1, 1)


def _number(value) -> float:
    """What the contract says a value stands for, worked out in plain Python (not by the
    code under test): seconds since the epoch, a decimal's value, 0/1."""
    if isinstance(value, dt.datetime):  # pandas.Timestamp (nanosecond columns) is one too
        epoch = _EPOCH.replace(tzinfo=dt.timezone.utc) if value.tzinfo else _EPOCH
        return (value - epoch) / dt.timedelta(seconds=1)
    if isinstance(value, dt.date):
        return float((value - _EPOCH.date()).days * 86_400)
    return float(value)


def _reference(table: pa.Table, path: str, **kwargs) -> str:
    """``table`` with every column as the float64 values it stands for."""
    pq.write_table(pa.table({n: np.array([_number(v) for v in table.column(n).to_pylist()], np.float64)
                             for n in table.column_names}), path, **kwargs)
    return path


def _same_model(tmp_path, written: str, reference: str, *args) -> streamsgd.Model:
    """Train the written file and its float64 reference alike; the coefficients must match exactly."""
    models = []
    for name, path in (("written", written), ("reference", reference)):
        out = tmp_path / f"{name}.npz"
        run_cli("fit", path, "--model", "linear", "--epochs", "2", "--dtype", "float64", "--seed", "3", *args,
                "-o", out)
        models.append(streamsgd.load(out))
    assert models[0].features == models[1].features
    np.testing.assert_array_equal(models[0].coef, models[1].coef)
    assert models[0].intercept == models[1].intercept
    return models[0]


def test_duckdb_decimal_and_date_columns_are_features(tmp_path):
    """DuckDB's ``int * 1.5`` is DECIMAL and its ``CAST(… AS DATE)`` is date32: both train,
    as float64 and as seconds since the epoch."""
    import duckdb

    path = str(tmp_path / "duck.parquet")
    with duckdb.connect() as con:
        con.execute(f"""COPY (SELECT i::INTEGER AS distance, i::INTEGER * 1.5 AS fare,
                                     DATE '2020-01-01' + (i * 7 % 365)::INTEGER AS day,
                                     (i % 3 = 0) AS night, 0.5 * i + (i * 7 % 365) / 10 AS y
                              FROM range({N}) t(i)) TO '{path}' (FORMAT parquet)""")
    types = {f.name: str(f.type) for f in pq.read_schema(path)}
    assert types["fare"].startswith("decimal") and types["day"] == "date32[day]" and types["night"] == "bool"
    start = start_event(run_cli("fit", path, "--steps", "5", "--model", "linear", "--log-format", "json",
                                "-o", tmp_path / "m.npz").stderr)
    assert [c["name"] for c in start["features"]] == ["distance", "fare", "day", "night", "y"]
    assert start["skipped"] == {}
    reference = _reference(pq.read_table(path), str(tmp_path / "ref.parquet"))
    day = pq.read_table(reference).column("day").to_numpy()
    assert day.min() == (dt.date(2020, 1, 1) - dt.date(1970, 1, 1)).days * 86_400.0
    _same_model(tmp_path, path, reference)


def test_pandas_timestamps_and_booleans_are_features(frame, tmp_path):
    """pandas' datetime64 (naive and with a time zone) and bool columns, as pandas writes them."""
    df = frame[["carrier_a", "express", "when", "y"]].copy()
    df["when_utc"] = df["when"].dt.tz_localize("Europe/Oslo")
    path = str(tmp_path / "pandas.parquet")
    df.to_parquet(path, index=False)
    written = pq.read_table(path)
    assert str(written.schema.field("when_utc").type).startswith("timestamp[")  # unit as pandas chose
    first = frame["when"].iloc[0]
    assert arrow_values(written.column("when"))[0] == (first - pd.Timestamp("1970-01-01")).total_seconds()
    # the zone moves the instant, not the scale: Oslo is UTC+1 in March
    assert arrow_values(written.column("when_utc"))[0] == arrow_values(written.column("when"))[0] - 3600
    _same_model(tmp_path, path, _reference(written, str(tmp_path / "ref.parquet")))


def test_polars_dates_datetimes_and_booleans_are_features(frame, tmp_path):
    import polars as pl

    df = pl.DataFrame({
        "carrier_a": frame["carrier_a"].to_numpy(),
        "day": [dt.date(2024, 1, 1) + dt.timedelta(days=int(k) % 90) for k in range(N)],
        "at": [dt.datetime(2024, 1, 1) + dt.timedelta(minutes=37 * k) for k in range(N)],
        "express": frame["express"].to_numpy(),
        "y": frame["y"].to_numpy(),
    }).with_columns(pl.col("at").dt.cast_time_unit("ns").alias("at_ns"),
                    pl.col("carrier_a").cast(pl.String).cast(pl.Categorical).alias("band"))
    path = str(tmp_path / "polars.parquet")
    df.write_parquet(path)
    out = info(path)
    assert out["feature_names"] == ["carrier_a", "day", "at", "express", "at_ns"]
    assert out["categorical"] == ["band"]  # Polars' Categorical is a dictionary of strings: hashed
    ref = _reference(pq.read_table(path, columns=out["feature_names"] + ["y"]), str(tmp_path / "ref.parquet"))
    _same_model(tmp_path, path, ref, "--features", ",".join(out["feature_names"]))


def test_timestamp_units_zones_decimals_and_dictionaries_become_numbers():
    """The conversions themselves, against values worked out by hand."""
    moment = dt.datetime(2001, 9, 9, 1, 46, 40, 250000, tzinfo=dt.timezone.utc)  # 1e9 s + 0.25 s
    for unit in ("s", "ms", "us", "ns"):
        for tz in (None, "UTC", "America/New_York"):
            array = pa.array([moment], pa.timestamp(unit, tz=tz)) if tz else pa.array(
                [moment.replace(tzinfo=None)], pa.timestamp(unit))
            assert arrow_values(array)[0] == (1e9 if unit == "s" else 1e9 + 0.25), (unit, tz)
    assert arrow_values(pa.array([dt.date(1970, 1, 3)], pa.date32()))[0] == 2 * 86_400.0
    noon = dt.time(12, 30, 15, 500000)  # 45,015.5 s after midnight
    for kind in (pa.time32("s"), pa.time32("ms"), pa.time64("us"), pa.time64("ns")):
        want = 45_015.0 if kind.unit == "s" else 45_015.5
        assert arrow_values(pa.array([noon.replace(microsecond=0) if kind.unit == "s" else noon], kind))[0] == want
    assert numeric_kind(pa.time64("us")) == "time"
    assert arrow_values(pa.array([dt.date(1970, 1, 3)], pa.date64()))[0] == 2 * 86_400.0
    assert arrow_values(pa.array([Decimal("-12.345")], pa.decimal128(9, 3)))[0] == -12.345
    assert arrow_values(pa.array([Decimal("7.5")], pa.decimal256(40, 1)))[0] == 7.5
    assert list(arrow_values(pa.array([2, 7, 2], pa.int16()).dictionary_encode())) == [2, 7, 2]


def test_nulls_in_a_timestamp_column_are_still_refused(tmp_path):
    path = str(tmp_path / "gaps.parquet")
    pq.write_table(pa.table({"at": pa.array([dt.datetime(2024, 1, 1), None] * 50, pa.timestamp("us")),
                             "x": np.arange(100.0), "y": np.ones(100)}), path)
    proc = run_cli("fit", path, "-o", tmp_path / "m.npz", check=False)
    assert proc.returncode == 3
    assert "column 'at' has 50 null values; drop or impute them" in proc.stderr
    assert info(path)["columns"][0] == {"name": "at", "role": "feature", "type": "timestamp[us]",
                                        "read_as": "seconds since the epoch", "null_count": 50}


def test_predict_reads_the_converted_columns_as_fit_did(tmp_path):
    """A model trained on a date and a decimal column predicts from the same file."""
    path = str(tmp_path / "d.parquet")
    days = np.arange(200) % 50
    pq.write_table(pa.table({
        "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=int(k)) for k in days], pa.date32()),
        "price": pa.array([Decimal(f"{k}.25") for k in range(200)], pa.decimal128(6, 2)),
        "y": 2.0 * days + 0.01 * np.arange(200),
    }), path)
    run_cli("fit", path, "--model", "linear", "--epochs", "300", "-o", tmp_path / "m.npz")
    run_cli("predict", tmp_path / "m.npz", path, "-o", tmp_path / "p.parquet")
    pred = pq.read_table(tmp_path / "p.parquet").column("prediction").to_numpy()
    y = pq.read_table(path).column("y").to_numpy()
    # exactly linear in the two columns: a sane fit explains almost all of it
    assert 1 - np.mean((pred - y) ** 2) / np.var(y) > 0.99


def test_a_row_number_column_is_flagged_from_the_footers(tmp_path):
    """An integer column counting 0, 1, 2 … in every row group warns, whatever its name; the
    same values shuffled do not (their row groups' ranges overlap)."""
    rng = np.random.default_rng(0)
    path = str(tmp_path / "seq.parquet")
    rows = np.arange(1000, dtype=np.int64)
    pq.write_table(pa.table({"n": rows, "shuffled": rng.permutation(rows), "level": rng.integers(0, 5, 1000),
                             "x": rng.standard_normal(1000), "y": rng.standard_normal(1000)}), path,
                   row_group_size=250)
    assert [(w["column"], w["kind"]) for w in info(path)["warnings"]] == [("n", "id-like")]


def test_the_columns_line_is_shown_at_a_terminal(pandas_file, tmp_path):
    """A person at a terminal sees the columns at the start of fit; a pipe (cron) gets only warnings."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([STREAMSGD, "fit", pandas_file, "--model", "linear", "--steps", "5",
                             "--exclude", "id,version", "-o", str(tmp_path / "a.npz")],
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(leader)
    first = seen.decode().splitlines()[0]
    assert " start: 4 features: carrier_a, carrier_b, express (bool -> 0/1), when (timestamp" in first
    assert "categorical: city" in first and "skipped: " in first and "id (excluded by --exclude)" in first
    piped = run_cli("fit", pandas_file, "--model", "linear", "--steps", "5", "-o", tmp_path / "b.npz")
    assert [line.split(" warning: ")[1].split(" ")[1] for line in piped.stderr.splitlines()] == ["'id'", "'version'"]


def test_job_file_api_and_estimators_take_exclude(pandas_file, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'data = "{pandas_file}"\nmodel = "linear"\nsteps = 5\nexclude = ["id", "ver*"]\n'
                   f'features = "carrier_*,express,id,version"\noutput = "{tmp_path / "m.npz"}"\n')
    run_cli("fit", "--config", job)
    assert streamsgd.load(tmp_path / "m.npz").features == ["carrier_a", "carrier_b", "express"]

    model = streamsgd.fit(pandas_file, model="linear", steps=5, exclude=["id", "when", "version"])
    assert model.features == ["carrier_a", "carrier_b", "express"]
    with pytest.raises(UsageError, match="exclude: expected a list of column names"):
        streamsgd.fit(pandas_file, model="linear", steps=5, exclude="id")
    with pytest.raises(UsageError, match="exclude: applies to the columns of a data set read from a path"):
        streamsgd.fit((np.ones((4, 2)), np.ones(4)), model="linear", exclude=["x0"])

    from streamsgd.integrations.sklearn import StreamSGDRegressor

    est = StreamSGDRegressor(steps=5, features=["carrier_*", "id"], exclude=["id"]).fit(pandas_file)
    assert list(est.feature_names_in_) == ["carrier_a", "carrier_b"]
    assert est.get_params()["exclude"] == ["id"]


def test_zarr_features_take_globs_and_exclude(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    X = group.create_array("X", shape=(100, 3), dtype="f8", chunks=(50, 3))
    X[:] = np.random.default_rng(0).standard_normal((100, 3))
    X.attrs["feature_names"] = ["a1", "a2", "b"]
    group.create_array("y", shape=(100,), dtype="f8", chunks=(50,))[:] = np.ones(100)
    out = info(str(tmp_path / "d.zarr"), "--features", "a*,b", "--exclude", "a2")
    assert out["feature_names"] == ["a1", "b"] and out["skipped"] == {"a2": "excluded by --exclude"}
    assert out["columns"][0] == {"name": "a1", "role": "feature", "type": "float64"}


if sys.platform == "win32":  # pty
    pytest.skip("needs a POSIX terminal", allow_module_level=True)


def test_info_reports_the_plans_one_lane_warning_as_its_own(tmp_path, monkeypatch):
    """A warning the memory plan logs (one lane on sliced row groups) is one of info's warnings,
    in its text and JSON, not Python's bare last-resort line on stderr."""
    import streamsgd.train.setup as setup
    from helpers import invoke

    path = str(tmp_path / "big.parquet")
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"x": rng.standard_normal(200_000), "label": rng.integers(0, 2, 200_000) * 1.0}),
                   path, row_group_size=100_000)
    monkeypatch.setattr(setup, "lanes", lambda *_: 1)  # a limit that pays for one open row group
    text = invoke(["info", path, "--target", "label", "--memory-limit", "8MiB"])
    assert text.code == 0, text.stderr
    [line] = [x for x in text.stdout.splitlines() if "streamsgd shuffle" in x]
    assert line.split()[0] == "warning" and path in line
    assert "streamsgd shuffle" not in text.stderr
    got = json.loads(invoke(["info", path, "--target", "label", "--memory-limit", "8MiB", "--json"]).stdout)
    assert [w["kind"] for w in got["warnings"]] == ["plan"]
