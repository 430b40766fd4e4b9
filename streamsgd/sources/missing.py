"""Numeric nulls under ``--missing impute``: a null becomes the column's mean, and a 0/1
indicator feature ``<col>__missing`` records where it was (DESIGN.md §4, "Missing values").

Only columns the Parquet footers show holding nulls get a mean and an indicator, so data
without nulls trains exactly as before. The means are exact: one pass over those columns
alone (Arrow's compiled sum and count per chunk), made before training because every
window's rows need them, the first window's standardisation included; a first-window
sample would tie the value to the plan and the seed, and footer statistics (min, max,
null count) hold no sum. The model file stores the means and the indicator columns in its
metadata so ``predict`` and ``evaluate`` transform rows exactly as training did.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError

#: The suffix of an indicator feature's name: ``bill_length_mm__missing``.
INDICATOR_SUFFIX = "__missing"


def indicator_name(column: str) -> str:
    """The indicator feature of ``column``."""
    return column + INDICATOR_SUFFIX


def split_indicators(features: Sequence[str] | None, names: Sequence[str]) -> tuple[list[str] | None, list[str]]:
    """``features`` without indicator names (those not columns of the data), and the columns they indicate."""
    if features is None:
        return None, []
    indicated = [f[: -len(INDICATOR_SUFFIX)] for f in features
                 if f.endswith(INDICATOR_SUFFIX) and f not in names and f[: -len(INDICATOR_SUFFIX)] in names]
    shown = {indicator_name(c) for c in indicated}
    return [f for f in features if f not in shown], indicated


def imputed(column: Any, mean: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """An integer or floating-point Arrow column with its nulls replaced by ``mean``, and its
    indicator (float64 both)."""
    import pyarrow as pa

    from .rows import PRESENT, impute_column  # numba: imported when data is first read

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    out, flag = np.empty(n), np.empty(n)
    if array.null_count == 0 or array.buffers()[0] is None:
        out[:] = array.to_numpy(zero_copy_only=False)
        flag[:] = PRESENT
        return out, flag
    values = np.frombuffer(array.buffers()[1], dtype=array.type.to_pandas_dtype())[array.offset: array.offset + n]
    valid = np.frombuffer(array.buffers()[0], dtype=np.uint8)
    impute_column(values, valid, array.offset, float(mean), out, flag)
    return out, flag


def column_means(source: Any, names: Sequence[str]) -> dict[str, float]:
    """The mean of the non-null values of each of ``names`` over every chunk of ``source``."""
    import pyarrow.compute as pc

    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    for i in range(len(source.chunk_rows)):
        table = source.read_columns(i, list(names))
        for n in names:
            column = table.column(n)
            sums[n] += float(pc.sum(column, min_count=0).as_py() or 0.0)
            counts[n] += len(column) - column.null_count
    empty = [n for n in names if counts[n] == 0]
    if empty:
        raise DataError(f"{source.url}: feature column {empty[0]!r} holds only nulls; drop it from --features")
    return {n: sums[n] / counts[n] for n in names}


def no_mean(where: str, name: str, nulls: int) -> DataError:
    """The error for nulls in a column that held none in training (the model has no mean for it)."""
    return DataError(f"{where}: column {name!r} has {nulls} null values, but it held none in training, so the "
                     "model has no value to impute; fill them, or retrain on data that shows them")


def skip_null_targets(*sources: Any) -> None:
    """Leave out the rows whose target is null, in each of ``sources`` that can (Parquet;
    other stores hold no nulls): DESIGN.md §4, "Missing values"."""
    for source in sources:
        if source is not None and hasattr(source, "skip_null_targets"):
            source.skip_null_targets()


def impute_nulls(source: Any, like: Any = None) -> None:
    """Set ``source`` (a Parquet source) to impute the integer and floating-point feature
    columns its footers show holding nulls, and ``like`` (another data set, or None) to use
    the same means and indicators; other sources, and data without nulls, are left as they
    are (nulls in timestamp, date and decimal columns stay refused)."""
    import pyarrow as pa

    if not hasattr(source, "impute") or source.indicated:
        return
    nulls, types = source.null_counts(), source.column_types
    columns = [f for f in source.features if nulls.get(f) and f in types
               and (pa.types.is_floating(types[f]) or pa.types.is_integer(types[f]))]
    if columns:
        source.impute(column_means(source, columns), columns)
        if like is not None and hasattr(like, "impute"):
            like.impute(source.imputation, columns)
