"""Job files: every fit option accepted in either spelling, typos caught with a suggestion,
bad TOML and bad values named by file and line or key, flags winning over the file."""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap

import pytest

from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.run.jobfile import CLI_OPTIONS, OPTIONS, canonical, load_config, merge

JOB = """\
data = "s3://bucket/events/"
target = "clicked"
features = ["x0", "x1,x2"]
model = "linear"
batch = 1024
epochs = 3
lr = 1
lr-schedule = "invscaling"
power_t = 0.5
l2 = 0.0
seed = 42
shuffle = false
memory-limit = "2GiB"
dtype = "float64"
output = "/models/clicks.npz"
metrics = "/models/clicks.jsonl"
checkpoint-dir = "/models/clicks.ckpt"
checkpoint-every = 500
checkpoint_seconds = 600
keep-checkpoints = 2
resume = true
allow-data-change = false
log-format = "json"
quiet = true

[storage-options]
endpoint_url = "http://minio:9000"
anon = true
"""


def write(tmp_path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_full_job_file_loads_under_canonical_names(tmp_path):
    values = load_config(write(tmp_path, JOB))
    assert values == {
        "data": "s3://bucket/events/", "target": "clicked", "features": ("x0", "x1", "x2"), "model": "linear",
        "batch": 1024, "epochs": 3, "lr": 1.0, "lr_schedule": "invscaling", "power_t": 0.5, "l2": 0.0,
        "seed": 42, "shuffle": False, "memory_limit": "2GiB", "dtype": "float64",
        "output": "/models/clicks.npz", "metrics": "/models/clicks.jsonl", "checkpoint_dir": "/models/clicks.ckpt",
        "checkpoint_every": 500, "checkpoint_seconds": 600.0, "keep_checkpoints": 2, "resume": True,
        "allow_data_change": False, "log_format": "json", "quiet": True,
        "storage_options": {"endpoint_url": "http://minio:9000", "anon": True},
    }
    assert type(values["lr"]) is float  # TOML's 1 is an int; the option is a number


def test_the_loaded_values_make_a_valid_fit_config(tmp_path):
    values = load_config(write(tmp_path, JOB))
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    config = FitConfig(**{k: v for k, v in values.items() if k in fields})
    assert config.memory_limit == 2 * 2**30 and config.features == ("x0", "x1", "x2") and config.lr == 1.0


def test_every_fit_config_field_and_cli_option_is_a_valid_key():
    fields = {f.name for f in dataclasses.fields(FitConfig)} - {"extra"}
    assert fields <= set(OPTIONS)
    assert set(CLI_OPTIONS) <= set(OPTIONS)
    for name in ("output", "metrics", "memory_limit", "data", "format", "storage_options", "target", "features",
                 "checkpoint_dir", "checkpoint_every", "checkpoint_seconds", "keep_checkpoints", "resume",
                 "allow_data_change", "init", "log_format", "quiet"):
        assert name in OPTIONS, name


def test_spellings_are_equivalent():
    assert canonical("--lr-schedule") == canonical("lr_schedule") == canonical("lr-schedule") == "lr_schedule"
    assert canonical("y-array") == "target" and canonical("storage-option") == "storage_options"


@pytest.mark.parametrize("key, suggestion", [
    ("learning_rate", "lr"),  # scikit-learn's names are known
    ("batch-size", "batch"),
    ("random_state", "seed"),
    ("epoch", "epochs"),
    ("checkpoint-evry", "checkpoint-every"),
    ("standardise", "standardize"),
    ("keep_checkpoint", "keep_checkpoints"),
])
def test_unknown_key_names_it_and_the_nearest(tmp_path, key, suggestion):
    path = write(tmp_path, f'{key} = 1\n')
    with pytest.raises(UsageError) as info:
        load_config(path)
    message = str(info.value)
    assert message == f"--config {path}: unknown option {key!r}; did you mean {suggestion!r}?"


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, 'batch = 512\nmodel = "linear"\nlr = = 0.1\n')
    with pytest.raises(UsageError, match=rf"^--config {re.escape(path)}: invalid TOML: .*line 3") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(UsageError, match=rf"^--config {re.escape(missing)}: no such file$"):
        load_config(missing)
    with pytest.raises(UsageError, match=r"is a directory"):
        load_config(str(tmp_path))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'model = "\xff\xfe"\n')
    with pytest.raises(UsageError, match=r"bin\.toml: (not UTF-8|invalid TOML)"):
        load_config(str(binary))
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.toml"
        locked.write_text("batch = 1\n")
        locked.chmod(0)
        with pytest.raises(UsageError, match=r"locked\.toml: cannot read"):
            load_config(str(locked))


@pytest.mark.parametrize("line, pattern", [
    ('batch = "512"', r"batch = '512': expected an integer"),
    ("batch = 1.5", r"batch = 1\.5: expected an integer"),
    ("seed = true", r"seed = True: expected an integer"),
    ("lr = \"fast\"", r"lr = 'fast': expected a number"),
    ("lr = inf", r"lr = inf: expected a finite number"),
    ("shuffle = 1", r"shuffle = 1: expected true or false"),
    ("model = \"svm\"", r"model = 'svm': expected one of linear, logistic"),
    ("log-format = \"xml\"", r"log-format = 'xml': expected one of text, json"),
    ("format = \"csv\"", r"format = 'csv': expected one of auto, parquet, zarr"),
    ("features = [1, 2]", r"features = \[1, 2\]: expected a list of column names"),
    ("features = []", r"features = \[\]: expected at least one column name"),
    ("memory-limit = \"lots\"", r"memory-limit: cannot read 'lots' as a size"),
    ("memory_limit = 1.5", r"memory_limit = 1\.5: expected a size"),
    ("storage-option = [\"novalue\"]", r"storage-option: expected KEY=VALUE, got 'novalue'"),
    ("output = [\"a\"]", r"output = \['a'\]: expected a string"),
    ("[data]\nx = 1", r"data = \{'x': 1\}: expected a string"),
])
def test_wrong_values_name_file_and_key(tmp_path, line, pattern):
    path = write(tmp_path, line + "\n")
    with pytest.raises(UsageError, match=rf"^--config {re.escape(path)}: {pattern}") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_same_option_twice_in_two_spellings_is_refused(tmp_path):
    path = write(tmp_path, 'lr-schedule = "constant"\nlr_schedule = "invscaling"\n')
    with pytest.raises(UsageError, match=r"'lr_schedule' repeats 'lr-schedule'; keep one of them"):
        load_config(path)


def test_storage_options_as_key_value_list(tmp_path):
    values = load_config(write(tmp_path, 'storage-option = ["endpoint_url=http://h:9000", "anon=true"]\n'))
    assert values == {"storage_options": {"endpoint_url": "http://h:9000", "anon": True}}


def test_empty_file_gives_nothing(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n")) == {}


def test_flags_given_on_the_command_line_win():
    config = {"batch": 1024, "lr": 0.5, "model": "linear", "checkpoint_dir": "ckpt"}
    cli = {"batch": 256, "lr": None, "model": "logistic", "seed": 0}  # lr, model: defaults
    merged = merge(config, cli, explicitly_given={"batch"})
    assert merged == {"batch": 256, "lr": 0.5, "model": "linear", "seed": 0, "checkpoint_dir": "ckpt"}


def test_explicit_flag_wins_even_when_equal_to_the_default_and_in_any_spelling():
    merged = merge({"lr_schedule": "invscaling", "seed": 7}, {"lr_schedule": "constant", "seed": 0},
                   explicitly_given={"--lr-schedule", "seed"})
    assert merged == {"lr_schedule": "constant", "seed": 0}


def test_merge_leaves_its_inputs_alone():
    config, cli = {"batch": 1}, {"batch": 2}
    merge(config, cli, set())
    assert config == {"batch": 1} and cli == {"batch": 2}
