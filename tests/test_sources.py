"""One contract for every source: local Parquet, Zarr (format 2 and 3), memory:// and s3://
Parquet and Zarr on a real S3-compatible server all give the same chunks, rows, models,
layout and manifest; plus many-file Parquet data sets (lists, hive partitions, schemas).
"""

from __future__ import annotations

import json
import os
import pickle
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from streamsgd.config import FitConfig
import streamsgd
from streamsgd.sources import SourceBase
from streamsgd.sources.parquet import STREAM_PARTS
from streamsgd.train.trainer import fit as train
from streamsgd.errors import DataError, SourceError

N, D, CHUNK = 2300, 4, 500  # the last chunk is short on purpose


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((N, D)) * [1, 2, 3, 4] + [0, 1, -1, 5]).astype(np.float32)
    y = (X @ [1.0, -0.5, 0.3, 0.1] + rng.standard_normal(N) > 0.4).astype(np.int64)
    return X, y


def write_parquet(fs, path, X, y):
    table = pa.table({**{f"x{j}": X[:, j] for j in range(D)}, "y": y})
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=CHUNK)


def write_zarr(store, X, y, zarr_format, storage_options=None):
    kwargs = {"storage_options": storage_options} if storage_options else {}
    group = zarr.open_group(store=store, mode="w", zarr_format=zarr_format, **kwargs)
    X_out = group.create_array("X", shape=X.shape, chunks=(CHUNK, 2), dtype="float32")  # splits features too
    X_out[:] = X
    X_out.attrs["feature_names"] = [f"x{j}" for j in range(D)]
    group.create_array("y", shape=y.shape, chunks=(CHUNK,), dtype="int64")[:] = y


def read_all(source, seed=0):
    """Every chunk of ``source`` read into scattered rows of a window twice its size (as the
    pipeline reads into window rows): the windows, target included where there is one."""
    rng = np.random.default_rng(seed)
    windows = []
    for i, n in enumerate(source.chunk_rows):
        rows = rng.permutation(2 * n)[:n]
        X = np.zeros((2 * n, len(source.features)), np.float64)
        y = None if source.target is None else np.zeros(2 * n, np.float64)
        source.read_into(i, X, y, rows)
        windows.append((X, y))
    return windows


def assert_same_bytes(got, expected):
    assert len(got) == len(expected)
    for (X, y), (X0, y0) in zip(got, expected):
        assert X.tobytes() == X0.tobytes()
        assert (y is None and y0 is None) or y.tobytes() == y0.tobytes()


#: What a restored source must report exactly as the original did.
PLAIN_MEMBERS = ("url", "columns", "features", "target", "weight", "target_type", "feature_type", "format",
                 "chunk_rows", "chunk_bytes", "chunk_groups", "metadata_bytes")


class PickleContract:
    """Every source has every member of the protocol, and pickles: a cluster ships it to worker
    processes, which must read the same bytes. Subclasses provide a ``source`` fixture."""

    def test_every_protocol_member_is_there(self, source):
        from streamsgd.sources.base import MEMBERS, missing_members

        assert missing_members(source) == []
        assert set(MEMBERS) >= set(PLAIN_MEMBERS)

    def test_a_pickled_source_reads_the_same_bytes(self, source):
        source.read_into(0, np.empty((source.chunk_rows[0], len(source.features))), None)  # handles now open
        clone = pickle.loads(pickle.dumps(source))
        assert type(clone) is type(source)
        for name in PLAIN_MEMBERS:
            assert getattr(clone, name) == getattr(source, name), name
        assert clone.fingerprint() == source.fingerprint()
        expected = read_all(source)
        assert_same_bytes(read_all(clone), expected)
        # a restored source that has read (its own handles open) pickles again
        assert_same_bytes(read_all(pickle.loads(pickle.dumps(clone))), expected)


class SourceContract(PickleContract):
    """The data of ``data`` in chunks of CHUNK rows; subclasses provide ``source``."""

    format = "parquet"

    def test_chunks_come_from_metadata(self, source):
        from streamsgd.tools.describe import describe

        assert source.chunk_rows == [CHUNK] * 4 + [N - 4 * CHUNK]
        info = describe(source, streamsgd.FitConfig())
        assert info["format"] == self.format and info["rows"] == N and info["chunks"] == 5
        assert source.features == [f"x{j}" for j in range(D)] and source.target == "y"

    def test_every_chunk_reads_back_exactly(self, source, data):
        X, y = data
        for i, rows in enumerate(source.chunk_rows):
            Xo, yo = np.empty((rows, D), np.float32), np.empty(rows, np.float32)
            source.read_into(i, Xo, yo)
            np.testing.assert_array_equal(Xo, X[i * CHUNK : i * CHUNK + rows])
            np.testing.assert_array_equal(yo, y[i * CHUNK : i * CHUNK + rows])

    def test_fit_gives_the_reference_model(self, source, reference_model):
        model = train(source, FitConfig(epochs=3, memory_limit="200KB")).model
        for name in ("coef", "mean", "scale"):
            np.testing.assert_array_equal(getattr(model, name), getattr(reference_model, name))
        assert model.intercept == reference_model.intercept


class StoreContract(SourceContract):
    """Subclasses provide ``url`` (data written there) and ``storage_options``."""

    storage_options: dict = {}
    store = "file"

    @pytest.fixture
    def source(self, url):
        return streamsgd.open_source(url, storage_options=self.storage_options)

    def test_feature_subset_and_bad_names(self, url):
        source = streamsgd.open_source(url, features=["x2", "x0"], storage_options=self.storage_options)
        Xo = np.empty((CHUNK, 2), np.float32)
        source.read_into(1, Xo, None)
        assert source.features == ["x2", "x0"]
        with pytest.raises(DataError, match="'nope'"):
            streamsgd.open_source(url, features=["nope"], storage_options=self.storage_options)

    def test_info_reports_store_and_chunking(self, source):
        from streamsgd.tools.describe import describe

        info = describe(source, streamsgd.FitConfig())
        assert info["store"] == self.store
        assert (info["chunk_rows_min"], info["chunk_rows_max"]) == (N - 4 * CHUNK, CHUNK)
        if self.format == "parquet":
            assert info["files"] == 1 and info["row_groups"] == 5 and info["row_groups_per_file"] == [5, 5]
        else:
            assert info["chunk_shape"] == [CHUNK, 2] and info["zarr_format"] in (2, 3)

    def test_manifest_names_sizes_and_versions(self, source, url):
        import json

        manifest = source.manifest()
        json.dumps(manifest)  # plain JSON values only
        assert sum(m["rows"] for m in manifest) == N or all(m["rows"] == N for m in manifest)
        assert all(m["size"] > 0 and m["chunks"] == 5 for m in manifest)
        if self.format == "parquet":
            (entry,) = manifest
            fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
            assert entry["size"] == fs.size(path)
        if self.store in ("s3", "file"):  # stores that give a version mark
            assert all("etag" in m or "mtime" in m for m in manifest)

    def test_missing_data_is_a_source_error(self, url):
        with pytest.raises((SourceError, DataError)):
            streamsgd.open_source(url.rstrip("/") + "-absent/x.parquet", storage_options=self.storage_options)


@pytest.fixture(scope="module")
def reference_model(data):
    """The model from in-memory arrays in the same chunks: every backend must match it bit for bit."""
    X, y = data
    return train(streamsgd.ArraySource(X, y, chunk_rows=CHUNK), FitConfig(epochs=3, memory_limit="200KB")).model


class TestLocalParquet(StoreContract):
    @pytest.fixture
    def url(self, tmp_path_factory, data):
        path = str(tmp_path_factory.mktemp("pq") / "d.parquet")
        write_parquet(fsspec.filesystem("file"), path, *data)
        return path


class TestArrays(SourceContract):
    format = "arrays"

    @pytest.fixture
    def source(self, data):
        return streamsgd.ArraySource(*data, chunk_rows=CHUNK)


@pytest.mark.parametrize("zarr_format", [2, 3])
class TestLocalZarr(StoreContract):
    format = "zarr"

    @pytest.fixture
    def url(self, tmp_path_factory, data, zarr_format):
        path = str(tmp_path_factory.mktemp("zarr") / f"d{zarr_format}.zarr")
        write_zarr(path, *data, zarr_format)
        return path


class TestMemoryParquet(StoreContract):
    store = "memory"

    @pytest.fixture
    def url(self, data):
        url = f"memory://{uuid.uuid4().hex}/d.parquet"
        write_parquet(fsspec.filesystem("memory"), url, *data)
        return url


class TestMemoryZarr(StoreContract):
    format = "zarr"
    store = "memory"

    @pytest.fixture
    def url(self, data):
        url = f"memory://{uuid.uuid4().hex}/d.zarr"
        write_zarr(url, *data, 3)
        return url


@pytest.mark.s3
class TestS3Parquet(StoreContract):
    store = "s3"

    @pytest.fixture(autouse=True)
    def _options(self, s3_server):
        self.storage_options = s3_server.storage_options

    @pytest.fixture
    def url(self, s3_server, data):
        url = f"s3://data/{uuid.uuid4().hex}/d.parquet"
        write_parquet(s3_server.filesystem(), url, *data)
        return url


@pytest.mark.s3
@pytest.mark.parametrize("zarr_format", [2, 3])
class TestS3Zarr(StoreContract):
    format = "zarr"
    store = "s3"

    @pytest.fixture(autouse=True)
    def _options(self, s3_server):
        self.storage_options = s3_server.storage_options

    @pytest.fixture
    def url(self, s3_server, data, zarr_format):
        url = f"s3://data/{uuid.uuid4().hex}/d.zarr"
        write_zarr(url, *data, zarr_format, storage_options=s3_server.storage_options)
        return url


@pytest.mark.s3
def test_cli_fit_from_s3_zarr_equals_local_zarr_fit(s3_server, data, tmp_path):
    """Zarr too: same data and seed from s3:// and local disk give bit-identical model arrays."""
    from helpers import run_cli

    local = str(tmp_path / "d.zarr")
    write_zarr(local, *data, 3)
    url = f"s3://data/{uuid.uuid4().hex}/d.zarr"
    write_zarr(url, *data, 3, storage_options=s3_server.storage_options)
    options = [a for k, v in s3_server.storage_options.items() for a in ("--storage-option", f"{k}={v}")]
    run_cli("fit", local, "--epochs", 2, "--readers", 2, "-o", tmp_path / "local.npz")
    run_cli("fit", url, *options, "--epochs", 2, "--readers", 2, "-o", tmp_path / "s3.npz")
    with np.load(tmp_path / "local.npz") as a, np.load(tmp_path / "s3.npz") as b:
        for name in ("coef", "intercept", "mean", "scale"):
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.s3
def test_cli_fit_from_s3_equals_local_fit(s3_server, data, tmp_path):
    """Same data, same seed: the model arrays from s3:// and from local disk are bit-identical."""
    from helpers import run_cli

    local = str(tmp_path / "d.parquet")
    write_parquet(fsspec.filesystem("file"), local, *data)
    url = f"s3://data/{uuid.uuid4().hex}/d.parquet"
    write_parquet(s3_server.filesystem(), url, *data)
    options = [a for k, v in s3_server.storage_options.items() for a in ("--storage-option", f"{k}={v}")]
    run_cli("fit", local, "--epochs", 2, "-o", tmp_path / "local.npz")
    run_cli("fit", url, *options, "--epochs", 2, "-o", tmp_path / "s3.npz")
    with np.load(tmp_path / "local.npz") as a, np.load(tmp_path / "s3.npz") as b:
        for name in ("coef", "intercept", "mean", "scale"):
            np.testing.assert_array_equal(a[name], b[name])


def test_unknown_protocol_and_bad_storage_option_are_usage_errors(tmp_path):
    from helpers import run_cli

    proc = run_cli("fit", "nosuchproto://bucket/x.parquet", "-o", tmp_path / "m.npz", check=False)
    assert proc.returncode == 2 and "nosuchproto://bucket/x.parquet" in proc.stderr
    proc = run_cli("fit", str(tmp_path), "--storage-option", "novalue", "-o", tmp_path / "m.npz", check=False)
    assert proc.returncode == 2 and "--storage-option" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.npz").exists()


# --- many-file data sets ----------------------------------------------------------------


def _split_files(root, X, y, parts):
    """Write rows of (X, y) into ``parts`` files under ``root`` (relative names)."""
    bounds = np.linspace(0, len(y), len(parts) + 1).astype(int)
    paths = []
    for name, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(fsspec.filesystem("file"), str(path), X[lo:hi], y[lo:hi])
        paths.append(str(path))
    return paths


def test_a_list_of_urls_reads_like_the_directory_of_the_same_files(tmp_path, data):
    X, y = data
    paths = _split_files(tmp_path, X, y, ["a.parquet", "b.parquet", "c.parquet"])
    listed = streamsgd.open_source(paths)
    directory = streamsgd.open_source(str(tmp_path))
    assert listed.paths == directory.paths == paths and listed.chunk_rows == directory.chunk_rows
    assert listed.url.endswith("(and 2 more)") and len(listed.manifest()) == 3
    a = train(listed, FitConfig(epochs=2, memory_limit="200KB")).model
    b = train(directory, FitConfig(epochs=2, memory_limit="200KB")).model
    np.testing.assert_array_equal(a.coef, b.coef)


def test_a_list_may_mix_stores(tmp_path, data):
    X, y = data
    local = _split_files(tmp_path, X, y, ["a.parquet", "b.parquet"])
    url = f"memory://{uuid.uuid4().hex}/b.parquet"
    write_parquet(fsspec.filesystem("memory"), url, X[len(y) // 2 :], y[len(y) // 2 :])
    source = streamsgd.open_source([local[0], url])
    assert source.paths == [local[0], url] and sum(source.chunk_rows) == N
    Xo = np.empty((source.chunk_rows[-1], D), np.float32)
    source.read_into(len(source.chunk_rows) - 1, Xo, None)
    np.testing.assert_array_equal(Xo, X[N - source.chunk_rows[-1] :])


def test_hive_partitions_are_ignored_unless_named(tmp_path, data):
    X, y = data
    _split_files(tmp_path, X, y, ["day=1/region=7/p.parquet", "day=2/region=7/p.parquet", "day=3/region=8/p.parquet"])
    source = streamsgd.open_source(str(tmp_path))
    assert source.features == [f"x{j}" for j in range(D)]
    assert source.partition_columns == ["day", "region"] and source.columns[-2:] == ["day", "region"]
    named = streamsgd.open_source(str(tmp_path), features=["x0", "day", "region"])
    rows = 0
    for i, n in enumerate(named.chunk_rows):
        Xo = np.empty((n, 3), np.float64)
        named.read_into(i, Xo, None)
        f = named._chunks[i].file
        np.testing.assert_array_equal(Xo[:, 1], float(f + 1))  # day=1,2,3 by file
        np.testing.assert_array_equal(Xo[:, 2], 7.0 if f < 2 else 8.0)
        np.testing.assert_array_equal(Xo[:, 0], X[rows : rows + n, 0])
        rows += n
    model = train(named, FitConfig(epochs=1, memory_limit="200KB")).model
    assert model.features == ["x0", "day", "region"] and np.isfinite(model.coef).all()


def test_a_partition_value_that_is_not_a_number_names_the_folder(tmp_path, data):
    X, y = data
    _split_files(tmp_path, X, y, ["city=oslo/p.parquet", "city=rome/p.parquet"])
    assert streamsgd.open_source(str(tmp_path)).features == [f"x{j}" for j in range(D)]
    with pytest.raises(DataError, match=r"city=oslo/p\.parquet: partition city=oslo is not a number"):
        streamsgd.open_source(str(tmp_path), features=["x0", "city"])


def test_schema_disagreement_names_both_files_and_the_column(tmp_path, data):
    X, y = data
    first, second = _split_files(tmp_path, X, y, ["a.parquet", "b.parquet"])
    table = pq.read_table(second)
    pq.write_table(table.set_column(1, "x1", pa.array([str(v) for v in table["x1"].to_pylist()])), second)
    with pytest.raises(DataError, match=rf"{second}: column 'x1' has type string, but {first} has float"):
        streamsgd.open_source(str(tmp_path))
    pq.write_table(table.drop_columns(["x2"]), second)
    with pytest.raises(DataError, match=rf"{second}: column 'x2' is missing, but {first} has it"):
        streamsgd.open_source([first, second])
    # a column the run does not use may differ
    assert streamsgd.open_source([first, second], features=["x0", "x1"]).features == ["x0", "x1"]


def test_int_and_float_versions_of_a_column_mix(tmp_path, data):
    """Numeric types may differ between files (int64 here, float there): both are cast."""
    X, y = data
    first, second = _split_files(tmp_path, np.round(X), y, ["a.parquet", "b.parquet"])
    table = pq.read_table(second)
    pq.write_table(table.set_column(0, "x0", table["x0"].cast(pa.int64())), second)
    source = streamsgd.open_source([first, second])
    last = len(source.chunk_rows) - 1
    Xo = np.empty((source.chunk_rows[last], D), np.float32)
    source.read_into(last, Xo, None)
    np.testing.assert_array_equal(Xo, np.round(X)[N - source.chunk_rows[last] :])


# --- a row group larger than the memory limit -------------------------------------------


@pytest.fixture(scope="module")
def one_big_row_group(tmp_path_factory):
    """200,000 rows x 5 float64 columns (8 MB) in one row group."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((200_000, D))
    y = (X @ [1.0, -2.0, 0.5, 0.0] + 0.1 * rng.standard_normal(200_000)).astype(np.float64)
    path = str(tmp_path_factory.mktemp("big") / "one.parquet")
    table = pa.table({**{f"x{j}": X[:, j] for j in range(D)}, "y": y})
    pq.write_table(table, path, row_group_size=len(y), use_dictionary=False, data_page_size=16 << 10)
    return path, X, y


def test_a_big_row_group_is_cut_into_slices_that_read_back_exactly(one_big_row_group):
    path, X, y = one_big_row_group
    # decoding the whole group holds ~24 MB (3 x 8 MB); streaming one holds ~3 MB whatever
    # the slice (each column's read buffer and page): slices get the other ~3 MB
    source = streamsgd.open_source(path, max_chunk_bytes=6_000_000)
    assert len(source.chunk_rows) >= 5 and sum(source.chunk_rows) == len(y)
    assert max(source.chunk_bytes) <= 6_000_000
    assert source.chunk_name(1).startswith(f"{path} row group 0 rows {source.chunk_rows[0]}..")
    starts = np.concatenate([[0], np.cumsum(source.chunk_rows)])
    order = list(range(len(source.chunk_rows)))
    # in order (the cursor streams on), then backwards and shuffled (it restarts or skips)
    for visit in (order, order[::-1], list(np.random.default_rng(1).permutation(order))):
        for i in visit:
            Xo, yo = np.empty((source.chunk_rows[i], D)), np.empty(source.chunk_rows[i])
            source.read_into(i, Xo, yo)
            np.testing.assert_array_equal(Xo, X[starts[i] : starts[i + 1]])
            np.testing.assert_array_equal(yo, y[starts[i] : starts[i + 1]])
    assert len(source._cursors) <= STREAM_PARTS  # at most one open stream per row group and part of its columns


def test_a_streamed_row_group_decodes_its_column_parts_on_threads_of_their_own(one_big_row_group, monkeypatch):
    """A row group read in slices decodes its columns in STREAM_PARTS parts at once, each part
    on its own thread and its own stream, and the slice's columns come back in order."""
    import threading

    from streamsgd.sources import parquet

    path, X, y = one_big_row_group
    source = streamsgd.open_source(path, max_chunk_bytes=6_000_000)
    threads: dict[tuple, set] = {}
    real = parquet._Cursor.read

    def watched(cursor, start, rows):
        threads.setdefault(tuple(cursor._names), set()).add(threading.get_ident())
        return real(cursor, start, rows)

    monkeypatch.setattr(parquet._Cursor, "read", watched)
    Xo, yo = np.empty((source.chunk_rows[0], D)), np.empty(source.chunk_rows[0])
    source.read_into(0, Xo, yo)
    np.testing.assert_array_equal(Xo, X[:source.chunk_rows[0]])
    np.testing.assert_array_equal(yo, y[:source.chunk_rows[0]])
    assert len(threads) == STREAM_PARTS  # the used columns split into parts, one stream each
    assert sorted(n for part in threads for n in part) == sorted([*source.features, "y"])
    assert len(set().union(*threads.values())) == STREAM_PARTS  # each part decoded on its own thread


def test_slices_of_one_row_group_read_from_several_threads(one_big_row_group):
    from concurrent.futures import ThreadPoolExecutor

    path, X, _ = one_big_row_group
    source = streamsgd.open_source(path, max_chunk_bytes=6_000_000)

    def read(i):
        out = np.empty((source.chunk_rows[i], D))
        source.read_into(i, out, None)
        return out

    with ThreadPoolExecutor(3) as pool:
        blocks = list(pool.map(read, range(len(source.chunk_rows))))
    np.testing.assert_array_equal(np.concatenate(blocks), X)


def test_the_trainer_cuts_a_big_row_group_for_its_own_limit(one_big_row_group):
    path, X, y = one_big_row_group
    limit = 27_000_000  # the row group decodes to 8 MB: three times that is more than a third of the limit
    source = streamsgd.open_source(path)
    assert len(source.chunk_rows) == 1  # the default limit reads it whole
    model = train(source, FitConfig(model="linear", epochs=2, memory_limit=limit)).model
    assert len(source.chunk_rows) > 1 and max(source.chunk_bytes) <= limit / 3
    np.testing.assert_allclose(model.coef, [1.0, -2.0, 0.5, 0.0], atol=0.02)


PEAK_SCRIPT = """
import json, sys
import streamsgd
from streamsgd.config import FitConfig
from streamsgd.train.trainer import fit
path, limit = sys.argv[1], int(sys.argv[2])
source = streamsgd.open_source(path)
result = fit(source, FitConfig(model="linear", epochs=1, memory_limit=limit))
print(json.dumps({"peak": result.summary["peak_rss_bytes"], "chunks": len(source.chunk_rows),
                  "coef": result.model.coef.tolist()}))
"""


@pytest.mark.slow
def test_a_row_group_bigger_than_the_limit_trains_in_fixed_memory(tmp_path):
    """1M rows x 20 float64 in one row group (168 MB decoded) at a 96 MiB limit: peak RSS stays
    within the limit plus the footprint of the same fit on 1,000 rows."""
    import subprocess
    import sys

    rng = np.random.default_rng(21)
    d, rows = 20, 1_000_000
    w = rng.standard_normal(d)
    names = [f"x{j}" for j in range(d)]

    def write(path, n):
        X = rng.standard_normal((n, d))
        table = pa.table({**{c: X[:, j] for j, c in enumerate(names)}, "y": X @ w + 0.1 * rng.standard_normal(n)})
        # 64 kB pages, no dictionary: a streamed column holds one page, so pages bound the
        # per-column memory (the writer's choice; 1 MB pages + dictionaries cost ~4 MB a column)
        pq.write_table(table, path, row_group_size=n, use_dictionary=False, data_page_size=64 << 10)
        return path

    big, small = write(str(tmp_path / "big.parquet"), rows), write(str(tmp_path / "small.parquet"), 1_000)
    limit = 96 << 20
    assert pq.read_metadata(big).row_group(0).total_byte_size > 1.6 * limit

    def peak(path):
        env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}  # as the CLI sets it
        proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, path, str(limit)], capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    idle, run = peak(small), peak(big)
    assert run["chunks"] >= 20  # sliced (20 slices with 64 KiB local read buffers)
    assert run["peak"] <= limit + idle["peak"], (run["peak"] / 2**20, idle["peak"] / 2**20)
    np.testing.assert_allclose(run["coef"], w, atol=0.01)


def test_cli_takes_several_data_arguments(tmp_path):
    """`fit a.parquet b.parquet` trains on exactly the rows of the directory holding both."""
    import numpy as np
    from helpers import run_cli

    from streamsgd.tools.generate import generate
    from streamsgd.persist.model import load

    parts = tmp_path / "parts"
    parts.mkdir()
    for k in (1, 2):
        generate(str(parts / f"p{k}.parquet"), rows=3_000, features=3, seed=1, sample_seed=k, row_group_rows=500)
    both = run_cli("info", parts / "p1.parquet", parts / "p2.parquet", "--json")
    assert '"rows": 6000' in both.stdout
    run_cli("fit", parts / "p1.parquet", parts / "p2.parquet", "--epochs", "1", "-o", tmp_path / "a.npz")
    run_cli("fit", parts, "--epochs", "1", "-o", tmp_path / "b.npz")
    np.testing.assert_array_equal(load(str(tmp_path / "a.npz")).coef, load(str(tmp_path / "b.npz")).coef)


def test_a_many_file_data_set_keeps_only_a_few_parsed_footers(tmp_path):
    """Footers are summarised at open and only the last few files' are kept parsed, so memory
    does not grow with the number of files; every chunk still reads back right."""
    import numpy as np

    from streamsgd.sources import open_source
    from streamsgd.pipeline.windows import read_window

    rng = np.random.default_rng(0)
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(10):
        X = rng.standard_normal((300, 3))
        pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "y": X[:, 0]}),
                       str(parts / f"p{k:02d}.parquet"), row_group_size=100)
    source = open_source(str(parts))
    rows = [read_window(source, np.array([c]), np.float64, True).X for c in range(len(source.chunk_rows))]
    assert len(rows) == 30 and sum(len(r) for r in rows) == 3_000
    assert len(source._metas._cache) <= 4


def test_parsed_footers_come_out_of_the_memory_limit(tmp_path):
    """A file of many row groups holds a large parsed footer while it is read: the memory
    plan charges it before sizing the windows, and refuses a limit it would half fill."""
    import psutil

    from streamsgd.config import FitConfig
    from streamsgd.errors import UsageError
    from streamsgd.sources.parquet import PARSED_FOOTER_BYTES_PER_COLUMN_CHUNK
    from streamsgd.plan.memory import METADATA_ALLOWANCE
    from streamsgd.train.setup import plan_memory

    rng = np.random.default_rng(5)
    table = pa.table({**{f"x{j}": rng.standard_normal(3000) for j in range(30)}, "y": rng.standard_normal(3000)})
    few, many = tmp_path / "few.parquet", tmp_path / "many.parquet"
    pq.write_table(table, few, row_group_size=1000)
    pq.write_table(table, many, row_group_size=2)
    few, many = streamsgd.open_source(str(few)), streamsgd.open_source(str(many))
    assert many.metadata_bytes == PARSED_FOOTER_BYTES_PER_COLUMN_CHUNK * 1500 * 31
    assert many.metadata_bytes > 100 * few.metadata_bytes
    # the charge covers what a parsed footer really takes (here about a third of it)
    process = psutil.Process()
    before = process.memory_info().rss
    footers = [pq.read_metadata(tmp_path / "many.parquet") for _ in range(3)]
    assert (process.memory_info().rss - before) / len(footers) < many.metadata_bytes

    limit = 256 << 20
    config = FitConfig(memory_limit=limit)
    plan_few, plan_many = plan_memory(few, config), plan_memory(many, config)
    # a small footer is not charged (the plan, and the model, are those of any other container);
    # a large one is, beyond the allowance
    assert few.metadata_bytes < METADATA_ALLOWANCE < many.metadata_bytes
    assert plan_few.buffer_bytes == int(limit * 2 / 3)
    charged = plan_few.buffer_bytes - plan_many.buffer_bytes
    assert charged == pytest.approx((many.metadata_bytes - METADATA_ALLOWANCE) * 2 / 3, abs=2)
    assert plan_many.window_rows < plan_few.window_rows

    with pytest.raises(UsageError, match=r"many.parquet.*row groups"):
        plan_memory(many, FitConfig(memory_limit=int(1.5 * (many.metadata_bytes - METADATA_ALLOWANCE))))


# --- every source pickles: many files, sliced row groups, the wrappers ---------------------


class TestPickleManyFilesAndStores(PickleContract):
    """Three files from two stores (local disk and memory://): each file's filesystem is made
    again from the URL it was listed from."""

    @pytest.fixture
    def source(self, tmp_path, data):
        X, y = data
        _split_files(tmp_path, X[:1500], y[:1500], ["a.parquet", "b.parquet"])
        url = f"memory://{uuid.uuid4().hex}/c.parquet"
        write_parquet(fsspec.filesystem("memory"), url, X[1500:], y[1500:])
        return streamsgd.open_source([str(tmp_path), url])


class TestPickleSlicedRowGroup(PickleContract):
    """One row group cut into slices (``cut``): a restored source has no open stream, and
    makes its own."""

    @pytest.fixture
    def source(self, one_big_row_group):
        source = streamsgd.open_source(one_big_row_group[0])
        source.cut(6_000_000)
        assert len(source.chunk_rows) >= 5 and len(set(source.chunk_groups)) == 1
        return source

    def test_open_streams_stay_behind(self, source):
        source.read_into(0, np.empty((source.chunk_rows[0], D)), None)
        assert source._cursors  # the row group's streams wait for the next slice
        clone = pickle.loads(pickle.dumps(source))
        assert clone._cursors == {} and clone._cursors_lock is not source._cursors_lock


class TestPickleChunkSubset(PickleContract):
    @pytest.fixture
    def source(self, tmp_path, data):
        from streamsgd.sources.subset import ChunkSubset

        path = str(tmp_path / "d.parquet")
        write_parquet(fsspec.filesystem("file"), path, *data)
        return ChunkSubset(streamsgd.open_source(path), [3, 0, 4])


class TestPickleRowSubset(PickleContract):
    @pytest.fixture
    def source(self, tmp_path, data):
        from streamsgd.sources.subset import split_rows

        path = str(tmp_path / "d.zarr")
        write_zarr(path, *data, 3)
        return split_rows(streamsgd.open_source(path), 0.3, seed=4, tag=9)[1]


class TestPickleClassIndex(PickleContract):
    """Text labels read as class indices, over a chunk subset of a Parquet file."""

    @pytest.fixture
    def source(self, tmp_path, data):
        from streamsgd.sources.labels import ClassIndexSource
        from streamsgd.sources.subset import ChunkSubset

        X, y = data
        path = str(tmp_path / "t.parquet")
        labels = np.array(["no", "yes"])[y]
        pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(D)}, "y": labels}), path, row_group_size=CHUNK)
        return ClassIndexSource(ChunkSubset(streamsgd.open_source(path), [1, 4]), ["no", "yes"])

    def test_labels_read_as_their_index(self, source, data):
        y = np.empty(source.chunk_rows[1])
        source.read_into(1, np.empty((len(y), D)), y)
        np.testing.assert_array_equal(y, data[1][4 * CHUNK:])


CHILD_READS = """
import pickle, sys
import numpy as np
source = pickle.loads(sys.stdin.buffer.read())
out = []
for i, n in enumerate(source.chunk_rows):
    X, y = np.empty((n, len(source.features))), np.empty(n)
    source.read_into(i, X, y)
    out.append((X, y))
sys.stdout.buffer.write(pickle.dumps(out))
"""


def test_a_pickled_source_reads_the_same_bytes_in_another_process(one_big_row_group):
    """What a cluster worker does: a fresh interpreter unpickles a source that has read (its
    streams open) and reads every chunk, byte for byte as the original."""
    import subprocess
    import sys

    source = streamsgd.open_source(one_big_row_group[0])
    source.cut(6_000_000)
    source.read_into(0, np.empty((source.chunk_rows[0], D)), None)
    proc = subprocess.run([sys.executable, "-c", CHILD_READS], input=pickle.dumps(source), capture_output=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr.decode()
    for i, (X, y) in enumerate(pickle.loads(proc.stdout)):
        X0, y0 = np.empty_like(X), np.empty_like(y)
        source.read_into(i, X0, y0)
        assert X.tobytes() == X0.tobytes() and y.tobytes() == y0.tobytes()


class OwnSource(SourceBase):
    """A source of the user's own: the required members only, the rest SourceBase's defaults."""

    def __init__(self, X, y):
        self._arrays = streamsgd.ArraySource(X, y, chunk_rows=CHUNK)
        self.url, self.features, self.target = "own://", self._arrays.features, "y"
        self.columns = self.features + ["y"]
        self.chunk_rows, self.chunk_bytes = self._arrays.chunk_rows, self._arrays.chunk_bytes

    def chunk_name(self, i):
        return f"own chunk {i}"

    def read_into(self, i, X, y, rows=None):
        self._arrays.read_into(i, X, y, rows)

    def read_columns(self, i, names):
        return self._arrays.read_columns(i, names)

    def fingerprint(self):
        return self._arrays.fingerprint()

    def manifest(self):
        return []


def test_a_source_of_ones_own_trains_on_the_defaults_and_an_incomplete_one_is_refused(data, reference_model):
    from streamsgd.errors import UsageError

    model = train(OwnSource(*data), FitConfig(epochs=3, memory_limit="200KB")).model
    np.testing.assert_array_equal(model.coef, reference_model.coef)
    assert model.intercept == reference_model.intercept

    class Partial:
        url, chunk_rows = "partial://", [1]

        def read_into(self, i, X, y, rows=None): ...

    with pytest.raises(UsageError, match=r"^data: the source object has no columns, features, target, chunk_bytes"):
        streamsgd.fit(Partial())
