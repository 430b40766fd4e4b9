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


def test_a_column_of_nulls_only_is_refused(tmp_path):
    df = penguins()
    df["bill_depth_mm"] = None
    df["bill_depth_mm"] = df["bill_depth_mm"].astype("float64")
    path = tmp_path / "empty.parquet"
    df.to_parquet(path, index=False)
    source = open_source(str(path), target="y")
    with pytest.raises(DataError, match="'bill_depth_mm' holds only nulls"):
        impute_nulls(source)


def test_tune_batch_imputes_as_fit_does(pandas_file):
    path, _ = pandas_file
    args = ["tune-batch", path, "--target", "y", "--batches", "16,32", "--timing-batches", "16,64",
            "--timing-rows", "2000", "--json"]
    outcome = invoke(args)
    assert outcome.code == 0, outcome.report()
    assert len(json.loads(outcome.stdout)["noise_at"]["coef_standardized"]) == len(FEATURES) + len(NULL_ROWS)
    assert invoke(args + ["--missing", "error"]).code == 3
