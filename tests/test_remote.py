"""Remote data against a real S3-compatible server: byte ranges, retries, a server that dies.

Every test runs moto_server over HTTP on 127.0.0.1 (tests/s3server.py); the failure tests
start their own server, so killing it leaves the session's one alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamsgd.config import FitConfig
import streamsgd
from streamsgd.train.trainer import fit as train
from helpers import STREAMSGD, run_cli, write_parquet
from s3server import CountingProxy, S3Server
from streamsgd.errors import SourceError
from streamsgd.sources import retry

pytestmark = pytest.mark.s3


# --- what counts as transient -----------------------------------------------------------


def test_transient_failures_are_told_from_permanent_ones():
    import botocore.exceptions as bx

    refused = bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert retry.is_transient(refused) and retry.is_transient(ConnectionResetError())
    assert retry.is_transient(TimeoutError()) and retry.is_transient(OSError(121, "InternalError (5xx)"))
    server_error = bx.ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                                  "GetObject")
    assert retry.is_transient(server_error)
    wrapped = RuntimeError("decode failed")
    wrapped.__cause__ = ConnectionResetError()
    assert retry.is_transient(wrapped)  # a cause deep in the chain counts
    assert not retry.is_transient(FileNotFoundError("no such key"))
    assert not retry.is_transient(PermissionError("access denied"))
    assert not retry.is_transient(pa.ArrowInvalid("Parquet magic bytes not found"))
    assert not retry.is_transient(SourceError("already reported"))


def test_retry_gives_up_after_the_policy_with_one_error_naming_the_read():
    calls = []

    def flaky():
        calls.append(time.perf_counter())
        raise ConnectionResetError("connection reset by peer")

    policy = retry.RetryPolicy(tries=4, delay=0.01)
    with pytest.raises(SourceError, match=r"^s3://b/k row group 3: the store failed after 4 tries \(ConnectionResetError"):
        retry.call(flaky, "s3://b/k row group 3", policy)
    assert len(calls) == 4
    gaps = np.diff(calls)
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))  # the backoff grows
    assert policy.total_wait == pytest.approx(0.07)


def test_retry_succeeds_once_the_store_answers_and_permanent_errors_are_not_retried():
    answers = iter([ConnectionRefusedError(), TimeoutError(), "data"])
    calls = []

    def flaky():
        calls.append(1)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry.call(flaky, "x", retry.RetryPolicy(5, 0.0)) == "data" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("no such key")

    with pytest.raises(FileNotFoundError):
        retry.call(missing, "x", retry.RetryPolicy(5, 0.0))
    assert len(calls) == 1


def test_the_environment_sets_the_policy_at_the_door_only(monkeypatch, tmp_path):
    from streamsgd.run.runtime import retry_policy_from_environment

    monkeypatch.setenv("STREAMSGD_RETRIES", "2")
    monkeypatch.setenv("STREAMSGD_RETRY_DELAY", "0.5")
    assert retry_policy_from_environment() == retry.RetryPolicy(2, 0.5)
    path = write_parquet(tmp_path / "d.parquet", np.ones((10, 2)), np.zeros(10))
    assert streamsgd.open_source(path).retry_policy == retry.DEFAULT_POLICY  # the library ignores it
    given = retry.RetryPolicy(3, 0.0)
    assert streamsgd.open_source(path, retry_policy=given).retry_policy == given
    monkeypatch.delenv("STREAMSGD_RETRIES")
    monkeypatch.delenv("STREAMSGD_RETRY_DELAY")
    assert retry_policy_from_environment() == retry.RetryPolicy(retry.TRIES, retry.DELAY)


# --- byte ranges ------------------------------------------------------------------------


@pytest.fixture
def proxy(s3_server):
    relay = CountingProxy(s3_server.port)
    yield relay
    relay.close()


def test_remote_parquet_reads_only_footers_and_the_used_column_chunks(s3_server, proxy, tmp_path):
    """50 columns, 3 used: reading two of the eight row groups fetches their 4 column chunks
    (3 features + target) and the footer, not the file."""
    rng = np.random.default_rng(11)
    rows, width, group = 16_000, 50, 2_000
    X = rng.standard_normal((rows, width))
    y = (X[:, 0] > 0).astype(np.int64)
    local = write_parquet(tmp_path / "wide.parquet", X, y, row_group_size=group)
    url = f"s3://data/{uuid.uuid4().hex}/wide.parquet"
    s3_server.filesystem().put(local, url)
    size = os.path.getsize(local)
    meta = pq.read_metadata(local)
    used = ["x0", "x7", "x31", "y"]

    def used_bytes(g: int) -> int:
        rg = meta.row_group(g)
        return sum(rg.column(j).total_compressed_size for j in range(rg.num_columns)
                   if rg.column(j).path_in_schema in used)

    options = {**s3_server.storage_options, "endpoint_url": proxy.url}
    proxy.reset()
    source = streamsgd.open_source(url, features=used[:3], storage_options=options)
    footer = proxy.reset()
    # the footer and a little HTTP: pyarrow reads the file's tail once
    assert meta.serialized_size < footer < meta.serialized_size + 64 * 1024 + 4096
    for g in (2, 5):
        out = np.empty((group, 3), np.float64), np.empty(group, np.float64)
        source.read_into(g, *out)
        np.testing.assert_array_equal(out[0], X[g * group : (g + 1) * group][:, [0, 7, 31]])
    served = proxy.reset()
    need = used_bytes(2) + used_bytes(5)
    requests = 2 * (1 + len(used))  # per row group: the file's HEAD, one range per column chunk
    assert need <= served <= need + requests * 1024, (need, served)
    assert served < size / 20  # the file is 8 MB; two row groups of four columns are ~70 kB

    # a whole fit: every row group's used chunks, at most once per pass (scan + 1 epoch)
    proxy.reset()
    train(source, FitConfig(epochs=1, memory_limit="1MB", shuffle=False))
    served = proxy.reset()
    every = sum(used_bytes(g) for g in range(meta.num_row_groups))
    assert every <= served <= 2 * every + 2 * meta.num_row_groups * (1 + len(used)) * 1024
    assert served < size / 4


# --- a server that dies mid-epoch -------------------------------------------------------


def _storage_args(server: S3Server) -> list[str]:
    return [a for k, v in server.storage_options.items() for a in ("--storage-option", f"{k}={v}")]


def _start_fit(args: list, metrics_fifo) -> tuple[subprocess.Popen, threading.Event, list[dict], threading.Thread]:
    """Start ``streamsgd fit`` with --metrics going to a FIFO; a thread reads its records.

    The event is set at the first progress record: training has provably started reading.
    """
    proc = subprocess.Popen([STREAMSGD, *map(str, args), "--metrics", str(metrics_fifo), "--log-every", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = threading.Event()
    records: list[dict] = []

    def follow():
        with open(metrics_fifo, encoding="utf-8") as stream:  # blocks until the fit opens it
            for line in stream:
                records.append(json.loads(line))
                if records[-1]["event"] == "progress":
                    started.set()
        started.set()  # the run ended (or failed) without training: do not wait forever

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    return proc, started, records, reader


def test_a_dead_server_mid_epoch_fails_in_one_line_and_a_restarted_one_completes(tmp_path):
    """The run checkpoints what it trained before the store died, exits 4 in one line, and
    ``--resume`` against the revived server ends with the uninterrupted run's model."""
    rng = np.random.default_rng(3)
    rows, d = 100_000, 5
    X = rng.standard_normal((rows, d))
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(rows)
    local = write_parquet(tmp_path / "d.parquet", X, y, row_group_size=1000)  # 100 row groups
    key = f"data/{uuid.uuid4().hex}/d.parquet"
    common = ["--model", "linear", "--epochs", 2, "--memory-limit", "600KB", "--seed", 4]

    server = S3Server()
    server.start()
    try:
        fs = server.filesystem()
        fs.mkdir("data")
        fs.put(local, key)
        fifo = tmp_path / "metrics.fifo"
        os.mkfifo(fifo)
        ckpt = tmp_path / "ckpt"
        args = ["fit", f"s3://{key}", *_storage_args(server), *common, "-o", tmp_path / "s3.npz",
                "--checkpoint-dir", ckpt]
        proc, started, records, reader = _start_fit(args, fifo)
        assert started.wait(timeout=120)
        assert any(r["event"] == "progress" for r in records), records
        seen = len([r for r in server.requests if key in r[1]])
        server.kill()
        killed = time.perf_counter()
        _, stderr = proc.communicate(timeout=120)
        elapsed = time.perf_counter() - killed
        reader.join(timeout=30)
    finally:
        server.stop()
    assert seen > 100  # footers, the target pass, and the first windows had been read
    assert proc.returncode == 4, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"streamsgd: error: s3://{key} row group ")
    # the read that used up the tries, or one that failed after it (the breaker: one try)
    assert re.search(r"the store failed after \d+ tr(y|ies) \(EndpointConnectionError", lines[0]), lines[0]
    assert retry.RetryPolicy().total_wait < elapsed < 30  # it retried, within a bounded time
    assert not (tmp_path / "s3.npz").exists()
    assert [p.name for p in ckpt.iterdir() if p.name.startswith("ckpt-")], "nothing was checkpointed"

    # the same server address, the data back (moto keeps it in memory), the same command
    revived = S3Server(port=server.port)
    revived.start()
    try:
        fs = revived.filesystem()
        fs.mkdir("data")
        fs.put(local, key)
        proc, started, records, reader = _start_fit([*args, "--resume", "--log-format", "json"], fifo)
        _, stderr = proc.communicate(timeout=300)
        reader.join(timeout=30)
    finally:
        revived.stop()
    assert proc.returncode == 0, stderr
    start = next(json.loads(line) for line in stderr.splitlines() if '"start"' in line)
    assert start["resumed_at"] > 0  # continued, not started over
    assert records[-1]["event"] == "epoch" and records[-1]["epoch"] == 2
    run_cli("fit", local, *common, "-o", tmp_path / "local.npz")  # uninterrupted, from local disk
    with np.load(tmp_path / "local.npz") as a, np.load(tmp_path / "s3.npz") as b:
        for name in ("coef", "intercept", "mean", "scale"):
            np.testing.assert_array_equal(a[name], b[name])


# --- categorical columns ----------------------------------------------------------------


def test_categorical_columns_from_s3_give_the_local_model_bit_for_bit(s3_server, tmp_path):
    """Plain and dictionary text columns with nulls, and a numeric column with nulls (imputed,
    with its indicator), in 4 row groups: ``streamsgd.fit("s3://…")`` reads and hashes them as
    from local disk (the dictionary column's codes differ between row groups), so the dense weights,
    the hashed table and the model's encoding are the same, bit for bit, and evaluate agrees."""
    rng = np.random.default_rng(3)
    n = 800
    words = np.array([f"w{i}" for i in range(40)], dtype=object)
    text = words[rng.integers(0, 40, n)]
    city = np.array(["paris", "lima", "oslo", "pune", "baku"], dtype=object)[rng.integers(0, 5, n)]
    x = rng.standard_normal(n)
    y = ((x + (text == "w3") - (city == "oslo") + rng.logistic(size=n)) > 0).astype(np.int64)
    local = str(tmp_path / "cat.parquet")
    table = pa.table({"x": pa.array(x, mask=rng.random(n) < 0.1),
                      "text": pa.array(text, pa.string(), mask=rng.random(n) < 0.15),
                      "city": pa.array(city, pa.string(), mask=rng.random(n) < 0.05).dictionary_encode(), "y": y})
    pq.write_table(table, local, row_group_size=200)
    assert pa.types.is_dictionary(pq.read_schema(local).field("city").type)
    key = f"data/{uuid.uuid4().hex}/cat.parquet"
    s3_server.filesystem().put(local, key)
    options = {"epochs": 3, "batch": 32, "hash_bits": 12}
    local_model = streamsgd.fit(local, **options)
    remote = streamsgd.fit(f"s3://{key}", storage_options=s3_server.storage_options, **options)
    assert remote.hashed_columns == ["text", "city"] and remote.features == ["x", "x__missing"]
    assert np.count_nonzero(remote.hashed) > 40  # the values and the null categories were trained
    np.testing.assert_array_equal(remote.hashed, local_model.hashed)
    np.testing.assert_array_equal(remote.coef, local_model.coef)
    np.testing.assert_array_equal(remote.intercept, local_model.intercept)
    assert remote.metadata["categorical"] == local_model.metadata["categorical"]
    from streamsgd.sources import open_source
    from streamsgd.tools.inference import evaluate

    columns = {"features": remote.features + remote.hashed_columns, "categorical": remote.hashed_columns}
    scores = [evaluate(remote, open_source(local, **columns)),
              evaluate(remote, open_source(f"s3://{key}", storage_options=s3_server.storage_options, **columns))]
    assert scores[0] == scores[1] and scores[0]["rows"] == n
