"""The generator: known true weights that a fit recovers, exact row groups, label-sorted output."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from streamsgd.config import FitConfig
import streamsgd
from streamsgd.train import trainer as train
from streamsgd.errors import UsageError
from streamsgd.tools.generate import generate


def test_fit_recovers_the_true_linear_weights(tmp_path):
    path = tmp_path / "lin.parquet"
    info = generate(str(path), rows=50_000, features=5, task="linear", seed=11, row_group_rows=5000)
    # a decaying step removes the constant default step's noise floor from the weights
    result = train.fit(streamsgd.open_source(str(path)),
                       FitConfig(model="linear", l2=0.0, lr_schedule="invscaling", power_t=0.5))
    learned = np.array(result.model.metadata["coef_standardized"])
    # OLS standard error with noise 0.5 and unit-variance features is 0.5/sqrt(50000) ≈ 0.002;
    # 0.02 leaves room for SGD's noise floor and the empirical vs true scaling
    np.testing.assert_allclose(learned, info["coef"][0], atol=0.02)
    assert result.model.metadata["intercept_standardized"] == pytest.approx(info["intercept"][0], abs=0.02)


def test_row_groups_and_metadata(tmp_path):
    path = tmp_path / "d.parquet"
    generate(str(path), rows=10_500, features=3, row_group_rows=1000, seed=2)
    meta = pq.read_metadata(path)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 10 + [500]
    info = json.loads(pq.read_schema(path).metadata[b"streamsgd"])
    assert info["task"] == "logistic" and len(info["coef"][0]) == 3


@pytest.mark.parametrize("task,classes", [("logistic", 2), ("softmax", 4)])
def test_sorted_output_is_the_same_rows_ordered_by_label(tmp_path, task, classes):
    plain, ordered = tmp_path / "plain.parquet", tmp_path / "sorted.parquet"
    generate(str(plain), rows=7000, features=2, task=task, classes=classes, row_group_rows=500)
    generate(str(ordered), rows=7000, features=2, task=task, classes=classes, row_group_rows=500,
             sorted_by_label=True)
    a, b = pq.read_table(plain), pq.read_table(ordered)
    assert (np.diff(b["y"].to_numpy()) >= 0).all()
    key = lambda t: np.sort(t["x0"].to_numpy() * 1e3 + t["y"].to_numpy())  # noqa: E731
    np.testing.assert_array_equal(key(a), key(b))
    assert set(np.unique(b["y"].to_numpy())) == set(range(classes))
    assert all(pq.read_metadata(ordered).row_group(i).num_rows == 500 for i in range(14))


def test_sorted_linear_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--sorted"):
        generate(str(tmp_path / "x.parquet"), rows=10, features=2, task="linear", sorted_by_label=True)
    assert not list(tmp_path.iterdir())
