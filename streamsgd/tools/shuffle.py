"""An external shuffle: a table's rows rewritten in a uniformly random order, in fixed memory.

The windowed shuffle of ``fit`` mixes rows within a window of the buffer and is stratified
by label, but it cannot make a table sorted by time or by label i.i.d.: rows far apart in
the file never meet. ``streamsgd shuffle`` rewrites the table once, in two passes that each
hold a bounded amount of it (DESIGN.md §9):

1. **Scatter.** Stream the input in record batches sized by the memory limit and send each
   row to one of ``M`` bucket files by a key drawn uniformly from ``0 .. M-1``.
   ``M = ceil(total_bytes * SAFETY / memory_limit)``, ``total_bytes`` the table's size in
   memory (estimated from the schema and the footers), so one bucket fits in memory with
   room to permute it. Buckets are Arrow IPC streams, not Parquet: a Parquet writer keeps
   ~1.2 KB of metadata per column chunk written until it closes, so ``M`` open writers
   receiving a row group per batch grew with the input (30 MB of a 64 MB limit on a
   240 MB file); an IPC stream writer keeps nothing per batch.
2. **Permute.** For each bucket: read it whole, permute its rows uniformly, write it as
   ``part-NNNNN.parquet`` (atomically: a temporary name renamed, or one upload), delete
   the bucket. Parts are written for the trainer: numeric columns plain-encoded (a
   dictionary of random floats only slows decoding and inflates the row groups), strings
   dictionary-encoded, in row groups that ``fit`` decodes whole at this limit and at
   ``PART_LIMIT`` (no sliced reads).

Uniform keys make every assignment of rows to buckets equally likely given the bucket
sizes, and a uniform permutation within each bucket then makes every order of the rows,
read part after part, equally likely: the output is a uniform random permutation.

All randomness derives from ``seed`` with a stream tag per pass (DESIGN.md §6.3), and the
batch size from the data and the limit, so the same input, seed and limit give the same
bytes. The folder is a small job: buckets live in ``OUTDIR/_shuffle/`` (leading
underscore: readers of OUTDIR as a data set skip it), a ``state.json`` there marks the end
of the scatter, and ``_manifest.json`` is written last. Rerunning a finished job is a
no-op; rerunning an interrupted one continues the permute pass if the scatter finished
(giving the same output as an uninterrupted run) and otherwise starts over. A reader
never sees a half-written part file.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import DataError, SourceError, UsageError
from ..persist.atomic import atomic_file
from ..persist.model import is_remote, write_tables
from ..sources import retry
from ..sources.fs import check_bucket, file_info, filesystem, storage_failure
from ..sources.parquet import DECODE_FACTOR, PAGE_BYTES, SLICE_BUFFER_BYTES, _expand, _File
from .convert import refuse_text

#: RNG stream tags (``default_rng([seed, TAG, ...])``): the scatter keys and each bucket's
#: permutation draw from streams whose key spaces never meet.
SCATTER_STREAM = 0x5C
PERMUTE_STREAM = 0x9E

#: Memory a bucket may need, per byte of its rows, in the permute pass: the bucket read
#: whole, its batches combined into one array per column (take() on many chunks would
#: concatenate them anyway), and a part row group taken and encoded (each at most a ninth of
#: the limit). Measured peaks stay under 2.2x; the rest is the room the bucket sizes' random
#: spread needs.
SAFETY = 3

#: Share of the limit the scatter pass gives to its record batch (decoded, plus the copy
#: sorted by bucket) and the reader's pages; the rest is room for the allocator's holes
#: and the IPC writers' compression of a batch's pieces.
BATCH_SHARE = 0.6

#: What an open bucket writer holds between writes: a local file's buffer, or on an object
#: store the multipart upload's part (5 MiB, S3's minimum).
LOCAL_WRITER_BYTES = 64 << 10
UPLOAD_PART_BYTES = 5 << 20

#: Buckets are Arrow IPC streams compressed with LZ4 (GB/s both ways; halves typical
#: columns of few distinct values on the temporary disk).
BUCKET_COMPRESSION = "lz4"

#: Batches of a bucket combined into one table at a time while it is read (_read_bucket).
COMBINE_BATCHES = 64

#: Output row groups: at most this many rows, and small enough that ``fit`` at the shuffle's
#: ``--memory-limit`` or at ``PART_LIMIT``, whichever is smaller, decodes each whole and
#: takes it into a window (``ParquetSource.cut``'s rule; ``PART_MARGIN`` for page headers
#: and levels). A row group fit slices is read at a fraction of the decode rate.
PART_ROWS = 1 << 20
PART_LIMIT = 256 << 20
PART_MARGIN = 0.9

#: Snappy for the parts: it decodes at GB/s, so it costs ``fit`` little CPU
#: while it roughly halves typical tables on disk and over the network; it is pyarrow's
#: default, so every Parquet reader handles it.
COMPRESSION = "snappy"

TEMP = "_shuffle"
STATE = "state.json"
MANIFEST = "_manifest.json"
FORMAT = "streamsgd-shuffle/1"
#: The buckets' format in ``state.json``: an interrupted run of a version that wrote
#: buckets otherwise (Parquet) starts over instead of looking for files it never wrote.
BUCKET_FORMAT = "arrow-ipc-stream"


class Progress(Protocol):
    """A progress bar: ``tqdm`` fits."""

    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


#: ``progress(description, total, unit)`` -> a bar the shuffle advances.
ProgressFactory = Callable[[str, int, str], Progress]


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _silent(description: str, total: int, unit: str) -> Progress:
    return _Silent()


@dataclass(frozen=True)
class _Input:
    """The input files, their footers' totals, and the shape of the table."""

    files: list[_File]
    rows: list[int]
    schema: Any  # pyarrow.Schema, partition columns appended as strings
    total_bytes: int  # the table in memory (Arrow), estimated: what buckets and batches hold
    chunk_bytes: int  # the largest column chunk, uncompressed
    part_bytes: int  # the table as the parts store it, uncompressed: what ``fit`` charges to decode it
    fingerprint: str


def shuffle(
    data: Sequence[str],
    out: str,
    memory_limit: int,
    seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Rewrite the rows of ``data`` in a uniformly random order as Parquet files in ``out``.

    Parameters
    ----------
    data : sequence of str
        Parquet files, directories, globs or URLs, of one schema; every column is kept,
        whatever its type (hive ``key=value`` folders become string columns).
    out : str
        Folder (path or fsspec URL) for ``part-NNNNN.parquet`` and ``_manifest.json``; it
        must be empty, new, or an earlier shuffle's folder.
    memory_limit : int
        Bytes of table data held at once (the interpreter's own footprint comes on top).
    seed : int
        The same input, seed and limit give the same output.
    storage_options : mapping, optional
        fsspec options for the input and the output.
    progress : callable, optional
        ``progress(description, total, unit)`` returning a bar (``tqdm`` fits).

    Returns
    -------
    dict
        The manifest: ``rows``, ``files`` (name and rows of each part), ``seed``,
        ``buckets``, ``input`` (the input's fingerprint), plus ``skipped`` (True when the
        folder already held this shuffle).
    """
    if memory_limit < 1:
        raise UsageError(f"--memory-limit: expected a positive size, got {memory_limit}")
    refuse_text(list(data))
    source = _inspect(list(data), storage_options)
    buckets, rows_per_batch = _scatter_plan(source, memory_limit, is_remote(out))  # refused before -o is made
    fs, root = _output(out, storage_options)
    job = {"format": FORMAT, "input": source.fingerprint, "seed": int(seed), "buckets": buckets}
    done = _finished(fs, root, out, job)
    if done is not None:
        return {**done, "skipped": True}
    bar = progress or _silent
    state = _read_json(fs, posixpath.join(root, TEMP, STATE))
    if state is None or {k: state.get(k) for k in job} != job or state.get("bucket_format") != BUCKET_FORMAT:
        _clear(fs, root, keep_temp=False)
        fs.makedirs(posixpath.join(root, TEMP), exist_ok=True)
        sizes = _scatter(source, fs, root, out, buckets, seed, rows_per_batch, bar)
        state = {**job, "bucket_rows": sizes, "bucket_format": BUCKET_FORMAT}
        _write_json(_join(out, TEMP, STATE), state, storage_options)
    else:
        _clear(fs, root, keep_temp=True)
    files = _permute(source, fs, root, out, state["bucket_rows"], seed, memory_limit, storage_options, bar)
    manifest = {**job, "rows": sum(state["bucket_rows"]), "files": files,
                "columns": list(source.schema.names)}
    _write_json(_join(out, MANIFEST), manifest, storage_options)
    fs.rm(posixpath.join(root, TEMP), recursive=True)
    return {**manifest, "skipped": False}


# --- the input ----------------------------------------------------------------------------


def _inspect(urls: list[str], storage_options: Mapping[str, Any] | None) -> _Input:
    """List the input files and read their footers, one at a time (a parsed footer costs
    ~1 KB per column chunk, so they are summed up and dropped): rows, bytes, one schema."""
    import pyarrow as pa

    files = [f for u in urls for f in _expand(u, storage_options, retry.DEFAULT_POLICY)]
    schema: Any = None
    rows: list[int] = []
    stored: dict[str, int] = {}  # uncompressed footer bytes per top-level column
    chunk = 1
    for f in files:
        meta = _footer(f)
        if schema is None:
            schema = meta.schema.to_arrow_schema()
        elif not meta.schema.to_arrow_schema().equals(schema):
            raise DataError(f"{f.path}: its columns ({_describe(meta.schema.to_arrow_schema())}) differ from "
                            f"{files[0].path}'s ({_describe(schema)}); shuffle files of one schema together")
        rows.append(int(meta.num_rows))
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for j in range(group.num_columns):
                column = group.column(j)
                name = column.path_in_schema.split(".")[0]
                stored[name] = stored.get(name, 0) + column.total_uncompressed_size
                chunk = max(chunk, column.total_uncompressed_size)
    if not sum(rows):
        raise DataError(f"{', '.join(urls)}: no rows to shuffle")
    for key in dict.fromkeys(k for f in files for k in f.partitions if k not in schema.names):
        schema = schema.append(pa.field(key, pa.string()))
    marks = [[f.path, n, _file_marks(f)] for f, n in zip(files, rows)]
    fingerprint = hashlib.sha256(json.dumps(marks, sort_keys=True).encode()).hexdigest()[:16]
    n = sum(rows)
    total = sum(_column_bytes(field, n, stored.get(field.name, 0), parquet=False) for field in schema)
    part = sum(_column_bytes(field, n, stored.get(field.name, 0), parquet=True) for field in schema)
    return _Input(files, rows, schema, max(1, int(total)), int(chunk), max(1, int(part)), fingerprint)


def _column_bytes(field, rows: int, stored: int, parquet: bool) -> float:
    """A column's size in memory (Arrow: values and validity bitmap), or uncompressed in a
    part (``parquet``: plain values, integers narrower than 32 bits widened to INT32).
    Exact for fixed-width types; for others the footer's uncompressed bytes plus the
    offsets (an underestimate for a dictionary-encoded column of few, long strings, which
    Arrow holds decoded)."""
    import pyarrow as pa

    try:
        width = 0 if pa.types.is_dictionary(field.type) else field.type.bit_width
    except ValueError:  # not a fixed-width type
        width = 0
    if width and parquet:
        return rows * (width if width == 1 else max(width, 32)) / 8
    if width:
        return rows * (width + 1) / 8
    return stored + 8 * rows  # partition columns (no footer bytes): offsets and a short string


def _file_marks(f: _File) -> dict[str, Any]:
    """Size and ETag or mtime: a file rewritten in place changes the fingerprint."""
    return retry.call(lambda: file_info(f.fs, f.fs_path), f"{f.path}: file details")


def _describe(schema) -> str:
    text = ", ".join(f"{f.name}: {f.type}" for f in list(schema)[:6])
    return text + (", …" if len(schema) > 6 else "")


def _footer(f: _File):
    import pyarrow.parquet as pq

    def read():
        with f.fs.open(f.fs_path, "rb") as raw:
            return pq.read_metadata(raw)

    try:
        return retry.call(read, f"{f.path}: footer")
    except SourceError:
        raise
    except FileNotFoundError as exc:
        raise SourceError(f"{f.path}: no such file") from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-Parquet input
        raise SourceError(f"{f.path}: not a readable Parquet file ({retry.first_line(exc)}); "
                          "shuffle reads Parquet files") from exc


def _batches(f: _File, schema, rows_per_batch: int) -> Iterator[Any]:
    """File ``f``'s rows as record batches of at most ``rows_per_batch`` rows, streamed
    page by page (no pre-buffering of whole column chunks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with f.fs.open(f.fs_path, "rb", **({} if f.local else {"cache_type": "none"})) as raw:
            pf = pq.ParquetFile(raw, pre_buffer=False, buffer_size=SLICE_BUFFER_BYTES)
            for batch in pf.iter_batches(batch_size=rows_per_batch, use_threads=False):
                for name in schema.names[batch.num_columns:]:  # partition columns, from the path
                    value = f.partitions.get(name)
                    batch = batch.append_column(name, pa.array([value] * batch.num_rows, pa.string()))
                yield batch
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise SourceError(f"{f.path}: file disappeared while reading; rerun the shuffle") from exc
        if not f.local:
            raise storage_failure(f.path, exc) from exc
        raise SourceError(f"{f.path}: cannot read ({retry.first_line(exc)}); the file may be corrupt or "
                          "truncated, rewrite it") from exc


# --- the output folder --------------------------------------------------------------------


def _join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def _part_name(bucket: int) -> str:
    return f"part-{bucket:05d}.parquet"


def _output(out: str, storage_options: Mapping[str, Any] | None):
    """The output filesystem and folder, created; a folder holding other files is refused."""
    if is_remote(out):
        check_bucket(out, "-o", storage_options)
    fs, root = filesystem(out, storage_options)
    try:
        if fs.exists(root) and not fs.isdir(root):
            raise UsageError(f"-o {out}: is a file; give a folder for the shuffled parts")
        fs.makedirs(root, exist_ok=True)
        names = [posixpath.basename(p.rstrip("/")) for p in _listing(fs, root)]
    except UsageError:
        raise
    except Exception as exc:
        raise storage_failure(out, exc) from exc
    for name in names:
        if not (name in (TEMP, MANIFEST) or name.startswith(".tmp-")
                or (name.startswith("part-") and name.endswith(".parquet"))):
            raise UsageError(f"-o {out}: the folder holds {name!r}, which no shuffle wrote; "
                             "give an empty or new folder")
    return fs, root


def _listing(fs, root: str) -> list[str]:
    """The paths in folder ``root`` (none when an object store has no such prefix yet)."""
    try:
        return list(fs.ls(root, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def _finished(fs, root: str, out: str, job: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of this very shuffle if ``out`` holds it (None if no manifest)."""
    manifest = _read_json(fs, posixpath.join(root, MANIFEST))
    if manifest is None:
        return None
    if {k: manifest.get(k) for k in job} != job:
        raise UsageError(f"-o {out}: holds a finished shuffle of other data, or with another --seed or "
                         "--memory-limit; delete it or choose another folder")
    if fs.exists(posixpath.join(root, TEMP)):  # interrupted after the manifest, before the cleanup
        fs.rm(posixpath.join(root, TEMP), recursive=True)
    return manifest


def _clear(fs, root: str, keep_temp: bool) -> None:
    """Remove what an interrupted run left: temporary files, and unless the scatter pass
    finished (``keep_temp``), its parts and buckets too."""
    for path in _listing(fs, root):
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith(".tmp-") or (not keep_temp and name != MANIFEST):
            fs.rm(path, recursive=True)


def _read_json(fs, path: str) -> dict[str, Any] | None:
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError:  # not JSON: not written by us, or damaged; the job starts over
        return None


def _write_json(url: str, value: dict[str, Any], storage_options: Mapping[str, Any] | None) -> None:
    data = json.dumps(value, indent=1).encode()
    with atomic_file(url, storage_options) as f:
        f.write(data)


# --- pass 1: scatter ----------------------------------------------------------------------


def _scatter_plan(source: _Input, memory_limit: int, remote: bool) -> tuple[int, int]:
    """The number of buckets (one must fit the permute pass) and the rows of a scatter
    batch (what the limit's batch share leaves after the open writers and the reader's
    fixed buffers); a limit that leaves no batch is refused, naming one that works."""
    row_bytes = max(1.0, source.total_bytes / sum(source.rows))
    buckets, batch_bytes = _scatter_bytes(source, memory_limit, remote)
    # the batch decodes (DECODE_FACTOR) and is copied once, sorted by bucket
    if batch_bytes < (DECODE_FACTOR + 1) * row_bytes:
        # the smallest L with L * share - ceil(T * SAFETY / L) * writer - reader >= one row:
        # the root without the ceiling, then up in steps of 1/64 until the plan works
        writer, reader = LOCAL_WRITER_BYTES + (UPLOAD_PART_BYTES if remote else 0), _reader_bytes(source)
        a, b, c = BATCH_SHARE, reader + (DECODE_FACTOR + 1) * row_bytes, source.total_bytes * SAFETY * writer
        need = math.ceil((b + math.sqrt(b * b + 4 * a * c)) / (2 * a))
        while _scatter_bytes(source, need, remote)[1] < (DECODE_FACTOR + 1) * row_bytes:
            need += max(1, need // 64)
        raise UsageError(f"--memory-limit {memory_limit} bytes is too small to shuffle {source.total_bytes} bytes "
                         f"in {buckets} buckets; give at least --memory-limit {need}")
    return buckets, max(1, int(batch_bytes / ((DECODE_FACTOR + 1) * row_bytes)))


def _reader_bytes(source: _Input) -> int:
    """What streaming the input holds besides the batch: per column, a read buffer and a
    page, compressed and decompressed; pyarrow closes a page at 1 MiB only (not at 20,000
    rows): a 100,000-row group of 8 float columns held 14 MB of pages while streamed in
    batches of 1,000 rows. No page outgrows its column chunk."""
    return len(source.schema) * (min(SLICE_BUFFER_BYTES, source.chunk_bytes) + 2 * min(PAGE_BYTES, source.chunk_bytes))


def _scatter_bytes(source: _Input, memory_limit: int, remote: bool) -> tuple[int, float]:
    """The buckets at this limit and the bytes left for a scatter batch."""
    writer = LOCAL_WRITER_BYTES + (UPLOAD_PART_BYTES if remote else 0)
    buckets = max(1, math.ceil(source.total_bytes * SAFETY / memory_limit))
    return buckets, memory_limit * BATCH_SHARE - buckets * writer - _reader_bytes(source)


def _bucket_path(root: str, k: int) -> str:
    return posixpath.join(root, TEMP, f"bucket-{k:05d}.arrows")


def _scatter(source: _Input, fs, root: str, out: str, buckets: int, seed: int, rows_per_batch: int,
             progress: ProgressFactory) -> list[int]:
    """Send every row to one of ``buckets`` files by a uniform random key; returns the
    number of rows in each bucket."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, SCATTER_STREAM])
    sizes = np.zeros(buckets, dtype=np.int64)
    options = {"block_size": UPLOAD_PART_BYTES} if is_remote(out) else {}
    ipc = pa.ipc.IpcWriteOptions(compression=BUCKET_COMPRESSION, use_threads=False)
    raws: list[Any] = []
    writers: list[Any] = []
    bar = progress("scatter", sum(source.rows), "rows")
    try:
        for k in range(buckets):
            raws.append(fs.open(_bucket_path(root, k), "wb", **options))
            writers.append(pa.ipc.new_stream(raws[-1], source.schema, options=ipc))
        for f in source.files:
            for batch in _batches(f, source.schema, rows_per_batch):
                keys = rng.integers(0, buckets, size=batch.num_rows)
                counts = np.bincount(keys, minlength=buckets)
                ordered = batch.take(pa.array(np.argsort(keys, kind="stable")))
                del batch  # the decoded batch, before the pieces are compressed and written
                starts = np.concatenate([[0], np.cumsum(counts)])
                for b in np.flatnonzero(counts):
                    writers[b].write_batch(ordered.slice(int(starts[b]), int(counts[b])))
                sizes += counts
                bar.update(int(counts.sum()))
                del ordered
                # hand the batch's freed buffers back now: the allocator kept them in holes
                # that the next batch's sizes did not fit, +35 MB at a 16 MB limit
                pa.default_memory_pool().release_unused()
        while writers:  # closed in order: each close ends a bucket's stream
            writers.pop(0).close()
            raws.pop(0).close()
        pa.default_memory_pool().release_unused()  # the last batches' holes, before the permute pass
    except (DataError, SourceError, UsageError):
        raise
    except OSError as exc:
        raise storage_failure(out, exc) from exc
    finally:
        bar.close()
        for raw in raws:  # a failed run's handles; the files are removed by the next run
            raw.close()
    return [int(n) for n in sizes]


# --- pass 2: permute ----------------------------------------------------------------------


def _permute(source: _Input, fs, root: str, out: str, bucket_rows: list[int], seed: int, memory_limit: int,
             storage_options: Mapping[str, Any] | None, progress: ProgressFactory) -> list[dict[str, Any]]:
    """Write each bucket, permuted, as a part; parts already written (by an interrupted
    run after its scatter) are kept: each is a pure function of its bucket and the seed."""
    import pyarrow as pa

    most = part_group_rows(source.schema, source.part_bytes / sum(source.rows), memory_limit)
    dictionary = [field.name for field in source.schema if _dictionary_encoded(field.type)]
    files = []
    bar = progress("permute", len(bucket_rows), "buckets")
    try:
        for k, rows in enumerate(bucket_rows):
            bucket = _bucket_path(root, k)
            if rows:
                part = posixpath.join(root, _part_name(k))
                if not fs.exists(part):
                    group = math.ceil(rows / math.ceil(rows / most))  # equal groups, no short last one
                    _write_part(fs, bucket, _join(out, _part_name(k)), k, seed, group, dictionary, storage_options)
                    pa.default_memory_pool().release_unused()  # the bucket's buffers, before the next
                files.append({"name": _part_name(k), "rows": rows})
            if fs.exists(bucket):
                fs.rm(bucket)
            bar.update(1)
    finally:
        bar.close()
    return files


def part_group_rows(schema, row_bytes: float, memory_limit: int) -> int:
    """Rows of an output row group: ``fit`` at ``min(memory_limit, PART_LIMIT)`` decodes it
    whole (``DECODE_FACTOR`` times its bytes within the decode share) and fits it in a
    window (``window_rows_cap``'s arithmetic, for float64 rows with a sample weight, the
    widest a run reads), so no row group is read in slices."""
    from ..pipeline.windows import WEIGHT_BYTES
    from ..plan.memory import WINDOW_SHARE, row_bytes as window_row_bytes
    from ..train.setup import max_row_group_bytes

    limit = min(memory_limit, PART_LIMIT)
    decoded = max_row_group_bytes(limit) * PART_MARGIN / max(1.0, row_bytes)
    window = limit * WINDOW_SHARE * PART_MARGIN // 3 // window_row_bytes(len(schema), "float64", WEIGHT_BYTES)
    return int(max(1, min(PART_ROWS, decoded, window)))


def _dictionary_encoded(type_) -> bool:
    """Strings, binaries and categoricals keep Parquet's dictionary (few distinct values
    compress to small indices); numbers are written plain, which decodes fastest."""
    import pyarrow as pa

    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_binary(type_)
                or pa.types.is_large_binary(type_) or pa.types.is_dictionary(type_))


def _read_bucket(fs, bucket: str):
    """A bucket as a table of one chunk per column (take() then copies only the rows
    taken). Its batches are combined ``COMBINE_BATCHES`` at a time as they are read: each
    array of a batch costs ~0.5 KB outside Arrow's pool, and a bucket scattered at a small
    limit holds thousands of batches of a few rows (18 MB of arrays at a 3.4 MiB limit)."""
    import pyarrow as pa

    pieces, pending = [], []
    try:
        with fs.open(bucket, "rb") as raw:
            reader = pa.ipc.open_stream(raw, options=pa.ipc.IpcReadOptions(use_threads=False))
            for batch in reader:
                pending.append(batch)
                if len(pending) == COMBINE_BATCHES:
                    pieces.append(pa.Table.from_batches(pending).combine_chunks())
                    pending = []
            pieces.append(pa.Table.from_batches(pending, schema=reader.schema))
    except (OSError, pa.ArrowInvalid) as exc:
        raise storage_failure(bucket, exc) from exc
    del pending
    table = pa.concat_tables(pieces).combine_chunks()
    del pieces
    pa.default_memory_pool().release_unused()  # the pieces read, before the groups are taken
    return table


def _write_part(fs, bucket: str, part_url: str, k: int, seed: int, group_rows: int, dictionary: list[str],
                storage_options: Mapping[str, Any] | None) -> None:
    """Bucket ``k`` read whole, its rows permuted uniformly, written atomically as row
    groups of ``group_rows`` rows."""
    import pyarrow as pa

    table = _read_bucket(fs, bucket)
    order = np.random.default_rng([seed, PERMUTE_STREAM, k]).permutation(table.num_rows)

    groups = (table.take(pa.array(order[start:start + group_rows])) for start in range(0, table.num_rows, group_rows))
    write_tables(part_url, groups, f"{bucket}: empty bucket", storage_options, compression=COMPRESSION,
                 use_dictionary=dictionary)
