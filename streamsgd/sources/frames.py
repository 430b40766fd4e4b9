"""Data frames in memory (pandas, or an Arrow table) as a Parquet file the readers stream.

A frame with text, category or nullable columns needs what a Parquet file gets: column
roles, hashing, nulls imputed with indicators (DESIGN.md §4, §8). Rather than a second
encoder for frames, which could drift from the readers', the frame is written once to
fsspec's in-memory filesystem and read back by :class:`~streamsgd.sources.ParquetSource`,
exactly as a file would be: the same model, bit for bit, as from the same rows on disk.
The copy costs the frame's compressed size, for as long as the ``with`` block lasts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import DataError

#: Rows per row group of the in-memory file: chunks the memory plan can hold and shuffle.
FRAME_ROW_GROUP_ROWS = 65536


def as_table(data: Any) -> Any:
    """``data`` as a ``pyarrow.Table`` when it is a pandas DataFrame or an Arrow table, else None
    (pandas' index is left out, as ``fit`` leaves ``__index_level_0__`` out of a file)."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_numpy") and hasattr(data, "columns"):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise DataError(f"data: the DataFrame has a column Arrow cannot store ({exc}); convert it to numbers, "
                            "text or categories") from None
    return None


def needs_reader(table: Any) -> bool:
    """Whether a frame needs the file readers: a column that is not a plain float or integer
    column without nulls (text, category, boolean, dates, nulls)."""
    import pyarrow as pa

    return any(column.null_count or not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type))
               for column in table.columns)


def with_target(table: Any, y: Any, target: str) -> Any:
    """``table`` with ``y`` appended as the column ``target``."""
    import pyarrow as pa

    if target in table.column_names:
        raise DataError(f"X: already has a column {target!r}; give the frame with its target and target={target!r}, "
                        "or drop that column from X")
    values = pa.array(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if len(values) != table.num_rows:
        raise DataError(f"y: expected {table.num_rows} values, one per row of X, got {len(values)}")
    return table.append_column(target, values)


@contextmanager
def frame_url(table: Any) -> Iterator[str]:
    """The URL of ``table`` written as Parquet to fsspec's in-memory filesystem, removed on exit."""
    import fsspec
    import pyarrow.parquet as pq

    fs = fsspec.filesystem("memory")
    path = f"/streamsgd-frames/{uuid.uuid4().hex}.parquet"
    try:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, row_group_size=FRAME_ROW_GROUP_ROWS)
        yield f"memory://{path}"
    finally:
        if fs.exists(path):
            fs.rm(path)
