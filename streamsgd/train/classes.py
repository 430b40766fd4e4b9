"""A classifier's classes: the labels softmax trains on and the weight of each class's rows.

The labels come from the target pass (``stats.target_labels``) or are fixed by the caller
(``fit(classes=...)``, a softmax ``--init``); ``--class-weight`` becomes one weight per
class, as scikit-learn's ``class_weight`` does (``balanced`` = N / (C · n_class), or a JSON
object keyed by label). Everything here runs once, before training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, UsageError
from ..config import LOSS_TASK
from ..persist.model import Model
from ..sources import Source
from .targets import MAX_CLASSES, target_labels


def class_weights(
    spec: str | None, strata: NDArray[np.float64], chunk_rows: list[int], model: str,
    labels: NDArray | None = None, counts: NDArray[np.int64] | None = None,
) -> NDArray[np.float64]:
    """The weight of each class's rows, as scikit-learn's ``class_weight``.

    Binary classifiers: (w0, w1), ones without ``spec``; "balanced" = N / (2 · n_class)
    from the label counts of the target pass (``strata``, each chunk's share of ones);
    or a JSON object {"0": w0, "1": w1}. Softmax (``labels`` and their row ``counts``
    given): one weight per class in ``labels`` order; "balanced" = N / (C · n_class), or
    a JSON object keyed by label ({"cat": 2}; a number label by its value, "3" or "3.0"),
    absent labels weighing 1.
    """
    if labels is not None:
        return _softmax_class_weights(spec, labels, counts)
    if spec is None:
        return np.ones(2)
    if LOSS_TASK[model] != "classification":
        raise UsageError(f"--class-weight: the {model} model has no classes; drop --class-weight")
    if spec == "balanced":
        ones = float(np.dot(strata, chunk_rows))
        n = float(sum(chunk_rows))
        if ones == 0 or ones == n:
            raise DataError("--class-weight balanced: the target holds only one class; drop --class-weight")
        return np.array([n / (2 * (n - ones)), n / (2 * ones)])
    given = _json_weights(spec, '{"0": 1, "1": 5}')
    if set(given) - {"0", "1"}:
        raise UsageError(f"--class-weight: expected balanced or a JSON object such as "
                         f"'{{\"0\": 1, \"1\": 5}}' with positive weights; got {spec!r}")
    return np.array([given.get("0", 1.0), given.get("1", 1.0)])


def _json_weights(spec: str, example: str) -> dict[str, float]:
    """--class-weight's JSON object as {label: positive weight}; UsageError otherwise."""
    try:
        given = json.loads(spec)
        weights = {str(k): float(v) for k, v in given.items()}
        if not all(math.isfinite(w) and w > 0 for w in weights.values()):
            raise ValueError
    except (ValueError, TypeError, AttributeError):
        raise UsageError(f"--class-weight: expected balanced or a JSON object such as "
                         f"'{example}' with positive weights; got {spec!r}") from None
    return weights


def _softmax_class_weights(spec: str | None, labels: NDArray, counts: NDArray[np.int64] | None) -> NDArray:
    """One weight per softmax class (see :func:`class_weights`)."""
    C = labels.size
    if spec is None:
        return np.ones(C)
    if spec == "balanced":
        if counts is None or (counts == 0).any():
            empty = labels[np.argmax(counts == 0)] if counts is not None else labels[0]
            raise DataError(f"--class-weight balanced: class {_shown(empty)} has no training rows, so it has no "
                            "balanced weight; give the weights as a JSON object instead")
        return float(counts.sum()) / (C * counts.astype(np.float64))
    weights = np.ones(C)
    text = labels.dtype.kind in "US"
    for key, w in _json_weights(spec, '{"cat": 1, "dog": 5}').items():
        try:
            match = np.flatnonzero(labels == key) if text else np.flatnonzero(labels == float(key))
        except ValueError:
            match = np.zeros(0, dtype=np.intp)
        if match.size == 0:
            raise UsageError(f"--class-weight: {key!r} is not one of the classes ({_shown_all(labels)}); "
                             "key the weights by the labels of the target")
        weights[match[0]] = w
    return weights


def _shown(label: Any) -> str:
    """A label as messages show it: numbers plainly (3, 0.5), text quoted ('cat')."""
    value = label.item() if isinstance(label, np.generic) else label
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _shown_all(labels: NDArray, at_most: int = 20) -> str:
    shown = ", ".join(_shown(v) for v in labels[:at_most])
    return shown + (", …" if labels.size > at_most else "")


def found_labels(source: Source, validation: Source | None, readers: int) -> tuple[NDArray, NDArray[np.int64]]:
    """The labels of the training and the held-out rows, sorted (a label seen only in
    validation is one too), and the training rows of each (a pass over the target only)."""
    found, counts = target_labels(source, readers)
    if validation is not None:
        held, _ = target_labels(validation, readers)
        if held.size:
            every = np.union1d(found, held) if found.size else held
            full = np.zeros(every.size, dtype=np.int64)
            full[np.searchsorted(every, found)] = counts
            found, counts = every, full
    return found, counts


def softmax_classes(
    source: Source, validation: Source | None, readers: int, given: Sequence[Any] | NDArray | None,
    init: Model | None,
) -> tuple[NDArray, NDArray[np.int64]]:
    """Softmax's class labels, sorted, and the training rows of each.

    Without ``given`` or a softmax ``init``: the labels found in the target, of the
    training and the held-out chunks (a class seen only in validation still gets its
    parameters). ``given`` (``fit(classes=...)``) or the ``init`` model's classes fix them
    instead: the data may then lack some (a ``partial_fit`` batch), but a label outside
    them is refused, and so are numbers given for text labels or the other way round.

    Returns (labels, counts) of shape (C,): float64 labels for a numeric target, str for
    text; the rows of each class in ``source``.
    """
    found, counts = found_labels(source, validation, readers)
    fixed, why = given, "classes="
    if init is not None:
        if given is not None and not np.array_equal(np.unique(np.asarray(given)), np.asarray(init.classes_)):
            raise UsageError(f"--init: the model's classes ({_shown_all(np.asarray(init.classes_))}) differ from "
                             f"classes= ({_shown_all(np.unique(np.asarray(given)))}); give the same classes")
        fixed, why = init.classes_, "--init"
    if fixed is None:
        if found.size < 2:
            raise DataError(
                f"{source.url}: target column {source.target!r} holds {found.size} distinct value(s); a softmax "
                f"model needs 2 to {MAX_CLASSES} classes; choose the right --target or another --model"
            )
        return found, counts
    fixed = np.asarray(fixed)
    if fixed.ndim != 1 or not 2 <= np.unique(fixed).size == fixed.size <= MAX_CLASSES:
        raise UsageError(f"{why}: a softmax model needs 2 to {MAX_CLASSES} distinct classes; got "
                         f"{_shown_all(fixed.ravel())}")
    if why == "--init" and not np.array_equal(np.unique(fixed), fixed):  # its blocks are in the classes' order
        raise UsageError(f"--init: the model's classes are not sorted ({_shown_all(fixed)}); give a model file "
                         "written by streamsgd fit")
    fixed = np.unique(fixed)
    text = found.dtype.kind in "US"
    if text != (fixed.dtype.kind in "USO"):
        raise DataError(
            f"{source.url}: target column {source.target!r} holds {'text' if text else 'numbers'}, but the classes "
            f"of {why} are {_shown_all(fixed)}; use data whose labels are of the same kind"
        )
    fixed = fixed.astype(str) if text else fixed.astype(np.float64)
    unknown = np.setdiff1d(found, fixed)
    if unknown.size:
        fix = "train without --init, or drop those rows" if why == "--init" else "give every label in classes="
        raise DataError(f"{source.url}: target column {source.target!r} holds {_shown(unknown[0])}, not one of "
                        f"the classes of {why} ({_shown_all(fixed)}); {fix}")
    full = np.zeros(fixed.size, dtype=np.int64)
    full[np.searchsorted(fixed, found)] = counts
    return fixed, full


def binary_text_classes(source: Source, validation: Source | None, readers: int, model: str,
                        init: Model | None) -> NDArray:
    """A binary classifier's two text labels, sorted: the first is class 0 (margin <= 0), the
    second class 1, as scikit-learn orders them (``female``/``male``: ``male`` is 1). An
    ``--init`` model's own labels when it has them; a label outside them is then refused
    as the rows are read."""
    if init is not None and init.classes is not None:
        return np.asarray(init.classes)
    found, _ = found_labels(source, validation, readers)
    if found.size != 2:
        raise DataError(f"{source.url}: target column {source.target!r} holds {found.size} distinct label(s) "
                        f"({_shown_all(found)}); a {model} model needs two: train --model softmax for more, or "
                        "choose another --target")
    return found


def label_values(classes: NDArray, target_type: str | None) -> NDArray:
    """Softmax's labels as stored in the model: integers when the target column is, text as text."""
    if classes.dtype.kind in "US":
        return classes
    integral = target_type is not None and ("int" in target_type or target_type == "bool")
    return classes.astype(np.int64) if integral else classes
