"""Cron-grade runs, with real processes and real signals: a killed run resumed with --resume
ends with exactly the model of an uninterrupted one; SIGTERM checkpoints and exits 143; a
corrupt newest checkpoint falls back to the previous one; two runs on one output cannot
both write; changed data is refused on resume; job files and JSON logs work as documented.

Synchronisation is by the run's own JSON log lines on stderr (a "checkpoint" or "start"
event is read before a signal is sent), never by sleeping. The kill points are random
(seeded) offsets after such an event, so they fall anywhere: inside an update, a window
read or a checkpoint write (with --checkpoint-every 1 the run is almost always writing one).
"""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
from helpers import run_cli, start_fit as start, wait_for

from streamsgd.tools.generate import generate
from streamsgd.persist.model import load

pytestmark = pytest.mark.slow

# 3 epochs of 60,000 rows at batch 64 (2,814 updates) in windows of ~4,000 rows
TRAIN = ["--batch", "64", "--epochs", "3", "--seed", "5", "--memory-limit", "1MB", "--readers", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cron") / "d.parquet"
    generate(str(path), rows=60_000, features=10, task="logistic", seed=4, row_group_rows=2_000)
    return str(path)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run's model (no checkpoints at all)."""
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    run_cli("fit", data, *TRAIN, "-o", out)
    return load(str(out))


def same_model(a, b) -> None:
    for name in ("coef", "mean", "scale"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.intercept == b.intercept


def test_sigkill_at_random_points_then_resume_is_bit_identical(data, reference, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    rng = random.Random(11)
    kills = 0
    # the second attempt checkpoints after every update, so the kill most likely lands
    # inside a checkpoint write
    for every in ("5", "1", "13"):
        proc = start(data, *TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", every,
                     "--resume", "-o", str(out))
        if wait_for(proc, "checkpoint", rng.randint(2, 6)) is not None:
            # a random instant after that checkpoint: inside an update, a read or a write
            for _ in range(rng.randint(0, 2000)):
                os.sched_yield()
            proc.kill()
            kills += 1
        proc.communicate(timeout=120)
        assert not out.exists() or proc.returncode == 0
    assert kills == 3
    assert os.listdir(ckpt), "the killed runs left no checkpoint"
    done = run_cli("fit", data, *TRAIN, "--checkpoint-dir", ckpt, "--resume", "-o", out, "--log-format", "json")
    events = [json.loads(line) for line in done.stderr.splitlines()]
    # the last killed run died holding the locks (model file, checkpoint directory): this
    # one takes them over, then resumes
    first = [e["event"] for e in events].index("start")
    assert first > 0 and all("took over" in e["message"] for e in events[:first])
    assert events[first]["resumed_at"] > 0
    same_model(load(str(out)), reference)


def test_sigterm_checkpoints_exits_143_and_resumes(data, reference, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    proc = start(data, *TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "100", "-o", str(out))
    assert wait_for(proc, "checkpoint") is not None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    last = [json.loads(line) for line in stderr.splitlines()][-1]
    assert last["event"] == "error" and last["exit_code"] == 143 and "SIGTERM received" in last["message"]
    assert not out.exists()
    run_cli("fit", data, *TRAIN, "--checkpoint-dir", ckpt, "--resume", "-o", out)
    same_model(load(str(out)), reference)
    assert not [p for p in ckpt.iterdir() if p.name.startswith("ckpt-")]  # cleared once the model is written


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(data, reference, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    proc = start(data, *TRAIN, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "50", "-o", str(out))
    assert wait_for(proc, "checkpoint", 3) is not None
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    newest = sorted(ckpt.iterdir())[-1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    done = run_cli("fit", data, *TRAIN, "--checkpoint-dir", ckpt, "--resume", "-o", out, "--log-format", "json")
    events = [json.loads(line) for line in done.stderr.splitlines()]
    warnings = [e for e in events if e["event"] == "warning"]
    assert any(newest.name in w["message"] for w in warnings), warnings
    start_event = next(e for e in events if e["event"] == "start")
    assert start_event["resumed_at"] < int(newest.stem.split("-")[1])  # the one before it
    same_model(load(str(out)), reference)


def test_two_runs_on_one_output_exactly_one_trains_and_a_stale_lock_is_taken_over(data, tmp_path):
    out = tmp_path / "m.npz"
    first = start(data, "--epochs", "200", "-o", str(out))
    assert wait_for(first, "start") is not None  # the lock is held from before the start event
    second = run_cli("fit", data, "--steps", "3", "-o", out, check=False)
    assert second.returncode == 7
    assert f"pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    first.kill()  # dies holding the lock
    first.communicate(timeout=60)
    third = run_cli("fit", data, "--steps", "3", "-o", out, "--log-format", "json")
    warnings = [json.loads(line) for line in third.stderr.splitlines() if '"warning"' in line]
    assert any("took over" in w["message"] for w in warnings)
    assert out.exists() and not (tmp_path / "m.npz.lock").exists()


def test_resume_refuses_changed_data_unless_allowed(tmp_path):
    path = tmp_path / "d.parquet"
    generate(str(path), rows=20_000, features=5, seed=1, row_group_rows=2_000)
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    args = ["--batch", "64", "--epochs", "20", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "50",
            "-o", str(out)]
    first = start(str(path), *args)
    assert wait_for(first, "checkpoint") is not None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    generate(str(path), rows=24_000, features=5, seed=1, row_group_rows=2_000)  # a new day's data
    refused = run_cli("fit", path, *args, "--resume", check=False)
    assert refused.returncode == 3
    assert "the data changed" in refused.stderr and "--allow-data-change" in refused.stderr
    other_options = run_cli("fit", path, *args, "--resume", "--batch", "128", check=False)
    assert other_options.returncode == 2 and "batch=64" in other_options.stderr
    allowed = run_cli("fit", path, *args, "--resume", "--allow-data-change", "--epochs", "20", "--log-format", "json")
    assert any('"warning"' in line and "changed data" in line for line in allowed.stderr.splitlines())
    # the model is written: its checkpoints are gone, so the next --resume starts afresh
    assert not [p for p in ckpt.iterdir() if p.name.startswith("ckpt-")]


def test_job_file_with_flags_overriding_and_the_effective_config_in_the_model(tmp_path):
    path = tmp_path / "d.parquet"
    generate(str(path), rows=5_000, features=4, seed=2, row_group_rows=1_000)
    job = tmp_path / "job.toml"
    job.write_text(f'data = "{path}"\nmodel = "logistic"\nbatch = 32\nepochs = 2\nl2 = 0.001\n'
                   f'output = "{tmp_path / "job.npz"}"\nlog-format = "json"\n')
    run_cli("fit", "--config", job, "--batch", "16")
    model = load(str(tmp_path / "job.npz"))
    config = model.metadata["config"]
    assert (config["batch"], config["epochs"], config["l2"]) == (16, 2, 0.001)
    job.write_text(job.read_text() + "learning_rate = 0.1\n")
    bad = run_cli("fit", "--config", job, check=False)
    assert bad.returncode == 2 and "learning_rate" in bad.stderr and "'lr'" in bad.stderr


def test_warm_start_from_a_model_records_its_lineage(tmp_path):
    day1, day2 = tmp_path / "day1.parquet", tmp_path / "day2.parquet"
    generate(str(day1), rows=10_000, features=4, seed=3, sample_seed=1, row_group_rows=1_000)
    generate(str(day2), rows=10_000, features=4, seed=3, sample_seed=2, row_group_rows=1_000)
    run_cli("fit", day1, "--epochs", "2", "-o", tmp_path / "m1.npz")
    run_cli("fit", day2, "--epochs", "1", "--init", tmp_path / "m1.npz", "-o", tmp_path / "m2.npz")
    m1, m2 = load(str(tmp_path / "m1.npz")), load(str(tmp_path / "m2.npz"))
    assert m2.metadata["init"]["data"]["url"] == str(day1)
    np.testing.assert_array_equal(m2.mean, m1.mean)  # the standardisation is inherited
    assert not np.array_equal(m2.coef, m1.coef)
    other = tmp_path / "other.parquet"
    generate(str(other), rows=1_000, features=3, seed=3, row_group_rows=1_000)
    bad = run_cli("fit", other, "--init", tmp_path / "m1.npz", "-o", tmp_path / "m3.npz", check=False)
    assert bad.returncode == 2 and "--init" in bad.stderr and not (tmp_path / "m3.npz").exists()


def test_sigkill_with_categorical_columns_then_resume_is_bit_identical(tmp_path):
    """A click-log-like table (text columns with nulls, a numeric column with nulls) at the
    default options (AdaGrad with its lazy L2 on the hashed weights: the weights' stamps and
    sums are checkpointed state): killed mid-run, resumed, the model of an uninterrupted run."""
    import pandas as pd

    rng = np.random.default_rng(9)
    n = 30_000
    df = pd.DataFrame({"price": rng.normal(size=n), "site": rng.choice([f"s{k}" for k in range(300)] + [None], n),
                       "device": rng.choice(["phone", "tablet", None], n)})
    df.loc[rng.random(n) < 0.05, "price"] = None
    df["clicked"] = (rng.random(n) < 0.3).astype(np.int64)
    data = tmp_path / "clicks.parquet"
    df.to_parquet(data, index=False, row_group_size=2_000)
    args = ["--target", "clicked", "--model", "logistic", "--batch", "64", "--epochs", "2", "--memory-limit", "64MiB",
            "--readers", "1", "--hash-bits", "12"]
    ref = tmp_path / "ref.npz"
    run_cli("fit", data, *args, "-o", ref)
    reference = load(str(ref))
    assert reference.metadata["config"]["optimizer"] == "adagrad" and reference.hashed is not None
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    proc = start(data, *args, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "40", "-o", str(out))
    assert wait_for(proc, "checkpoint", 3) is not None  # mid-run: 938 updates, a checkpoint every 40
    proc.kill()
    proc.communicate(timeout=120)
    assert not out.exists()
    run_cli("fit", data, *args, "--checkpoint-dir", ckpt, "--resume", "-o", out)
    resumed = load(str(out))
    same_model(resumed, reference)
    np.testing.assert_array_equal(resumed.hashed, reference.hashed)
