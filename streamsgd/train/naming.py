"""Names for the largest hashed weights: which (column, value) each of them stands for.

A model file keeps only the 2**bits hashed weights and the encoding, and a hash cannot be
inverted, so ``streamsgd show MODEL --top K`` could only say "bucket 123". After a fit,
:func:`name_buckets` takes the ``TOP_BUCKETS`` buckets of largest |weight| (softmax: the
largest |weight| over the classes), reads the categorical columns of the source's first
chunks up to ``SAMPLE_ROWS`` rows, hashes them with the run's encoding and keeps, for each of
those buckets, the first (column, value) the sample holds and how many distinct values of the
sample fall in it (more than 1: a collision, visible). Memory is bounded by the sample's
rows and the bucket count, whatever the data's size; the training loop is not touched.

Scalar columns and list (multi-valued) columns name a bucket ``column = value`` (a list's
elements hash as a scalar column's values do); a crossed pair (``--interactions a:b``) names
it ``a:b = [x, y]``. A null is named by the value None. The record is plain JSON in the
model's metadata (``hashed_names``); models written without it show their buckets unnamed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..sources import Source
from ..sources.columns import is_multi
from ..sources.encoding import Encoding
from ..sources.hashing import hash_pairs

#: Buckets of largest |weight| the model file names.
TOP_BUCKETS = 100
#: Rows of the source (its first chunks, in file order) read to name them.
SAMPLE_ROWS = 200_000


def top_buckets(table: NDArray[np.float64], k: int) -> NDArray[np.int64]:
    """The ``k`` buckets of largest |weight| (a (2**bits, C) table: largest over the classes),
    largest first, buckets of weight 0 left out (never touched: nothing to name)."""
    weight = np.abs(table).max(axis=1) if table.ndim == 2 else np.abs(table)
    k = min(int(k), int(np.count_nonzero(weight)))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-weight, k - 1)[:k]
    return part[np.lexsort((part, -weight[part]))].astype(np.int64)  # ties: lower bucket first


def name_buckets(source: Source, encoding: Encoding, table: NDArray[np.float64],
                 k: int | None = None, cap: int | None = None) -> dict[str, Any]:
    """The ``hashed_names`` metadata entry: ``rows_read`` (at most ``cap``) and one record per
    named bucket of the ``k`` largest, ``bucket``, ``column``, ``value``, ``sign`` (the value's
    sign: its weight is sign·table[bucket]) and ``values_in_sample`` (distinct values of the
    sample in that bucket). ``k`` and ``cap`` default to ``TOP_BUCKETS`` and ``SAMPLE_ROWS``."""
    k, cap = TOP_BUCKETS if k is None else k, SAMPLE_ROWS if cap is None else cap
    wanted = top_buckets(table, k)
    names: dict[int, list[Any]] = {}  # bucket -> [column, value, sign]
    seen: dict[int, set[Any]] = {int(b): set() for b in wanted}
    hit = np.zeros(encoding.size, dtype=bool)  # a lookup by bucket: O(rows), where np.isin sorts
    hit[wanted] = True
    rows = 0
    for i in range(len(source.chunk_rows)):
        if rows >= cap or wanted.size == 0:
            break
        chunk = source.read_columns(i, list(encoding.columns))
        chunk = chunk.slice(0, cap - rows)
        rows += chunk.num_rows
        _name_chunk(chunk, encoding, hit, names, seen)
    records = [{"bucket": int(b), "column": names[int(b)][0], "value": names[int(b)][1], "sign": names[int(b)][2],
                "values_in_sample": len(seen[int(b)])} for b in wanted if int(b) in names]
    return {"rows_read": rows, "row_cap": cap, "buckets": records}


def _name_chunk(chunk: Any, encoding: Encoding, hit: NDArray[np.bool_], names: dict[int, list[Any]],
                seen: dict[int, set[Any]]) -> None:
    """Name the wanted buckets the chunk's values hash to (first seen wins), and count each
    bucket's distinct values."""
    hashed: dict[str, tuple[NDArray[np.int32], NDArray[np.int8]]] = {}
    for j, name in enumerate(encoding.columns):
        column = chunk.column(name).combine_chunks()
        if is_multi(column.type):  # a list's elements hash as the column's scalar values
            column = column.flatten()
            _collect(name, [column], *encoding.hash(j, column), hit, names, seen)
            continue
        hashed[name] = encoding.hash(j, column)
        _collect(name, [column], *hashed[name], hit, names, seen)
    for a, b in encoding.interactions:  # a pair of scalar columns (hashing.hash_pairs); a list's: unnamed
        if a not in hashed or b not in hashed:
            continue
        idx, sign = hash_pairs(hashed[a], hashed[b], encoding.pair_seed((a, b)), encoding.bits)
        _collect(f"{a}:{b}", [chunk.column(a).combine_chunks(), chunk.column(b).combine_chunks()], idx, sign,
                 hit, names, seen)


def _collect(label: str, columns: list[Any], idx: NDArray[np.int32], sign: NDArray[np.int8],
             hit: NDArray[np.bool_], names: dict[int, list[Any]], seen: dict[int, set[Any]]) -> None:
    """Record, for each wanted bucket (``hit[bucket]``) among ``idx``, its first row's value (first seen wins)
    and its distinct values: only the rows in wanted buckets are read, their distinct
    (bucket, value) pairs by Arrow's group-by."""
    import pyarrow as pa

    rows = np.flatnonzero(hit[idx])
    if rows.size == 0:
        return
    buckets, first = np.unique(idx[rows], return_index=True)
    for b, r in zip(buckets.tolist(), rows[first].tolist()):
        if b not in names:
            value = [_text(c[r].as_py()) for c in columns]
            names[b] = [label, value[0] if len(value) == 1 else value, int(sign[r])]
    taken = {f"v{n}": _plain(c.take(pa.array(rows))) for n, c in enumerate(columns)}
    distinct = pa.table({"bucket": idx[rows], **taken}).group_by(["bucket", *taken]).aggregate([])
    for record in distinct.to_pylist():
        seen[record["bucket"]].add((label, *(_text(record[v]) for v in taken)))


def _plain(array: Any) -> Any:
    """A dictionary array as its values (Python values are what is named)."""
    import pyarrow as pa

    return array.cast(array.type.value_type) if pa.types.is_dictionary(array.type) else array


def _text(value: Any) -> Any:
    """A value as the model file stores it: text, or None for the null."""
    return None if value is None else str(value)
