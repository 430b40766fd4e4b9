"""Text labels in a Parquet target column: softmax, and a binary classifier given two labels,
train on their class indices, store the labels, predict them, and evaluate/predict read such
files; regressors refuse them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_cli

from streamsgd.config import FitConfig
from streamsgd.train import Hooks, WarmStart
import streamsgd
from streamsgd.errors import DataError
from streamsgd.sources import open_source
from streamsgd.sources.labels import ClassIndexSource, is_text_type
from streamsgd.train.trainer import fit

LABELS = np.array(["cat", "dog", "eel"])


def rows(n=1200, seed=0):
    """Features and labels whose index is the argmax of a noisy copy of the features."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, np.argmax(X + 0.5 * rng.standard_normal(X.shape), axis=1)


def write(path, X, target, row_group_size=300):
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "y": target}), str(path),
                   row_group_size=row_group_size)
    return str(path)


@pytest.mark.parametrize("encoding", ["plain", "dictionary", "large"])
def test_text_labels_train_exactly_as_their_class_indices(tmp_path, encoding):
    """The string column gives the very model its integer codes give (codes = the labels'
    sorted order), with the labels themselves as classes."""
    X, index = rows()
    text = pa.array(LABELS[index])
    text = {"plain": text, "dictionary": text.dictionary_encode(), "large": text.cast(pa.large_string())}[encoding]
    options = dict(model="softmax", epochs=2, batch=64, seed=3, validation_fraction=0.25)
    words = fit(open_source(write(tmp_path / "w.parquet", X, text)), FitConfig(**options)).model
    codes = fit(open_source(write(tmp_path / "c.parquet", X, index)), FitConfig(**options)).model
    np.testing.assert_array_equal(words.coef, codes.coef)
    np.testing.assert_array_equal(words.intercept, codes.intercept)
    assert words.metadata["validation"]["rows"] == codes.metadata["validation"]["rows"] == 300
    np.testing.assert_array_equal(words.classes_, LABELS)
    np.testing.assert_array_equal(codes.classes_, [0, 1, 2])
    np.testing.assert_array_equal(words.predict(X), LABELS[codes.predict(X)])


def test_text_labels_round_trip_through_the_model_file_and_the_cli(tmp_path):
    """The labels are stored in the file; streamsgd evaluate and predict read the text column."""
    X, index = rows()
    data = write(tmp_path / "d.parquet", X, LABELS[index])
    fit(open_source(data), FitConfig(model="softmax", epochs=3)).model.save(str(tmp_path / "m.npz"))
    model = streamsgd.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(model.classes_, LABELS)
    scored = json.loads(run_cli("evaluate", tmp_path / "m.npz", data, "--json").stdout)
    accuracy = float(np.mean(model.predict(X) == LABELS[index]))
    assert scored["rows"] == 1200 and scored["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert accuracy > 0.7  # the labels' own rule gets ~0.8; chance is 1/3
    run_cli("predict", tmp_path / "m.npz", data, "-o", tmp_path / "p.parquet", "--keep", "y")
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["y", "prediction", "prob_cat", "prob_dog", "prob_eel"]
    assert table.schema.field("prediction").type == pa.string()
    np.testing.assert_array_equal(table["prediction"].to_numpy(zero_copy_only=False), model.predict(X))


def test_a_label_the_model_never_saw_is_refused_naming_file_column_and_value(tmp_path):
    X, index = rows(600)
    model = fit(open_source(write(tmp_path / "train.parquet", X, LABELS[index])),
                FitConfig(model="softmax", epochs=1)).model
    labels = LABELS[index].astype(object)
    labels[450] = "fox"  # row group 1 of 300-row groups
    other = write(tmp_path / "new.parquet", X, labels)
    model.save(str(tmp_path / "m.npz"))
    proc = run_cli("evaluate", tmp_path / "m.npz", other, check=False)
    assert proc.returncode == DataError.exit_code, proc.stderr
    assert "new.parquet row group 1: target column 'y' holds 'fox', not one of the model's classes" in proc.stderr
    # warm start from it: the same refusal, since the model's classes are kept
    refused = r"new\.parquet: target column 'y' holds 'fox', not one of the classes of --init"
    with pytest.raises(DataError, match=refused):
        fit(open_source(other), FitConfig(model="softmax", epochs=1), warm=WarmStart(init=model))


@pytest.mark.parametrize("model", ["logistic", "hinge", "modified_huber"])
def test_two_text_labels_train_a_binary_classifier_exactly_as_codes_0_and_1(tmp_path, model):
    """As scikit-learn orders them: the first label in sorted order is class 0. The model
    keeps the labels, predict writes them, evaluate reads them; a third label is refused."""
    X, index = rows(900)
    binary = (index == 1).astype(np.int64)
    words = np.array(["female", "male"])[binary]
    text = write(tmp_path / "t.parquet", X, pa.array(words).dictionary_encode())
    codes = write(tmp_path / "c.parquet", X, binary)
    config = FitConfig(model=model, epochs=2, batch=32)
    a, b = fit(open_source(text), config).model, fit(open_source(codes), config).model
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.intercept == b.intercept and a.classes.tolist() == ["female", "male"]
    np.testing.assert_array_equal(a.predict(X), np.where(b.predict(X) == 1, "male", "female"))
    from streamsgd.tools.inference import evaluate

    assert evaluate(a, open_source(text))["accuracy"] == evaluate(b, open_source(codes))["accuracy"]
    with pytest.raises(DataError, match=r"'y' holds 3 distinct label\(s\) \('cat', 'dog', 'eel'\); a logistic model "
                                        r"needs two: train --model softmax"):
        fit(open_source(write(tmp_path / "d.parquet", X, LABELS[index])), FitConfig(model="logistic", epochs=1))


def test_models_that_need_numbers_refuse_text_labels(tmp_path):
    X, index = rows(300)
    data = write(tmp_path / "d.parquet", X, LABELS[index])
    with pytest.raises(DataError, match=r"d\.parquet: column 'y' has type string, not a number; a linear model"):
        fit(open_source(data), FitConfig(model="linear", epochs=1))
    binary = write(tmp_path / "b.parquet", X, (index == 1).astype(np.int64))
    logistic = fit(open_source(binary), FitConfig(model="logistic", epochs=1)).model
    from streamsgd.tools.inference import evaluate

    with pytest.raises(DataError, match=r"d\.parquet: column 'y' has type string, not a number"):
        evaluate(logistic, open_source(data))
    # the source itself refuses to read text as numbers (only ClassIndexSource reads labels)
    with pytest.raises(DataError, match=r"row group 0: target column 'y' holds text"):
        open_source(data).read_into(0, np.empty((300, 3)), np.empty(300))


def test_text_target_checks_across_files_and_for_nulls(tmp_path):
    X, index = rows(600)
    (tmp_path / "mixed").mkdir()
    write(tmp_path / "mixed" / "a.parquet", X, LABELS[index])
    write(tmp_path / "mixed" / "b.parquet", X, index)
    with pytest.raises(DataError, match=r"b\.parquet: target column 'y' has type int64, but .*a\.parquet has string"):
        open_source(str(tmp_path / "mixed"))
    labels = LABELS[index].astype(object)
    labels[5] = None
    nulls = write(tmp_path / "nulls.parquet", X, labels)
    with pytest.raises(DataError, match=r"nulls\.parquet row group 0: target column 'y' has 1 null values"):
        fit(open_source(nulls), FitConfig(model="softmax", epochs=1, missing="error"))
    assert fit(open_source(nulls), FitConfig(model="softmax", epochs=1)).summary["skipped_rows"] == 1


def test_class_index_source_and_text_type_names():
    assert is_text_type("string") and is_text_type("large_string") and is_text_type("<U3")
    assert is_text_type("dictionary<values=string, indices=int32, ordered=0>")
    assert not any(is_text_type(t) for t in ("double", "int64", "bool", "dictionary<values=int64, indices=int8, "
                                              "ordered=0>", None, ""))
    from streamsgd.sources import ArraySource

    source = ClassIndexSource(ArraySource(np.zeros((4, 1)), np.array(["b", "a", "c", "a"])), ["a", "b", "c"])
    y = np.empty(4)
    source.read_into(0, np.empty((4, 1)), y)
    np.testing.assert_array_equal(y, [1, 0, 2, 0])
    np.testing.assert_array_equal(source.read_columns(0, ["y"]).column("y").to_numpy(), [1.0, 0.0, 2.0, 0.0])


def test_class_weights_are_keyed_by_the_text_labels(tmp_path):
    """{"dog": 3} weighs the rows of "dog" as {"1": 3} weighs its code 1 (the sorted order)."""
    from streamsgd.errors import UsageError

    X, index = rows(900)
    options = dict(model="softmax", epochs=2, batch=64, seed=1)
    words = fit(open_source(write(tmp_path / "w.parquet", X, LABELS[index])),
                FitConfig(class_weight='{"dog": 3}', **options))
    codes = fit(open_source(write(tmp_path / "c.parquet", X, index)), FitConfig(class_weight='{"1": 3}', **options))
    plain = fit(open_source(str(tmp_path / "c.parquet")), FitConfig(**options))
    np.testing.assert_array_equal(words.model.coef, codes.model.coef)
    assert not np.array_equal(codes.model.coef, plain.model.coef)  # the weight changed the fit
    with pytest.raises(UsageError, match=r"--class-weight: 'fox' is not one of the classes \('cat', 'dog', 'eel'\)"):
        fit(open_source(str(tmp_path / "w.parquet")), FitConfig(class_weight='{"fox": 2}', **options))


def test_python_arrays_key_class_weights_by_label_too():
    """streamsgd.fit((X, y)) codes the labels of y itself: {"dog": 3} still means the rows of
    "dog", for softmax and for a binary classifier, and gives the model {"1": 3} gives on the codes."""
    X, index = rows(900)
    options = dict(epochs=2, batch=64, seed=1)
    words = streamsgd.fit((X, LABELS[index]), model="softmax", class_weight='{"dog": 3}', **options)
    codes = streamsgd.fit((X, index), model="softmax", class_weight='{"1": 3}', **options)
    np.testing.assert_array_equal(words.coef, codes.coef)
    binary = index[index < 2]
    words = streamsgd.fit((X[index < 2], LABELS[binary]), model="logistic", class_weight='{"dog": 3}', **options)
    codes = streamsgd.fit((X[index < 2], binary), model="logistic", class_weight='{"1": 3}', **options)
    plain = streamsgd.fit((X[index < 2], binary), model="logistic", **options)
    np.testing.assert_array_equal(words.coef, codes.coef)
    assert not np.array_equal(codes.coef, plain.coef)


def test_softmax_with_text_labels_and_l1_resumes_bit_for_bit(tmp_path):
    """A checkpoint holds the per-class L1 accumulators (C·d of them): resuming from one
    mid-epoch gives exactly the uninterrupted run's model."""
    from streamsgd.train.trainer import Checkpointing

    X, index = rows(900)
    data = write(tmp_path / "d.parquet", X, LABELS[index])
    options = dict(model="softmax", epochs=2, batch=64, l1=0.1, average=False, seed=2)
    states = []
    whole = fit(open_source(data), FitConfig(**options),
                hooks=Hooks(checkpointing=Checkpointing(save=states.append, every=7))).model
    middle = states[0]
    assert middle["counters"][0] == 7 and middle["l1_q"].shape == (3 * 3,) and (middle["l1_q"] != 0).any()
    resumed = fit(open_source(data), FitConfig(**options), resume=middle).model
    np.testing.assert_array_equal(resumed.coef, whole.coef)
    np.testing.assert_array_equal(resumed.intercept, whole.intercept)
    assert (whole.coef == 0.0).any()  # the penalty made exact zeros
