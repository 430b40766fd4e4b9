"""``streamsgd fit --config job.toml``: a cron job's options in a file, flags still winning.

The file holds the fit command's options as TOML keys, spelled like the long flags with
or without dashes (``lr-schedule`` or ``lr_schedule``)::

    data = "s3://bucket/events/"
    target = "clicked"
    features = ["x0", "x1", "x2"]     # or "x0,x1,x2"
    model = "logistic"
    batch = 1024
    memory-limit = "2GiB"
    output = "/models/clicks.npz"
    checkpoint-dir = "/models/clicks.ckpt"
    checkpoint-every = 500
    resume = true

    [storage-options]                 # or storage-option = ["endpoint_url=http://…"]
    endpoint_url = "http://minio:9000"

Keys are checked against the options of ``fit`` (the :class:`~streamsgd.config.FitConfig`
fields plus the command-line-only ones), so a typo fails at once with the nearest valid
name instead of being silently ignored by a nightly job. Values are type-checked here, so
a wrong value names the file and the key. :func:`load_config` returns the values under
canonical names (underscores; see :data:`OPTIONS`), and :func:`merge` lays the flags
actually given on the command line over them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Mapping
from typing import Any

from ..config import DTYPES, MODELS, OPTIMIZER_CHOICES, SCHEDULES, FitConfig, parse_bytes, storage_option
from ..errors import UsageError

# kinds of value a key takes; checked in _check
_STR, _INT, _FLOAT, _BOOL, _NAMES, _SIZE, _TABLE, _BATCH = (
    "a string", "an integer", "a number", "true or false", "a list of column names", "a size",
    "a table of KEY = VALUE", "an integer, \"full\" or \"auto\"")

#: Options only the command line has (not FitConfig fields), with the kind of value each takes.
CLI_OPTIONS: dict[str, str] = {
    "data": _STR,
    "output": _STR,
    "metrics": _STR,
    "format": _STR,
    "x_array": _STR,
    "storage_options": _TABLE,
    "json": _BOOL,
    "checkpoint_dir": _STR,
    "checkpoint_every": _INT,
    "checkpoint_seconds": _FLOAT,
    "keep_checkpoints": _INT,
    "resume": _BOOL,
    "allow_data_change": _BOOL,
    "init": _STR,
    "log_format": _STR,
    "quiet": _BOOL,
}

#: Other spellings accepted for a key (after dashes become underscores).
ALIASES: dict[str, str] = {"y_array": "target", "storage_option": "storage_options"}

_CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS,
    "lr_schedule": SCHEDULES,
    "optimizer": OPTIMIZER_CHOICES,
    "dtype": DTYPES,
    "format": ("auto", "parquet", "zarr"),
    "log_format": ("text", "json"),
}

_NOT_OPTIONS = ("extra",)  # FitConfig fields with no flag


def _kind_of(field: dataclasses.Field) -> str:
    """The kind of value of a FitConfig field, read from its annotation (a string here)."""
    if field.name == "memory_limit":
        return _SIZE
    if field.name == "batch":
        return _BATCH
    annotation = str(field.type)
    if "tuple" in annotation or "list" in annotation:
        return _NAMES
    first = re.split(r"[\s|\[]", annotation.strip())[0]
    return {"bool": _BOOL, "int": _INT, "float": _FLOAT, "str": _STR}.get(first, _STR)


#: Every key a job file may hold (canonical underscore names) and the kind of value it takes.
OPTIONS: dict[str, str] = {
    **{f.name: _kind_of(f) for f in dataclasses.fields(FitConfig) if f.name not in _NOT_OPTIONS},
    **CLI_OPTIONS,
}


def load_config(path: str) -> dict[str, Any]:
    """Read and check a job file.

    Parameters
    ----------
    path : str
        A TOML file whose top-level keys are fit options.

    Returns
    -------
    dict
        Values under canonical names (:data:`OPTIONS`): ``features`` as a tuple of column
        names, ``storage_options`` as a dict, everything else as written.

    Raises
    ------
    UsageError
        The file cannot be read, is not valid TOML (the message gives the line), holds an
        unknown key (the message gives the nearest valid one) or a value of the wrong kind.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path}: is a directory; give a TOML file") from None
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: invalid TOML: {exc}; fix the file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--config {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None

    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in document.items():
        name = canonical(key)
        if name not in OPTIONS:
            raise UsageError(f"--config {path}: unknown option {key!r}; did you mean {_nearest(key)!r}?")
        if name in out:
            raise UsageError(f"--config {path}: {key!r} repeats {spelled[name]!r}; keep one of them")
        spelled[name] = key
        out[name] = _check(path, key, name, value)
    return out


def canonical(key: str) -> str:
    """The canonical name of a key or flag: ``--lr-schedule`` and ``lr_schedule`` → ``lr_schedule``."""
    name = key.strip().lstrip("-").replace("-", "_").lower()
    return ALIASES.get(name, name)


def merge(config_values: Mapping[str, Any], cli_values: Mapping[str, Any], explicitly_given: set[str]) -> dict[str, Any]:
    """Options of the run: the file's values, overridden by flags given on the command line.

    Parameters
    ----------
    config_values : mapping
        From :func:`load_config`.
    cli_values : mapping
        Every option as the command line parsed it, defaults included.
    explicitly_given : set of str
        The options the user actually typed (click's ``ParameterSource.COMMANDLINE``);
        names in any spelling :func:`canonical` understands.

    Returns
    -------
    dict
        ``cli_values`` where the flag was given or the file is silent, else the file's value;
        keys only the file has are added.
    """
    given = {canonical(name) for name in explicitly_given}
    out = dict(cli_values)
    for name, value in config_values.items():
        if canonical(name) not in given:
            out[name] = value
    return out


# names other tools use for the same options (scikit-learn's first), which difflib cannot guess
_SYNONYMS = {
    "learning_rate": "lr", "eta0": "lr", "batch_size": "batch", "n_epochs": "epochs", "max_iter": "epochs",
    "alpha": "l2", "random_state": "seed", "label": "target", "y": "target", "model_path": "output",
    "out": "output", "loss": "model",
}


def _nearest(key: str) -> str:
    """The valid option closest to ``key``, in the user's own spelling (dashes or not)."""
    name = canonical(key)
    match = _SYNONYMS.get(name) or difflib.get_close_matches(name, list(OPTIONS), n=1, cutoff=0.0)[0]
    return match.replace("_", "-") if "-" in key else match


def _check(path: str, key: str, name: str, value: Any) -> Any:
    kind = OPTIONS[name]

    def bad(expected: str = kind) -> UsageError:
        return UsageError(f"--config {path}: {key} = {_show(value)}: expected {expected}; fix the value in the file")

    if kind == _BOOL:
        if not isinstance(value, bool):
            raise bad()
    elif kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if not math.isfinite(value):
            raise bad("a finite number")
    elif kind == _STR:
        if not isinstance(value, str):
            raise bad()
        if name in _CHOICES and value not in _CHOICES[name]:
            raise bad(f"one of {', '.join(_CHOICES[name])}")
    elif kind == _BATCH:
        if isinstance(value, bool) or not (isinstance(value, int) and value >= 1 or value in ("full", "auto")):
            raise bad()
    elif kind == _SIZE:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad("a size such as \"512MB\" or a number of bytes")
        try:
            parse_bytes(value, option=key)
        except UsageError as exc:
            raise UsageError(f"--config {path}: {exc}") from None
    elif kind == _NAMES:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad()
        names = tuple(n.strip() for v in value for n in v.split(",") if n.strip())
        if not names:
            raise bad("at least one column name")
        value = names
    elif kind == _TABLE:
        value = _table(path, key, value, bad)
    return value


def _table(path: str, key: str, value: Any, bad) -> dict[str, Any]:
    """Storage options: a TOML table, or a list of ``KEY=VALUE`` strings like the flag."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                raise UsageError(f"--config {path}: {key}.{k}: expected a single value, got {_show(v)}")
        return dict(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return dict(storage_option(pair, f"--config {path}: {key}") for pair in value)
    raise bad()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["load_config", "merge", "canonical", "OPTIONS", "CLI_OPTIONS", "ALIASES"]
