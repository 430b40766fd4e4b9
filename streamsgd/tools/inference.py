"""Using a trained model on a data set, chunk by chunk: evaluate and predict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ..compute.losses import row_loss
from ..persist.apply import prepare
from ..persist.model import Model, expit, softmax_probabilities, write_tables
from ..train.targets import merge_moments
from ..sources import Source
from ..sources.labels import ClassIndexSource, is_text_type, not_numeric_target
from ..sources.missing import skip_null_targets
from ..sources.validate import check_target
from ..pipeline.windows import Window, read_window, sample_weight_column


def _margins(model: Model, window: Window) -> NDArray[np.float64]:
    """The model's margins of a window's rows: its dense block and its hashed features."""
    return model.margins(window.X, window.idx, window.sign)


def _with_labels(model: Model, source: Source) -> tuple[Source, bool]:
    """``source`` with a text target read as the model's class indices (softmax, or a binary
    classifier trained on two text labels), and whether it is; other models refuse text labels."""
    if source.target is None or not is_text_type(source.target_type):
        return source, False
    if model.model != "softmax" and not (model.is_classifier and model.classes is not None
                                         and np.asarray(model.classes).dtype.kind in "US"):
        raise not_numeric_target(source, model.model)
    return ClassIndexSource(source, np.asarray(model.classes_)), True


def _class_index(model: Model, y: NDArray, source: Source) -> NDArray[np.intp]:
    """Each label's index in the model's classes; a label the model never saw is an error."""
    classes = np.asarray(model.classes_, dtype=np.float64)
    index = np.minimum(np.searchsorted(classes, y), classes.size - 1)
    unknown = classes[index] != y
    if unknown.any():
        raise DataError(f"{source.url}: target column {source.target!r} holds {y[np.argmax(unknown)]:g}, a class "
                        f"the model was not trained on (its classes: {', '.join(map(str, model.classes_))})")
    return index


def _loss_param(model: Model) -> float | None:
    """Huber's epsilon or the quantile the model was trained with (None: the loss's default)."""
    config = model.metadata.get("config", {})
    return config.get("epsilon") if model.model == "huber" else config.get("quantile")


def evaluate(model: Model, source: Source) -> dict[str, Any]:
    """Mean data loss (no penalty) and accuracy (classifier) or R² (regressor).

    With a sample-weight column (``--weight``) every figure is weighted as scikit-learn's
    metrics weigh them with ``sample_weight``: loss Σ w ℓ / Σ w, accuracy Σ w [right] / Σ w,
    R² from weighted squared errors about the weighted mean. ``rows`` stays the row count.
    """
    prepare(model, source)
    if model.metadata.get("config", {}).get("missing", "impute") == "impute":
        skip_null_targets(source)  # as training skipped them
    skipped = int(getattr(source, "skipped_rows", 0))
    source, indexed = _with_labels(model, source)  # text labels: y holds class indices already
    rows, total, loss_sum, correct = 0, 0.0, 0.0, 0.0  # total: Σ w (the row count without weights)
    y_mean = y_m2 = sse = 0.0  # the target's variance, merged chunk by chunk, for R²
    for c in range(len(source.chunk_rows)):
        window = read_window(source, np.array([c]), np.float64, True)
        z = _margins(model, window)
        y = window.y
        assert y is not None  # read with the target
        check_target(source, model.model, y, source.chunk_name(c))
        w = np.ones(y.size) if window.w is None else window.w
        if model.model == "softmax":  # labels -> their class index; z has one column per class
            y = y.astype(np.intp) if indexed else _class_index(model, y, source)
            correct += float(w @ (np.argmax(z, axis=1) == y))
        elif model.is_classifier:
            correct += float(w @ ((z > 0) == (y == 1)))
        loss_sum += float(w @ row_loss(model.model, z, y, _loss_param(model)))
        if not model.is_classifier and w.sum() > 0:
            mean_k = float(np.average(y, weights=w))
            _, y_mean, y_m2 = merge_moments(total, y_mean, y_m2, float(w.sum()), mean_k,
                                            float(w @ (y - mean_k) ** 2))
            sse += float(w @ (y - model.predict_from_margins(z)) ** 2)
        rows += y.size
        total += float(w.sum())
    if rows == 0:
        raise DataError(f"{source.url}: the data set has no rows")
    if total == 0:
        raise DataError(f"{source.url}: weight column {sample_weight_column(source)!r} is 0 in every row; choose another --weight")
    out: dict[str, Any] = {"rows": rows, "skipped_rows": skipped, "loss": loss_sum / total}
    if model.is_classifier:
        out["accuracy"] = correct / total
    else:
        out["r2"] = 1.0 - sse / y_m2 if y_m2 > 0 else float("nan")
    return out


def predict(model: Model, source: Source, out: str, keep: Sequence[str] = (),
            storage_options: Mapping[str, Any] | None = None) -> int:
    """Write predictions to Parquet at ``out`` (atomically; a URL in one upload); returns the row count."""
    prepare(model, source)
    missing = [k for k in keep if k not in source.columns]
    if missing:
        raise DataError(f"{source.url}: no column {missing[0]!r} to keep; fix --keep")
    tables = (_predictions(model, source, c, keep) for c in range(len(source.chunk_rows)))
    return write_tables(out, tables, f"{source.url}: the data set has no rows", storage_options)


def _predictions(model: Model, source: Source, c: int, keep: Sequence[str]):
    """The prediction table of chunk ``c``: the kept columns, ``prediction``, probabilities."""
    import pyarrow as pa

    window = read_window(source, np.array([c]), np.float64, False)
    z = _margins(model, window)
    cols: dict[str, Any] = {}
    if keep:
        kept = source.read_columns(c, keep)
        cols.update({name: kept.column(name) for name in keep})
    cols["prediction"] = pa.array(model.predict_from_margins(z))
    if model.model == "logistic":
        cols["probability"] = pa.array(expit(z))
    elif model.model == "modified_huber":
        cols["probability"] = pa.array((np.clip(z, -1.0, 1.0) + 1.0) / 2.0)
    elif model.model == "softmax":
        for label, p in zip(model.classes_, softmax_probabilities(z).T):  # hashed columns' margins included
            cols[f"prob_{label}"] = pa.array(p)
    return pa.table(cols)
