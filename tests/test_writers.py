"""Parquet written by other tools reads correctly: DuckDB, Polars, pandas (pyarrow and
fastparquet engines), with dictionary encoding, nullable and plain integers, float64,
every common codec, and row groups of very different sizes.

Each file holds the same rows as a reference file written by pyarrow. Training runs with
``shuffle=False``: the batches are then the rows in file order whatever the row-group
layout, and the standardisation moments come from one window holding every row, so the
same values must give the same model *bit for bit*. Any difference would mean a value was
read differently (a lost null, a rounded integer, a mis-decoded dictionary page).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamsgd.config import FitConfig
import streamsgd
from streamsgd.train.trainer import fit as train
from streamsgd.errors import DataError

N = 6_000
FEATURES = ["f64", "i64", "i32", "levels", "count"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(17)
    df = pd.DataFrame({
        "f64": rng.standard_normal(N),
        "i64": rng.integers(-50, 50, N).astype(np.int64),
        "i32": rng.integers(0, 1000, N).astype(np.int32),
        "levels": rng.choice([0.5, 1.5, 2.5, 4.0], N),  # few distinct values: dictionary-encoded
        "count": pd.array(rng.integers(0, 9, N), dtype="Int64"),  # nullable integer, no nulls
    })
    df["y"] = (df["f64"] * 2 - df["i64"] * 0.01 + df["i32"] * 0.001 + df["levels"]
               + df["count"].astype(float) * 0.3 + rng.standard_normal(N) * 0.1)
    return df


def fit(path: str):
    source = streamsgd.open_source(path, features=FEATURES)
    return source, train(source, FitConfig(model="linear", epochs=2, shuffle=False, seed=1)).model


@pytest.fixture(scope="module")
def reference(frame, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ref") / "ref.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=1000)
    return fit(path)[1]


def write_duckdb(df, path, compression):
    import duckdb

    with duckdb.connect() as con:
        con.register("rows", df)
        con.execute(f"COPY (SELECT * FROM rows) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1024, "
                    f"COMPRESSION {compression})")


def write_polars(df, path, compression):
    import polars as pl

    pl.from_pandas(df).write_parquet(path, row_group_size=700, compression=compression)


def write_pandas_pyarrow(df, path, compression):
    df.to_parquet(path, engine="pyarrow", index=False, compression=compression, row_group_size=2500)


def write_pandas_fastparquet(df, path, compression):
    import fastparquet  # pandas 3 deprecates its fastparquet engine: call the library itself

    # row groups of very different sizes: 10, 2990, 37, 2963 rows
    fastparquet.write(path, df, compression=compression, row_group_offsets=[0, 10, 3000, 3037],
                      write_index=False)


def write_pyarrow_uneven(df, path, compression):
    table = pa.Table.from_pandas(df, preserve_index=False)
    with pq.ParquetWriter(path, table.schema, compression=compression, use_dictionary=True) as writer:
        for lo, hi in [(0, 1), (1, 4000), (4000, 4013), (4013, N)]:
            writer.write_table(table.slice(lo, hi - lo))


WRITERS = {
    "duckdb": (write_duckdb, ["snappy", "zstd", "gzip", "uncompressed"]),
    "polars": (write_polars, ["snappy", "zstd", "gzip", "uncompressed"]),
    "pandas-pyarrow": (write_pandas_pyarrow, ["snappy", "zstd", "gzip", None]),
    "pandas-fastparquet": (write_pandas_fastparquet, ["snappy", "zstd", "gzip", None]),
    "pyarrow-uneven": (write_pyarrow_uneven, ["snappy", "zstd", "gzip", "none"]),
}


@pytest.mark.parametrize("writer,compression", [(w, c) for w, (_, codecs) in WRITERS.items() for c in codecs])
def test_other_writers_train_the_same_model(writer, compression, frame, reference, tmp_path):
    path = str(tmp_path / f"{writer}.parquet")
    WRITERS[writer][0](frame, path, compression)
    meta = pq.read_metadata(path)
    codec = meta.row_group(0).column(0).compression
    assert codec == {None: "UNCOMPRESSED", "none": "UNCOMPRESSED"}.get(compression, str(compression).upper())
    source, model = fit(path)
    assert sum(source.chunk_rows) == N and len(source.chunk_rows) == meta.num_row_groups
    # the data really went through dictionary pages somewhere (the "levels" column)
    encodings = {e for g in range(meta.num_row_groups) for j in range(meta.num_columns)
                 for e in meta.row_group(g).column(j).encodings}
    assert encodings & {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} or writer == "pandas-fastparquet"
    for name in ("coef", "mean", "scale"):
        np.testing.assert_array_equal(getattr(model, name), getattr(reference, name))
    assert model.intercept == reference.intercept


def test_row_group_sizes_really_differ(frame, tmp_path):
    path = str(tmp_path / "uneven.parquet")
    write_pandas_fastparquet(frame, path, "snappy")
    assert streamsgd.open_source(path, features=FEATURES).chunk_rows == [10, 2990, 37, 2963]


@pytest.mark.parametrize("writer", ["pyarrow", "fastparquet", "duckdb", "polars"])
def test_nulls_in_a_nullable_integer_column_are_a_data_error_naming_it(writer, frame, tmp_path):
    df = frame.copy()
    df.loc[4321, "count"] = pd.NA
    path = str(tmp_path / f"{writer}.parquet")
    if writer == "pyarrow":
        df.to_parquet(path, engine=writer, index=False)
    else:
        {"duckdb": write_duckdb, "polars": write_polars, "fastparquet": write_pandas_fastparquet}[writer](
            df, path, "snappy")
    source = streamsgd.open_source(path, features=FEATURES)
    with pytest.raises(DataError, match=r"row group \d+: column 'count' has 1 null values; drop or impute them"):
        train(source, FitConfig(model="linear", epochs=1, missing="error"))
