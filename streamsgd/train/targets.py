"""What the trainer learns about the data before its first update, without a pass over the
features: the target of every chunk (for stratified windows and the label check), and the
feature moments and a row sample from the first window (for standardisation and the
default step size).

Reading every feature twice (a moments pass, then training) would halve the speed of a
one-epoch run. The first window is a random set of whole chunks, up to the shuffle buffer
(hundreds of thousands of rows at the default memory limit), so its moments estimate the
data's to a small fraction of a standard deviation, and they are exact whenever the data
fits one window. Standardisation only conditions the problem; the model is reported in
raw feature space whatever the estimate.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ..compute.losses import moments
from ..pipeline.windows import stream_runs
from ..sources import Source
from ..sources.cast import arrow_values
from ..sources.validate import check_target, not_finite_target, refuse_null_target

SAMPLE_ROWS = 4096


def merge_moments(n: float, mean, m2, k: float, mean_k, m2_k):
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations); arrays or scalars."""
    total = n + k
    delta = mean_k - mean
    return total, mean + delta * (k / total), m2 + m2_k + delta**2 * (n * k / total)


def _target_column(source: Source) -> str:
    """The source's target column; data without one cannot be trained on."""
    if source.target is None:
        raise DataError(f"{source.url}: training needs a target column; set --target")
    return source.target


def chunk_target_means(source: Source, model: str, readers: int) -> NDArray[np.float64]:
    """Mean target of every chunk (the strata of the shuffle plan), reading the target only.

    Also refuses targets the model cannot use (:func:`~streamsgd.sources.validate.check_target`)
    before any training: the run's one check of its targets.
    """
    target = _target_column(source)

    def one(c: int) -> float:
        column = source.read_columns(c, [target]).column(0)
        refuse_null_target(column, source.chunk_name(c), target)
        y = np.asarray(arrow_values(column), dtype=np.float64)
        check_target(source, model, y, source.chunk_name(c))
        return float(y.mean()) if y.size else 0.0

    means = np.zeros(len(source.chunk_rows), dtype=np.float64)
    runs = stream_runs(source, range(len(source.chunk_rows)))  # a stream's slices in order, on one reader
    with ThreadPoolExecutor(max(1, readers)) as pool:
        for run, values in zip(runs, pool.map(lambda run: [one(c) for c in run], runs)):
            means[run] = values
    return means


def max_sample_weight(source: Source, readers: int) -> float:
    """The largest sample weight of the data (a pass over the weight column only).

    Refuses null, NaN, infinite and negative weights, and weights that are all zero, before
    any training: a run that would fail halfway writes nothing.
    """
    from ..pipeline.windows import read_weights, sample_weight_column

    with ThreadPoolExecutor(max(1, readers)) as pool:
        tops = list(pool.map(lambda c: float(read_weights(source, c).max(initial=0.0)), range(len(source.chunk_rows))))
    top = max(tops, default=0.0)
    if top <= 0.0:
        raise DataError(f"{source.url}: weight column {sample_weight_column(source)!r} is 0 in every row, so no row "
                        "counts; choose another --weight")
    return top


#: Most classes a softmax model takes: its parameters and each row's work grow with C.
MAX_CLASSES = 1000


def target_labels(source: Source, readers: int) -> tuple[NDArray, NDArray[np.int64]]:
    """The sorted distinct values of the target and how many rows hold each (a pass over
    the target only): softmax's classes, and their counts for ``--class-weight balanced``.

    Returns (labels, counts), both of shape (C,): labels are float64 for a numeric target
    and str for a text one (read as class indices by ``sources.labels``), counts int64.
    Refuses nulls, NaN and infinity, and more than MAX_CLASSES distinct values (stopping
    at the chunk that exceeds them, so a continuous target is not collected whole).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    target = _target_column(source)

    def one(c: int) -> tuple[NDArray, NDArray]:
        column = source.read_columns(c, [target]).column(0)
        refuse_null_target(column, source.chunk_name(c), target)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        counted = pc.value_counts(column)
        values = counted.field("values")
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = np.array(values.to_pylist(), dtype=object)
        else:
            values = np.asarray(arrow_values(values), dtype=np.float64)
            if not np.isfinite(values).all():
                raise not_finite_target(f"{source.chunk_name(c)}: target column {target!r}")
        return values, np.asarray(arrow_values(counted.field("counts")), dtype=np.int64)

    labels, counts = np.zeros(0), np.zeros(0, dtype=np.int64)
    pool = ThreadPoolExecutor(max(1, readers))
    try:
        for values, n in pool.map(one, range(len(source.chunk_rows))):
            labels, inverse = np.unique(np.concatenate([labels.astype(values.dtype), values]), return_inverse=True)
            counts = np.bincount(inverse, weights=np.concatenate([counts, n]), minlength=labels.size).astype(np.int64)
            if labels.size > MAX_CLASSES:
                raise DataError(
                    f"{source.url}: target column {source.target!r} holds more than {MAX_CLASSES} distinct values; "
                    f"a softmax model takes 2 to {MAX_CLASSES} classes; choose the right --target or another --model"
                )
    finally:  # on an error, the chunks not yet read are not read
        pool.shutdown(wait=True, cancel_futures=True)
    return (labels.astype(str) if labels.dtype == object else labels), counts


def standardization(
    X: NDArray, standardize: bool, rows: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and scale of each column of ``X`` (zeros and ones when ``standardize`` is off),
    summed over ``X[rows]`` in that order (default: all rows in order)."""
    d = X.shape[1]
    if not standardize or X.shape[0] == 0:
        return np.zeros(d), np.ones(d)
    mean, m2 = moments(X, np.arange(X.shape[0], dtype=np.int64) if rows is None else rows)
    std = np.sqrt(m2 / X.shape[0])
    # constant columns keep scale 1, as scikit-learn's StandardScaler does
    return mean, np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)

