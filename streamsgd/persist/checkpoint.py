"""Training checkpoints on a local path or any fsspec URL, and the data manifest they record.

One checkpoint is one self-contained ``.npz`` file, ``ckpt-<step>.npz``, loadable with
``np.load(..., allow_pickle=False)``: the trainer's arrays under their own names, the
metadata as a JSON string in the entry ``__meta__``, and a SHA-256 over every other
entry's stored bytes in ``__checksum__``. The checksum is what makes a resume safe on
any store: a file cut short, flipped by a bad disk, or half-uploaded by a non-atomic
filesystem fails it and is skipped, so :meth:`CheckpointStore.latest` falls back to the
previous good checkpoint instead of resuming from garbage.

Writes never expose a partial file under a checkpoint's name:

- local disk: a temporary file (``.tmp-…``) in the same directory, fsync, ``os.replace``,
  fsync of the directory, so a power cut leaves the old set or the new one;
- object stores (``s3://``, ``gs://``, ``memory://`` …): the whole file goes up in one
  ``pipe_file`` call, one PUT of the final key. S3, GCS and Azure make a single upload
  visible all at once or not at all, whereas their "rename" is a copy plus a delete
  that is neither atomic nor cheap, so no temporary key is written there. Any other
  filesystem whose writes are not atomic is still covered by the checksum.

Names not of the form ``ckpt-<digits>.npz`` (temporary files among them) are never read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelFileError, SourceError, UsageError
from .atomic import TEMPORARY_PREFIX, atomic_file
from .model import FORMAT_VERSION

META = "__meta__"
CHECKSUM = "__checksum__"
_RESERVED = (META, CHECKSUM)
_NAME = re.compile(r"ckpt-(\d+)\.npz")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: the same state always gives the same bytes


class CorruptCheckpoint(Exception):
    """Internal: a checkpoint file failed to decode or to match its checksum."""


class CheckpointStore:
    """The checkpoints of one run, in a directory on local disk or behind an fsspec URL.

    Parameters
    ----------
    url : str
        Directory (local path, ``file://``, ``s3://bucket/prefix``, ``memory://…``). It is
        created if missing.
    storage_options : mapping, optional
        Options for the fsspec filesystem (``endpoint_url``, ``anon`` …).
    keep : int, default 3
        How many checkpoints to keep; older ones are deleted after each save. Keeping more
        than one is what lets a corrupt newest file fall back to the one before it.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, keep: int = 3):
        from fsspec.implementations.local import LocalFileSystem

        from ..sources.fs import filesystem

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise UsageError(f"--keep-checkpoints: expected an integer >= 1; got {keep!r}")
        self.url = url
        self.keep = keep
        self._fs, root = filesystem(url, storage_options)
        self._local = isinstance(self._fs, LocalFileSystem)
        self._root = root.rstrip("/") or "/"
        try:
            self._fs.makedirs(self._root, exist_ok=True)
        except OSError as exc:
            raise SourceError(
                f"--checkpoint-dir {url}: cannot create the directory ({exc}); "
                "check the path and its permissions"
            ) from exc

    # -- names ---------------------------------------------------------------------------

    def name(self, step: int) -> str:
        """File name of the checkpoint at ``step`` (zero-padded so names sort by step)."""
        return f"ckpt-{step:012d}.npz"

    def path(self, step: int) -> str:
        """Full path or URL of the checkpoint at ``step``, as a user would write it."""
        full = f"{self._root}/{self.name(step)}"
        return full if self._local else self._fs.unstrip_protocol(full)

    def steps(self) -> list[int]:
        """Steps of the checkpoint files present, ascending; temporary files are not counted."""
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SourceError(f"--checkpoint-dir {self.url}: cannot list the directory ({exc})") from exc
        found = []
        for entry in entries:
            match = _NAME.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1])
            if match:
                found.append(int(match.group(1)))
        return sorted(set(found))

    # -- writing -------------------------------------------------------------------------

    def save(self, step: int, arrays: Mapping[str, NDArray], meta: Mapping[str, Any]) -> str:
        """Write the checkpoint of ``step`` atomically, then prune to the newest ``keep``.

        Parameters
        ----------
        step : int
            The update counter; orders checkpoints. Checkpoints of a *later* step than this
            one are deleted: they belong to a run that was abandoned (this one resumed from
            an earlier state), and must not win over it at the next resume.
        arrays : mapping of str to ndarray
            The trainer's state (parameters, optimizer state …); numeric or fixed-width
            string dtypes only, since the file is read with ``allow_pickle=False``.
        meta : mapping
            JSON-able metadata (counters, seed, config, data manifest). ``step`` and
            ``format`` are added.

        Returns
        -------
        str
            The path or URL written.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}")
        step = int(step)
        data = encode(arrays, {**meta, "step": step, "format": FORMAT_VERSION})
        final = f"{self._root}/{self.name(step)}"
        try:
            if self._local:
                with atomic_file(final) as f:
                    f.write(data)
            else:
                # one PUT of the final key: atomic on object stores (see the module docstring)
                self._fs.pipe_file(final, data)
        except OSError as exc:
            raise SourceError(
                f"--checkpoint-dir {self.url}: cannot write {self.name(step)} ({exc}); "
                "check free space and permissions"
            ) from exc
        self._prune(step)
        return self.path(step)

    def _prune(self, saved: int) -> None:
        steps = self.steps()
        older = [s for s in steps if s < saved]
        doomed = [s for s in steps if s > saved] + older[: max(0, len(older) - (self.keep - 1))]
        for s in doomed:
            try:
                self._fs.rm_file(f"{self._root}/{self.name(s)}")
            except FileNotFoundError:
                pass  # someone (a previous prune that crashed half-way) got there first
        if self._local:
            # temporary files of a save that was killed between write and rename; the run
            # lock guarantees no other writer, so none of these can still be in use
            for entry in os.listdir(self._root):
                if entry.startswith(TEMPORARY_PREFIX) and entry.endswith(".npz"):
                    try:
                        os.unlink(os.path.join(self._root, entry))
                    except FileNotFoundError:
                        pass

    # -- reading -------------------------------------------------------------------------

    def clear(self) -> None:
        """Delete every checkpoint: the run they belong to has written its model."""
        for step in self.steps():
            try:
                self._fs.rm(f"{self._root}/{self.name(step)}")
            except FileNotFoundError:
                pass

    def load(self, step: int) -> tuple[dict[str, NDArray], dict[str, Any]]:
        """The checkpoint of ``step``; :class:`ModelFileError` if missing, corrupt or of another format."""
        path = self.path(step)
        try:
            found = decode(self._fs.cat_file(f"{self._root}/{self.name(step)}"))
        except FileNotFoundError as exc:
            raise ModelFileError(f"{path}: no such checkpoint") from exc
        except (CorruptCheckpoint, OSError) as exc:
            raise ModelFileError(
                f"{path}: corrupt or unreadable checkpoint ({exc}); delete it to resume from the one before"
            ) from exc
        return self._current(step, found)

    def latest(
        self, on_skip: Callable[[str], None] | None = None
    ) -> tuple[dict[str, NDArray], dict[str, Any]] | None:
        """The newest checkpoint that reads back intact, or None if there is none; a
        :class:`ModelFileError` if it was written in another format (see :meth:`_current`).

        Parameters
        ----------
        on_skip : callable, optional
            Called with a one-line message for each newer checkpoint skipped as corrupt,
            truncated or unreadable, so the caller can log a warning.

        Returns
        -------
        (arrays, meta) or None
            ``meta["step"]`` is the checkpoint's step.
        """
        for step in reversed(self.steps()):
            try:
                found = decode(self._fs.cat_file(f"{self._root}/{self.name(step)}"))
            except (CorruptCheckpoint, OSError) as exc:  # a missing file: pruned meanwhile
                if on_skip is not None:
                    on_skip(f"{self.path(step)}: corrupt or unreadable checkpoint ({exc}); skipped it")
                continue
            return self._current(step, found)
        return None

    def _current(self, step: int, found: tuple[dict[str, NDArray], dict[str, Any]]
                 ) -> tuple[dict[str, NDArray], dict[str, Any]]:
        """``found`` if its format is this version's; a :class:`ModelFileError` otherwise.

        An intact checkpoint of another format is refused rather than skipped: its run drew
        its chunk orders and splits from other random streams, so continuing it here would
        give a model neither version would have trained, and an older checkpoint in the
        directory would be no better.
        """
        written = found[1].get("format")
        if written == FORMAT_VERSION:
            return found
        who = "a newer" if isinstance(written, int) and written > FORMAT_VERSION else "an older"
        raise ModelFileError(
            f"{self.path(step)}: written by {who} streamsgd (checkpoint format {written}, this version's is "
            f"{FORMAT_VERSION}), whose shuffle plans, random streams or checkpointed state differ; start the run over (delete the checkpoints in "
            f"{self.url}) or resume with the streamsgd version that wrote it"
        )


def encode(arrays: Mapping[str, NDArray], meta: Mapping[str, Any]) -> bytes:
    """Serialise a checkpoint: ``<name>.npy`` per array, ``__meta__`` (JSON), ``__checksum__``.

    The checksum is a SHA-256 over the names and stored bytes of every other entry, in
    name order, so any change to any array or to the metadata is detected on load.
    """
    entries: dict[str, bytes] = {}
    for name, array in arrays.items():
        if name in _RESERVED or not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"checkpoint array name {name!r} is reserved or not a plain name")
        entries[name] = _npy(np.asanyarray(array))
    try:
        text = json.dumps(dict(meta), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata is not JSON-able: {exc}") from exc
    entries[META] = _npy(np.asarray(text))
    entries[CHECKSUM] = _npy(np.asarray(_digest(entries)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, raw in entries.items():
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), raw)
    return buffer.getvalue()


def decode(data: bytes) -> tuple[dict[str, NDArray], dict[str, Any]]:
    """Read back what :func:`encode` wrote; :class:`CorruptCheckpoint` unless it is intact."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            entries = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise CorruptCheckpoint(f"unexpected entry {info.filename!r}")
                entries[info.filename[: -len(".npy")]] = zf.read(info)  # zip checks each CRC-32
        if CHECKSUM not in entries or META not in entries:
            raise CorruptCheckpoint("no checksum or metadata entry")
        stored = str(_read_npy(entries.pop(CHECKSUM)))
        if stored != _digest(entries):
            raise CorruptCheckpoint("checksum mismatch")
        meta = json.loads(str(_read_npy(entries.pop(META))))
        arrays = {name: _read_npy(raw) for name, raw in entries.items()}
    except CorruptCheckpoint:
        raise
    except Exception as exc:  # zipfile, numpy and json each have their own ways to fail
        raise CorruptCheckpoint(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return arrays, meta


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def _read_npy(raw: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)


def _digest(entries: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(entries):
        h.update(name.encode())
        h.update(len(entries[name]).to_bytes(8, "little"))
        h.update(entries[name])
    return h.hexdigest()


# -- data manifest ---------------------------------------------------------------------------

_FILE_KEYS = ("size", "rows", "chunks", "etag", "mtime")


def manifest_of(source: Any) -> dict[str, Any]:
    """A JSON-able description of the data, to detect at resume that it changed.

    Uses ``source.manifest()`` (one dict per file: path, size, rows, chunks, and etag or
    mtime where the store gives one) when the source has it; otherwise the row count,
    rows per chunk and ``source.fingerprint()``.

    Returns
    -------
    dict
        ``url``, ``rows``, ``chunks``, and ``files`` or ``chunk_rows`` + ``fingerprint``.
    """
    chunk_rows = [int(n) for n in source.chunk_rows]
    out: dict[str, Any] = {"url": str(source.url), "rows": int(sum(chunk_rows)), "chunks": len(chunk_rows)}
    manifest = getattr(source, "manifest", None)
    if callable(manifest):
        out["files"] = [dict(f) for f in manifest()]
    else:
        out["chunk_rows"] = chunk_rows
        out["fingerprint"] = str(source.fingerprint())
    # round-trip through JSON so a fresh manifest compares equal to one read from a file
    return json.loads(json.dumps(out, default=str))


def compare_manifests(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """One line describing the first difference between two manifests, or None if equal.

    The URL is not compared: the same files reached by another spelling (a relative path
    from another working directory) are the same data.
    """
    old, new = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))
    if "files" in old and "files" in new:
        change = _compare_files(old["files"], new["files"])
        if change:
            return change
    if old.get("rows") != new.get("rows"):
        return f"the data had {_count(old.get('rows'))} rows, now {_count(new.get('rows'))}"
    if old.get("chunks") != new.get("chunks"):
        return f"the data had {old.get('chunks')} chunks, now {new.get('chunks')}"
    if "chunk_rows" in old and "chunk_rows" in new and old["chunk_rows"] != new["chunk_rows"]:
        i = next(k for k, (a, b) in enumerate(zip(old["chunk_rows"], new["chunk_rows"])) if a != b)
        return f"chunk {i} had {old['chunk_rows'][i]} rows, now {new['chunk_rows'][i]}"
    if "fingerprint" in old and "fingerprint" in new and old["fingerprint"] != new["fingerprint"]:
        return f"the data's fingerprint changed from {old['fingerprint']} to {new['fingerprint']}"
    if ("files" in old) != ("files" in new):
        return "the data's description changed form (one has a file list, the other not)"
    return None


def _compare_files(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str | None:
    before = {f.get("path"): f for f in old}
    after = {f.get("path"): f for f in new}
    for path in before:
        if path not in after:
            return f"file {path} is gone"
    for path in after:
        if path not in before:
            return f"file {path} was added"
    for path, a in before.items():
        b = after[path]
        extra = sorted((set(a) & set(b)) - set(_FILE_KEYS) - {"path"})
        keys = [k for k in _FILE_KEYS if k in a and k in b] + extra
        if "etag" in keys:  # the content's own tag: the same bytes uploaded again only move mtime
            keys = [k for k in keys if k != "mtime"]
        for key in keys:
            if a[key] != b[key]:
                return f"file {path}: {key} was {a[key]}, now {b[key]}"
    return None


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


__all__ = ["CheckpointStore", "encode", "decode", "manifest_of", "compare_manifests", "FORMAT_VERSION"]
