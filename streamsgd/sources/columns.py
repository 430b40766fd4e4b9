"""Column roles: which columns of a table are features, which are skipped and why, and
what the Parquet footers say about them (null counts, constant and id-like columns).

Without ``--features`` every column but the target is a candidate; ``--features`` and
``--exclude`` take names and globs (``fnmatch``, case-sensitive, expanded in the file's
column order). A column is a numeric feature when Arrow stores it as a number, a boolean
(0/1), a decimal (read as float64), a date or a timestamp (seconds since the epoch, UTC), a time of
day (seconds since midnight);
it is a categorical feature (hashed, ``sources.hashing``) when it holds text (string,
large_string, string_view, or a dictionary of them), or is an integer or boolean column
named in ``--categorical``; anything else is skipped with a stated reason, and naming it
explicitly is a DataError.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from collections.abc import Mapping
from typing import Any, Sequence

from ..errors import DataError, UsageError
from .base import Source

#: pandas writes a non-default index as these columns: row labels, never a feature by default.
PANDAS_INDEX = re.compile(r"__index_level_\d+__")

#: Names of identifier columns (lower case); ``*_id``, ``*_idx``, ``*_key`` and camelCase
#: ``userId`` count too (see :func:`_id_like_name`).
ID_NAMES = frozenset({"id", "index", "idx", "key", "rowid", "row_id", "row_number", "rownum", "uuid"})

#: Fewer rows than this never count as a row sequence: in a tiny table an integer feature
#: may fill its range by chance (0..9 in ten rows), in a real one a count or a level repeats.
ID_MIN_ROWS = 100

# reasons a column is left out, as the run states them
EXCLUDED = "excluded by --exclude"
NOT_SELECTED = "not in --features"
INDEX_REASON = "pandas index: row labels, not data; name it in --features to use it"


def is_glob(name: str) -> bool:
    """Whether ``name`` is a pattern (holds ``*``, ``?`` or ``[``)."""
    return any(ch in name for ch in "*?[")


def numeric_kind(t: Any) -> str | None:
    """How Arrow type ``t`` becomes a number, or None when it cannot be a numeric feature.

    Returns "number", "boolean" (0/1), "decimal" (float64), "date" / "timestamp" (seconds
    since the epoch) or "time" (of day: seconds since midnight); a dictionary-encoded column
    counts as its values' type.
    """
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_time(t):
        return "time"
    return None


def is_text(t: Any) -> bool:
    """Whether Arrow type ``t`` holds text (plain, large, view, or a dictionary of text)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_multi(t: Any) -> bool:
    """Whether Arrow type ``t`` is a list (``list<…>``, ``large_list<…>``): a multi-valued column."""
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t)


def categorical_kind(t: Any, named: bool) -> bool:
    """Whether a column of Arrow type ``t`` is a categorical feature: text always, an integer
    or boolean column (plain or dictionary-encoded) when ``named`` in ``--categorical``, and
    a list of either (a multi-valued column: one hashed feature per value)."""
    import pyarrow as pa

    if is_multi(t):
        return categorical_kind(t.value_type, named)
    if is_text(t):
        return True
    value = t.value_type if pa.types.is_dictionary(t) else t
    return named and (pa.types.is_integer(value) or pa.types.is_boolean(value))


#: The role of a hashed column in reports (``describe``, the start event, ``info``).
CATEGORICAL = "categorical"

#: what a non-numeric kind of column is read as, for the report
READ_AS = {"boolean": "0/1", "decimal": "float64", "date": "seconds since the epoch",
           "timestamp": "seconds since the epoch", "time": "seconds since midnight"}


def skip_reason(t: Any) -> str:
    """Why a column of Arrow type ``t`` is not a numeric feature, and what to do about it."""
    import pyarrow as pa

    value = t.value_type if pa.types.is_dictionary(t) else t
    if pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value):
        return "text: categorical columns are not read by this data set's reader; encode it as numbers"
    if pa.types.is_list(value) or pa.types.is_large_list(value) or pa.types.is_fixed_size_list(value):
        return ("list: multi-valued columns of text (or of integers named in --categorical) are categorical; "
                "this one holds neither, or has a fixed size")
    if pa.types.is_struct(value) or pa.types.is_map(value):
        return "nested: struct and map columns are not features; flatten it into numeric columns"
    if pa.types.is_binary(value) or pa.types.is_large_binary(value) or pa.types.is_fixed_size_binary(value):
        return "binary: bytes are not features; decode it into numeric columns"
    if pa.types.is_null(value):
        return "null: the column holds no values"
    return f"{value}: not a number; convert it to a numeric column or leave it out"


def select(
    path: str, types: dict[str, Any], partitions: Sequence[str], target: str | None,
    features: Sequence[str] | None, exclude: Sequence[str] | None, feature_hint: str = "fix --features",
    categorical: Sequence[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The feature columns of a table, and the columns skipped with their reasons.

    Parameters
    ----------
    path : the file, for messages.
    types : Arrow type of each column of the file, in the file's order.
    partitions : partition columns (``key=value`` folders): features only when named.
    target : the target column (never a feature).
    features, exclude : ``--features`` and ``--exclude``: names and globs.
    categorical : ``--categorical``, the integer columns to hash; None when the reader
        cannot hash (text columns are then skipped with the reason).

    Returns
    -------
    (features, skipped): the feature names in order (numeric and categorical, as
    ``categorical_kind`` tells them apart), and ``{name: reason}``.

    Raises
    ------
    UsageError
        A pattern or name of ``--exclude`` or a pattern of ``--features`` that matches no
        column, or ``--exclude`` naming the target.
    DataError
        A column named in ``--features`` that is not numeric, or no feature left.
    """
    names = list(types)
    excluded = set(_matches(path, "--exclude", exclude or (), names + list(partitions)))
    if target is not None and target in excluded:
        raise UsageError(f"--exclude: {target!r} is the target column; choose another --target or "
                         "leave it out of --exclude")
    explicit = {n for n in features or () if not is_glob(n) or n in types or n in partitions}
    candidates = _candidates(path, names, target, features, explicit)
    hashed = _hashed(path, types, categorical)

    def usable(name: str) -> bool:
        t = types[name]
        return (categorical_kind(t, name in hashed) if categorical is not None else False) \
            or numeric_kind(t) is not None

    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for name in candidates:
        if name in excluded:
            skipped[name] = EXCLUDED
        elif name in explicit:
            if name not in partitions and not usable(name):
                raise DataError(f"{path}: column {name!r} has type {types[name]}, not a number "
                                f"({skip_reason(types[name])}); {feature_hint}")
            chosen.append(name)
        elif PANDAS_INDEX.fullmatch(name):
            skipped[name] = INDEX_REASON
        elif not usable(name):
            skipped[name] = skip_reason(types[name])
        else:
            chosen.append(name)
    unused = [n for n in hashed if n not in chosen]
    if unused:
        raise UsageError(f"--categorical: column {unused[0]!r} is not a feature of {path} "
                         f"({skipped.get(unused[0], 'the target')}); fix --categorical")
    considered = set(candidates)  # a set: a list would make this O(columns^2)
    for name in names:
        if name not in considered and name != target:
            skipped[name] = EXCLUDED if name in excluded else NOT_SELECTED
    if not chosen:
        shown = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:5])
        raise DataError(f"{path}: no numeric feature column besides the target {target!r}"
                        + (f" (skipped {shown})" if shown else "") + "; add numeric columns or fix --features")
    return chosen, skipped


def _hashed(path: str, types: Mapping[str, Any], categorical: Sequence[str] | None) -> set[str]:
    """``--categorical``'s columns, each an integer or boolean column of the data."""

    out = set()
    for name in categorical or ():
        if name not in types:
            raise UsageError(f"--categorical: no column {name!r} in {path}; fix --categorical")
        if not categorical_kind(types[name], True):
            t = types[name]
            raise UsageError(f"--categorical: column {name!r} has type {t}; --categorical takes integer columns "
                             "(text columns are categorical already); fix --categorical")
        out.add(name)
    return out


def _candidates(path: str, names: list[str], target: str | None, features: Sequence[str] | None,
                explicit: set[str]) -> list[str]:
    """The columns ``--features`` asks for, in its order, each glob expanded in the file's
    order (every column but the target without it); overlapping globs give a column once."""
    if features is None:
        return [n for n in names if n != target]
    repeated = sorted({n for n in explicit if list(features).count(n) > 1})
    if repeated:
        raise UsageError(f"--features: {repeated[0]!r} is given more than once; name each column once")
    out: list[str] = []
    seen: set[str] = set()
    for pattern in features:
        found = [pattern] if pattern in explicit else _matches(path, "--features", [pattern], names)
        for name in found:
            if name not in seen and (name in explicit or name != target):
                out.append(name)
                seen.add(name)
    return out


def _matches(path: str, option: str, patterns: Sequence[str], names: list[str]) -> list[str]:
    """The names that ``patterns`` match, in ``names`` order; a pattern matching none is a UsageError."""
    found: set[str] = set()
    for pattern in patterns:
        hits = [pattern] if pattern in names else [n for n in names if is_glob(pattern) and fnmatchcase(n, pattern)]
        if not hits:
            what = f"the pattern {pattern!r} matches no column" if is_glob(pattern) else f"no column {pattern!r}"
            shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
            raise UsageError(f"{option}: {what} of {path} (columns: {shown}); fix {option}")
        found.update(hits)
    return [n for n in names if n in found]


class FooterFacts:
    """What the Parquet footers say about some columns, over every row group of every file:
    whether a column holds one value throughout, and whether it looks like a row sequence
    (an id). Fed one parsed footer at a time (:meth:`add`), as the files open.

    Reading a column chunk's statistics is not free, so a column is followed only while it
    may still be one or the other: most columns drop out at the first row group that shows
    two values (null counts, which need every chunk, are read only when asked:
    :func:`count_nulls`).
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._value: dict[str, Any] = {}  # the one value seen so far
        self._constant = {n: True for n in self.names}
        self._sequence = {n: True for n in self.names}
        self._empty = {n: True for n in self.names}  # every row null so far
        self._last_max: dict[str, Any] = {}
        self._live = set(self.names)
        self.rows = 0
        self._index: dict[str, int] = {}

    def add(self, meta: Any) -> None:
        """Take in one file's parsed footer (``pyarrow.parquet.FileMetaData``)."""
        self.rows += meta.num_rows
        if not self._live:
            return
        index = column_index(meta, self.names, self._index)
        self._index = index
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for name in [n for n in self.names if n in self._live]:
                self._chunk(name, rg.column(index[name]).statistics if name in index else None, rg.num_rows)
            if not self._live:
                return

    def _chunk(self, name: str, stats: Any, rows: int) -> None:
        self._empty[name] = bool(self._empty[name] and stats is not None and stats.has_null_count
                                 and stats.null_count == rows)
        if stats is None or not stats.has_min_max:
            self._constant[name] = self._sequence[name] = False
        else:
            low, high = stats.min, stats.max
            if self._constant[name]:
                first = self._value.setdefault(name, low)
                self._constant[name] = low == high == first and not stats.null_count
            if self._sequence[name]:
                # values that fill their range exactly, row groups ascending: distinct consecutive integers
                ascending = name not in self._last_max or low > self._last_max[name]
                self._sequence[name] = (isinstance(low, int) and not isinstance(low, bool) and ascending
                                        and not stats.null_count and high - low + 1 == rows)
                self._last_max[name] = high
        if not (self._constant[name] or self._sequence[name] or self._empty[name]):
            self._live.discard(name)

    def constant(self, name: str) -> tuple[bool, Any]:
        """(whether every row holds the same value, that value); never for one row, where every column is."""
        return bool(self._constant.get(name) and self.rows > 1), self._value.get(name)

    def empty(self, name: str) -> bool:
        """Whether every row of the column is null (the footers' null counts say so)."""
        return bool(self._empty.get(name)) and self.rows > 0

    def sequence(self, name: str) -> bool:
        """Whether the column's values are distinct consecutive integers in row order (a row number)."""
        return bool(self._sequence.get(name)) and self.rows >= ID_MIN_ROWS


def column_index(meta: Any, names: Sequence[str], known: dict[str, int] | None = None) -> dict[str, int]:
    """Column chunk index of each of ``names`` in a footer (files may order their columns
    differently); ``known``, the answer for another file, is reused when it still fits."""
    schema = meta.schema
    if known and all(j < len(schema) and schema.column(j).path == n for n, j in known.items()):
        return known
    paths = {schema.column(j).path: j for j in range(len(schema))}
    return {n: paths[n] for n in names if n in paths}


def count_nulls(metas: Any, names: Sequence[str]) -> dict[str, int | None]:
    """Null count of each of ``names`` over the footers ``metas``; None where a chunk has no statistics."""
    out: dict[str, int | None] = {n: 0 for n in names}
    index: dict[str, int] = {}
    for meta in metas:
        index = column_index(meta, names, index)
        for name in names:
            if name not in index:  # a nested column (a list): its chunks are its leaves', named otherwise
                out[name] = None
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for name, j in index.items():
                stats = rg.column(j).statistics
                known = out[name]
                out[name] = None if known is None or stats is None or not stats.has_null_count \
                    else known + stats.null_count
    return out


def _id_like_name(name: str) -> bool:
    low = name.lower()
    return (low in ID_NAMES or low.endswith(("_id", "_idx", "_key", "_index"))
            or re.search(r"[a-z0-9]Id$", name) is not None)


def warnings(features: Sequence[str], types: Mapping[str, Any], facts: FooterFacts | None) -> list[dict[str, str]]:
    """Warnings about chosen features: constant columns and id-like integer columns.

    An id-like column is an integer column named like an identifier (``id``, ``*_id``,
    ``index`` …) or whose footers show a row number: in every row group its values fill
    ``max - min + 1 == rows`` exactly and the row groups ascend. That is the footprint of an
    auto-increment key or row number written in order; an integer feature (a count, a
    level) repeats values, so its range is narrower than its row count. It is a warning,
    not an error: the model may learn the row order (leaky when rows are sorted by time or
    label, as statsmodels' ``fair`` is).
    """
    import pyarrow as pa

    out = []
    for name in features:
        t = types.get(name)
        if facts is not None and name in facts.names:
            constant, value = facts.constant(name)
            if constant:
                out.append({"column": name, "kind": "constant",
                            "message": f"column {name!r} holds one value ({value}) in every row (footer statistics): "
                                       f"it cannot help the model; leave it out with --exclude {name}"})
                continue
        integer = t is not None and pa.types.is_integer(t.value_type if pa.types.is_dictionary(t) else t)
        if not integer:
            continue
        why = ("its name" if _id_like_name(name) else
               "its values count up by one, row after row (footer statistics)"
               if facts is not None and facts.sequence(name) else None)
        if why:
            out.append({"column": name, "kind": "id-like",
                        "message": f"column {name!r} looks like a row identifier ({why}): the model may learn the "
                                   f"row order; leave it out with --exclude {name}"})
    return out


def describe(source: Source, nulls: bool = False) -> dict[str, Any]:
    """The columns a source uses, with role and type, the ones it skips, and the warnings.

    Returns ``{"columns": [...], "skipped": {name: reason}, "warnings": [...]}``; each
    column is ``{"name", "role", "type"}`` (role: feature, categorical or target) plus ``read_as`` (how a boolean, decimal, date or
    timestamp becomes a number) and, with ``nulls``, ``null_count`` (Parquet footers, None
    where they do not say): ``info`` asks for it; ``fit`` does not, since counting reads
    every column chunk's statistics.
    Works for any source; those without column types (arrays, Zarr) give the features'
    dtype when they know it.
    """
    types = source.column_types
    facts = source.footer_facts
    counted = source.null_counts() if nulls else {}
    columns = []
    hashed = list(getattr(source, "categorical", ()))
    roles = [(n, "feature") for n in source.features] + [(n, CATEGORICAL) for n in hashed]
    if source.target is not None:
        roles.append((source.target, "target"))
    for name, role in roles:
        t = types.get(name)
        known = source.target_type if role == "target" else source.feature_type
        entry: dict[str, Any] = {"name": name, "role": role, "type": str(t) if t is not None else known}
        kind = numeric_kind(t) if t is not None else None
        if kind in READ_AS:
            entry["read_as"] = READ_AS[kind]
        if name in counted:
            entry["null_count"] = counted[name]
        columns.append(entry)
    return {"columns": columns, "skipped": dict(source.skipped),
            "warnings": warnings(list(source.features) + hashed, types, facts)}


def summary_line(report: dict[str, Any], limit: int = 12) -> str:
    """One readable line: the features (type where not plain numbers), and the skipped columns."""
    feats = [c for c in report["columns"] if c["role"] == "feature"]
    shown = [c["name"] + (f" ({c['type']} -> {c['read_as']})" if "read_as" in c else "") for c in feats[:limit]]
    more = f", … ({len(feats) - limit} more)" if len(feats) > limit else ""
    line = f"{len(feats)} features: {', '.join(shown)}{more}"
    others = [c for c in report["columns"] if c["role"] != "feature"]
    line += "".join(f"; {c['role']}: {c['name']}" for c in others)
    skipped = [(n, r) for n, r in report["skipped"].items() if r != NOT_SELECTED]
    if skipped:
        line += "; skipped: " + ", ".join(f"{n} ({r})" for n, r in skipped[:limit])
        line += f", … ({len(skipped) - limit} more)" if len(skipped) > limit else ""
    return line
