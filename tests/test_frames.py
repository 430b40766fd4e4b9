"""pandas DataFrames with text, category and null values train and predict as their Parquet
files do (sources.frames: the frame is read back through the file readers)."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import streamsgd
from streamsgd.errors import UsageError
from streamsgd.sources import open_source
from streamsgd.tools.inference import predict


def _frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A numeric column, one with 20 % nulls, a text column that sets the label, a pandas category."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.standard_normal(n), "town": rng.choice(["x", "y", "z"], n),
                       "kind": pd.Categorical(rng.choice(["p", "q"], n)),
                       "b": np.where(rng.random(n) < 0.2, np.nan, rng.standard_normal(n))})
    effect = df["town"].map({"x": -2.0, "y": 0.0, "z": 2.0}).to_numpy()
    df["label"] = (df["a"].to_numpy() + effect + rng.logistic(size=n) > 0).astype(int)
    return df


def test_a_frame_trains_as_its_parquet_file_and_predicts_as_streamsgd_predict(tmp_path):
    df = _frame()
    path = str(tmp_path / "frame.parquet")
    df.to_parquet(path, index=False)  # pandas' defaults: one row group at this size, as the frame's
    from_file = streamsgd.fit(path, target="label", model="logistic", seed=0, epochs=3)
    from_frame = streamsgd.fit(df, target="label", model="logistic", seed=0, epochs=3)
    assert from_frame.hashed_columns == ["town", "kind"] and "b__missing" in from_frame.features
    np.testing.assert_array_equal(from_frame.coef, from_file.coef)
    np.testing.assert_array_equal(from_frame.hashed, from_file.hashed)
    assert from_frame.intercept == from_file.intercept
    split = streamsgd.fit((df.drop(columns="label"), df["label"]), target="label", model="logistic", seed=0, epochs=3)
    np.testing.assert_array_equal(split.hashed, from_file.hashed)

    out = str(tmp_path / "pred.parquet")
    source = open_source(path, target=None, features=from_file.features + from_file.hashed_columns,
                         categorical=from_file.hashed_columns)
    predict(from_file, source, out)
    written = pq.read_table(out).to_pandas()
    np.testing.assert_allclose(from_file.predict_proba(df.drop(columns="label")), written["probability"], rtol=1e-12)
    assert (from_file.predict(df) == written["prediction"]).all()
    assert from_file.score(df.drop(columns="label"), df["label"]) > 0.75  # the town effect is learnt: chance ~0.5
    assert not fsspec.filesystem("memory").glob("/streamsgd-frames/*")  # the in-memory copies are gone


def test_a_frame_without_its_target_is_one_usage_line():
    with pytest.raises(UsageError, match="the frame has no target column 'y'; name it with target="):
        streamsgd.fit(_frame(200))


def test_an_array_without_room_for_the_categorical_columns_is_refused_naming_the_frame(tmp_path):
    model = streamsgd.fit(_frame(500), target="label", model="logistic", epochs=1)
    with pytest.raises(UsageError, match="pass a DataFrame with the model's columns"):
        model.predict(np.zeros((3, len(model.features))))
