"""The scikit-learn estimators: sklearn's own conformance checks, then what is ours (URLs, labels,
partial_fit continuing the trainer's update rule)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import write_parquet
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

import streamsgd
from streamsgd import StreamSGDClassifier, StreamSGDRegressor
from streamsgd.errors import DataError, UsageError

WEIGHTS = np.array([1.0, -0.2, 3.0, 0.5])

#: sklearn's checks fit a few hundred times on up to a few hundred rows. Without epochs or
#: steps the trainer makes at least 20,000 updates per fit (seconds each); 20 epochs of
#: batch 32 are ~100-200 updates, enough for the accuracy and R² thresholds the checks set.
FAST = {"epochs": 20, "batch": 32}

#: Checks that fail on purpose, with the reason (the classifier's multiclass checks run too,
#: as log_loss is multinomial). check_array_api_input is skipped by sklearn itself unless
#: SCIPY_ARRAY_API=1 (we accept NumPy arrays only).
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    # it compares weights with repeated rows to 1e-7 after a fixed budget of epochs: repeating
    # rows makes more updates per epoch and a larger N in (1/N)·Σ w ℓ, so the SGD iterates
    # differ (scikit-learn's own SGDClassifier/SGDRegressor fail it for the same reason). The
    # optimum is the same: test_integer_sample_weights_equal_repeated_rows.
    "check_sample_weight_equivalence_on_dense_data": "SGD iterates, not an exact solver's optimum",
    # the same check on a CSR X (accepted since the estimators take sparse input), for the same reason
    "check_sample_weight_equivalence_on_sparse_data": "SGD iterates, not an exact solver's optimum",
}


@parametrize_with_checks(
    [StreamSGDClassifier(**FAST), StreamSGDRegressor(**FAST)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_conformance(estimator, check):
    check(estimator)


def make_data(n=2000, seed=0):
    """Features on different scales and offsets; the true model is ~84% accurate."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, 0.0, -2.0]
    z = X @ WEIGHTS + 0.3
    return X, (z + rng.logistic(size=n) > 0).astype(np.int64), z + rng.normal(size=n)


def test_classifier_labels_probabilities_and_score():
    X, y_bin, _ = make_data()
    labels = np.array(["ham", "spam"])
    y = labels[y_bin]
    est = StreamSGDClassifier(epochs=3, seed=2).fit(X, y)

    np.testing.assert_array_equal(est.classes_, labels)
    assert set(est.predict(X)) == {"ham", "spam"}
    proba = est.predict_proba(X)
    assert proba.shape == (2000, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-15)
    # column 1 is classes_[1] ("spam"): high probability where predict says spam
    np.testing.assert_array_equal(est.predict(X) == "spam", proba[:, 1] > 0.5)
    np.testing.assert_allclose(np.exp(est.predict_log_proba(X)), proba, rtol=1e-12)
    assert est.coef_.shape == (1, 4) and est.intercept_.shape == (1,)
    assert est.score(X, y) == np.mean(est.predict(X) == y)
    assert est.score(X, y) > np.mean((X @ WEIGHTS + 0.3 > 0) == y_bin) - 0.02  # the true model: 0.84


def test_estimators_train_what_streamsgd_fit_trains():
    X, y_bin, y_reg = make_data(1000)
    options = dict(epochs=2, batch=64, seed=5, l2=1e-3)
    clf = StreamSGDClassifier(**options).fit(X, y_bin)
    np.testing.assert_array_equal(clf.coef_[0], streamsgd.fit((X, y_bin), **options).coef)
    reg = StreamSGDRegressor(**options).fit(X, y_reg)
    np.testing.assert_array_equal(reg.coef_, streamsgd.fit((X, y_reg), model="linear", **options).coef)
    assert reg.model_.model == "linear" and reg.coef_.shape == (4,)
    assert not hasattr(reg, "decision_function")  # as scikit-learn's regressors


def test_fit_on_a_url_streams_the_file(tmp_path):
    X, y_bin, _ = make_data(1000)
    names = ["age", "income", "score", "tenure"]
    path = write_parquet(tmp_path / "d.parquet", X, y_bin.astype(np.float64), row_group_size=250, names=names)
    est = StreamSGDClassifier(epochs=2, features=["age", "score"]).fit(path)

    expected = streamsgd.fit(path, epochs=2, features=["age", "score"])
    np.testing.assert_array_equal(est.coef_[0], expected.coef)
    assert est.n_features_in_ == 2
    np.testing.assert_array_equal(est.feature_names_in_, ["age", "score"])
    np.testing.assert_array_equal(est.classes_, [0.0, 1.0])  # the column is float64
    import pandas as pd

    frame = pd.DataFrame(X[:, [0, 2]], columns=["age", "score"])
    np.testing.assert_array_equal(est.predict(frame), expected.predict(X[:, [0, 2]]))
    with pytest.raises(UsageError, match="with a data URL the target is the column named by target="):
        est.fit(path, y_bin)


def test_partial_fit_starts_like_one_epoch_of_fit_then_continues():
    X, y_bin, _ = make_data(4000)
    est = StreamSGDClassifier(batch=100, seed=3)
    est.partial_fit(X[:1000], y_bin[:1000], classes=[0, 1])
    one_epoch = StreamSGDClassifier(batch=100, seed=3, epochs=1, average=False).fit(X[:1000], y_bin[:1000])
    np.testing.assert_array_equal(est.coef_, one_epoch.coef_)
    assert est.t_ == 10

    before = est.coef_.copy()
    for start in range(1000, 4000, 1000):
        est.partial_fit(X[start:start + 1000], y_bin[start:start + 1000])
    assert est.t_ == 40 and est.n_iter_ == 4
    assert not np.array_equal(est.coef_, before)
    # 40 updates from a fixed step on fresh rows: near the true model's accuracy (0.84 here)
    truth = np.mean((X @ WEIGHTS + 0.3 > 0) == y_bin)
    assert est.score(X, y_bin) > truth - 0.03

    with pytest.raises(DataError, match="not one of the classes"):
        est.partial_fit(X[:10], np.full(10, 2))
    with pytest.raises(ValueError, match="X has 3 features, but StreamSGDClassifier is expecting 4"):
        est.partial_fit(X[:10, :3], y_bin[:10])
    with pytest.raises(DataError, match="classes must be passed on the first call to partial_fit"):
        StreamSGDClassifier().partial_fit(X, y_bin)


@pytest.mark.parametrize("loss", ["log_loss", "hinge"])
@pytest.mark.parametrize("schedule", ["constant", "invscaling"])
def test_partial_fit_continues_the_schedule_like_one_run(loss, schedule):
    """Two partial_fit calls on the two halves take exactly the steps of one unshuffled run
    over both halves: the second starts from the first's parameters, step size and update
    count (so invscaling goes on decaying). Unstandardised, so both see the same features."""
    X, y_bin, _ = make_data(1000)
    options = dict(batch=100, shuffle=False, standardize=False, dtype="float64", lr_schedule=schedule, lr=0.1)
    est = StreamSGDClassifier(loss, **options)
    est.partial_fit(X[:500], y_bin[:500], classes=[0, 1])
    est.partial_fit(X[500:], y_bin[500:])
    assert est.t_ == 10
    once = StreamSGDClassifier(loss, epochs=1, average=False, **options).fit(X, y_bin)
    np.testing.assert_array_equal(est.coef_, once.coef_)
    np.testing.assert_array_equal(est.intercept_, once.intercept_)

def test_options_pass_through_and_clashes_are_refused():
    X, y_bin, _ = make_data(300)
    est = StreamSGDClassifier(epochs=1, options={"readers": 1, "log_every": 5})
    assert est.fit(X, y_bin).model_.metadata["config"]["model"] == "logistic"
    with pytest.raises(UsageError, match="options: 'epochs' is a parameter of its own"):
        StreamSGDClassifier(options={"epochs": 3}).fit(X, y_bin)
    with pytest.raises(UsageError, match="--lr-schedule: expected one of"):
        StreamSGDClassifier(lr_schedule="sawtooth").fit(X, y_bin)
    with pytest.raises(UsageError, match="loss: expected one of"):
        StreamSGDClassifier(loss="epsilon_insensitive").fit(X, y_bin)
    with pytest.raises(UsageError, match="loss='hinge' is binary only, but y holds 3 classes"):
        StreamSGDClassifier("hinge", epochs=1).fit(X, np.arange(300) % 3)


def test_composes_with_sklearn_tools_pickles_and_saves(tmp_path):
    X, y_bin, _ = make_data(900)
    scores = cross_val_score(StreamSGDClassifier(epochs=2, seed=1), X, y_bin, cv=3)
    assert scores.min() > 0.75  # the true model's accuracy is ~0.84 on these rows
    est = StreamSGDClassifier(epochs=2, l2=1e-3).fit(X, y_bin)
    assert clone(est).get_params() == est.get_params()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).predict(X), est.predict(X))
    # the model file route: the fitted model saves and reloads without pickle
    est.model_.save(str(tmp_path / "m.npz"))
    np.testing.assert_array_equal(streamsgd.load(tmp_path / "m.npz").predict(X), est.predict(X))


#: The multinomial model of make_multiclass, on the standardised features: one row per class.
CLASS_WEIGHTS = np.array([[2.0, 0, -1, 0], [0, 2.0, 1, 0], [0, 0, 0, 2.0]])
SCALE, SHIFT = np.array([1.0, 10.0, 0.1, 3.0]), np.array([0.0, 5.0, 0.0, -2.0])


def make_multiclass(n=1500, seed=0):
    """Three string labels from a multinomial model on four features of different scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * SCALE + SHIFT
    z = (X - SHIFT) / SCALE @ CLASS_WEIGHTS.T
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    index = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return X, np.array(["ant", "bee", "cow"])[index]


def test_more_than_two_classes_train_the_multinomial_model():
    X, y = make_multiclass()
    options = dict(epochs=3, batch=64, seed=4, l2=1e-3)
    est = StreamSGDClassifier(**options).fit(X, y)
    np.testing.assert_array_equal(est.classes_, ["ant", "bee", "cow"])
    assert est.model_.model == "softmax"
    assert est.coef_.shape == (3, 4) and est.intercept_.shape == (3,)
    # the same trainer run as streamsgd.fit's softmax on the same labels
    np.testing.assert_array_equal(est.coef_, streamsgd.fit((X, y), model="softmax", **options).coef)
    proba = est.predict_proba(X)
    assert proba.shape == (1500, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(est.predict(X), est.classes_[np.argmax(proba, axis=1)])
    np.testing.assert_array_equal(est.predict(X), est.classes_[np.argmax(est.decision_function(X), axis=1)])
    np.testing.assert_allclose(np.exp(est.predict_log_proba(X)), proba, rtol=1e-12)
    # the true model's accuracy on these rows is ~0.75 (chance 1/3); 3 epochs come within 0.03
    truth = np.array(["ant", "bee", "cow"])[np.argmax((X - SHIFT) / SCALE @ CLASS_WEIGHTS.T, axis=1)]
    assert est.score(X, y) > np.mean(truth == y) - 0.03
    assert isinstance(est.model_.to_sklearn().predict(X[:5])[0], str)


def test_multiclass_partial_fit_takes_every_class_first_and_batches_that_lack_some():
    """Two partial_fit calls on the halves take the steps of one unshuffled run over both, as
    for binary labels; the first half lacks the class "cow" (classes= names it)."""
    X, y = make_multiclass(1200, seed=1)
    order = np.argsort(y == "cow", kind="stable")  # every "cow" row in the second half
    X, y = X[order], y[order]
    assert "cow" not in y[:600] and "cow" in y[600:]
    options = dict(batch=100, shuffle=False, standardize=False, dtype="float64", lr=0.05)
    est = StreamSGDClassifier(**options)
    est.partial_fit(X[:600], y[:600], classes=["cow", "ant", "bee"])
    np.testing.assert_array_equal(est.classes_, ["ant", "bee", "cow"])
    assert est.coef_.shape == (3, 4)
    est.partial_fit(X[600:], y[600:])
    assert est.t_ == 12 and est.n_iter_ == 2
    once = StreamSGDClassifier(epochs=1, average=False, **options).fit(X, y)
    # bit for bit but for the round trip of the first half's parameters through the raw space
    np.testing.assert_allclose(est.coef_, once.coef_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(est.intercept_, once.intercept_, rtol=1e-12, atol=1e-14)
    with pytest.raises(DataError, match="'dog', not one of the classes"):
        est.partial_fit(X[:10], np.array(["dog"] * 10))


def test_fit_on_a_url_with_text_labels_trains_softmax(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, y = make_multiclass(900, seed=2)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "label": y}), path, row_group_size=300)
    est = StreamSGDClassifier(epochs=3, batch=64, target="label").fit(str(path))
    np.testing.assert_array_equal(est.classes_, ["ant", "bee", "cow"])
    assert est.coef_.shape == (3, 4) and est.predict_proba(X).shape == (900, 3)
    assert est.score(X, y) > 0.6  # the true model's accuracy is ~0.75, chance 1/3


def test_a_pipeline_with_a_sparse_one_hot_encoder_trains_as_on_its_dense_output():
    """scikit-learn's ColumnTransformer + OneHotEncoder hands the estimator a CSR matrix: it
    trains (each chunk densified as it is read), and the model equals the one trained on the
    same matrix made dense, bit for bit; predict and predict_proba take CSR too."""
    import pandas as pd
    import scipy.sparse as sp
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(5)
    n = 3000
    frame = pd.DataFrame({"x": rng.standard_normal(n), "town": rng.choice(list("abcdefgh"), n),
                          "kind": rng.choice(["p", "q", "r"], n)})
    effect = frame["town"].map(dict(zip("abcdefgh", np.linspace(-2, 2, 8)))).to_numpy()
    y = (frame["x"].to_numpy() + effect + rng.logistic(size=n) > 0).astype(int)
    encode = make_column_transformer((StandardScaler(), ["x"]), (OneHotEncoder(), ["town", "kind"]),
                                     sparse_threshold=1.0)
    X = encode.fit_transform(frame)
    assert sp.issparse(X) and X.shape == (n, 12)
    sparse = StreamSGDClassifier(epochs=3, seed=0).fit(X, y)
    dense = StreamSGDClassifier(epochs=3, seed=0).fit(X.toarray(), y)
    np.testing.assert_array_equal(sparse.coef_, dense.coef_)
    np.testing.assert_array_equal(sparse.intercept_, dense.intercept_)
    np.testing.assert_allclose(sparse.predict_proba(X), dense.predict_proba(X.toarray()), rtol=1e-12)
    pipe = make_pipeline(encode, StreamSGDClassifier(epochs=3, seed=0)).fit(frame, y)
    assert pipe.score(frame, y) == sparse.score(X, y) > 0.7  # the town effect is learnt: chance is ~0.5


def test_a_wide_sparse_matrix_is_read_in_chunks_that_fit_the_memory_plan():
    """A CSR X of 6,000 columns: each chunk is cut to SPARSE_CHUNK_BYTES dense (349 rows), so
    the run plans within its limit instead of densifying the whole matrix at once."""
    import scipy.sparse as sp
    from streamsgd.sources.arrays import SPARSE_CHUNK_BYTES, ArraySource

    X = sp.random(3_000, 6_000, density=1e-3, format="csr", random_state=0)
    source = ArraySource(X, np.zeros(3_000))
    assert max(source.chunk_bytes) <= SPARSE_CHUNK_BYTES < 8 * X.shape[0] * X.shape[1]
    assert len(source.chunk_rows) > 1 and sum(source.chunk_rows) == 3_000
    model = StreamSGDRegressor(epochs=1, memory_limit="64MiB").fit(X, np.asarray(X.sum(axis=1)).ravel())
    assert model.coef_.shape == (6_000,) and np.isfinite(model.coef_).all()
