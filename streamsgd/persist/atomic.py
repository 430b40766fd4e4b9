"""The one way streamsgd writes an output: all of it, or nothing.

A crash at any instant leaves the old file or the new one under the output's name, never a
part, and a failure (an exception inside the ``with`` block) leaves no trace at all.

- Local disk: a temporary file (``.tmp-…``) in the output's own folder, so the rename stays
  on one filesystem; flushed and fsynced, ``os.replace``\\d over the output, then the folder
  is fsynced so the rename itself survives a power cut.
- Object stores (``s3://`` …): a local temporary file, then one upload of it. S3 and its
  kin make an upload visible all at once or not at all, whereas their "rename" is a copy
  plus a delete, so no temporary key is ever written there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO

#: Prefix of the temporary files and folders; readers of a folder skip such names.
TEMPORARY_PREFIX = ".tmp-"
#: Mode of a new file before the umask, as ``open`` gives (``mkstemp``'s 0600 would hide a
#: model from the user's group).
FILE_MODE = 0o666


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URL (``s3://…``), not a local path or ``file://``."""
    return "://" in path and not path.startswith("file://")


@contextmanager
def atomic_file(path: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[BinaryIO]:
    """A binary file to fill; when the block ends without an exception it becomes ``path``
    (a local path, ``file://`` or an fsspec URL written with ``storage_options``).

    Raises whatever the block raised, after removing the temporary file.
    """
    path = os.fspath(path).removeprefix("file://")  # a local path either way
    if is_remote(path):
        with _uploaded(path, storage_options) as f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_beside(path, directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


@contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """A new local folder to fill (a Zarr store); when the block ends without an exception it is
    renamed to ``path`` and the parent folder fsynced. On an exception it is removed whole.
    The folder is made with mode 0777 less the umask, as any new folder."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{os.path.splitext(path)[1]}")
    os.mkdir(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create_beside(path: str, directory: str) -> tuple[int, str]:
    """A new, uniquely named temporary file in ``directory``, mode 0666 filtered by the umask."""
    suffix = os.path.splitext(path)[1]
    for _ in range(100):
        tmp = os.path.join(directory, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: could not create a temporary file")  # pragma: no cover


@contextmanager
def _uploaded(url: str, storage_options: Mapping[str, Any] | None) -> Iterator[BinaryIO]:
    """A local temporary file, uploaded to ``url`` in one put when the block succeeds."""
    from ..sources.fs import filesystem, storage_failure

    fs, remote = filesystem(url, storage_options)
    with tempfile.TemporaryDirectory(prefix="streamsgd-") as scratch:
        local = os.path.join(scratch, "upload" + os.path.splitext(url)[1])
        with open(local, "wb") as f:
            yield f
        try:
            fs.put_file(local, remote)
        except Exception as exc:  # botocore's credential errors are not OSErrors
            raise storage_failure(url, exc) from exc
