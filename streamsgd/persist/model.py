"""A trained model and its file: ``.npz`` arrays plus JSON metadata, never pickle.

The arrays keep scikit-learn's names: ``coef`` and ``intercept`` in the original feature
space, so ``X @ coef + intercept`` is the decision function on raw data. The standardised
parameters and the scaling are stored too. The metadata (features, target, model, config,
data fingerprint, version, final metrics) is a JSON string stored as a 0-d unicode array,
so one file holds everything and loads with ``allow_pickle=False``. A binary classifier
whose labels are not 0 and 1 also stores them, in their own type, as the array ``classes``
(``classes[0]`` is the label of margin <= 0, ``classes[1]`` that of margin > 0, as in
scikit-learn); without it the labels are 0 and 1 in the target column's type.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from ..config import LOSS_PARAM
from ..errors import DataError, ModelFileError, UsageError
from .atomic import atomic_file, is_remote

if TYPE_CHECKING:  # scikit-learn is optional: needed only by to_sklearn
    from sklearn.linear_model import SGDClassifier, SGDRegressor

#: The format of model files and checkpoints. 2: the random streams are tagged
#: (``plan.rng``), so a run draws other chunk orders, windows and splits than under 1. 3:
#: epoch 0's first window is cut into a ramp of smaller windows (``plan.shuffle.ramp_up``),
#: so a run's first epoch visits its rows in another order than under 2. 4: the hashed
#: state's counters (``compute.sparse``, checkpointed as ``hi``) also count the folds of
#: wscale into the table, and row groups read in slices stream several at once
#: (``plan.shuffle.laned_order``), so such data is visited in another order than under 3.
#: 5: a file whose only sliced row group streamed in one lane streams it as two segments,
#: two lanes (``sources.parquet.SEGMENTS``), and a second lane is paid from half the limit
#: (``plan.memory.SECOND_LANE_SHARE``), so such data is visited in another order than under
#: 4; model files may hold softmax's (2**bits, C) table and an MLP's ``embedding``.
#: A checkpoint of another format cannot be resumed (``persist.checkpoint``); a model file
#: of format 1 to 4 has the same arrays and metadata, so it still loads and predicts.
FORMAT_VERSION = 5
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: a fixed, reproducible timestamp

#: Trainer models that predict a class label (the others predict a number).
CLASSIFIERS = ("logistic", "hinge", "modified_huber", "softmax")

#: Trainer model -> the scikit-learn estimator and loss that define the same predictions.
SKLEARN_EQUIVALENT = {
    "logistic": ("SGDClassifier", "log_loss"),
    "hinge": ("SGDClassifier", "hinge"),
    "modified_huber": ("SGDClassifier", "modified_huber"),
    "linear": ("SGDRegressor", "squared_error"),
    "huber": ("SGDRegressor", "huber"),
}


#: Trainer models with no SGD estimator in scikit-learn: the estimator whose objective they
#: share (test_models), fitted with this model's parameters.
OTHER_EQUIVALENT = {"softmax": "LogisticRegression", "poisson": "PoissonRegressor",
                    "quantile": "QuantileRegressor"}


def _other_estimator(linear_model, model: str, config: dict[str, Any], data: dict[str, Any]):
    l2 = float(config.get("l2", 1e-4))
    if model == "softmax":  # C = 1/(N·l2), N the training rows
        return linear_model.LogisticRegression(C=1.0 / max(l2 * data.get("rows", 1), 1e-300))
    if model == "poisson":
        return linear_model.PoissonRegressor(alpha=l2)
    return linear_model.QuantileRegressor(quantile=float(config.get("quantile", LOSS_PARAM["quantile"])), alpha=0.0)


@dataclass
class Model:
    """A linear model z = x·coef + intercept on raw features, or an MLP (``layers``).

    coef has shape (d,) and intercept is a float, or (C, d) and (C,) for softmax, whose
    margins z = x·coefᵀ + intercept are one per class.
    """

    model: str
    features: list[str]
    target: str
    coef: NDArray[np.float64]
    intercept: float | NDArray[np.float64]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the two labels of a binary classifier, (negative, positive), or softmax's C labels,
    #: sorted (numbers or text); None means 0 and 1
    classes: NDArray | None = None
    #: an MLP's layers, (W (n_out, n_in), b (n_out,)) each, on standardised inputs
    #: (x − mean) / scale; its activation is metadata["mlp"]["activation"]. None: linear.
    layers: list[tuple[NDArray[np.float64], NDArray[np.float64]]] | None = None
    #: the weights of the hashed categorical features (2**bits,), or (2**bits, C) for softmax
    #: (row h: bucket h's weight of each class), every lazy scale folded in; their encoding is
    #: metadata["categorical"] (sources.encoding). None: no categorical column.
    hashed: NDArray[np.float64] | None = None
    #: an MLP's embedding of the hashed categorical features (2**bits, H1): its first layer's
    #: weights for them, every lazy scale folded in (compute.embedding); their encoding is
    #: metadata["categorical"]. None: no categorical column (or a linear model).
    embedding: NDArray[np.float64] | None = None

    @property
    def hashed_columns(self) -> list[str]:
        """The categorical columns the model hashes (none for a model without them)."""
        return list(self.metadata.get("categorical", {}).get("columns", []))

    def hashed_margins(self, idx: NDArray, sign: NDArray) -> NDArray[np.float64]:
        """Each row's margin from its hashed features: Σ_k sign[:, k]·hashed[idx[:, k]]
        (idx, sign of shape (n_rows, k), as a window holds them); (n_rows, C) for softmax."""
        return hashed_margins(self.hashed, idx, sign)

    @property
    def is_classifier(self) -> bool:
        return self.model in CLASSIFIERS

    @property
    def classes_(self) -> NDArray:
        """Labels of a classifier, ndarray of shape (2,) or (C,) (softmax), in the target's own type.

        Stored labels when the model has them, else 0 and 1 typed like the target column
        the model was trained on (int64 when that type is unknown).
        """
        if not self.is_classifier:
            raise AttributeError(f"a {self.model} model predicts numbers, not classes")
        if self.classes is not None:
            return self.classes
        return np.array([0, 1], dtype=_numpy_type(self.metadata.get("target_type")))

    def decision_function(self, X: NDArray) -> NDArray[np.float64]:
        """Margins, X of shape (n_rows, n_features) in ``self.features`` order; or a pandas
        DataFrame or Arrow table holding the columns the model was trained on by name, text,
        categories and nulls included (read as training read them: ``persist.apply``)."""
        from ..sources.frames import as_table

        hashed = self.hashed is not None or self.embedding is not None
        table = as_table(X)
        if table is not None and (hashed or self.metadata.get("missing")):
            from .apply import frame_margins

            return frame_margins(self, table)
        if hashed:  # X has no room for the categorical columns
            raise UsageError(f"this model also hashes the categorical columns {self.hashed_columns[:5]}, which an "
                             "array X does not hold; pass a DataFrame with the model's columns, or score a data set "
                             "with streamsgd predict / evaluate")
        return self.dense_margins(X)

    def dense_margins(self, X: NDArray) -> NDArray[np.float64]:
        """The margins of the numeric features alone (a model with categorical columns adds
        ``hashed_margins``), X of shape (n_rows, n_features) in ``self.features`` order."""
        if hasattr(X, "tocsr"):  # a SciPy sparse X: dense rows a block at a time
            return _sparse_margins(self, X.tocsr())
        if self.layers is not None:
            return _mlp_margins(self, np.asarray(X, dtype=np.float64))
        return np.asarray(X, dtype=np.float64) @ np.asarray(self.coef).T + self.intercept

    def margins(self, X: NDArray, idx: NDArray, sign: NDArray) -> NDArray[np.float64]:
        """The margins of rows with numeric features X and hashed features (idx, sign), as a
        window holds them: a linear model's dense and hashed parts, or an MLP whose first
        layer also takes its embedding of the hashed features."""
        if self.layers is not None:
            bag = None if self.embedding is None else embedding_bag(self.embedding, idx, sign)
            return _mlp_margins(self, np.asarray(X, dtype=np.float64), bag)
        z = self.dense_margins(X)
        return z + self.hashed_margins(idx, sign) if self.hashed is not None else z

    def predict_proba(self, X: NDArray) -> NDArray[np.float64]:
        """P(y = 1): the logistic function of the margin, or modified Huber's (clip(z, ±1) + 1) / 2
        (scikit-learn's); hinge gives no probabilities."""
        z = self.decision_function(X)
        if self.model == "logistic":
            return expit(z)
        if self.model == "softmax":  # one column per class, in classes_ order
            return softmax_probabilities(z)
        if self.model == "modified_huber":
            return (np.clip(z, -1.0, 1.0) + 1.0) / 2.0
        raise UsageError(f"a {self.model} model gives no probabilities; use predict or decision_function")

    def predict(self, X: NDArray) -> NDArray:
        """Class labels (classifier) or values (regressor), ndarray of shape (n_rows,)."""
        return self.predict_from_margins(self.decision_function(X))

    def predict_from_margins(self, z: NDArray[np.float64]) -> NDArray:
        """What :meth:`predict` returns for margins ``z``: for code that has computed them."""
        if self.model == "softmax":
            return self.classes_[np.argmax(z, axis=1)]
        if self.is_classifier:
            return self.classes_[(z > 0).astype(np.intp)]
        if self.model == "poisson":  # the log link: the predicted mean count
            return np.exp(np.minimum(z, 700.0))
        return z

    def score(self, X: NDArray, y: NDArray) -> float:
        """Accuracy (classifier) or R² (regressor) on X of shape (n_rows, n_features), y (n_rows,).

        The same figures ``streamsgd evaluate`` reports and scikit-learn's ``score`` returns;
        R² is 1 - SSE/SST, and NaN when y is constant (SST = 0: R² is undefined).
        """
        y = np.asarray(y)
        predicted = self.predict(X)
        if predicted.shape != y.shape:
            raise DataError(f"y: expected shape {predicted.shape} to match X's rows, got {y.shape}")
        if self.is_classifier:
            return float(np.mean(predicted == y))
        y = y.astype(np.float64)
        sst = float(((y - y.mean()) ** 2).sum())
        return 1.0 - float(((y - predicted) ** 2).sum()) / sst if sst > 0 else float("nan")

    def to_sklearn(self) -> SGDClassifier | SGDRegressor:
        """An equivalent fitted scikit-learn estimator, for pipelines and tools built on it.

        ``SGDClassifier(loss="log_loss")`` for a logistic model, ``SGDRegressor`` for a
        linear one, with ``coef_``, ``intercept_``, ``classes_`` and ``n_features_in_`` set
        (``feature_names_in_`` too when the features have names other than x0, x1, …), so
        ``predict``, ``predict_proba`` and ``decision_function`` give this model's results.
        It is not refitted: calling its ``fit`` trains scikit-learn's own SGD from scratch.
        """
        if self.layers is not None:
            raise UsageError("an MLP model (--hidden) has no scikit-learn equivalent; use its predict methods")
        if self.hashed is not None:
            raise UsageError("a model with categorical (hashed) columns has no scikit-learn equivalent; use "
                             "streamsgd predict")
        try:
            from sklearn import linear_model
        except ImportError as exc:
            raise UsageError(
                "to_sklearn needs scikit-learn; install it with: pip install 'streamsgd[sklearn]'"
            ) from exc
        config = self.metadata.get("config", {})
        d = len(self.features)
        coef = np.asarray(self.coef, dtype=np.float64)
        if self.model in OTHER_EQUIVALENT:  # the same predictions from the estimator of that objective
            estimator = _other_estimator(linear_model, self.model, config, self.metadata.get("data", {}))
            estimator.coef_ = coef.copy()
            estimator.intercept_ = np.asarray(self.intercept, dtype=np.float64).copy()
            if self.model == "softmax":
                estimator.classes_ = np.asarray(self.classes_).copy()
            else:
                estimator.intercept_ = float(self.intercept)
            if self.model == "poisson":  # what PoissonRegressor.fit sets for its predict: the log link
                estimator._base_loss = estimator._get_loss()
            estimator.n_features_in_ = d
            if self.features != default_feature_names(d):
                estimator.feature_names_in_ = np.asarray(self.features, dtype=object)
            return estimator
        if self.model not in SKLEARN_EQUIVALENT:
            raise UsageError(f"a {self.model} model has no scikit-learn equivalent; use it directly")
        name, loss = SKLEARN_EQUIVALENT[self.model]
        estimator = getattr(linear_model, name)(
            loss=loss, alpha=float(config.get("l2", 1e-4)), random_state=config.get("seed")
        )
        if self.is_classifier:
            estimator.coef_ = coef.reshape(1, d).copy()
            estimator.classes_ = np.asarray(self.classes_).copy()
        else:
            estimator.coef_ = coef.copy()
        estimator.intercept_ = np.array([self.intercept], dtype=np.float64)
        estimator.n_features_in_ = d
        if self.features != default_feature_names(d):
            estimator.feature_names_in_ = np.asarray(self.features, dtype=object)
        # the attributes sklearn's fit sets besides the parameters, so the estimator
        # looks fitted to tools that inspect them
        estimator.t_ = float(self.metadata.get("metrics", {}).get("iterations", 0)) + 1.0
        estimator.n_iter_ = int(np.ceil(self.metadata.get("metrics", {}).get("epochs", 0)))
        return estimator

    def save(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        """Write atomically: a temporary file in the same directory, then rename; a URL
        (``s3://…``, with ``storage_options``) is uploaded in one put."""
        arrays = {
            "coef": self.coef,
            "intercept": np.asarray(self.intercept, dtype=np.float64),
            "mean": self.mean,
            "scale": self.scale,
            "metadata": np.asarray(json.dumps(self._full_metadata())),
        }
        if self.classes is not None:
            arrays["classes"] = storable_labels(self.classes)
        for k, (W, b) in enumerate(self.layers or ()):
            arrays[f"layer{k}_W"], arrays[f"layer{k}_b"] = W, b
        if self.hashed is not None:
            arrays["hashed_coef"] = self.hashed
        if self.embedding is not None:
            arrays["embedding"] = self.embedding
        atomic_savez(path, arrays, storage_options)

    def _full_metadata(self) -> dict[str, Any]:
        from .. import __version__

        return {
            **self.metadata,
            "format": FORMAT_VERSION,
            "version": __version__,
            "model": self.model,
            "features": self.features,
            "target": self.target,
            **({"classes": storable_labels(self.classes).tolist()} if self.classes is not None else {}),
        }


def softmax_probabilities(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each row's class probabilities from its C margins (n_rows, C), shifted by the row's
    largest margin so that none overflows."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hashed_margins(table: NDArray[np.float64] | None, idx: NDArray, sign: NDArray) -> NDArray[np.float64]:
    """Each row's margin from its hashed features, Σ_k sign[:, k]·table[idx[:, k]]: (n_rows,)
    for a table of one weight per bucket, (n_rows, C) for softmax's (2**bits, C) (zeros
    without a table or columns)."""
    if table is None or idx.shape[1] == 0:
        return np.zeros(idx.shape[0] if table is None or table.ndim == 1 else (idx.shape[0], table.shape[1]))
    if table.ndim == 1:
        return (table[idx] * sign).sum(axis=1)
    return (table[idx] * sign[:, :, None]).sum(axis=1)


def default_feature_names(d: int) -> list[str]:
    """The names features get when the data has none: x0 … x{d-1}, as ``generate`` writes."""
    return [f"x{j}" for j in range(d)]


def storable_labels(classes: NDArray) -> NDArray:
    """``classes`` as an array ``np.load(allow_pickle=False)`` can read: numbers, bools or strings.

    Object arrays (labels from pandas, or lists of str) become fixed-width unicode; labels
    that are neither numbers nor strings cannot be stored without pickle, so they are refused.
    """
    classes = np.asarray(classes)
    if classes.dtype == object:
        values = classes.tolist()
        if all(isinstance(v, str) for v in values):
            return np.array(values, dtype=str)
        try:
            converted = np.array(values)
        except ValueError:  # ragged values such as tuples of different lengths
            converted = classes
        if converted.dtype.kind not in "biuf":
            raise DataError(
                f"cannot store class labels {values!r} without pickle; use numbers or strings as labels"
            )
        return converted
    if classes.dtype.kind not in "biufU":
        raise DataError(
            f"cannot store class labels of dtype {classes.dtype} without pickle; use numbers or strings as labels"
        )
    return classes


def _numpy_type(arrow_type: str | None) -> np.dtype:
    """NumPy dtype of a target column's Arrow type name (``"double"``, ``"int32"``, ``"bool"``…)."""
    if arrow_type:
        try:
            import pyarrow as pa

            dtype = np.dtype(pa.type_for_alias(arrow_type).to_pandas_dtype())
            if dtype.kind in "biuf":
                return dtype
        except (ValueError, KeyError, TypeError, NotImplementedError):
            pass
    return np.dtype(np.int64)


def write_tables(path: str, tables: Iterable[Any], empty: str, storage_options: Mapping[str, Any] | None = None,
                 **writer_options: Any) -> int:
    """Stream pyarrow ``tables`` into one Parquet file at ``path``, each table one row group,
    written atomically (:func:`~streamsgd.persist.atomic.atomic_file`); returns the rows written. No table at all is
    a :class:`DataError` with the message ``empty``, and no file."""
    rows = 0

    def write(f: BinaryIO) -> None:
        import pyarrow.parquet as pq

        nonlocal rows
        writer = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(f, table.schema, **writer_options)
                writer.write_table(table, row_group_size=max(1, table.num_rows))
                rows += table.num_rows
            if writer is None:
                raise DataError(empty)
        finally:
            if writer is not None:
                writer.close()

    with atomic_file(path, storage_options) as f:
        write(f)
    return rows


def atomic_savez(path: str, arrays: dict[str, NDArray], storage_options: Mapping[str, Any] | None = None) -> None:
    """Write an ``.npz`` atomically (see :func:`~streamsgd.persist.atomic.atomic_file`).

    Unlike ``np.savez``, entries carry a fixed timestamp, so the same arrays always give
    the same bytes: a model file can be compared or hashed to check reproducibility.
    """

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, array in arrays.items():
                with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), "w") as entry:
                    np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)

    with atomic_file(path, storage_options) as f:
        write(f)


def load(path: str, storage_options: Mapping[str, Any] | None = None) -> Model:
    """Read a model file written by :meth:`Model.save`: a local path, or a URL read with
    ``storage_options``."""
    path = os.fspath(path).removeprefix("file://")  # a local path either way
    if is_remote(path):
        return _load_remote(path, storage_options)
    try:
        # np.load(path) leaks its file handle when the zip is corrupt: open it ourselves
        with open(path, "rb") as f:
            return _decode(path, f)
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: no such model file") from exc
    except IsADirectoryError as exc:
        raise ModelFileError(f"{path}: is a directory; give the .npz written by streamsgd fit") from exc


def _load_remote(url: str, storage_options: Mapping[str, Any] | None) -> Model:
    """The model at ``url``, read whole (a model file is small) with one GET."""
    import io

    from ..sources.fs import filesystem, storage_failure

    fs, remote = filesystem(url, storage_options)
    try:
        data = fs.cat_file(remote)
    except FileNotFoundError as exc:
        raise ModelFileError(f"{url}: no such model file") from exc
    except Exception as exc:
        raise storage_failure(url, exc) from exc
    return _decode(url, io.BytesIO(data))


class _NewerFormat(Exception):
    """A model file of a format newer than this build's (``_decode``)."""


def _decode(path: str, f: BinaryIO) -> Model:
    """The model in the open file ``f``; any decoding failure is a :class:`ModelFileError`."""
    try:
        with np.load(f, allow_pickle=False) as npz:
            meta = json.loads(str(npz["metadata"]))
            written = meta.get("format")
            if isinstance(written, int) and written > FORMAT_VERSION:  # it may hold arrays this build would ignore
                raise _NewerFormat(f"{path}: written by a newer streamsgd (model format {written}; this one reads "
                                   f"up to {FORMAT_VERSION}); upgrade streamsgd to use it")
            return Model(
                model=meta["model"],
                features=list(meta["features"]),
                target=meta["target"],
                coef=npz["coef"].astype(np.float64),
                intercept=float(npz["intercept"]) if npz["intercept"].ndim == 0 else npz["intercept"],
                mean=npz["mean"],
                scale=npz["scale"],
                metadata=meta,
                classes=npz["classes"] if "classes" in npz.files else None,
                layers=[(npz[f"layer{k}_W"], npz[f"layer{k}_b"]) for k in range(len(meta["mlp"]["hidden"]) + 1)]
                if "mlp" in meta else None,
                hashed=npz["hashed_coef"].astype(np.float64) if "hashed_coef" in npz.files else None,
                embedding=npz["embedding"].astype(np.float64) if "embedding" in npz.files else None,
            )
    except _NewerFormat as exc:
        raise ModelFileError(str(exc)) from None
    except Exception as exc:  # any decoding failure means the same thing to the user
        raise ModelFileError(
            f"{path}: not a streamsgd model file ({type(exc).__name__}); give the .npz written by streamsgd fit"
        ) from exc


def embedding_bag(E: NDArray[np.float64], idx: NDArray, sign: NDArray) -> NDArray[np.float64]:
    """Each row's bag of its hashed features in an MLP's embedding E (2**bits, H1):
    Σ_c sign[:, c]·E[idx[:, c]] in float64 ((n_rows, H1)), one column at a time so that no
    (n_rows, k, H1) temporary is made."""
    out = np.zeros((idx.shape[0], E.shape[1]))
    for c in range(idx.shape[1]):
        out += sign[:, c, None] * E[idx[:, c]]
    return out


def _mlp_margins(model: Model, X: NDArray[np.float64], bag: NDArray[np.float64] | None = None
                 ) -> NDArray[np.float64]:
    """An MLP's output margins in float64: standardise, then each hidden layer's activation of
    its affine map (the first one's plus the rows' embedding ``bag``, when the model has
    categorical columns), then the linear output layer (one margin: shape (n_rows,))."""
    assert model.layers is not None
    relu = model.metadata["mlp"]["activation"] == "relu"
    h = (X - model.mean) / model.scale
    for k, (W, b) in enumerate(model.layers[:-1]):
        a = h @ W.T + b
        if k == 0 and bag is not None:
            a += bag
        h = np.maximum(a, 0.0) if relu else np.tanh(a)
    W, b = model.layers[-1]
    z = h @ W.T + b
    return z[:, 0] if z.shape[1] == 1 else z


#: Rows of a sparse X densified at once by ``dense_margins`` (an MLP standardises dense rows).
SPARSE_BLOCK_ROWS = 4096


def _sparse_margins(model: Model, X: Any) -> NDArray[np.float64]:
    """The margins of a CSR X: a linear model's by a sparse product, an MLP's block by block."""
    if model.layers is None:
        return np.asarray(X @ np.asarray(model.coef, dtype=np.float64).T) + model.intercept
    blocks = [_mlp_margins(model, X[i:i + SPARSE_BLOCK_ROWS].toarray().astype(np.float64))
              for i in range(0, X.shape[0], SPARSE_BLOCK_ROWS)]
    return np.concatenate(blocks) if blocks else _mlp_margins(model, np.zeros((0, X.shape[1])))


def expit(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """The logistic function, without overflow at large |z|."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out
