"""Numeric nulls under ``--missing impute`` (the default) and ``--missing error``: the means,
the imputed window rows, the ``<col>__missing`` indicators, and the round trip through the
model file to ``predict`` and ``evaluate`` (DESIGN.md §4, "Missing values")."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import invoke
from streamsgd.errors import DataError
from streamsgd.persist.model import load
from streamsgd.sources import open_source
from streamsgd.sources.missing import impute_nulls, imputed
from streamsgd.sources.rows import ABSENT, PRESENT

FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
NULL_ROWS = {"bill_length_mm": [3, 10, 50, 211], "flipper_length_mm": [7, 300]}


def penguins(n: int = 344, seed: int = 0) -> pd.DataFrame:
    """A table shaped like palmerpenguins': four measurements, some None, and a 0/1 target."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"bill_length_mm": rng.normal(44, 5, n), "bill_depth_mm": rng.normal(17, 2, n),
                       "flipper_length_mm": rng.normal(200, 14, n).round(), "body_mass_g": rng.normal(4200, 800, n)})
    df["y"] = ((df.bill_length_mm - 44) / 5 + (df.flipper_length_mm - 200) / 14
               + rng.normal(0, 0.5, n) > 0).astype(np.int64)
    for col, rows in NULL_ROWS.items():
        df.loc[rows, col] = None  # pandas writes None in a float column as a Parquet null
    return df


@pytest.fixture
def pandas_file(tmp_path):
    path = tmp_path / "penguins.parquet"
    df = penguins()
    df.to_parquet(path, index=False, row_group_size=100)
    return str(path), df


def read_all(source) -> np.ndarray:
    X = np.empty((sum(source.chunk_rows), len(source.features)))
    y = np.empty(X.shape[0])
    start = 0
    for i, rows in enumerate(source.chunk_rows):
        source.read_into(i, X, y, np.arange(start, start + rows))
        start += rows
    return X


def test_kernel_reads_the_validity_bitmap_of_a_sliced_array():
    array = pa.array([1.0, None, 3.0, 4.0, None, 6.0, 7.0, 8.0, None, 10.0, 11.0])[2:]
    values, flags = imputed(array, 5.5)
    assert values.tolist() == [3.0, 4.0, 5.5, 6.0, 7.0, 8.0, 5.5, 10.0, 11.0]
    assert flags.tolist() == [PRESENT, PRESENT, ABSENT, PRESENT, PRESENT, PRESENT, ABSENT, PRESENT, PRESENT]
    ints, int_flags = imputed(pa.chunked_array([pa.array([2, None], pa.int32()), pa.array([None, 8], pa.int32())]), 5.0)
    assert ints.tolist() == [2.0, 5.0, 5.0, 8.0] and int_flags.tolist() == [PRESENT, ABSENT, ABSENT, PRESENT]


@pytest.mark.parametrize("writer", ["pandas", "polars"])
def test_window_rows_hold_the_mean_and_the_indicator(tmp_path, writer):
    df = penguins()
    path = str(tmp_path / f"{writer}.parquet")
    if writer == "pandas":
        df.to_parquet(path, index=False, row_group_size=100)
    else:
        pl.from_pandas(df).write_parquet(path, row_group_size=100)
    source = open_source(path, target="y")
    assert source.features == FEATURES
    impute_nulls(source)
    assert source.features == FEATURES + ["bill_length_mm__missing", "flipper_length_mm__missing"]
    means = {c: float(df[c].mean()) for c in NULL_ROWS}  # pandas skips NaN: the non-null mean
    assert source.imputation == pytest.approx(means, rel=1e-12)
    X = read_all(source)
    for k, col in enumerate(NULL_ROWS):
        j = FEATURES.index(col)
        missing = df[col].isna().to_numpy()
        np.testing.assert_array_equal(X[missing, j], means[col])
        np.testing.assert_array_equal(X[~missing, j], df[col].to_numpy()[~missing])
        np.testing.assert_array_equal(X[:, len(FEATURES) + k], missing.astype(float))
    np.testing.assert_array_equal(X[:, 1], df["bill_depth_mm"].to_numpy())


def test_fit_predict_evaluate_round_trip(pandas_file, tmp_path):
    path, df = pandas_file
    out = tmp_path / "m.npz"
    fitted = invoke(["fit", path, "--target", "y", "--steps", "200", "-o", str(out)])
    assert fitted.code == 0, fitted.report()
    model = load(str(out))
    assert model.features == FEATURES + ["bill_length_mm__missing", "flipper_length_mm__missing"]
    record = model.metadata["missing"]
    assert record["indicators"] == list(NULL_ROWS)
    assert record["means"] == pytest.approx({c: float(df[c].mean()) for c in NULL_ROWS}, rel=1e-12)
    preds = tmp_path / "p.parquet"
    assert invoke(["predict", str(out), path, "-o", str(preds)]).code == 0
    X = df[FEATURES].fillna({c: record["means"][c] for c in NULL_ROWS}).to_numpy()
    X = np.column_stack([X] + [df[c].isna().to_numpy(float) for c in NULL_ROWS])
    np.testing.assert_array_equal(pq.read_table(preds).column("prediction").to_numpy(), model.predict(X))
    evaluated = invoke(["evaluate", str(out), path, "--json"])
    assert evaluated.code == 0, evaluated.report()
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(np.mean(model.predict(X) == df["y"]))


def test_missing_error_refuses_naming_file_and_column(pandas_file, tmp_path):
    path, _ = pandas_file
    outcome = invoke(["fit", path, "--target", "y", "--missing", "error", "--steps", "5", "-o", str(tmp_path / "m.npz")])
    assert outcome.code == 3
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "null values" in lines[0]
    assert "'bill_length_mm'" in lines[0] or "'flipper_length_mm'" in lines[0]  # whichever window is read first
    assert not (tmp_path / "m.npz").exists()


def test_nulls_at_predict_in_a_column_clean_in_training_are_refused(tmp_path):
    df = penguins()
    train = tmp_path / "train.parquet"
    df.to_parquet(train, index=False)
    later = df.copy()
    later.loc[[5], "body_mass_g"] = None  # no nulls there in training: no mean in the model
    new = tmp_path / "new.parquet"
    later.to_parquet(new, index=False)
    out = tmp_path / "m.npz"
    assert invoke(["fit", str(train), "--target", "y", "--steps", "50", "-o", str(out)]).code == 0
    outcome = invoke(["predict", str(out), str(new), "-o", str(tmp_path / "p.parquet")])
    assert outcome.code == 3 and "'body_mass_g'" in outcome.stderr and "held none in training" in outcome.stderr


def test_data_without_nulls_gets_no_indicator(tmp_path):
    df = penguins().dropna()
    path = tmp_path / "clean.parquet"
    df.to_parquet(path, index=False)
    out = tmp_path / "m.npz"
    assert invoke(["fit", str(path), "--target", "y", "--steps", "50", "-o", str(out)]).code == 0
    model = load(str(out))
    assert model.features == FEATURES and "missing" not in model.metadata


def test_a_column_of_nulls_only_is_skipped_unless_named(tmp_path):
    """A column null in every row (in every row group, by the footers) holds nothing to learn and
    no mean: the default columns skip it with its reason; named in --features it is refused."""
    df = penguins()
    df["bill_depth_mm"] = None
    df["bill_depth_mm"] = df["bill_depth_mm"].astype("float64")
    path = tmp_path / "empty.parquet"
    df.to_parquet(path, index=False, row_group_size=100)
    source = open_source(str(path), target="y")
    assert "bill_depth_mm" not in source.features and source.skipped["bill_depth_mm"] == "every value is null"
    assert "bill_length_mm" in source.features  # null in 4 rows only
    named = open_source(str(path), target="y", features=FEATURES)
    with pytest.raises(DataError, match="'bill_depth_mm' holds only nulls"):
        impute_nulls(named)


def test_tune_batch_imputes_as_fit_does(pandas_file):
    path, _ = pandas_file
    args = ["tune-batch", path, "--target", "y", "--batches", "16,32", "--timing-batches", "16,64",
            "--timing-rows", "2000", "--json"]
    outcome = invoke(args)
    assert outcome.code == 0, outcome.report()
    assert len(json.loads(outcome.stdout)["noise_at"]["coef_standardized"]) == len(FEATURES) + len(NULL_ROWS)
    assert invoke(args + ["--missing", "error"]).code == 3


def _with_null_targets(df: pd.DataFrame, groups: int, tmp_path) -> tuple[str, str, int]:
    """``df`` written in ``groups`` row groups with some targets null (every target of row
    group 1, a few elsewhere), and the same rows without those, in the same row groups."""
    y = df["y"].astype("float64")
    y[[0, 5, 17, 250, 251, 343]] = None
    bounds = np.linspace(0, len(df), groups + 1).astype(int)
    y[bounds[1]:bounds[2]] = None  # a row group of null targets only: its chunk is dropped
    table = pa.Table.from_pandas(df.assign(y=y), preserve_index=False)
    full, kept = tmp_path / "nulls.parquet", tmp_path / "kept.parquet"
    with pq.ParquetWriter(full, table.schema) as a, pq.ParquetWriter(kept, table.schema) as b:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = table.slice(lo, hi - lo)
            a.write_table(part)
            part = part.filter(part.column("y").is_valid())
            if part.num_rows:
                b.write_table(part)
    return str(full), str(kept), int(y.isna().sum())


def test_rows_with_a_null_target_are_skipped_and_counted(tmp_path):
    """A null target's row trains nothing: the model is, bit for bit, that of the same data
    without those rows (nulls in features imputed over the rows that train), the summary
    and evaluate count them, and --missing error refuses them (DESIGN.md §4)."""
    full, kept, skipped = _with_null_targets(penguins(), 4, tmp_path)
    models = {}
    for name, path in (("full", full), ("kept", kept)):
        out = tmp_path / f"{name}.npz"
        fitted = invoke(["fit", path, "--target", "y", "--steps", "300", "--json", "-o", str(out)])
        assert fitted.code == 0, fitted.report()
        assert json.loads(fitted.stdout)["skipped_rows"] == (skipped if name == "full" else 0)
        models[name] = load(str(out))
    np.testing.assert_array_equal(models["full"].coef, models["kept"].coef)
    assert models["full"].intercept == models["kept"].intercept
    assert models["full"].metadata["missing"] == models["kept"].metadata["missing"]
    scores = [json.loads(invoke(["evaluate", str(tmp_path / "full.npz"), path, "--json"]).stdout)
              for path in (full, kept)]
    assert scores[0]["skipped_rows"] == skipped and scores[1]["skipped_rows"] == 0
    assert scores[0]["loss"] == scores[1]["loss"] and scores[0]["rows"] == scores[1]["rows"]
    refused = invoke(["fit", full, "--target", "y", "--missing", "error", "--steps", "5", "-o", str(tmp_path / "e.npz")])
    assert refused.code == 3 and "target column 'y' has" in refused.stderr and "null values" in refused.stderr
    assert not (tmp_path / "e.npz").exists()


def test_null_targets_in_sliced_row_groups_and_hashed_columns(tmp_path):
    """Slices of a streamed row group and categorical (hashed) columns leave out the same
    rows as the target's reads: the run trains on exactly the rows with a target."""
    rng = np.random.default_rng(3)
    n = 40_000
    df = pd.DataFrame({"x": rng.normal(size=n), "town": rng.choice(["a", "b", None], n)})
    df["y"] = (df.x + (df.town == "a") + rng.normal(0, 0.5, n) > 0.5).astype("float64")
    df.loc[rng.random(n) < 0.2, "y"] = None
    path = tmp_path / "big.parquet"
    df.to_parquet(path, index=False, row_group_size=n)
    out = tmp_path / "m.npz"
    fitted = invoke(["fit", str(path), "--target", "y", "--model", "logistic", "--epochs", "1", "--batch", "256",
                     "--memory-limit", "4MiB", "--hash-bits", "10", "--json", "-o", str(out)])
    assert fitted.code == 0, fitted.report()
    summary = json.loads(fitted.stdout)
    assert summary["skipped_rows"] == int(df.y.isna().sum())
    assert summary["rows_seen"] == n - summary["skipped_rows"]
    source = open_source(str(path), target="y", max_chunk_rows=n // 8)  # 8 slices of one row group
    source.skip_null_targets()
    assert len(source.chunk_rows) == 8 and sum(source.chunk_rows) == n - summary["skipped_rows"]
    for i, rows in enumerate(source.chunk_rows):  # the target itself not asked for
        assert source.read_columns(i, ["x", "town"]).num_rows == rows
    # a cut counts from the target's validity bits (1 bit a row, charged), reading nothing
    reads = []
    source._read = lambda *args: reads.append(args)
    before = source.metadata_bytes
    source.cut(max_chunk_rows=n // 5)
    assert reads == [] and len(source.chunk_rows) == 5 and sum(source.chunk_rows) == n - summary["skipped_rows"]
    assert source.metadata_bytes == before and n // 8 <= before


def test_only_null_targets_is_refused_naming_the_target(tmp_path):
    df = penguins().assign(y=None).astype({"y": "float64"})
    path = tmp_path / "none.parquet"
    df.to_parquet(path, index=False)
    outcome = invoke(["fit", str(path), "--target", "y", "--steps", "5", "-o", str(tmp_path / "m.npz")])
    assert outcome.code == 3 and "all 344 rows have a null target 'y'" in outcome.stderr
