"""The one atomic-write helper: the output appears whole when the block succeeds, and a failure
leaves the old file (or none) and no temporary file behind."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest

from streamsgd.persist.atomic import TEMPORARY_PREFIX, atomic_directory, atomic_file


class Boom(Exception):
    pass


def test_a_file_appears_whole_with_the_umasks_mode(tmp_path):
    out = tmp_path / "m.bin"
    with atomic_file(str(out)) as f:
        f.write(b"new")
        assert not out.exists()  # nothing under the name until the block ends
    assert out.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["m.bin"]


def test_a_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "m.bin"
    out.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_file(f"file://{out}") as f:
            f.write(b"half")
            raise Boom
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.bin"]


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "d.zarr"
    with pytest.raises(Boom):
        with atomic_directory(str(out)) as tmp:
            assert os.path.basename(tmp).startswith(TEMPORARY_PREFIX)
            open(os.path.join(tmp, "part"), "w").close()
            raise Boom
    assert os.listdir(tmp_path) == []
    with atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "part"), "w").close()
    assert os.listdir(out) == ["part"] and os.listdir(tmp_path) == ["d.zarr"]


def test_an_object_store_gets_one_upload_or_nothing():
    url = f"memory://atomic-{uuid.uuid4().hex}/m.bin"
    fs = fsspec.filesystem("memory")
    with pytest.raises(Boom):
        with atomic_file(url) as f:
            f.write(b"half")
            raise Boom
    assert not fs.exists(url)
    with atomic_file(url) as f:
        f.write(b"new")
    assert fs.cat_file(url) == b"new"
