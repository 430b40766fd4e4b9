"""Text labels as class indices: a softmax model trained on a string target column.

The kernels take numbers only (DESIGN.md §6.1: strings are turned into numbers at the
edge). A softmax model whose target column holds text (Arrow ``string``,
``large_string`` or dictionary-encoded strings) is trained on each row's class index
0 … C−1, and keeps the labels themselves in the model. :class:`ClassIndexSource` wraps
any source and reads its target that way: the label column is looked up in the sorted
class list with ``pyarrow.compute.index_in`` (a hash lookup per row, no Python loop),
and a label outside the list is refused, naming the chunk, the column and the label.

The wrapper reads the features through the wrapped source (``read_into`` with no target)
and the target column in a separate read of that one column, so every column is still
decoded once per chunk. Other models refuse a text target (:func:`not_numeric_target`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from .base import Source
from .cast import arrow_values
from .wrap import SourceWrapper
from .validate import refuse_null_target

#: Arrow's names of the text types a label column may have.
_ARROW_TEXT = ("string", "large_string", "string_view", "utf8", "large_utf8")


def is_text_type(type_name: str | None) -> bool:
    """Whether a target column of this type (a source's ``target_type``) holds text labels.

    ``type_name`` is an Arrow type as ``str(pa.DataType)`` writes it (``"string"``,
    ``"dictionary<values=string, indices=int32, ordered=0>"``) or a NumPy dtype name
    (``"<U3"``: in-memory arrays of strings).
    """
    if not type_name:
        return False
    if type_name in _ARROW_TEXT or type_name.startswith(tuple(f"dictionary<values={t}," for t in _ARROW_TEXT)):
        return True
    try:
        return np.dtype(type_name).kind in "US"
    except (TypeError, ValueError):  # not a NumPy name either (Arrow's "halffloat", "dictionary<…>")
        return False


def not_numeric_target(source: Any, model: str) -> DataError:
    """The error for a text target given to a model that needs numbers (the regressors)."""
    return DataError(
        f"{source.url}: column {source.target!r} has type {source.target_type}, not a number; a {model} model "
        "needs a numeric target: fix --target, encode the column as numbers, or train a classifier (--model "
        "logistic for two labels, softmax for more)"
    )


class ClassIndexSource(SourceWrapper):
    """``source`` with its text target read as each label's index in ``classes`` (float).

    Parameters
    ----------
    source : any source (Parquet, Zarr, arrays, a chunk subset) whose target holds text.
    classes : array-like of shape (C,), the labels, sorted (``np.unique``'s order); a
        row's target becomes the position of its label there.

    Everything but the target reads through to ``source`` (features, chunks, layout,
    fingerprint: :class:`~streamsgd.sources.wrap.SourceWrapper`), so the trainer and the
    memory plan see the same data set.
    """

    def __init__(self, source: Source, classes: Sequence[str] | NDArray):
        import pyarrow as pa

        super().__init__(source)
        if source.target is None:
            raise DataError(f"{source.url}: no target column to read labels from; set --target")
        self._label: str = source.target
        self.classes = np.asarray(classes)
        self._value_set = pa.array([str(c) for c in self.classes.tolist()], pa.string())

    def class_index(self, i: int) -> NDArray[np.int32]:
        """The class index of every row of chunk ``i``, int32 of shape (rows,)."""
        return self._index(i, self._source.read_columns(i, [self._label]).column(0))

    def _index(self, i: int, column: Any) -> NDArray[np.int32]:
        import pyarrow as pa
        import pyarrow.compute as pc

        refuse_null_target(column, self.chunk_name(i), self._label)
        if column.type != pa.string():  # dictionary-encoded, large or numpy strings: plain strings
            column = column.cast(pa.string())
        index = pc.index_in(column, value_set=self._value_set)
        if index.null_count:
            label = column.filter(pc.is_null(index))[0].as_py()
            shown = ", ".join(map(str, self.classes[:20].tolist())) + (", …" if self.classes.size > 20 else "")
            raise DataError(
                f"{self.chunk_name(i)}: target column {self.target!r} holds {label!r}, not one of the model's "
                f"classes ({shown}); drop those rows, or train a model on data that has this label"
            )
        return arrow_values(index)

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        """Decode chunk ``i``'s features into ``X`` and its class indices into ``y``."""
        self._source.read_into(i, X, None, rows)
        if y is not None:
            y[slice(None) if rows is None else rows] = self.class_index(i)

    def read_columns(self, i: int, names: Sequence[str]) -> Any:
        """Chunk ``i`` as a pyarrow Table; the target column, if named, as class indices (float64)."""
        import pyarrow as pa

        table = self._source.read_columns(i, names)
        if self.target in names:
            k = table.column_names.index(self.target)
            index = self._index(i, table.column(k)).astype(np.float64)
            table = table.set_column(k, self.target, pa.array(index))
        return table
