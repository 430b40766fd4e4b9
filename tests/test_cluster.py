"""Training on a Dask cluster (integrations/dask.py, DESIGN.md §7): the model equals the
in-process ``--shards S`` model bit for bit, whatever the workers, and survives a worker
killed mid-run and a driver killed and resumed with other workers.

One cluster for the module: a ``dask scheduler`` and two ``dask worker`` processes (each
under its nanny, which restarts a killed worker) started here on 127.0.0.1, which is also
what ``--scheduler``/``--scheduler-file`` join. Two tests start the embedded ``--workers K``
cluster, the product's other path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import STREAMSGD, invoke, run_cli, write_parquet

from streamsgd.config import FitConfig
from streamsgd.integrations.dask import DaskCluster
from streamsgd.persist.model import load
from streamsgd.sources import open_source
from streamsgd.train.inputs import Hooks
from streamsgd.train.trainer import fit

DASK = os.path.join(os.path.dirname(sys.executable), "dask")
# 2 shards of ~6,000 rows at batch 64 and 3 epochs: ~280 rounds, many windows per shard
OPTIONS = ["--model", "logistic", "--batch", "64", "--epochs", "3", "--memory-limit", "4MiB", "--target", "y",
           "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(12_000, 6))
    y = (X @ np.array([1.0, -1.0, 0.5, 0.0, 2.0, -0.5]) + rng.normal(size=12_000) > 0).astype(float)
    return write_parquet(tmp_path_factory.mktemp("cluster") / "d.parquet", X, y, row_group_size=700)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """The scheduler file of a 2-worker cluster of separate processes; stopped at the end."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    file = str(folder / "scheduler.json")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": folder}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", file], **quiet)]
    try:
        procs += [subprocess.Popen([DASK, "worker", "--scheduler-file", file, "--host", "127.0.0.1", "--nthreads",
                                    "1", "--no-dashboard", "--memory-limit", "3GiB"], **quiet) for _ in range(2)]
        with Client(scheduler_file=file, timeout=60) as client:  # waits for the file, then connects
            client.wait_for_workers(2, timeout=120)
        yield file
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _coefs(path):
    model = load(path)
    return np.concatenate([np.ravel(model.coef), np.ravel(model.intercept)])


def _fit_cli(data, out, *extra):
    outcome = invoke(["fit", data, *OPTIONS, "-o", str(out), *map(str, extra)])
    assert outcome.code == 0, outcome.report()
    return _coefs(out)


def test_two_shards_on_any_workers_equal_the_in_process_model(data, scheduler, tmp_path):
    """--shards 2: in process, on the 2-worker cluster (--scheduler-file), on an embedded
    cluster of one worker hosting both shards: the same bits."""
    reference = _fit_cli(data, tmp_path / "ref.npz", "--shards", "2")
    assert np.array_equal(_fit_cli(data, tmp_path / "k2.npz", "--scheduler-file", scheduler), reference)
    assert np.array_equal(_fit_cli(data, tmp_path / "k1.npz", "--shards", "2", "--workers", "1"), reference)
    plain = _fit_cli(data, tmp_path / "plain.npz")
    assert not np.array_equal(plain, reference)  # two shards are another (exact) batch of 128 rows


def test_local_sgd_on_the_cluster_equals_the_in_process_model(data, scheduler, tmp_path):
    local = ["--shards", "2", "--sync", "models", "--sync-every", "5"]
    reference = _fit_cli(data, tmp_path / "ref.npz", *local)
    assert np.array_equal(_fit_cli(data, tmp_path / "k2.npz", *local, "--scheduler-file", scheduler), reference)


def test_the_python_api_trains_on_the_cluster(data, scheduler):
    """streamsgd.fit(..., scheduler_file=...): a shard per worker by default, the in-process
    two-shard model."""
    import streamsgd

    options = {"model": "logistic", "batch": 64, "epochs": 3, "memory_limit": "4MiB", "seed": 3}
    on_cluster = streamsgd.fit(data, target="y", scheduler_file=scheduler, **options)
    in_process = streamsgd.fit(data, target="y", shards=2, **options)
    assert on_cluster.metadata["config"]["shards"] == 2
    assert np.array_equal(on_cluster.coef, in_process.coef)


def test_hashed_categorical_columns_train_on_the_cluster(scheduler, tmp_path):
    """Text columns hashed into 2^10 weights, two shards on the two workers: the shards'
    sparse sums (--sync gradients) and their averaged tables (--sync models) give the
    in-process models, bit for bit."""
    import pandas as pd
    import streamsgd

    rng = np.random.default_rng(2)
    a = rng.integers(0, 40, 3000)
    x = rng.normal(size=3000)
    y = (x + rng.normal(size=40)[a] + rng.logistic(size=3000) > 0).astype(float)
    path = tmp_path / "h.parquet"
    pd.DataFrame({"x": x, "a": [f"a{v}" for v in a], "y": y}).to_parquet(path, index=False, row_group_size=400)
    options = {"model": "logistic", "batch": 64, "epochs": 2, "memory_limit": "4MiB", "hash_bits": 10, "shards": 2}
    for sync in ({"sync": "gradients"}, {"sync": "models", "sync_every": 5}):
        on_cluster = streamsgd.fit(str(path), target="y", scheduler_file=scheduler, **options, **sync)
        in_process = streamsgd.fit(str(path), target="y", **options, **sync)
        assert on_cluster.hashed is not None and np.abs(on_cluster.hashed).max() > 0
        assert np.array_equal(on_cluster.hashed, in_process.hashed), sync
        assert np.array_equal(on_cluster.coef, in_process.coef), sync


def test_workers_too_small_for_their_shards_are_refused_in_one_line(data, scheduler, tmp_path):
    """Each worker may use 3 GiB; two shards of an 8 GiB --memory-limit need 4 GiB each: the
    refusal names a --memory-limit whose shares fit, and the run at it trains."""
    import re

    outcome = invoke(["fit", data, *OPTIONS, "--memory-limit", "8GiB", "--scheduler-file", scheduler,
                      "-o", str(tmp_path / "m.npz")])
    assert outcome.code == 2, outcome.report()
    assert "memory limit of 3072 MiB" in outcome.stderr and "4096 MiB" in outcome.stderr
    assert not (tmp_path / "m.npz").exists()
    limit = re.search(r"lower --memory-limit to (\d+)MiB", outcome.stderr)
    assert limit is not None and int(limit.group(1)) == 6144
    rerun = invoke(["fit", data, *OPTIONS, "--memory-limit", f"{limit.group(1)}MiB", "--scheduler-file", scheduler,
                    "-o", str(tmp_path / "m.npz")])
    assert rerun.code == 0, rerun.report()


def test_a_refused_worker_is_told_its_hashed_table_and_the_workers_that_fit():
    """8 shards of 256 MiB (48 MiB of it each shard's copy of a 2^20 hashed table) on workers of
    600 MiB: two shards fit a worker, so 4 workers hold the 8 (the model stays the same)."""
    from types import SimpleNamespace

    from streamsgd.integrations.dask import DaskBackend

    backend = DaskBackend.__new__(DaskBackend)  # its message alone: no cluster
    backend.job = SimpleNamespace(shard_memory=256 << 20, hash_bits=20, hash_outputs=1, shards=8)
    message = backend._too_small("tcp://w", 600 << 20, 4, 600 << 20)
    assert "\n" not in message and "its 4 shard(s) need 1024 MiB" in message
    assert "48 MiB its copy of the hashed table (--hash-bits 20)" in message
    assert "--workers 4" in message and "lower --memory-limit to 1200MiB" in message


def test_one_shard_on_two_embedded_workers_equals_the_plain_run(data, tmp_path):
    plain = _fit_cli(data, tmp_path / "plain.npz")
    assert np.array_equal(_fit_cli(data, tmp_path / "s1.npz", "--shards", "1", "--workers", "2"), plain)


def test_a_worker_killed_mid_run_leaves_the_model_unchanged(data, scheduler):
    """SIGKILL to a worker process (pid from client.run) at the 100th update: the lost round
    is rerun on the nanny's replacement and the model is bit-identical."""
    config = FitConfig(model="logistic", batch=64, epochs=3, memory_limit="4MiB", seed=3, shards=2, log_every=10)
    undisturbed = fit(open_source(data, target="y"), config)
    killed: list[int] = []
    with DaskCluster(scheduler_file=scheduler) as cluster:
        pids = sorted(cluster.client.run(os.getpid).values())

        def kill_one(record):
            if record.get("iteration", 0) >= 100 and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        result = fit(open_source(data, target="y"), config, hooks=Hooks(on_progress=kill_one, backend=cluster))
        assert killed and pids[0] not in cluster.client.run(os.getpid).values()  # the worker was replaced
    assert np.array_equal(result.model.coef, undisturbed.model.coef)
    assert np.array_equal(result.model.intercept, undisturbed.model.intercept)


def test_the_driver_killed_resumes_on_other_workers_bit_identically(data, scheduler, tmp_path):
    """SIGKILL to the driver after its second checkpoint (read from its JSON log), then
    --resume on an embedded 1-worker cluster: the model of an undisturbed run."""
    reference = _fit_cli(data, tmp_path / "ref.npz", "--shards", "2")
    checkpoints = tmp_path / "ck"
    args = [STREAMSGD, "fit", data, *OPTIONS, "--shards", "2", "--scheduler-file", scheduler, "--checkpoint-dir",
            str(checkpoints), "--checkpoint-every", "40", "--log-format", "json", "-o", str(tmp_path / "m.npz")]
    seen = 0
    with subprocess.Popen(args, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if json.loads(line).get("event") == "checkpoint":
                seen += 1
                if seen == 2:
                    proc.send_signal(signal.SIGKILL)
                    break
    assert seen == 2 and proc.returncode == -signal.SIGKILL
    resumed = _fit_cli(data, tmp_path / "m.npz", "--shards", "2", "--workers", "1", "--resume", "--checkpoint-dir",
                       checkpoints, "--checkpoint-every", "40")
    assert np.array_equal(resumed, reference)


def test_s3_data_on_the_cluster_gives_the_local_model(data, scheduler, s3_server, tmp_path):
    url = "s3://data/cluster/d.parquet"
    s3_server.filesystem().put(data, url)
    options = [f"--storage-option={k}={v}" for k, v in s3_server.storage_options.items()]
    local = _fit_cli(data, tmp_path / "local.npz", "--shards", "2")
    remote = invoke(["fit", url, *OPTIONS, *options, "--scheduler-file", scheduler, "-o", str(tmp_path / "s3.npz")])
    assert remote.code == 0, remote.report()
    assert np.array_equal(_coefs(tmp_path / "s3.npz"), local)


def test_an_unreachable_scheduler_is_one_line_and_exit_4(data, tmp_path):
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    proc = run_cli("fit", data, *OPTIONS, "--scheduler", "tcp://127.0.0.1:9", "-o", tmp_path / "m.npz", check=False,
                   env=env)
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "tcp://127.0.0.1:9" in proc.stderr
    assert not (tmp_path / "m.npz").exists()
