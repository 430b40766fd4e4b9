"""``streamsgd show MODEL --top K`` names the largest hashed weights by (column, value)
(train.naming at the end of a fit, tools.show to list them)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamsgd.persist.model import load
from streamsgd.tools.show import describe_model, format_model

from helpers import run_cli


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """4,000 rows, three text columns of 50 values each, and a planted effect: rows with
    shop = "s7" click far more often (logit +4) than the rest (logit -1)."""
    rng = np.random.default_rng(0)
    n = 4000
    cols = {name: np.array([f"{name[0]}{k}" for k in rng.integers(0, 50, n)], dtype=object)
            for name in ("shop", "page", "device")}
    logit = np.where(cols["shop"] == "s7", 4.0, -1.0)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    path = tmp_path_factory.mktemp("planted") / "clicks.parquet"
    pq.write_table(pa.table({**{k: pa.array(v, pa.string()) for k, v in cols.items()}, "x": rng.normal(size=n),
                             "click": click}), path, row_group_size=1000)
    return path


def _fit(path, out, *extra):
    run_cli("fit", path, "--target", "click", "--model", "logistic", "--hash-bits", "12", "--epochs", "5",
            "--seed", "3", "--output", out, *extra)
    return out


def test_show_top_names_the_planted_value_first_with_its_sign(planted, tmp_path):
    model = _fit(planted, tmp_path / "m.npz")
    info = json.loads(run_cli("show", model, "--top", "3", "--json").stdout)
    first = info["hashed"][0]
    assert (first["column"], first["value"]) == ("shop", "s7")
    assert first["weight"] > 0 and len(info["hashed"]) == 3
    assert all(b["column"] is not None for b in info["hashed"])  # 4,000 rows: all of them in the sample
    text = run_cli("show", model, "--top", "3").stdout
    assert "shop=s7" in text.splitlines()[[k for k, line in enumerate(text.splitlines())
                                           if line.startswith("hashed")][0] + 1]


def test_interactions_are_named_as_pairs(planted, tmp_path):
    model = _fit(planted, tmp_path / "m.npz", "--interactions", "shop:page")
    info = json.loads(run_cli("show", model, "--top", "100", "--json").stdout)
    pairs = [b for b in info["hashed"] if b["column"] == "shop:page"]
    assert pairs and all(isinstance(b["value"], list) and len(b["value"]) == 2 for b in pairs)
    assert any(" & page=" in line for line in format_model(info))


def test_a_model_written_without_names_still_shows_its_buckets(planted, tmp_path):
    path = _fit(planted, tmp_path / "m.npz")
    model = load(str(path))
    del model.metadata["hashed_names"]  # as a model written before names were kept
    old = tmp_path / "old.npz"
    model.save(str(old))
    info = json.loads(run_cli("show", old, "--top", "2", "--json").stdout)
    assert [b["column"] for b in info["hashed"]] == [None, None]
    assert "(not in the sample)" in run_cli("show", old, "--top", "2").stdout
    assert describe_model(load(str(old)))["hashed"] is None  # without --top: as before


def test_the_naming_pass_reads_at_most_the_row_cap(planted, monkeypatch):
    """With the cap at 1,500 rows of a file of 1,000-row groups, two chunks are read and the
    second only in part; values beyond the cap are not seen."""
    from streamsgd.config import FitConfig
    from streamsgd.sources import open_source
    from streamsgd.train import naming
    from streamsgd.train.trainer import fit

    monkeypatch.setattr(naming, "SAMPLE_ROWS", 1500)
    source = open_source(str(planted), target="click")
    model = fit(source, FitConfig(model="logistic", hash_bits=12, epochs=1, seed=3)).model
    names = model.metadata["hashed_names"]
    assert names["rows_read"] == 1500 and names["row_cap"] == 1500

    reads: list[tuple[int, int]] = []
    real = type(source).read_columns

    def counted(self, i, names, *args):
        table = real(self, i, names, *args)
        reads.append((i, table.num_rows))
        return table

    monkeypatch.setattr(type(source), "read_columns", counted)
    again = naming.name_buckets(source, source.encoding, model.hashed)
    assert reads == [(0, 1000), (1, 1000)] and again == names


def test_softmax_and_list_columns_are_named(tmp_path):
    """A 3-class target that shop "s7" sets to "c" (others spread over "a" and "b"), and a
    list column: the top bucket is shop=s7 with one weight per class, largest for "c"; the
    list's elements are named as values of their column."""
    rng = np.random.default_rng(1)
    n = 3000
    shop = np.array([f"s{k}" for k in rng.integers(0, 30, n)], dtype=object)
    kind = np.where(shop == "s7", "c", np.where(rng.random(n) < 0.5, "a", "b"))
    tags = pa.array([[f"t{k}" for k in rng.integers(0, 20, rng.integers(1, 4))] for _ in range(n)])
    path = tmp_path / "kinds.parquet"
    pq.write_table(pa.table({"shop": pa.array(shop, pa.string()), "tags": tags, "kind": kind}), path)
    run_cli("fit", path, "--target", "kind", "--model", "softmax", "--hash-bits", "12", "--epochs", "5",
            "--seed", "3", "--output", tmp_path / "m.npz")
    info = json.loads(run_cli("show", tmp_path / "m.npz", "--top", "60", "--json").stdout)
    first = info["hashed"][0]
    assert (first["column"], first["value"]) == ("shop", "s7") and len(first["weight"]) == 3
    assert int(np.argmax(first["weight"])) == info["classes"].index("c")
    assert any(b["column"] == "tags" and b["value"].startswith("t") for b in info["hashed"])
