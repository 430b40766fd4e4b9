"""The rules a value must pass before a run uses it, each written once with its message:
no nulls, no NaN or infinity, and targets the loss can use (0/1 for the binary classifiers,
counts >= 0 for poisson).

A run applies the target rules once, in the pass over the target that precedes training
(:func:`streamsgd.train.targets.chunk_target_means`), so a bad label stops it before any
update and no window is checked again; features are checked by the sources as they copy
them into window rows (:func:`not_finite`, :func:`refuse_nulls`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..config import LOSS_TASK
from ..errors import DataError
from .cast import to_dtype

#: The fix a null feature or target value asks for.
NULL_FIX = "drop or impute them"


def refuse_nulls(column: Any, where: str, name: str, role: str = "column", fix: str = NULL_FIX) -> None:
    """Refuse an Arrow column holding nulls: ``{where}: {role} {name!r} has N null values; {fix}``."""
    if column.null_count:
        raise DataError(f"{where}: {role} {name!r} has {column.null_count} null values; {fix}")


def refuse_null_target(column: Any, where: str, name: str) -> None:
    """Refuse a target column holding nulls (``--missing error``; under ``impute`` those rows
    are left out before any read: ``ParquetSource.skip_null_targets``)."""
    refuse_nulls(column, where, name, "target column", "drop those rows, or leave --missing at impute, which skips them")


def not_finite(values: NDArray, dtype: np.dtype, where: str, name: str) -> DataError:
    """The error for a feature column that gave a non-finite value at ``dtype``: a finite value
    beyond the dtype's range (with the option that holds it), else NaN or infinity."""
    try:
        to_dtype(values, dtype, where, name)
    except DataError as exc:
        return exc
    return DataError(f"{where}: column {name!r} holds NaN or infinite values; clean or impute them")


def not_finite_target(subject: str) -> DataError:
    """The error for a target holding NaN or infinity; ``subject`` names it (``"{chunk}: target
    column 'y'"``, or ``"y"`` for an array)."""
    return DataError(f"{subject} holds NaN or infinite values; drop those rows")


def not_binary_labels(source: Any, model: str, value: float) -> DataError:
    """The error for a label other than 0 and 1 given to a binary classifier.

    A whole number >= 2 most likely means several classes, for which softmax is the model;
    anything else (negative, fractional) means a numeric target, for a regressor.
    """
    several = float(value).is_integer() and value >= 2
    fix = (f"{value:g} looks like one of several classes: train --model softmax, or recode the target as 0 and 1"
           if several else "recode the target (or train with --model linear)")
    return DataError(f"{source.url}: target column {source.target!r} holds {value:g}, but a {model} model "
                     f"needs labels 0 and 1; {fix}")


def check_target(source: Any, model: str, y: NDArray, where: str) -> None:
    """Refuse target values ``y`` (read from ``where`` of ``source``) that ``model`` cannot
    learn from: NaN or infinity, labels other than 0 and 1 for a binary classifier, negative
    counts for poisson."""
    if not np.isfinite(y).all():
        raise not_finite_target(f"{where}: target column {source.target!r}")
    task = LOSS_TASK.get(model)
    if task == "classification":
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise not_binary_labels(source, model, float(y[np.argmax(bad)]))
    elif task == "counts" and (y < 0).any():
        raise DataError(
            f"{source.url}: target column {source.target!r} holds {y[np.argmax(y < 0)]:g}, but a poisson "
            "model needs counts >= 0; choose another --model or fix the target"
        )
