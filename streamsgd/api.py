"""The Python API: ``fit`` a model on a data set (a URL or path, or in-memory arrays) and ``load`` one.

``fit`` is the library form of ``streamsgd fit``: the same options under the same names (those
of :class:`~streamsgd.config.FitConfig`), the same trainer, so the same seed gives the same
coefficients from either. Losses may also be named as scikit-learn names them
(``loss="log_loss"``); :data:`LOSSES` maps them to the trainer's model names, so a loss the
trainer learns later becomes available here by adding one entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import NDArray

from .config import DEFAULT_MEMORY_LIMIT, DEFAULT_TARGET, MODELS, FitConfig, parse_bytes
from .errors import DataError, UsageError
from .persist.model import CLASSIFIERS, Model
from .persist.model import load as _load
from .sources import ArraySource, Source, open_source
from .pipeline.batches import BatchStream, StreamPlan
from .train import FitResult, Hooks
from .train import fit as _train
from .train.setup import cut_to_limit, plan_memory
from .train.targets import chunk_target_means
from .sources.base import missing_members
from .sources.missing import impute_nulls, skip_null_targets
from .sources.encoding import Encoding
from .sources.retry import RetryPolicy
from .sources.validate import not_finite_target

#: scikit-learn's loss names -> the trainer's model names (``FitConfig.model``).
LOSSES = {"log_loss": "logistic", "squared_error": "linear", "hinge": "hinge", "modified_huber": "modified_huber",
          "huber": "huber", "poisson": "poisson", "quantile": "quantile"}


def model_for_loss(loss: str) -> str:
    """The trainer's model name for ``loss``, given in scikit-learn's words or the trainer's own."""
    if loss in LOSSES and LOSSES[loss] in MODELS:
        return LOSSES[loss]
    if loss in MODELS:
        return loss
    names = [name for name, model in LOSSES.items() if model in MODELS] + list(MODELS)
    raise UsageError(f"loss: expected one of {', '.join(names)}; got {loss!r}")


def encode_labels(y: NDArray) -> tuple[NDArray[np.float64], NDArray]:
    """Binary labels of any type as 0/1 for the trainer, and the two labels they stand for.

    Returns (y01 of shape (n_rows,), classes of shape (2,)); classes are sorted as
    ``np.unique`` sorts them, so ``classes[1]`` is the positive class, as in scikit-learn.
    """
    y = np.asarray(y)
    if y.dtype.kind in "fc" and not np.isfinite(y).all():
        raise not_finite_target("y")
    classes, y01 = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise DataError(f"y holds one class ({classes[0]!r}) but a classifier needs two; add rows of another class")
    if classes.size > 2:
        raise DataError(
            f"Only binary classification is supported. The type of the target is multiclass: y holds "
            f"{classes.size} classes; keep two, or train one model per class"
        )
    return y01.reshape(-1).astype(np.float64), classes


def fit(
    data: str | os.PathLike | tuple[NDArray, NDArray] | Any,
    *,
    loss: str | None = None,
    target: str = DEFAULT_TARGET,
    features: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    weight: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    retry_policy: RetryPolicy | None = None,
    format: str = "auto",
    x_array: str = "X",
    metrics: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> Model:
    """Train a linear model by mini-batch SGD, in fixed memory, and return it.

    Parameters
    ----------
    data : where the rows are.
        A path or fsspec URL of Parquet data (a file, directory or glob, or a list of
        them) or of a Zarr group, read in chunks so it never has to fit in memory; or a
        tuple ``(X, y)`` of arrays, X of shape (n_rows, n_features) (a pandas DataFrame's
        column names become the feature names) and y of shape (n_rows,); or a DataFrame
        holding ``target``. A frame with text, categories or nulls is read as its Parquet
        file would be (``sources.frames``), and ``Model.predict`` takes it. A binary classifier trained on arrays may
        have labels of any type; they are stored in the model and ``predict`` returns them.
    loss : ``"log_loss"`` or ``"squared_error"`` (scikit-learn's names), or a trainer model
        name; the same as ``model=`` (give one or the other). Default: ``FitConfig.model``.
    target, features, exclude : the target column and the feature columns of a URL's data,
        names or globs (``features=None``: every numeric column but the target, the
        ``exclude`` list and pandas' index columns). For arrays, ``features`` names X's
        columns and ``exclude`` is refused (pass only the columns to use).
    weight : a URL's column of per-row sample weights (>= 0, not a feature): the objective
        becomes (1/N) Σ w_i ℓ_i + penalties, so an integer weight k counts a row k times.
        For arrays, use the estimators' ``fit(X, y, sample_weight=...)``.
    storage_options, retry_policy, format, x_array : how to read a URL, as
        :func:`~streamsgd.sources.open_source` (``retry_policy``: a
        :class:`~streamsgd.sources.retry.RetryPolicy`; the environment is not read).
    metrics, on_progress : a JSON-lines file for progress and epoch records, and a callback
        receiving each record.
    **options : any :class:`~streamsgd.config.FitConfig` field (``batch``, ``epochs``,
        ``steps``, ``lr``, ``l2``, ``seed``, ``memory_limit``, …), under the CLI's names.

    Returns
    -------
    Model
        Call ``predict``, ``score``, ``save``, or ``to_sklearn`` on it.

    Notes
    -----
    ``data`` may also be a :class:`~streamsgd.sources.Source` object. For the run's
    summary (iterations, rows/s, peak memory) as well, call ``streamsgd.train.fit``,
    which returns a :class:`~streamsgd.train.FitResult`.
    """
    options, hooks = _with_model(loss, options), Hooks(metrics, on_progress)
    reading: dict[str, Any] = dict(target=target, features=features, exclude=exclude, weight=weight, format=format,
                                   storage_options=storage_options, x_array=x_array, retry_policy=retry_policy)
    table = _frame(data, target)
    if table is not None:  # read as its Parquet file would be: roles, hashing, nulls (sources.frames)
        from .sources.frames import frame_url

        with frame_url(table) as url:
            return _fit_url([url], options, hooks, **reading)
    urls = as_urls(data)
    if exclude is not None and urls is None:
        raise UsageError("exclude: applies to the columns of a data set read from a path or URL; with arrays or a "
                         "source, pass only the columns to use")
    if _is_source(data):
        return _fit_on_cluster(data, FitConfig(weight=weight, **options), hooks).model
    if urls is not None:
        return _fit_url(urls, options, hooks, **reading)
    if weight is not None:
        raise UsageError("weight= names a column of a URL's data; for arrays use "
                         "StreamSGDClassifier/StreamSGDRegressor().fit(X, y, sample_weight=...)")
    if isinstance(data, tuple) and len(data) == 2:
        return _fit_arrays(data[0], data[1], FitConfig(**options), column_names(features), hooks)
    raise UsageError(f"data: expected a path or URL of Parquet or Zarr data, a DataFrame, or a tuple (X, y) of "
                     f"arrays; got {type(data).__name__}")


def _fit_url(urls: list[str], options: dict[str, Any], hooks: Hooks, *, target: str, features: Any, exclude: Any,
             weight: str | None, **reading: Any) -> Model:
    """``fit`` on the data at ``urls`` (``reading``: how open_source reads them)."""
    config = FitConfig(target=target, features=column_names(features), exclude=column_names(exclude, "exclude"),
                       weight=weight, **options)
    source = open_source(urls[0] if len(urls) == 1 else urls, target=target, features=config.features,
                         exclude=config.exclude, weight=weight, categorical=config.categorical, **reading)
    return _fit_on_cluster(source, config, hooks).model


def _frame(data: Any, target: str) -> Any:
    """``data`` as an Arrow table for the file readers, or None: a DataFrame or Arrow table
    holding its target column; or a tuple (X, y) whose X is a frame with a column that is not
    plain numbers (text, categories, nulls), y then appended as ``target``."""
    from .sources.frames import as_table, needs_reader, with_target

    if isinstance(data, tuple) and len(data) == 2:
        X = as_table(data[0])
        return with_target(X, data[1], target) if X is not None and needs_reader(X) else None
    table = as_table(data)
    if table is not None and target not in table.column_names:
        raise UsageError(f"data: the frame has no target column {target!r}; name it with target=, or pass (X, y)")
    return table


def _fit_on_cluster(source: Source, config: FitConfig, hooks: Hooks) -> FitResult:
    """``train.fit``, on the Dask cluster ``workers=``/``scheduler=`` ask for (started, or
    joined, and closed here)."""
    from .integrations.dask import cluster_for

    with cluster_for(config) as (config, cluster):
        return _train(source, config, hooks=replace(hooks, backend=cluster))


def _fit_arrays(X: Any, y: Any, config: FitConfig, features: tuple[str, ...] | None, hooks: Hooks) -> Model:
    """``fit`` on in-memory arrays: labels of any type are coded for the trainer and kept in
    the model, which ``predict`` returns; a DataFrame's column names name the features."""
    names = features or column_names(getattr(X, "columns", None))
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise DataError(f"X: expected a 2-D numeric array (rows, features), got shape {X.shape} of {X.dtype}")
    classes = None
    if config.model in CLASSIFIERS and y.shape != (X.shape[0],):
        raise DataError(f"y: expected shape ({X.shape[0]},), got {y.shape}")
    if config.model == "softmax":  # labels of any type -> their index; the model keeps the labels
        classes, codes = np.unique(y, return_inverse=True)
        y = codes.astype(np.float64)
    elif config.model in CLASSIFIERS:
        y, classes = encode_labels(y)
    elif y.dtype.kind not in "biuf":
        raise DataError(f"y: a {config.model} model needs numbers as targets, got {y.dtype}")
    if classes is not None and config.class_weight not in (None, "balanced"):
        config = replace(config, class_weight=_weights_by_code(config.class_weight, classes))
    model = _fit_on_cluster(ArraySource(X, y, features=names), config, hooks).model
    model.classes = classes
    return model


def batches(
    data: str | os.PathLike | Sequence[str] | Any,
    *,
    batch: int = 512,
    epochs: int = 1,
    seed: int = 0,
    target: str | None = DEFAULT_TARGET,
    features: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    weight: str | None = None,
    model: str = "linear",
    shuffle: bool = True,
    memory_limit: int | str = DEFAULT_MEMORY_LIMIT,
    readers: int = 2,
    dtype: str = "float32",
    shard: tuple[int, int] = (0, 1),
    storage_options: Mapping[str, Any] | None = None,
    format: str = "auto",
    x_array: str = "X",
    categorical: Sequence[str] | None = None,
    hash_bits: int = FitConfig.hash_bits,
    missing: str = FitConfig.missing,
) -> BatchStream:
    """Shuffled mini-batches of data larger than memory, for any framework: the trainer's own
    plan and readers, so ``fit`` with the same options trains on exactly these batches.

    Parameters
    ----------
    data : a path or fsspec URL of Parquet or Zarr data (or a list of them), or a Source.
    batch, epochs, seed, shuffle, memory_limit, readers, dtype : as for :func:`fit`; the
        memory limit bounds the rows read ahead, as it bounds a training run's.
    target, features, exclude, weight : the columns, as for :func:`fit` (``target=None``:
        features only).
    model : the model whose batches to reproduce: a classifier's plan stratifies windows by
        label (and its labels are checked), as the trainer's does.
    shard : ``(i, S)``: only shard ``i`` of ``S`` (whole chunks dealt by the seed, balanced
        by rows, anew each epoch); the ``S`` shards hold every row once per epoch.
    categorical, hash_bits : integer columns to hash as well as the text ones, and the index
        bits, as for :func:`fit`: a batch's ``indices``/``indptr``/``values`` hold them, hashed
        under ``seed`` exactly as ``fit`` hashes them.
    missing : numeric nulls, as for :func:`fit`: ``"impute"`` (the default) gives a column
        whose footers show nulls its mean over the data and a ``<col>__missing`` indicator
        feature after the others (``stream.source.features`` names the columns of ``X``), and
        leaves out the rows whose target is null; ``"error"`` refuses a null.

    Returns
    -------
    BatchStream
        Iterate it for :class:`~streamsgd.pipeline.batches.Batch` objects (``X``, ``y``,
        ``weight``, ``epoch``, ``index``); ``state_dict()`` / ``load_state_dict()`` resume
        exactly; ``close()`` (or ``with``) stops its readers. A batch is a view into the
        window being read: copy it to keep it past the next batch.
    """
    config = FitConfig(model=model, batch=batch, epochs=epochs, seed=seed, shuffle=shuffle,
                       memory_limit=parse_bytes(memory_limit), readers=readers, dtype=dtype, weight=weight,
                       categorical=column_names(categorical, "categorical"), hash_bits=hash_bits, missing=missing)
    if _is_source(data):
        source = data
    else:
        urls = as_urls(data)
        if urls is None:
            raise UsageError(f"data: expected a path or URL of Parquet or Zarr data, or a source; "
                             f"got {type(data).__name__}")
        source = open_source(urls[0] if len(urls) == 1 else urls, target=target, features=column_names(features),
                             storage_options=storage_options, format=format, x_array=x_array,
                             exclude=column_names(exclude, "exclude"), weight=weight,
                             categorical=config.categorical)
    if config.missing == "impute":  # as fit prepares its source (train.setup.prepare)
        skip_null_targets(source)  # a row without a target trains nothing; before the means
    if getattr(source, "categorical", ()) and getattr(source, "encoding", None) is None:  # hashed as fit does
        source.encode(Encoding.of(source.categorical, config.hash_bits, seed))  # type: ignore[attr-defined]
    if config.missing == "impute":
        impute_nulls(source)
    cut_to_limit(source, config)
    plan = plan_memory(source, config, with_table=False)
    strata = None if source.target is None else chunk_target_means(source, model, plan.readers)
    return BatchStream(source, StreamPlan(plan.window_rows, plan.buffer_bytes, plan.readers), batch=batch,
                       epochs=epochs, seed=seed, shuffle=shuffle, dtype=dtype, model=model, strata=strata,
                       shard=shard)


def load(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Model:
    """Read a model file written by ``streamsgd fit`` or :meth:`Model.save`: a path, or a URL
    (``s3://…``) read with ``storage_options``."""
    return _load(os.fspath(path), storage_options)


def _with_model(loss: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``model`` set from ``loss`` (refusing both at once)."""
    if loss is None:
        return options
    if "model" in options:
        raise UsageError(f"give loss= or model=, not both (got loss={loss!r}, model={options['model']!r})")
    return {**options, "model": model_for_loss(loss)}


def as_urls(data: Any) -> list[str] | None:
    """``data`` as a list of paths or URLs, or None when it is something else (arrays)."""
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    if isinstance(data, (list, tuple)) and data and all(isinstance(u, (str, os.PathLike)) for u in data):
        return [os.fspath(u) for u in data]
    return None


def column_names(names: Sequence[str] | None, option: str = "features") -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        raise UsageError(f"{option}: expected a list of column names, got the string {names!r}")
    return tuple(str(n) for n in names)


def _is_source(data: Any) -> TypeGuard[Source]:
    """Whether ``data`` is a source object (it reads chunks); one that lacks a member of the
    :class:`~streamsgd.sources.Source` protocol is refused, naming what it lacks."""
    if not (hasattr(data, "read_into") and hasattr(data, "chunk_rows")):
        return False
    missing = missing_members(data)
    if missing:
        raise UsageError(f"data: the source object has no {', '.join(missing)}; give it these members "
                         "(subclass streamsgd.sources.SourceBase for the defaults of the optional ones)")
    return True


def _weights_by_code(spec: str, classes: NDArray) -> str:
    """--class-weight's JSON keyed by the labels of ``y`` re-keyed by the codes the trainer sees
    (labels are coded 0 … C-1 in ``classes`` order); a key that is not a label stays as given, so
    the trainer's own message names it."""
    try:
        given = json.loads(spec)
    except ValueError:
        return spec  # the trainer refuses it with its message
    if not isinstance(given, dict):
        return spec
    names = [str(c.item() if isinstance(c, np.generic) else c) for c in classes]
    return json.dumps({str(names.index(k)) if k in names else k: w for k, w in given.items()})


__all__ = ["LOSSES", "as_urls", "batches", "column_names", "encode_labels", "fit", "load", "model_for_loss"]
