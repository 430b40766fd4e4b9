"""One home for the value rules (sources/validate.py), applied once per run: the target pass
before training checks every chunk once, however many epochs read it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import streamsgd
import streamsgd.train.targets as targets
from streamsgd.config import FitConfig
from streamsgd.errors import DataError
from streamsgd.sources.validate import check_target, not_finite_target, refuse_nulls
from streamsgd.train.trainer import fit as train

from helpers import write_parquet


@pytest.fixture
def five_chunks(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1000, 3))
    return write_parquet(tmp_path / "d.parquet", X, (X[:, 0] > 0).astype(float), row_group_size=200)


@pytest.mark.parametrize("fraction, checked", [(0.0, 5), (0.4, 5)])
def test_each_chunks_target_is_checked_once_per_run(five_chunks, monkeypatch, fraction, checked):
    seen = []

    def counting(source, model, y, where):
        seen.append(where)
        check_target(source, model, y, where)

    monkeypatch.setattr(targets, "check_target", counting)
    train(streamsgd.open_source(five_chunks), FitConfig(model="logistic", epochs=3, validation_fraction=fraction))
    assert len(seen) == checked and len(set(seen)) == checked  # training and held-out chunks, once each


class _Source:
    url, target = "d.parquet", "y"


@pytest.mark.parametrize("model, y, message", [
    ("linear", [1.0, np.nan], r"^d.parquet row group 0: target column 'y' holds NaN or infinite values; drop those rows$"),
    ("logistic", [0.0, 2.0], r"holds 2, but a logistic model needs labels 0 and 1; 2 looks like one of several classes"),
    ("hinge", [0.0, -1.0], r"holds -1, but a hinge model needs labels 0 and 1; recode the target"),
    ("poisson", [3.0, -1.0], r"holds -1, but a poisson model needs counts >= 0"),
])
def test_each_target_rule_has_one_message(model, y, message):
    with pytest.raises(DataError, match=message):
        check_target(_Source(), model, np.array(y), "d.parquet row group 0")


def test_good_targets_pass():
    for model, y in (("logistic", [0.0, 1.0]), ("poisson", [0.0, 7.0]), ("linear", [-3.5, 2.0])):
        check_target(_Source(), model, np.array(y), "d.parquet row group 0")


def test_nulls_and_arrays_share_the_wording():
    with pytest.raises(DataError, match=r"^f row group 1: column 'x' has 2 null values; drop or impute them$"):
        refuse_nulls(pa.array([1.0, None, None]), "f row group 1", "x")
    refuse_nulls(pa.array([1.0, 2.0]), "f row group 1", "x")
    assert str(not_finite_target("y")) == "y holds NaN or infinite values; drop those rows"
