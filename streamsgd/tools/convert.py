"""CSV, TSV and JSON-lines files rewritten as Parquet, in fixed memory.

``streamsgd fit`` reads Parquet (and Zarr) because a row group can be read on its own,
column by column, from the footer's offsets; a CSV file has neither. ``convert`` streams
the text through pyarrow's incremental readers (``pyarrow.csv.open_csv``,
``pyarrow.json.open_json``), one block of ``block_size`` bytes at a time, and writes the
decoded batches as row groups of about ``train.setup.max_row_group_bytes(memory_limit)``
bytes: the largest row group one reader decodes whole under the same ``--memory-limit``,
so a file converted with a limit trains at that limit without slicing its row groups.
At any moment the converter holds one row group's batches and the writer's pages for
it, so its memory does not grow with the file.

The column types are inferred from the first block; a later value that does not fit
(an int column that turns float or text further down) stops the conversion with one
line naming the column and the ``--column-type`` that fixes it. The output is written
atomically (:func:`streamsgd.model.write_tables`): a failed conversion leaves no file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from ..errors import DataError, SourceError, UsageError
from ..persist.model import write_tables
from ..sources.fs import filesystem, storage_failure

#: File name endings (before any compression suffix) -> the text format they hold.
TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                ".json": "jsonl"}
_COMPRESSION = (".gz", ".bz2", ".zst", ".xz")

#: Bytes of text pyarrow parses per block: also how far type inference looks.
DEFAULT_BLOCK_SIZE = 1 << 20

# pyarrow's messages for a value that does not fit the type inferred from the first block
_CSV_MISMATCH = re.compile(r"In CSV column #(\d+): .*?CSV conversion error to (\w+): invalid value '(.*?)'", re.S)
_JSON_MISMATCH = re.compile(r"Column\(/([^)]*)\) changed from (\w+) to (\w+)")
_JSON_CONVERT = re.compile(r"Failed to convert JSON to (\w+), couldn't parse:(.*)")


def text_format(path: str) -> str | None:
    """``csv``, ``tsv`` or ``jsonl`` for a path with such an ending (compressed or not), else None."""
    name = path.lower().rstrip("/")
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for suffix, fmt in TEXT_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def refuse_text(urls: Sequence[str]) -> None:
    """Raise, for a CSV or JSON-lines file given where Parquet is read, the one line with
    the ``convert`` command that makes it trainable (not a "magic bytes" error)."""
    for url in urls:
        fmt = text_format(url)
        if fmt is None:
            continue
        if any(c in url for c in "*?["):  # a glob: convert takes one file at a time
            source, out = f"FILE.{fmt}", "FILE.parquet"
        else:
            source = url
            out = url.rstrip("/").rsplit(".", 2 if url.lower().endswith(_COMPRESSION) else 1)[0] + ".parquet"
        raise DataError(f"{url}: streamsgd reads Parquet or Zarr, not {fmt.upper()}; convert it once with: "
                        f"streamsgd convert {source} -o {out}")


def parse_column_types(pairs: Sequence[str]) -> dict[str, Any]:
    """``["age=float64", "zip=string"]`` -> {name: Arrow type}; a bad pair is a usage error."""
    import pyarrow as pa

    types = {}
    for pair in pairs:
        name, sep, type_name = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--column-type: expected COLUMN=TYPE (e.g. price=float64); got {pair!r}")
        try:
            types[name.strip()] = pa.type_for_alias(type_name.strip())
        except (ValueError, KeyError):
            raise UsageError(f"--column-type {pair}: unknown type {type_name!r}; use e.g. float64, int64, "
                             "string, bool, timestamp[s]") from None
    return types


def convert(
    data: str,
    out: str,
    row_group_bytes: int,
    column_types: Mapping[str, Any] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    compression: str = "snappy",
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Rewrite the CSV/TSV/JSON-lines file ``data`` as the Parquet file ``out``.

    Parameters
    ----------
    data : str
        Local path or fsspec URL; its ending (``.csv``, ``.tsv``, ``.jsonl``, ``.json``,
        optionally ``.gz`` …) says how to parse it. A ``.json`` file must hold one object
        per line.
    out : str
        Parquet file to write, atomically (a URL is uploaded in one put).
    row_group_bytes : int
        Target decoded size of one row group (the CLI derives it from ``--memory-limit``).
    column_types : mapping of str to pyarrow.DataType, optional
        Types that override inference, for columns whose first block misleads it.
    block_size : int
        Bytes of text parsed at a time; type inference sees the first block only.

    Returns
    -------
    dict
        ``rows``, ``columns`` and ``row_groups`` written.
    """
    fmt = text_format(data)
    if fmt is None:
        raise UsageError(f"{data}: expected a .csv, .tsv, .jsonl or .json (JSON lines) file to convert")
    if row_group_bytes < 1 or block_size < 1:
        raise UsageError("--memory-limit / --block-size: expected positive sizes")
    stats = {"rows": 0, "columns": 0, "row_groups": 0}

    def tables() -> Iterator:
        with _open_text(data, storage_options) as raw:
            for table in _row_groups(_batches(raw, data, fmt, column_types or {}, block_size), row_group_bytes):
                stats["columns"] = table.num_columns
                stats["row_groups"] += 1
                yield table

    stats["rows"] = write_tables(out, tables(), f"{data}: no rows to convert", storage_options,
                                 compression=compression)
    return stats


def _open_text(url: str, storage_options: Mapping[str, Any] | None):
    """The file as a binary stream, decompressed by its ending (``.gz`` …)."""
    import fsspec
    import pyarrow as pa

    filesystem(url, storage_options)  # a missing backend or bad URL: its one-line error first
    try:
        if "://" not in url or url.startswith("file://"):
            # Arrow's own file: its reader threads never call back into Python, which a
            # Python file object makes them do (and an error at exit then aborted the process)
            return pa.input_stream(url.removeprefix("file://"), compression="detect")
        return fsspec.open(url, "rb", compression="infer", **dict(storage_options or {})).open()
    except FileNotFoundError as exc:
        raise SourceError(f"{url}: no such file") from exc
    except Exception as exc:
        raise storage_failure(url, exc) from exc


def _batches(raw: BinaryIO, url: str, fmt: str, column_types: Mapping[str, Any], block_size: int) -> Iterator:
    """The file's record batches, one per block of text, in file order."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    schema = reader = None
    try:
        if fmt == "jsonl":
            schema = pa.schema(list(column_types.items())) if column_types else None
            reader = pjson.open_json(raw, read_options=pjson.ReadOptions(block_size=block_size),
                                     parse_options=pjson.ParseOptions(explicit_schema=schema))
        else:
            reader = pcsv.open_csv(raw, read_options=pcsv.ReadOptions(block_size=block_size),
                                   parse_options=pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
                                   # an empty cell is a missing value in text columns too, as pandas reads it
                                   convert_options=pcsv.ConvertOptions(column_types=dict(column_types),
                                                                       strings_can_be_null=True))
        schema = reader.schema
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _parse_error(url, fmt, str(exc), schema, block_size) from None
    finally:
        if reader is not None:  # stop its read-ahead now, not at interpreter exit
            reader.close()


def _row_groups(batches: Iterator, row_group_bytes: int) -> Iterator:
    """Batches gathered into tables of about ``row_group_bytes`` decoded bytes each."""
    import pyarrow as pa

    pending, size = [], 0
    for batch in batches:
        pending.append(batch)
        size += batch.nbytes
        if size >= row_group_bytes:
            yield pa.Table.from_batches(pending)
            pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _parse_error(url: str, fmt: str, message: str, schema: Any, block_size: int) -> DataError:
    """pyarrow's parse failure as one line: the column, the types, and the fix."""
    csv = _CSV_MISMATCH.search(message)
    json = _JSON_MISMATCH.search(message)
    converting = _JSON_CONVERT.search(message)
    if csv and schema is not None:
        column, inferred, found = schema.names[int(csv.group(1))], csv.group(2), repr(csv.group(3))
    elif json:
        column, inferred, found = json.group(1), json.group(2), f"a {json.group(3)}"
    elif converting and schema is not None:  # pyarrow does not say which column: name the suspects
        inferred, found = converting.group(1), repr(converting.group(2).strip())
        suspects = [f.name for f in schema if str(f.type) == inferred] or ["COLUMN"]
        column = suspects[0]
    else:
        first = message.strip().splitlines()[0] if message.strip() else "parse error"
        return DataError(f"{url}: cannot parse it as {fmt.upper()} ({first}); fix the file or its ending")
    wanted = "float64" if _numeric_text(found) else "string"
    which = (f"column {column!r}" if not converting or len(suspects) == 1
             else f"one of the columns {', '.join(suspects)}")
    return DataError(
        f"{url}: {which} looked like {inferred} in the first {block_size:,} bytes, but a later row holds "
        f"{found}; rerun with --column-type {column if which.startswith('column') else 'NAME'}={wanted}"
    )


def _numeric_text(found: str) -> bool:
    try:
        float(found.strip("'\""))
    except ValueError:
        return found in ("a number", "a double")
    return True
