"""Parquet data sets on any fsspec filesystem; chunk = one row group, or one slice of a big one."""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..config import DEFAULT_MEMORY_LIMIT, DEFAULT_TARGET
from .base import SourceBase
from .cast import arrow_values, to_dtype
from .validate import not_finite, refuse_nulls
from .columns import FooterFacts, categorical_kind, column_index, is_multi, numeric_kind
from .hashing import list_lengths
from .encoding import Encoding
from .missing import imputed, indicator_name, no_mean, split_indicators
from ..errors import DataError, SourceError, UsageError
from . import retry

#: While decoding, pyarrow's memory pool peaks at under 3x the decoded size of the rows
#: read (raw pages plus decoded arrays; benchmarks/README.md has the measurement).
#: ``chunk_bytes`` charges this.
DECODE_FACTOR = 3

#: Row groups whose decoding would hold more than this are read in slices. The default
#: suits the default --memory-limit (a third of it: the planner's decode share); the
#: trainer re-cuts a source for its own limit (:meth:`ParquetSource.cut`).
DEFAULT_MAX_CHUNK_BYTES = DEFAULT_MEMORY_LIMIT // 3

#: Read buffer per column while a row group is streamed in slices. Without one (pyarrow's
#: ``buffer_size=0``) every column chunk is loaded whole before the first slice decodes,
#: which the slicing is there to avoid.
SLICE_BUFFER_BYTES = 256 << 10
#: The same for a local file: a refill is a read from the page cache, not a request to a
#: store, so a smaller buffer costs little, and it is what every open stream holds per
#: column (row groups stream several at once: plan.shuffle.laned_order). On a 100-column
#: file, 64 KiB instead of 256 KiB took a second open stream's cost to the peak from
#: ~57 MB to ~14 MB (benchmarks/README.md, loaders.py).
LOCAL_SLICE_BUFFER_BYTES = 64 << 10

#: What a streamed column holds besides its slice of rows: its current page, compressed
#: and decompressed, and its dictionary page, raw and decoded (sized from the footer).
#: Page sizes are not in the footer; writers close a page at 1 MiB (pyarrow, DuckDB,
#: Polars) or 20,000 rows (parquet-cpp's row limit), whichever comes first, so a page is
#: estimated as the smaller of the two.
PAGE_BYTES = 1 << 20
PAGE_ROWS = 20_000

#: A file whose one sliced row group could otherwise stream in one lane only streams it as
#: this many segments of consecutive slices, each through its own stream (a lane of its
#: own): so windows mix rows from both halves of, say, a label-sorted row group. Parquet
#: cannot seek inside a row group, so a segment's stream decodes and drops the rows before
#: it: two segments decode the row group 1.5 times an epoch, each more would add half again.
SEGMENTS = 2

#: A streamed row group's columns are decoded in this many parts at once, each by its own
#: thread: pyarrow decodes one stream on one thread, and a big row group (pyarrow writes
#: 1,048,576 rows by default) holds so many pages and dictionaries that the memory plan
#: often affords it one reader. The parts share those fixed costs (each column is in one
#: part), so the plan's figures hold; only the CPU spreads.
STREAM_PARTS = 2


@dataclass(frozen=True)
class _Chunk:
    """Rows ``start .. start + rows - 1`` of row group ``group`` of file ``file``; a slice
    of segment ``segment`` of that row group, which ends at row ``end`` (0: the group's end)."""

    file: int
    group: int
    start: int
    rows: int
    slices: int  # 1: the whole row group, read in one call
    segment: int = 0  # which stream of the row group reads it (SEGMENTS)
    end: int = 0


@dataclass(frozen=True)
class _Group:
    """One row group's size, from the footer: what cutting it into chunks needs to know."""

    file: int
    group: int
    rows: int
    data: int  # decoded bytes of the used columns
    fixed: int  # what a streamed read holds whatever the slice: each column's page and dictionary


#: Memory of a parsed footer per column chunk (row groups x columns), a measurement
#: rounded up (benchmarks/README.md).
PARSED_FOOTER_BYTES_PER_COLUMN_CHUNK = 1024

#: Parsed footers kept at once (see ``_Footers``).
FOOTERS_KEPT = 4


class _Footers:
    """Parsed Parquet footers by file index, the last few kept (least recently used goes)."""

    def __init__(self, load, keep: int = FOOTERS_KEPT):
        self._load = load
        self._keep = keep
        self._cache: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __getitem__(self, k: int):
        with self._lock:
            meta = self._cache.pop(k, None)
        if meta is None:
            meta = self._load(k)
        with self._lock:
            self._cache[k] = meta  # most recent last
            while len(self._cache) > self._keep:
                self._cache.pop(next(iter(self._cache)))
        return meta


@dataclass
class _File:
    fs: Any  # None in a pickled source: made again from ``listed_from`` (see ParquetSource._fresh)
    fs_path: str
    path: str  # as the user knows it, for messages
    local: bool
    partitions: dict[str, str] = field(default_factory=dict)
    listed_from: str = ""  # the URL whose listing gave this file: its filesystem's URL


class ParquetSource(SourceBase):
    """Parquet files, directories (recursive, hive ``key=value/`` folders), globs, or a list of them.

    Chunk = one row group. A row group whose decoding would hold more than
    ``max_chunk_bytes`` (or has more than ``max_chunk_rows`` rows) is split into slices of
    consecutive rows, each its own chunk, so the memory plan accepts it and a reader never
    holds the whole row group (see :meth:`cut`).

    Files are opened with ``pre_buffer=False``: pyarrow's default buffers whole files,
    which silently defeats the fixed-memory bound. On a remote store only the footers are
    read up front, then each row group's used column chunks as byte ranges (the file
    objects are opened without read-ahead caching, so nothing else is fetched).

    Partition folders (``key=value``) give columns that are ignored unless named in
    ``features``; their values, parsed from the path, must then be numbers.

    Slices are read through one streaming iterator per row group, kept open between
    calls: asking for the slice after the last one read continues it. Parquet cannot seek
    inside a row group, so asking for an earlier slice restarts the iterator and asking
    for a later one decodes and drops the rows in between; both cost at most one row
    group's decode. A plan that keeps a row group's slices consecutive and ascending
    reads every row once.

    A pickled source holds the URLs, storage options and footer summaries; its footer
    cache, open streams, locks and filesystem objects are made again after unpickling
    (filesystems from each file's URL and the storage options, the rest when first used).
    """

    _TRANSIENT = ("_metas", "_cursors", "_cursors_lock", "_breaker")

    def __init__(
        self,
        url: str | Sequence[str],
        target: str | None = DEFAULT_TARGET,
        features: Sequence[str] | None = None,
        feature_hint: str = "fix --features",
        storage_options: Mapping[str, Any] | None = None,
        max_chunk_bytes: int | None = None,
        max_chunk_rows: int | None = None,
        exclude: Sequence[str] | None = None,
        weight: str | None = None,
        retry_policy: retry.RetryPolicy | None = None,
        categorical: Sequence[str] = (),
    ):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise SourceError("no data: give at least one path or URL")
        self.urls = urls
        self.url = urls[0] if len(urls) == 1 else f"{urls[0]} (and {len(urls) - 1} more)"
        self.format = "parquet"
        self._storage_options = dict(storage_options or {})
        self.retry_policy = retry_policy or retry.DEFAULT_POLICY  # how transient store failures are retried
        self._files = [f for u in urls for f in _expand(u, storage_options, self.retry_policy)]
        self.paths = [f.path for f in self._files]
        # footers are parsed once here, summarised, and after that kept for a few files only:
        # a parsed footer costs about PARSED_FOOTER_BYTES_PER_COLUMN_CHUNK per column chunk,
        # so holding every file's would grow with the data
        self._fresh()
        schema = self._metas[0].schema.to_arrow_schema()
        keys = _partition_keys(self._files)
        self.partition_columns = [k for k in keys if k not in schema.names]
        self.columns = list(schema.names) + self.partition_columns
        self.target = target
        self.column_types = {f.name: f.type for f in schema}
        features, indicated = split_indicators(features, schema.names)
        chosen, self.skipped = _resolve_columns(self.paths[0], schema, self.partition_columns, target,
                                                features, feature_hint, exclude, self.column_types, categorical)
        #: the hashed columns (text, and --categorical's integers), read by read_hashed, never by read_into
        self.categorical = [n for n in chosen if n not in self.partition_columns
                            and categorical_kind(self.column_types[n], n in categorical)]
        self.features = [n for n in chosen if n not in self.categorical]
        #: how the categorical columns hash (set by the trainer or from a model: :meth:`encode`)
        self.encoding: Encoding | None = None
        self.target_type = str(schema.field(target).type) if target is not None else None
        #: the sample-weight column (``--weight``): read with the target, never a feature
        self.weight = weight
        if weight is not None:
            self.features = _weight_apart(self.paths[0], schema, weight, features, self.features)
        used = (self.features + self.categorical + ([target] if target is not None else [])
                + ([weight] if weight is not None else []))
        #: null counts, constant and id-like columns, from the footers as they are parsed
        self.footer_facts = FooterFacts([n for n in used if n not in self.partition_columns])
        self._partition_values = self._parse_partitions([n for n in used if n in self.partition_columns])
        self._summarise_footers(schema, used)
        self._leave_out_empty(set(features or ()))
        #: the row groups whose target holds nulls, each with its target's validity as bits:
        #: their rows with a null target are left out (None: null targets are refused;
        #: :meth:`skip_null_targets`), and how many rows that is
        self._target_valid: dict[tuple[int, int], NDArray[np.uint8]] | None = None
        self.skipped_rows = 0
        self.cut(max_chunk_bytes, max_chunk_rows)
        #: the mean each column's nulls become (None: nulls are refused), and the columns
        #: whose indicator features end ``features`` (sources.missing)
        self.imputation: dict[str, float] | None = None
        self.indicated: list[str] = []
        if indicated:
            self.impute({}, indicated)

    def _summarise_footers(self, schema: Any, used: list[str]) -> None:
        """Parse each file's footer once: check its schema, feed ``footer_facts``, and keep
        its rows, row groups (sizes for :meth:`cut`) and footer size."""
        self._file_rows: list[int] = []
        self._group_rows: list[list[int]] = []
        self._footer_bytes: list[int] = []
        self._groups: list[_Group] = []
        parsed: list[int] = []
        used_set = set(used)  # a list made the column lookup O(columns^2) on a 1000-column file
        for f in range(len(self._files)):
            if f > 0:
                self._check_schema(f, schema, used)
            meta = self._metas[f]
            self.footer_facts.add(meta)
            self._file_rows.append(int(meta.num_rows))
            self._group_rows.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            self._footer_bytes.append(int(meta.serialized_size))
            parsed.append(PARSED_FOOTER_BYTES_PER_COLUMN_CHUNK * meta.num_row_groups * meta.num_columns)
            buffer = _slice_buffer(self._files[f])
            self._groups += [_group_size(meta, f, g, used_set, buffer) for g in range(meta.num_row_groups)]
        #: memory of the parsed footers held while reading (the largest few): one file of
        #: 10^8 rows x 100 columns in 65,536-row groups holds 150 MB of them
        self.metadata_bytes = sum(sorted(parsed)[-FOOTERS_KEPT:])

    def _leave_out_empty(self, named: set[str]) -> None:
        """Skip the feature columns the footers show null in every row (nothing to learn, no
        mean to impute), unless named outright in ``features``, where they stay and are refused."""
        empty = [n for n in [*self.features, *self.categorical] if n not in named and self.footer_facts.empty(n)]
        self.features = [n for n in self.features if n not in empty]
        self.categorical = [n for n in self.categorical if n not in empty]
        self.skipped = {**self.skipped, **dict.fromkeys(empty, "every value is null")}

    def impute(self, means: Mapping[str, float], indicated: Sequence[str]) -> None:
        """Replace nulls of the columns in ``means`` by their mean and add an indicator feature
        for each of ``indicated`` (after the other features); a null elsewhere is refused."""
        base = self.features[: len(self.features) - len(self.indicated)]
        self.imputation = {k: float(v) for k, v in means.items()}
        self.indicated = list(indicated)
        self.features = base + [indicator_name(c) for c in self.indicated]

    def encode(self, encoding: Encoding) -> None:
        """Hash the categorical columns with ``encoding`` (the run's, or a model's); a list
        column's width is the most values a row of this data holds (one pass over it)."""
        from dataclasses import replace as with_fields

        if list(encoding.columns) != self.categorical:
            raise DataError(f"{self.url}: the categorical columns are {self.categorical[:10]}, but the model hashes "
                            f"{list(encoding.columns)[:10]}; use data with the model's columns")
        lists = [n for n in self.categorical if is_multi(self.column_types[n])]
        crossed = [n for pair in encoding.interactions for n in pair if n in lists]
        if crossed:
            raise UsageError(f"--interactions: {crossed[0]!r} is a list (multi-valued) column; cross scalar "
                             "categorical columns only")
        most = dict.fromkeys(lists, 0)
        for i in range(len(self.chunk_rows) if lists else 0):
            table = self.read_columns(i, lists)
            for n in lists:
                most[n] = max(most[n], int(list_lengths(table.column(n)).max(initial=0)))
        self.encoding = with_fields(encoding, widths=tuple(max(1, most.get(n, 1)) for n in self.categorical))

    def skip_categorical(self, reason: str) -> None:
        """Leave the categorical columns out, with ``reason`` (a reader that cannot carry them)."""
        self.skipped = {**self.skipped, **{n: reason for n in self.categorical}}
        self.categorical = []
        self.encoding = None

    def read_hashed(self, i: int, idx: NDArray[np.int32], sign: NDArray[np.int8], rows: NDArray | None = None) -> None:
        """Hash chunk ``i``'s categorical columns into ``idx``/``sign`` (rows x columns), its
        row ``j`` into row ``rows[j]`` when given; a null is the column's null category."""
        from .rows import copy_hashed  # numba: imported when data is first read

        assert self.encoding is not None  # set before any window is read (train.setup, tools.inference)
        text = [n for n in self.categorical if _is_text(self.column_types[n])]
        copy_hashed(self.encoding.hash_table(self.read_columns(i, self.categorical, text)), idx, sign, rows)

    def _fresh(self) -> None:
        """The footer cache, the streams' registry and its lock, the retry breaker: empty."""
        self._metas = _Footers(self._footer)
        self._cursors: dict[tuple, _Cursor] = {}
        self._cursors_lock = threading.Lock()
        self._breaker = retry.Breaker()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_files"] = [replace(f, fs=None) for f in self._files]  # filesystems hold sessions and loops
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from .fs import filesystem

        made: dict[str, Any] = {}
        for f in state["_files"]:
            if f.listed_from not in made:
                made[f.listed_from] = filesystem(f.listed_from, state["_storage_options"])[0]
        state["_files"] = [replace(f, fs=made[f.listed_from]) for f in state["_files"]]
        super().__setstate__(state)

    # --- layout -------------------------------------------------------------------------

    def cut(self, max_chunk_bytes: int | None = None, max_chunk_rows: int | None = None, lanes: int = 1,
            lane_rows: int | None = None) -> None:
        """Cut the row groups into chunks: a row group whose decoding would hold more than
        ``max_chunk_bytes``, or that has more than ``max_chunk_rows`` rows, is read in
        slices of consecutive rows, each its own chunk. Pure in the footers' figures, so
        the same limits give the same chunks (and the same shuffle plan) on every run.

        A streamed row group holds each used column's page and dictionary whatever the
        slice (``_Group.fixed``): with many columns that alone can exceed the budget (101
        float columns written with pyarrow's defaults hold ~236 MB), so slices then get a
        quarter of the budget and ``chunk_bytes`` states the true cost, for the planner
        to pay out of the windows' share.

        ``lanes`` sliced row groups are to be streamed side by side (``plan.shuffle.laned_order``),
        their slices then of at most ``lane_rows`` rows: ``chunk_lanes`` says how many (1 when
        no row group is sliced) and ``stream_bytes`` charges the streams open beyond one per
        reader. Where only one row group is sliced, it streams as SEGMENTS segments, each a
        lane. Row groups read whole are cut the same whatever the lanes.
        """
        budget = int(max_chunk_bytes or DEFAULT_MAX_CHUNK_BYTES)
        cap = int(max_chunk_rows) if max_chunk_rows else None
        sliced = [self._sliced(grp, budget, cap) for grp in self._groups]
        segments = SEGMENTS if lanes > 1 and sum(sliced) == 1 else 1
        chunks: list[_Chunk] = []
        sizes: list[int] = []
        for grp, streamed in zip(self._groups, sliced):
            whole = DECODE_FACTOR * grp.data
            if not streamed:
                chunks.append(_Chunk(grp.file, grp.group, 0, grp.rows, 1))
                sizes.append(whole)
                continue
            room = max(budget - grp.fixed, budget // 4)
            longest = min(cap or grp.rows, lane_rows or grp.rows)
            slices = min(grp.rows, max(math.ceil(whole / room), math.ceil(grp.rows / longest), 2))
            slices = min(grp.rows, -(-slices // segments) * segments)  # segments of equal slice counts
            step = math.ceil(grp.rows / slices)
            starts = range(0, grp.rows, step)
            # segment k: the k-th run of consecutive slices, read by its own stream up to its last row
            parts = [starts[k * len(starts) // segments:(k + 1) * len(starts) // segments] for k in range(segments)]
            for k, part in enumerate(parts):
                end = min(grp.rows, part[-1] + step)
                for start in part:
                    n = min(step, grp.rows - start)
                    chunks.append(_Chunk(grp.file, grp.group, start, n, len(starts), k, end))
                    sizes.append(math.ceil(whole * n / grp.rows) + grp.fixed)
        with self._cursors_lock:  # streams opened for the old cut read slices of another size
            for cursor in self._cursors.values():
                cursor.close()
            self._cursors.clear()
        self._chunks, self.chunk_bytes = chunks, sizes
        self.chunk_rows = [c.rows for c in chunks]
        #: the most a sliced row group's open stream holds (0: none is sliced)
        self.stream_fixed = max((g.fixed for g, streamed in zip(self._groups, sliced) if streamed), default=0)
        #: how many row groups are read in slices
        self.sliced_groups = sum(sliced)
        self.chunk_groups = _group_ids(chunks)
        units = len(set(self.chunk_groups))
        self.chunk_lanes = max(1, min(int(lanes), units)) if self.stream_fixed else 1
        self.stream_bytes = (self.chunk_lanes - 1) * self.stream_fixed
        if self._target_valid:
            self._drop_null_targets()

    @staticmethod
    def _sliced(grp: _Group, budget: int, cap: int | None) -> bool:
        """Whether row group ``grp`` is read in slices under these limits: it holds more than
        ``cap`` rows, or decoding it whole would hold more than ``budget`` and streaming it less."""
        whole = DECODE_FACTOR * grp.data
        too_long = cap is not None and grp.rows > cap
        return grp.rows > 1 and (too_long or (whole > budget and grp.fixed < whole))

    def skip_null_targets(self) -> None:
        """Leave out the rows whose target is null (DESIGN.md §4, "Missing values"), from
        every read and from ``chunk_rows``; ``skipped_rows`` counts them.

        One pass over the target column of the row groups whose footers say it may hold
        nulls keeps, for those that do, the target's validity as bits (1 bit a row, in
        ``metadata_bytes``): every :meth:`cut` then counts each chunk's rows from them (the
        plan needs them before any window is read), and each read leaves the rows out by
        the target's validity. A chunk left with no rows is dropped. Data whose target holds
        no nulls reads exactly as before.
        """
        target = self.target
        if target is None or target in self.partition_columns or self._target_valid is not None:
            return
        maybe: set[tuple[int, int]] = set()
        for f in range(len(self._files)):
            meta = self._metas[f]
            j = column_index(meta, [target], {}).get(target)
            for g in range(meta.num_row_groups):
                stats = None if j is None else meta.row_group(g).column(j).statistics
                if stats is None or not stats.has_null_count or stats.null_count > 0:
                    maybe.add((f, g))
        parts: dict[tuple[int, int], list[NDArray[np.bool_]]] = {}
        self._target_valid = {}  # the pass reads every row
        try:
            for i, c in enumerate(self._chunks):  # a row group's chunks come in order, front to back
                if (c.file, c.group) in maybe:
                    valid = self.read_columns(i, [target]).column(0).is_valid().to_numpy(zero_copy_only=False)
                    parts.setdefault((c.file, c.group), []).append(valid)
        except BaseException:
            self._target_valid = None
            raise
        self._target_valid = {k: np.packbits(np.concatenate(v)) for k, v in parts.items() if not all(a.all() for a in v)}
        self.metadata_bytes += sum(bits.nbytes for bits in self._target_valid.values())
        self._drop_null_targets()

    def _drop_null_targets(self) -> None:
        """Count each chunk's rows with a target (from the validity bits) and drop the chunks
        left empty."""
        assert self._target_valid is not None  # set by skip_null_targets
        rows = []
        for c, n in zip(self._chunks, self.chunk_rows):
            bits = self._target_valid.get((c.file, c.group))
            if bits is not None:
                first = c.start // 8
                n = int(np.unpackbits(bits[first:(c.start + c.rows + 7) // 8])[c.start - 8 * first:][:c.rows].sum())
            rows.append(n)
        self.skipped_rows = sum(self.chunk_rows) - sum(rows)
        kept = [i for i, n in enumerate(rows) if n > 0]
        self._chunks = [self._chunks[i] for i in kept]
        self.chunk_bytes = [self.chunk_bytes[i] for i in kept]
        self.chunk_rows = [rows[i] for i in kept]
        self.chunk_groups = _group_ids(self._chunks)

    def whole_rows(self, max_chunk_bytes: int) -> int:
        """The most rows a row group of this data could hold and still be read whole within
        ``max_chunk_bytes`` (its widest rows decide): the rewrite to suggest for a refused plan."""
        per_row = max((g.data / max(g.rows, 1) for g in self._groups), default=1.0)
        return max(1, int(max_chunk_bytes / (DECODE_FACTOR * per_row)))

    def chunk_name(self, i: int) -> str:
        c = self._chunks[i]
        name = f"{self.paths[c.file]} row group {c.group}"
        return name if c.slices == 1 else f"{name} rows {c.start}..{c.start + c.rows - 1}"

    def layout(self) -> dict[str, Any]:
        """How the data is stored and cut: store, files, row groups, slices."""
        per_file = [len(groups) for groups in self._group_rows]
        return {
            "store": sorted({_store(f) for f in self._files})[0] if self._files else "file",
            "files": len(self._files),
            "row_groups": sum(per_file),
            "row_groups_per_file": [min(per_file), max(per_file)],
            "sliced_row_groups": len({(c.file, c.group) for c in self._chunks if c.slices > 1}),
            "lanes": self.chunk_lanes,  # sliced row groups streamed side by side (plan.shuffle.laned_order)
            "partition_columns": list(self.partition_columns),
        }

    def manifest(self) -> list[dict[str, Any]]:
        """One JSON-able record per file: path, size, rows, chunks, and ETag or mtime when known.

        Asks the store for each file's details (one request per file on object stores):
        what a resumed run compares to know the data did not change underneath it.
        """
        from .fs import file_info

        out = []
        for k, f in enumerate(self._files):
            info = retry.call(lambda: file_info(f.fs, f.fs_path), f"{f.path}: file details", self.retry_policy)
            chunks = sum(1 for c in self._chunks if c.file == k)
            out.append({"path": f.path, **info, "rows": self._file_rows[k], "chunks": chunks,
                        "row_groups": len(self._group_rows[k])})
        return out

    # --- reading ------------------------------------------------------------------------

    def read_columns(self, i: int, names: Sequence[str], dictionary: Sequence[str] = ()):
        """Chunk ``i`` as a pyarrow Table of the named columns (partition columns included);
        the text columns in ``dictionary`` decoded as dictionary arrays where the chunk is a
        whole row group (codes and one dictionary: cheaper to decode and to hash)."""
        import pyarrow as pa

        c = self._chunks[i]
        in_file = [n for n in names if n not in self.partition_columns]
        valid, target = self._target_valid, self.target
        drop_nulls = valid is not None and target is not None and (c.file, c.group) in valid
        if drop_nulls and target not in in_file:
            in_file.append(str(target))
        table = retry.call(lambda: self._read(i, c, in_file, dictionary), self.chunk_name(i), self.retry_policy,
                           self._breaker)
        if drop_nulls:
            table = table.filter(table.column(target).is_valid())
            if table.num_rows != self.chunk_rows[i]:
                raise SourceError(f"{self.chunk_name(i)}: {table.num_rows} rows have a target, but "
                                  f"{self.chunk_rows[i]} had when the run started; the file changed while it was "
                                  "read: rerun")
        for name in names:
            if name in self.partition_columns:
                value = self._partition_value(c.file, name)
                table = table.append_column(name, pa.array(np.full(table.num_rows, value)))
        return table.select(list(names))

    def _read(self, i: int, c: _Chunk, names: list[str], dictionary: Sequence[str] = ()):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.paths[c.file]
        try:
            if c.slices > 1:
                return self._read_slice(c, names)
            with self._open(c.file) as f:
                pf = pq.ParquetFile(f, metadata=self._metas[c.file], pre_buffer=False,
                                    read_dictionary=[n for n in names if n in dictionary] or None)
                # the pool keeps the last read's freed buffers for the next one: handing them back
                # to the OS after every read (release_unused) costs a page fault per 4 KiB of every
                # decode and does not lower peak RSS
                return pf.read_row_group(c.group, columns=names, use_threads=False)
        except FileNotFoundError as exc:
            raise SourceError(f"{path}: file disappeared while reading; {exc}") from exc
        except (pa.ArrowException, OSError) as exc:
            if retry.is_transient(exc):
                raise  # retry.call decides
            raise SourceError(
                f"{self.chunk_name(i)}: cannot read ({retry.first_line(exc)}); the file may be corrupt or "
                "truncated, rewrite it"
            ) from exc

    def _read_slice(self, c: _Chunk, names: list[str]):
        """A slice of a streamed row group, its columns decoded in ``STREAM_PARTS`` parts at
        once: one stream (cursor) per part, each advanced by one thread at a time, so a big
        row group decodes on several cores though the plan gives it one reader."""
        import pyarrow as pa

        parts = [names[k::STREAM_PARTS] for k in range(min(STREAM_PARTS, len(names)))]
        tables: list[Any] = [None] * len(parts)
        errors: list[BaseException] = []

        def read(k: int) -> None:
            try:
                tables[k] = self._read_part(c, parts[k])
            except BaseException as exc:  # re-raised by the calling reader
                errors.append(exc)

        helpers = [threading.Thread(target=read, args=(k,), name="streamsgd-decode") for k in range(1, len(parts))]
        for t in helpers:
            t.start()
        read(0)
        for t in helpers:
            t.join()
        if errors:
            raise errors[0]
        pa.default_memory_pool().release_unused()
        columns = {n: t.column(n) for t in tables for n in t.column_names}
        return pa.table({n: columns[n] for n in names})

    def _read_part(self, c: _Chunk, names: list[str]):
        key = (c.file, c.group, c.segment, tuple(names))
        with self._cursors_lock:
            cursor = self._cursors.get(key)
            if cursor is None:
                step = math.ceil(self._group_rows[c.file][c.group] / c.slices)
                cursor = self._cursors[key] = _Cursor(self, c.file, c.group, names, step, c.end)
        table = cursor.read(c.start, c.rows)
        if cursor.exhausted:
            with self._cursors_lock:
                if self._cursors.get(key) is cursor:
                    del self._cursors[key]
            cursor.close()
        return table

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        """Decode chunk ``i`` into ``X`` (rows x features) and ``y`` (rows,), its row ``j``
        into row ``rows[j]`` when given; refuse nulls, NaN and infinity."""
        from .rows import fill_columns  # numba: imported when data is first read

        target = self.target
        # a target buffer is passed only for data that has a target (fit and evaluate need one)
        assert y is None or target is not None
        base = self.features[: len(self.features) - len(self.indicated)]
        names = base + ([target] if target is not None and y is not None else [])
        table = self.read_columns(i, names)
        columns = self._feature_values(table, base, i)
        bad = fill_columns(columns, X, rows)  # the decoded buffers themselves: no copy before this one
        if bad >= 0:
            raise not_finite(columns[bad], X.dtype, self.chunk_name(i), self.features[bad])
        if y is not None and target is not None:
            if _is_text(table.schema.field(target).type):  # labels are read by sources.labels
                raise DataError(f"{self.chunk_name(i)}: target column {target!r} holds text, not numbers; "
                                "train --model softmax, or encode the column as numbers")
            y[slice(None) if rows is None else rows] = to_dtype(
                _values(table.column(target), target, self, i), y.dtype, self.chunk_name(i), target)

    def _feature_values(self, table, base: list[str], i: int) -> list[NDArray]:
        """The feature columns of chunk ``i`` as arrays, nulls imputed, then the indicators."""
        columns, flags = [], {}
        for n in base:
            column = table.column(n)
            if self.imputation is None or not column.null_count:
                columns.append(_values(column, n, self, i))
            elif n in self.imputation:
                values, flags[n] = imputed(column, self.imputation[n])
                columns.append(values)
            else:
                raise no_mean(self.chunk_name(i), n, column.null_count)
        rows = table.num_rows
        return columns + [flags[c] if c in flags else np.zeros(rows) for c in self.indicated]

    def fingerprint(self) -> str:
        """Hash of the data's manifest: files, sizes, row-group layout."""
        manifest = [[p, rows, len(groups), size]
                    for p, rows, groups, size in zip(self.paths, self._file_rows, self._group_rows, self._footer_bytes)]
        return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:16]

    def _open(self, k: int, mapped: bool = True):
        """File ``k`` for reading: memory-mapped locally, an uncached fsspec file remotely.

        A mapped file decodes from the page cache without first copying the column chunks
        into a read buffer (a faster decode); only the pages of the chunks
        read are touched, and they are unmapped when the chunk's arrays are freed. A row
        group streamed in slices is not mapped (``mapped=False``): its pages would stay
        mapped, and counted, until the whole group was read.
        """
        f = self._files[k]
        if f.local:
            import pyarrow as pa

            return pa.memory_map(f.fs_path) if mapped else pa.OSFile(f.fs_path)
        return f.fs.open(f.fs_path, "rb", cache_type="none")

    def _footer(self, k: int):
        import pyarrow.parquet as pq

        path = self.paths[k]

        def read():
            with self._open(k) as f:
                return pq.read_metadata(f)

        try:
            return retry.call(read, f"{path}: footer", self.retry_policy)
        except SourceError:
            raise
        except FileNotFoundError as exc:
            raise SourceError(f"{path}: no such file") from exc
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-Parquet input
            raise SourceError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc

    # --- schemas and partitions ---------------------------------------------------------

    def _check_schema(self, k: int, schema, used: list[str]) -> None:
        """File ``k`` has the used columns, as numbers; name both files when it differs."""
        first, path = self.paths[0], self.paths[k]
        other = self._metas[k].schema.to_arrow_schema()
        for name in used:
            if name in self.partition_columns:
                continue
            if name not in other.names:
                raise DataError(
                    f"{path}: column {name!r} is missing, but {first} has it; "
                    "give every file the same columns or choose --features present in all"
                )
            if name == self.target and (_is_text(schema.field(name).type) or _is_text(other.field(name).type)):
                if _is_text(schema.field(name).type) != _is_text(other.field(name).type):
                    raise DataError(f"{path}: target column {name!r} has type {other.field(name).type}, but {first} "
                                    f"has {schema.field(name).type}; give every file a target of the same kind")
                continue
            if name in self.categorical:
                if not categorical_kind(other.field(name).type, True):
                    raise DataError(f"{path}: column {name!r} has type {other.field(name).type}, but {first} has "
                                    f"{schema.field(name).type}; give every file the same column types")
                continue
            if not _is_numeric(other.field(name)):
                raise DataError(
                    f"{path}: column {name!r} has type {other.field(name).type}, but {first} has "
                    f"{schema.field(name).type}; rewrite {path} with a numeric {name!r} or leave the "
                    "column out of --features"
                )

    def null_counts(self) -> dict[str, int | None]:
        """Null count of each used column from the footers (None where they do not say);
        reads every file's footer again beyond the few kept."""
        from .columns import count_nulls

        return count_nulls((self._metas[f] for f in range(len(self._files))), self.footer_facts.names)

    def _parse_partitions(self, names: list[str]) -> dict[tuple[int, str], float]:
        values: dict[tuple[int, str], float] = {}
        for k, f in enumerate(self._files):
            for name in names:
                if name not in f.partitions:
                    raise DataError(f"{f.path}: no {name}=… folder above this file, but other files have "
                                    f"one; give every file the partition or leave {name!r} out of --features")
                text = f.partitions[name]
                try:
                    values[k, name] = float(text)
                except ValueError:
                    raise DataError(f"{f.path}: partition {name}={text} is not a number; leave {name!r} out "
                                    "of --features (partition columns are used as numeric features)") from None
        return values

    def _partition_value(self, k: int, name: str) -> float:
        if (k, name) in self._partition_values:
            return self._partition_values[k, name]
        return float(self._files[k].partitions.get(name, "nan"))


class _Cursor:
    """An open streaming read of one row group (up to row ``end``: a segment's last), positioned
    after the last slice read.

    Readers of the same row group take turns; a reader whose slice comes after one that
    another reader is about to read waits for it, so two reader threads reading slices
    ``k`` and ``k + 1`` do not make the iterator restart.
    """

    def __init__(self, source: ParquetSource, file: int, group: int, names: list[str], step: int, end: int = 0):
        self._source, self._file, self._group, self._names = source, file, group, names
        self._step = step
        self._cond = threading.Condition()
        self._waiting: list[int] = []
        self._busy = False
        self._handle: Any = None
        self._batches: Iterator[Any] | None = None
        self._carry: Any = None  # rows read past the last slice
        self.position = 0
        self.total = source._group_rows[file][group]
        self.end = end or self.total  # the stream is done (and closed) once read up to here
        self.exhausted = False

    def read(self, start: int, rows: int):
        with self._cond:
            self._waiting.append(start)
            self._cond.wait_for(lambda: not self._busy and not any(
                self.position <= s < start for s in self._waiting if s != start))
            self._waiting.remove(start)
            self._busy = True
        try:
            if start < self.position or self._batches is None:
                self._restart()
            if start > self.position:
                self._skip(start - self.position)
            table = self._take(rows)
            self.exhausted = self.position >= self.end
            return table
        except BaseException:
            self._reset()  # a failed stream is not resumable; the next read restarts it
            raise
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _restart(self) -> None:
        import pyarrow.parquet as pq

        self._reset()
        self._handle = self._source._open(self._file, mapped=False)
        pf = pq.ParquetFile(self._handle, metadata=self._source._metas[self._file], pre_buffer=False,
                            buffer_size=_slice_buffer(self._source._files[self._file]))
        self._batches = pf.iter_batches(batch_size=self._step, row_groups=[self._group], columns=self._names,
                                        use_threads=False)

    def _skip(self, rows: int) -> None:
        """Decode and drop ``rows`` rows, one batch at a time (never all of them at once)."""
        while rows > 0:
            n = min(rows, self._step)
            self._take(n)
            rows -= n

    def _take(self, rows: int):
        import pyarrow as pa

        assert self._batches is not None  # read() starts the stream before taking rows
        parts, have = [], 0
        while have < rows:
            batch = self._carry if self._carry is not None else next(self._batches, None)
            self._carry = None
            if batch is None:
                raise SourceError(f"{self._source.paths[self._file]} row group {self._group}: ended at row "
                                  f"{self.position + have}, but the footer says {self.total} rows; rewrite the file")
            if batch.num_rows > rows - have:
                self._carry = batch.slice(rows - have)
                batch = batch.slice(0, rows - have)
            parts.append(batch)
            have += batch.num_rows
        self.position += rows
        return pa.Table.from_batches(parts, schema=parts[0].schema) if parts else None

    def _reset(self) -> None:
        self._batches, self._carry, self.position = None, None, 0
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        with self._cond:
            self._reset()


def _slice_buffer(f: _File) -> int:
    """The read buffer per column of a row group streamed in slices from file ``f``."""
    return LOCAL_SLICE_BUFFER_BYTES if f.local else SLICE_BUFFER_BYTES


def _group_ids(chunks: Sequence[_Chunk]) -> list[int]:
    """The stream of each chunk, one integer each (its row group's, or for a segment after
    the first the segment's): the planner keeps a sliced row group's slices together, or
    streams them in lanes."""
    return [(c.segment << 56) + c.file * (1 << 32) + c.group for c in chunks]


def _group_size(meta, f: int, g: int, used: set[str], buffer: int = SLICE_BUFFER_BYTES) -> _Group:
    """Row group ``g`` of file ``f``: rows, decoded bytes of the used columns, and the fixed
    cost of streaming them (per column: the read buffer of ``buffer`` bytes, a page,
    compressed and decompressed, and the dictionary page, raw and decoded)."""
    rg = meta.row_group(g)
    rows = rg.num_rows
    columns = [c for c in (rg.column(j) for j in range(rg.num_columns)) if c.path_in_schema in used]
    data = sum(c.total_uncompressed_size for c in columns)
    share = min(1.0, PAGE_ROWS / max(rows, 1))  # a page holds this share of a column chunk at most
    fixed = sum(buffer + 2 * min(PAGE_BYTES, math.ceil(c.total_uncompressed_size * share))
                + 2 * _dictionary_bytes(c) for c in columns)
    return _Group(f, g, rows, data, fixed)


def _dictionary_bytes(column) -> int:
    """Size of a column chunk's dictionary page, from the footer's offsets (0 without one)."""
    if not column.has_dictionary_page or column.dictionary_page_offset is None:
        return 0
    return max(0, column.data_page_offset - column.dictionary_page_offset)


def _store(f: _File) -> str:
    from .fs import store_name

    return store_name(f.fs)


def _expand(url: str, storage_options: Mapping[str, Any] | None, policy: retry.RetryPolicy) -> list[_File]:
    """The Parquet files of ``url``: itself, the matches of a glob, or a directory's tree."""
    from fsspec.implementations.local import LocalFileSystem

    from .fs import filesystem

    fs, root = filesystem(url, storage_options)
    local = isinstance(fs, LocalFileSystem)

    def named(p: str, base: str | None, shown: str | None = None) -> _File:
        parts = {}
        if base is not None:
            rel = posixpath.relpath(posixpath.dirname(p), base) if p.startswith(base) else ""
            for segment in rel.split("/"):
                key, eq, value = segment.partition("=")
                if eq and key:
                    parts[key] = value
        return _File(fs, p, shown or (p if local else fs.unstrip_protocol(p)), local, parts, url)

    def listing() -> list[_File]:
        if any(ch in root for ch in "*?["):
            paths = sorted(p for p in fs.glob(root) if fs.isfile(p))
            if not paths:
                raise SourceError(f"{url}: the pattern matches no file; check the path")
            base = root[: min(root.find(ch) for ch in "*?[" if ch in root)].rsplit("/", 1)[0]
            return [named(p, base) for p in paths]
        if fs.isdir(root):
            base = root.rstrip("/")
            paths = sorted(
                p for p in fs.find(base)
                if p.endswith(".parquet") and not any(s.startswith((".", "_")) for s in
                                                      posixpath.relpath(p, base).split("/"))
            )
            if not paths:
                raise DataError(f"{url}: the directory holds no .parquet file")
            return [named(p, base) for p in paths]
        if not fs.exists(root):
            raise SourceError(f"{url}: no such file or directory")
        return [named(root, None, url)]  # one file: shown as the user wrote it

    try:
        return retry.call(listing, f"{url}: listing", policy)
    except (DataError, SourceError):
        raise
    except OSError as exc:
        raise SourceError(f"{url}: cannot list the data ({exc})") from exc


def _partition_keys(files: list[_File]) -> list[str]:
    keys: list[str] = []
    for f in files:
        for k in f.partitions:
            if k not in keys:
                keys.append(k)
    return keys


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_numeric(field) -> bool:
    """Numbers, booleans, decimals, dates and timestamps (plain or dictionary-encoded): see ``columns``."""
    return numeric_kind(field.type) is not None


def _is_text(t) -> bool:
    """Whether Arrow type ``t`` is text (plain or dictionary-encoded): labels a softmax target may hold."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _check_numeric(path: str, field, fix: str = "choose numeric columns with --features") -> None:
    if not _is_numeric(field):
        raise DataError(
            f"{path}: column {field.name!r} has type {field.type}, not a number; "
            f"{fix} (or encode this column as numbers)"
        )


def _resolve_columns(
    path: str, schema, partitions: list[str], target: str | None, features: Sequence[str] | None,
    feature_hint: str, exclude: Sequence[str] | None = None, types: dict[str, Any] | None = None,
    categorical: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """The feature columns and the skipped ones with their reasons (``columns.select``),
    after checking the target and every feature named outright (not by a glob)."""
    from .columns import is_glob, select

    names = schema.names
    wanted = [n for n in features if n in names or n in partitions or not is_glob(n)] if features is not None else []
    if target is not None:
        wanted.append(target)
    for name in wanted:
        hint = "fix --target" if name == target else feature_hint
        if name in partitions and name != target:
            continue  # a partition column named as a feature: values come from the paths
        if name not in names:
            every = list(names) + partitions
            raise DataError(
                f"{path}: no column {name!r} (columns: {', '.join(every[:20])}"
                f"{', …' if len(every) > 20 else ''}); {hint}"
            )
        if name == target and _is_text(schema.field(name).type):
            continue  # text labels: softmax reads them as class indices, other models refuse them (sources.labels)
        if name != target and categorical_kind(schema.field(name).type, name in categorical):
            continue  # a categorical feature: hashed
        _check_numeric(path, schema.field(name), hint)
    # partition columns are only used when named
    types = types if types is not None else {f.name: f.type for f in schema}
    return select(path, types, partitions, target, features, exclude, feature_hint, categorical)


def _weight_apart(path: str, schema, weight: str, features: Sequence[str] | None, chosen: list[str]) -> list[str]:
    """The features without the weight column, which must exist and hold numbers."""
    if weight not in schema.names:
        raise DataError(f"{path}: no column {weight!r} (columns: {', '.join(schema.names[:20])}"
                        f"{', …' if len(schema.names) > 20 else ''}); fix --weight")
    _check_numeric(path, schema.field(weight), "fix --weight")
    if features is not None and weight in features:
        raise UsageError(f"--weight: the weight column {weight!r} cannot also be a feature; drop it from --features")
    return [n for n in chosen if n != weight]


def _values(column, name: str, source, i: int) -> NDArray:
    """An Arrow column as one NumPy array (a view of the decoded buffer), refusing nulls."""
    refuse_nulls(column, source.chunk_name(i), name)
    return arrow_values(column)
