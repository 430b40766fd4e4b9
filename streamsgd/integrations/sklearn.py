"""scikit-learn estimators around the trainer: ``StreamSGDClassifier`` and ``StreamSGDRegressor``.

They follow scikit-learn's conventions (parameters stored as given and validated in ``fit``,
fitted attributes ending in ``_``, ``get_params``/``set_params``, ``partial_fit``), so they
work in pipelines, grid searches and cross-validation. Their parameters are the trainer's
options under the CLI's names (:class:`~streamsgd.config.FitConfig`); ``options`` passes any
other FitConfig field through, so an option the trainer gains later needs no change here.
``fit`` takes arrays, or a path or URL of Parquet or Zarr data that is streamed in fixed
memory: ``StreamSGDClassifier(target="label").fit("s3://bucket/train/")``.

The classifier is multiclass as scikit-learn's ``LogisticRegression`` is: with two
classes it trains the binary logistic model (``coef_`` of shape (1, d)), with more the
multinomial softmax model (``coef_`` of shape (C, d), ``predict_proba`` one column per
class). Only ``loss="log_loss"`` has a multinomial form; the other classifier losses are
binary.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..api import as_urls, column_names, encode_labels, model_for_loss
from ..config import DEFAULT_TARGET, FitConfig
from ..errors import DataError, UsageError
from ..persist.model import CLASSIFIERS, Model, default_feature_names
from ..sources import ArraySource, open_source
from ..sources.labels import is_text_type
from ..train.targets import target_labels
from ..train import FitResult, WarmStart
from ..train import fit as _train

#: Parameters that are FitConfig fields of the same name.
_TRAINER_PARAMS = (
    "batch", "epochs", "steps", "lr", "lr_schedule", "power_t", "l2", "seed", "shuffle",
    "standardize", "average", "memory_limit", "dtype",
)

class _StreamSGD(BaseEstimator):
    """What the classifier and the regressor share: options -> FitConfig, fit, partial_fit."""

    # set by fit / partial_fit (declared only: unset until then, as check_is_fitted expects)
    model_: Model
    lr_: float
    t_: int
    n_iter_: int

    def __init__(
        self,
        loss: str,
        *,
        batch: int | str = FitConfig.batch,
        epochs: int | None = FitConfig.epochs,
        steps: int | None = FitConfig.steps,
        lr: float | None = FitConfig.lr,
        lr_schedule: str = FitConfig.lr_schedule,
        power_t: float = FitConfig.power_t,
        l2: float | None = FitConfig.l2,
        seed: int = FitConfig.seed,
        shuffle: bool = FitConfig.shuffle,
        standardize: bool = FitConfig.standardize,
        average: bool = FitConfig.average,
        memory_limit: int | str = FitConfig.memory_limit,
        dtype: str = FitConfig.dtype,
        target: str = DEFAULT_TARGET,
        features: list[str] | None = None,
        exclude: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        format: str = "auto",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.loss = loss
        self.batch = batch
        self.epochs = epochs
        self.steps = steps
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.power_t = power_t
        self.l2 = l2
        self.seed = seed
        self.shuffle = shuffle
        self.standardize = standardize
        self.average = average
        self.memory_limit = memory_limit
        self.dtype = dtype
        self.target = target
        self.features = features
        self.exclude = exclude
        self.storage_options = storage_options
        self.format = format
        self.options = options

    # --- what the subclasses define -------------------------------------------------------

    _is_classifier = False

    def _targets(self, y: NDArray, first: bool, classes: NDArray | None) -> NDArray[np.float64]:
        """y as the trainer's targets; sets ``classes_`` on the first call (classifier)."""
        raise NotImplementedError

    def _set_coef(self, model: Model) -> None:
        raise NotImplementedError

    def _softmax_classes(self, continuing: bool) -> NDArray[np.float64] | None:
        """The classes ``_targets`` found as the softmax trainer takes them (the indices
        0 … C-1 the targets hold), or None for a binary or regression model."""
        return None

    # --- fitting ---------------------------------------------------------------------------

    def _config(self, **overrides: Any) -> FitConfig:
        """The estimator's parameters as a validated FitConfig (UsageError when invalid)."""
        extra = dict(self.options or {})
        named = set(_TRAINER_PARAMS) | {"model", "target", "features", "exclude"}
        clash = sorted(named & extra.keys())
        if clash:
            raise UsageError(f"options: {clash[0]!r} is a parameter of its own; set it directly, not in options")
        values = {name: getattr(self, name) for name in _TRAINER_PARAMS}
        model = model_for_loss(self.loss)
        if (model in CLASSIFIERS) != self._is_classifier:
            kind = "classifier" if self._is_classifier else "regressor"
            raise UsageError(f"loss: {self.loss!r} is not a {kind} loss; use "
                             f"{'StreamSGDRegressor' if self._is_classifier else 'StreamSGDClassifier'} for it")
        return FitConfig(**{"model": model, **values, **extra, **overrides})

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "_StreamSGD":
        """Train from scratch on arrays, or on the data at a path or URL.

        Parameters
        ----------
        X : array-like or SciPy sparse matrix (CSR) of shape (n_rows, n_features), or a
            path or fsspec URL (str or os.PathLike, or a list of them) of Parquet or Zarr
            data, streamed in fixed memory; its target and feature columns are the
            ``target`` and ``features`` parameters. A sparse X (a ``OneHotEncoder``'s
            output in a pipeline) is densified a chunk at a time as it is read.
        y : array-like of shape (n_rows,) with arrays; None with a URL.
        sample_weight : array-like of shape (n_rows,) of weights >= 0, or None: row i's loss
            counts sample_weight[i] times (the objective (1/N) Σ w_i ℓ_i + penalties).

        Returns
        -------
        self
        """
        urls = as_urls(X)
        if urls is not None:
            if sample_weight is not None:
                raise UsageError("sample_weight: with a data URL, weights are a column of the data; "
                                 "train with streamsgd.fit(url, weight=COLUMN) or the CLI's --weight")
            return self._fit_source(urls, y)
        X, y = self._validate(X, y, reset=True)
        sample_weight = _sample_weights(sample_weight, X)
        config = self._config()
        y = self._targets(y, first=True, classes=None)
        fixed = self._softmax_classes(continuing=False)
        if fixed is not None:
            config = replace(config, model="softmax")
        self._fitted(_train(ArraySource(X, y, features=self._feature_names(X.shape[1]), sample_weight=sample_weight),
                            config, warm=WarmStart(classes=fixed)))
        return self

    def _fit_source(self, urls: list[str], y: Any) -> "_StreamSGD":
        if y is not None:
            raise UsageError(
                f"fit({urls[0]!r}, y): with a data URL the target is the column named by target= "
                f"({self.target!r}); call fit(url) without y"
            )
        config = self._config(target=self.target, features=column_names(self.features),
                              exclude=column_names(self.exclude, "exclude"))
        source = open_source(urls[0] if len(urls) == 1 else urls, target=self.target, features=config.features,
                             exclude=config.exclude, categorical=config.categorical,
                             storage_options=self.storage_options, format=self.format)
        if self._is_classifier and config.model == "logistic" and _multiclass_source(source, config.readers):
            config = replace(config, model="softmax")
        result = _train(source, config)
        for attr in ("n_features_in_", "feature_names_in_", "classes_"):
            if hasattr(self, attr):
                delattr(self, attr)
        features = list(source.features)
        self.n_features_in_ = len(features)
        if features != default_feature_names(len(features)):
            self.feature_names_in_ = np.asarray(features, dtype=object)
        if self._is_classifier:
            self.classes_ = result.model.classes_
        self._fitted(result)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> "_StreamSGD":
        """One pass of SGD over (X, y), continuing from the current parameters.

        The first call (on an unfitted estimator) trains one epoch from zero and fixes the
        standardisation and the step size from that batch; later calls keep both, so the
        parameters stay in the same space, and continue the learning-rate schedule's count.
        Each call returns the last iterate (no averaging across calls).

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        y : array-like of shape (n_rows,)
        classes : array-like of shape (n_classes,), every label; required on the first call
            of a classifier (a batch may not hold every label), ignored by regressors. More
            than two classes train the multinomial (softmax) model.
        sample_weight : array-like of shape (n_rows,) of weights >= 0, or None (see ``fit``).

        Returns
        -------
        self
        """
        first = not hasattr(self, "model_")
        if first and self._is_classifier and classes is None:
            raise DataError("classes must be passed on the first call to partial_fit: give every label, "
                            "classes=[a, b, …]")
        X, y = self._validate(X, y, reset=first)
        sample_weight = _sample_weights(sample_weight, X)
        y = self._targets(y, first=first, classes=classes)
        fixed = self._softmax_classes(continuing=not first)
        softmax = {} if fixed is None else {"model": "softmax"}
        if first:
            config = self._config(epochs=1, steps=None, average=False, **softmax)
            self._fitted(_train(ArraySource(X, y, features=self._feature_names(X.shape[1]),
                                            sample_weight=sample_weight), config, warm=WarmStart(classes=fixed)))
        else:  # one more pass, from the current parameters, step size and update count
            config = self._config(epochs=1, steps=None, average=False, lr=self.lr_, **softmax)
            # softmax: the model's classes as the trainer sees them, the indices the targets hold
            init = self.model_ if fixed is None else replace(self.model_, classes=fixed)
            result = _train(ArraySource(X, y, features=self._feature_names(X.shape[1]), sample_weight=sample_weight),
                            config,
                            warm=WarmStart(init, self.t_, fixed))
            if self._is_classifier:
                result.model.classes = self.classes_
            self.model_ = result.model
            self.t_ += result.summary["iterations"]
            self.n_iter_ += 1
            self._set_coef(self.model_)
        return self

    def _fitted(self, result: FitResult) -> None:
        """Keep the trainer's model and expose it under scikit-learn's attribute names."""
        model = result.model
        if self._is_classifier:
            model.classes = self.classes_
        self.model_ = model
        self.lr_ = float(result.summary["lr"])
        self.t_ = int(result.summary["iterations"])
        self.n_iter_ = math.ceil(result.summary["epochs"])
        self._set_coef(model)

    def _validate(self, X: Any, y: Any, reset: bool) -> tuple[NDArray, NDArray]:
        try:
            return validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32], accept_sparse="csr",
                                 y_numeric=not self._is_classifier)
        except ValueError as exc:
            raise DataError(_one_line(exc)) from exc

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR X: each chunk densified as it is read (sources.arrays)
        return tags

    def _feature_names(self, d: int) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        return [str(n) for n in names] if names is not None else default_feature_names(d)

    # --- using the model -------------------------------------------------------------------

    def _check_X(self, X: Any) -> NDArray:
        check_is_fitted(self, "model_")
        try:
            return validate_data(self, X, reset=False, dtype=[np.float64, np.float32], accept_sparse="csr")
        except ValueError as exc:
            raise DataError(_one_line(exc)) from exc

    def predict(self, X: Any) -> NDArray:
        """Predicted labels (classifier) or values (regressor), ndarray of shape (n_rows,)."""
        X = self._check_X(X)
        return self.model_.predict(X)


class StreamSGDClassifier(ClassifierMixin, _StreamSGD):
    """Linear classifier trained by mini-batch SGD in fixed memory (logistic loss).

    Two classes train binary logistic regression; more train multinomial (softmax)
    logistic regression, as scikit-learn's ``LogisticRegression`` does. From a path or
    URL, a target of text labels or of more than two values trains softmax (its classes
    are found by a pass over the target column before training).

    Parameters
    ----------
    loss : ``"log_loss"`` (logistic regression, binary or multinomial); ``"hinge"`` and
        ``"modified_huber"`` (scikit-learn's, binary only).
    batch, epochs, steps, lr, lr_schedule, power_t, l2, seed, shuffle, standardize, average,
    memory_limit, dtype : the trainer's options, as ``streamsgd fit`` has them
        (:class:`~streamsgd.config.FitConfig`). ``epochs=None`` and ``steps=None`` train
        for at least 20,000 updates; ``lr=None`` measures a step size on the data.
        ``l2`` is scikit-learn's ``alpha`` in the standardised feature space (None: fit's default, 1e-4,
        or min(1e-4, 1/rows) with categorical columns).
    target, features, exclude, storage_options, format : the target and feature columns
        (names or globs; ``exclude``: columns never used), and how
        to read the store, when ``fit`` is given a path or URL.
    options : other FitConfig fields, passed through (e.g. ``{"readers": 4}``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,), the labels, sorted; with two, ``classes_[1]``
        is the positive class.
    coef_ : ndarray of shape (1, n_features) for two classes, (n_classes, n_features) for
        more; on the raw (unstandardised) features.
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_features_in_, feature_names_in_ : as in scikit-learn.
    model_ : the :class:`~streamsgd.model.Model`; ``model_.save(path)`` writes its file.
    n_iter_ : passes over the data (the last one may be partial); t_ : updates made.
    """

    _is_classifier = True

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        batch: int | str = FitConfig.batch,
        epochs: int | None = FitConfig.epochs,
        steps: int | None = FitConfig.steps,
        lr: float | None = FitConfig.lr,
        lr_schedule: str = FitConfig.lr_schedule,
        power_t: float = FitConfig.power_t,
        l2: float | None = FitConfig.l2,
        seed: int = FitConfig.seed,
        shuffle: bool = FitConfig.shuffle,
        standardize: bool = FitConfig.standardize,
        average: bool = FitConfig.average,
        memory_limit: int | str = FitConfig.memory_limit,
        dtype: str = FitConfig.dtype,
        target: str = DEFAULT_TARGET,
        features: list[str] | None = None,
        exclude: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        format: str = "auto",
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            loss, batch=batch, epochs=epochs, steps=steps, lr=lr, lr_schedule=lr_schedule, power_t=power_t,
            l2=l2, seed=seed, shuffle=shuffle, standardize=standardize, average=average,
            memory_limit=memory_limit, dtype=dtype, target=target, features=features,
            exclude=exclude, storage_options=storage_options, format=format, options=options,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # multinomial for log_loss; the other losses refuse more than two classes in fit
        try:
            tags.classifier_tags.multi_class = model_for_loss(self.loss) == "logistic"
        except UsageError:  # an unknown loss is reported by fit
            pass
        return tags

    def _softmax_classes(self, continuing: bool) -> NDArray[np.float64] | None:
        # more than two classes, or more updates of a softmax model (a URL's text labels)
        if self.classes_.size <= 2 and not (continuing and self.model_.model == "softmax"):
            return None
        return np.arange(self.classes_.size, dtype=np.float64)

    def _targets(self, y: NDArray, first: bool, classes: NDArray | None) -> NDArray[np.float64]:
        try:
            check_classification_targets(y)
        except ValueError as exc:
            raise DataError(_one_line(exc)) from exc
        if classes is not None:
            classes = np.unique(np.asarray(classes))
            if not first and not np.array_equal(classes, self.classes_):
                raise DataError(
                    f"classes={classes.tolist()} differs from the first call's {self.classes_.tolist()}; "
                    "give the same classes to every partial_fit"
                )
            if first:
                self.classes_ = self._checked_classes(classes)
        elif first:  # check_classification_targets and validate_data leave binary or multiclass 1-D labels
            self.classes_ = self._checked_classes(np.unique(y))
        index = np.searchsorted(self.classes_, y)
        index = np.minimum(index, self.classes_.size - 1)
        unknown = self.classes_[index] != y
        if unknown.any():
            raise DataError(
                f"y holds the label {np.asarray(y[np.argmax(unknown)]).item()!r}, not one of the classes "
                f"{self.classes_.tolist()}; give every label in classes= on the first partial_fit"
            )
        return index.astype(np.float64)

    def _checked_classes(self, classes: NDArray) -> NDArray:
        """The sorted labels, refusing one class, and more than two for a binary-only loss."""
        if classes.size > 2 and model_for_loss(self.loss) != "logistic":
            raise UsageError(f"loss={self.loss!r} is binary only, but y holds {classes.size} classes; use "
                             "loss='log_loss' (multinomial logistic regression) for more than two")
        if classes.size > 2:
            return classes
        _, two = encode_labels(classes)  # refuses a single class
        return two

    def _set_coef(self, model: Model) -> None:
        if model.model == "softmax":
            self.coef_ = np.array(model.coef, dtype=np.float64)
            self.intercept_ = np.array(model.intercept, dtype=np.float64)
        else:
            self.coef_ = model.coef.reshape(1, -1).copy()
            self.intercept_ = np.array([model.intercept])

    def decision_function(self, X: Any) -> NDArray[np.float64]:
        """Margins x·coefᵀ + intercept: ndarray of shape (n_rows,) for two classes (> 0
        predicts ``classes_[1]``), (n_rows, n_classes) for more (the largest wins)."""
        X = self._check_X(X)
        return self.model_.decision_function(X)

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Class probabilities, ndarray of shape (n_rows, n_classes), columns in ``classes_`` order."""
        X = self._check_X(X)
        p = self.model_.predict_proba(X)
        return p if p.ndim == 2 else np.column_stack([1.0 - p, p])

    def predict_log_proba(self, X: Any) -> NDArray[np.float64]:
        """Log of :meth:`predict_proba`, ndarray of shape (n_rows, n_classes)."""
        z = self.decision_function(X)
        if z.ndim == 2:  # log softmax, shifted by the largest margin: exact where p underflows
            top = z.max(axis=1, keepdims=True)
            return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
        # log sigmoid(±z) = -log(1 + e^∓z), exact at any margin where log(p) would underflow
        return np.column_stack([-np.logaddexp(0.0, z), -np.logaddexp(0.0, -z)])


class StreamSGDRegressor(RegressorMixin, _StreamSGD):
    """Linear regression trained by mini-batch SGD in fixed memory (squared loss).

    Parameters are those of :class:`StreamSGDClassifier`, with ``loss="squared_error"``.
    Like scikit-learn's regressors it has no ``decision_function``: ``predict`` is it.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,), on the raw (unstandardised) features.
    intercept_ : ndarray of shape (1,)
    n_features_in_, feature_names_in_, model_, n_iter_, t_ : as in StreamSGDClassifier.
    """

    def __init__(
        self,
        loss: str = "squared_error",
        *,
        batch: int | str = FitConfig.batch,
        epochs: int | None = FitConfig.epochs,
        steps: int | None = FitConfig.steps,
        lr: float | None = FitConfig.lr,
        lr_schedule: str = FitConfig.lr_schedule,
        power_t: float = FitConfig.power_t,
        l2: float | None = FitConfig.l2,
        seed: int = FitConfig.seed,
        shuffle: bool = FitConfig.shuffle,
        standardize: bool = FitConfig.standardize,
        average: bool = FitConfig.average,
        memory_limit: int | str = FitConfig.memory_limit,
        dtype: str = FitConfig.dtype,
        target: str = DEFAULT_TARGET,
        features: list[str] | None = None,
        exclude: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        format: str = "auto",
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            loss, batch=batch, epochs=epochs, steps=steps, lr=lr, lr_schedule=lr_schedule, power_t=power_t,
            l2=l2, seed=seed, shuffle=shuffle, standardize=standardize, average=average,
            memory_limit=memory_limit, dtype=dtype, target=target, features=features,
            exclude=exclude, storage_options=storage_options, format=format, options=options,
        )

    def _targets(self, y: NDArray, first: bool, classes: NDArray | None) -> NDArray[np.float64]:
        return np.asarray(y, dtype=np.float64)

    def _set_coef(self, model: Model) -> None:
        self.coef_ = model.coef.copy()
        self.intercept_ = np.array([model.intercept])


def _sample_weights(sample_weight: Any, X: NDArray) -> NDArray[np.float64] | None:
    """``sample_weight`` as float64 of shape (n_rows,) (scikit-learn's checks), or None."""
    if sample_weight is None:
        return None
    from sklearn.utils.validation import _check_sample_weight

    try:
        return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    except ValueError as exc:
        raise DataError(f"sample_weight: {_one_line(exc)}") from None


def _multiclass_source(source: Any, readers: int) -> bool:
    """Whether a classifier's URL data needs the softmax model: text labels, or more than
    two values in the target (a pass over the target column)."""
    if is_text_type(source.target_type):
        return True
    labels, _ = target_labels(source, readers)
    return labels.size > 2


def _one_line(exc: Exception) -> str:
    """scikit-learn's validation message, its lines joined: our errors fit on one line."""
    return " ".join(str(exc).split())
