"""Every training option, validated once, and the one home of the defaults."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UsageError

MODELS = ("linear", "logistic", "huber", "hinge", "modified_huber", "poisson", "quantile", "softmax")
SCHEDULES = ("constant", "invscaling", "step", "cosine")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "adam", "adamw")
#: --optimizer's choices: an optimizer, or ``auto`` (the default: train.hashed.choose_optimizer
#: picks sgd for dense data, adagrad when the data has categorical columns)
OPTIMIZER_CHOICES = ("auto", *OPTIMIZERS)
DTYPES = ("float32", "float64")
#: ``--missing``: numeric nulls imputed (mean plus indicator) or refused
MISSING = ("impute", "error")

#: Model name -> the kind of label it expects, for checks at the edge: "classification"
#: labels are 0/1, "regression" any real, "counts" real and >= 0.
LOSS_TASK = {
    "linear": "regression", "logistic": "classification", "huber": "regression",
    "hinge": "classification", "modified_huber": "classification", "poisson": "counts",
    "quantile": "regression",
    "softmax": "multiclass",
}

#: The loss parameter when none is given: huber's epsilon (scikit-learn SGDRegressor's
#: default 0.1) and quantile's tau (the median). Other losses ignore the parameter.
LOSS_PARAM = {"huber": 0.1, "quantile": 0.5}

DEFAULT_MEMORY_LIMIT = 512 * 2**20

#: The target column (Zarr: the 1-D target array) when none is named, as ``generate`` writes it.
DEFAULT_TARGET = "y"

#: Options that decide only how a run executes, never the model: the model file does not
#: record them, and a checkpoint written under other values still resumes bit for bit.
EXECUTION_ONLY = ("readers", "log_every", "noise_stats", "workers", "scheduler", "scheduler_file")

#: How a run on shards combines them (DESIGN.md §7): ``gradients`` sums the shards' gradients
#: at every update (exactly one batch of S·B rows); ``models`` (local SGD) lets every shard
#: make ``sync_every`` updates of its own, then averages the shards' models by rows.
SYNC_MODES = ("gradients", "models")

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def storage_option(pair: str, where: str = "--storage-option") -> tuple[str, Any]:
    """``KEY=VALUE`` as an fsspec option; ``true``/``false`` become booleans."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise UsageError(f"{where}: expected KEY=VALUE, got {pair!r}")
    return key, {"true": True, "false": False}.get(value.lower(), value)


def parse_bytes(text: str | int, option: str = "--memory-limit") -> int:
    """Read a size such as ``512MB`` (10**6), ``512MiB`` or ``512M`` (2**20), or plain bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise UsageError(
                f"{option}: cannot read {text!r} as a size; "
                "write a number with an optional unit, e.g. 512MB, 2GiB or 1000000"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"{option}: the size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class FitConfig:
    """Options of one training run.

    ``epochs=None`` and ``lr=None`` mean "choose for me": the trainer picks enough epochs
    for 20,000 updates and a step size from the data's measured curvature, and returns
    the average of the second half of the iterates (``average``), which is what lets
    ``streamsgd fit data.parquet`` train well without tuning.
    """

    model: str = "logistic"
    target: str = DEFAULT_TARGET
    features: tuple[str, ...] | None = None
    #: columns never used as features (names and globs), on top of pandas' index columns
    exclude: tuple[str, ...] | None = None
    #: a column of per-row sample weights (>= 0): L = (1/N) Σ w_i ℓ_i + penalties
    weight: str | None = None
    #: numeric nulls: "impute" (the column's mean plus an indicator feature ``<col>__missing``) or "error"
    missing: str = "impute"
    #: integer columns to hash as categorical (text columns always are; DESIGN.md §4)
    categorical: tuple[str, ...] | None = None
    #: index bits of the hashed categorical features: 2**hash_bits weights
    hash_bits: int = 20
    #: crossed pairs of categorical columns, "a:b" each: one more hashed feature per row and pair
    interactions: tuple[str, ...] | None = None
    #: rows per update; "full" = N (streamed full-batch GD), "auto" = grown by the norm test
    batch: int | str = 512
    batch_min: int = 32
    batch_theta: float = 0.5
    epochs: int | None = None
    steps: int | None = None
    lr: float | None = None
    lr_schedule: str = "constant"
    power_t: float = 0.25
    warmup: int = 0
    step_every: int = 1000
    gamma: float = 0.1
    #: the linear scaling rule: lr x batch / lr_reference_batch (Goyal et al. 2017)
    lr_reference_batch: int | None = None
    #: "auto": sgd for dense data, adagrad with categorical columns (train.hashed.choose_optimizer)
    optimizer: str = "auto"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    #: None: 1e-4, or min(1e-4, 1/rows) with categorical columns (train.hashed.resolve_defaults)
    l2: float | None = None
    l1: float = 0.0
    epsilon: float = LOSS_PARAM["huber"]
    quantile: float = LOSS_PARAM["quantile"]
    #: None, "balanced", or a JSON object {"0": w0, "1": w1} (binary classifiers)
    class_weight: str | None = None
    #: share of chunks held out (chosen by the seed) to measure a validation loss each epoch
    validation_fraction: float = 0.0
    early_stopping: bool = False
    patience: int = 5
    tol: float = 1e-4
    seed: int = 0
    shuffle: bool = True
    standardize: bool = True
    average: bool = True
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    readers: int = 2
    dtype: str = "float32"
    in_memory: bool = False
    #: gradient-noise statistics in the metrics (O(d) per update; see benchmarks/noise_overhead.py)
    noise_stats: bool = True
    log_every: int = 100
    #: hidden layer widths of an MLP (``--hidden 64,32``); empty: the linear model
    hidden: tuple[int, ...] = ()
    #: the hidden layers' activation, relu or tanh (``--activation``)
    activation: str = "relu"
    #: logical data shards (DESIGN.md §7): they fix the mathematics, the workers only the speed;
    #: None: one per worker (--workers), else 1
    shards: int | None = None
    #: how the shards combine (SYNC_MODES)
    sync: str = "gradients"
    #: --sync models: updates each shard makes between averagings, or "auto" (chosen from the
    #: measured round time and compute per update, and recorded)
    sync_every: int | str = "auto"
    #: an embedded Dask LocalCluster of this many worker processes (the [dask] extra)
    workers: int | None = None
    #: an existing Dask scheduler's address, or its scheduler file
    scheduler: str | None = None
    scheduler_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("--model", self.model, MODELS)
        object.__setattr__(self, "hidden", _hidden_widths(self.hidden))
        _choice("--activation", self.activation, ("relu", "tanh"))
        _choice("--lr-schedule", self.lr_schedule, SCHEDULES)
        _choice("--optimizer", self.optimizer, OPTIMIZER_CHOICES)
        _at_least("--warmup", self.warmup, 0)
        _at_least("--step-every", self.step_every, 1)
        if self.lr_reference_batch is not None:
            _at_least("--lr-scale-with-batch", self.lr_reference_batch, 1)
        for option, value, low, high in (("--beta1", self.beta1, 0, 1), ("--beta2", self.beta2, 0, 1),
                                         ("--quantile", self.quantile, 0, 1), ("--gamma", self.gamma, 0, 1)):
            if not (math.isfinite(value) and low <= value <= high) or (option == "--quantile" and value in (0, 1)):
                raise UsageError(f"{option}: expected a number between {low} and {high}; got {value!r}")
        for option, value in (("--eps", self.eps), ("--epsilon", self.epsilon)):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{option}: expected a number > 0; got {value!r}")
        if not (math.isfinite(self.validation_fraction) and 0 <= self.validation_fraction < 1):
            raise UsageError(f"--validation-fraction: expected a number in [0, 1); got {self.validation_fraction!r}")
        if self.early_stopping and self.validation_fraction == 0:
            raise UsageError("--early-stopping: give --validation-fraction too, the chunks it watches")
        _at_least("--patience", self.patience, 1)
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise UsageError(f"--tol: expected a number >= 0; got {self.tol!r}")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise UsageError(f"--l1: the penalty must be a number >= 0, got {self.l1}")
        _choice("--dtype", self.dtype, DTYPES)
        _choice("--missing", self.missing, MISSING)
        if self.batch not in ("full", "auto"):
            batch = _batch_number(self.batch)
            object.__setattr__(self, "batch", batch)
        _at_least("--batch-min", self.batch_min, 1)
        if not (math.isfinite(self.batch_theta) and self.batch_theta > 0):
            raise UsageError(f"--batch-theta: expected a number > 0; got {self.batch_theta!r}")
        if not 1 <= self.hash_bits <= 30:
            raise UsageError(f"--hash-bits: expected 1 to 30 (bit 31 of the hash is the sign); got {self.hash_bits}")
        _at_least("--readers", self.readers, 1)
        _at_least("--log-every", self.log_every, 1)
        if self.epochs is not None:
            _at_least("--epochs", self.epochs, 1)
        if self.steps is not None:
            _at_least("--steps", self.steps, 1)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr: the learning rate must be a positive number, got {self.lr}")
        if self.l2 is not None and not (math.isfinite(self.l2) and self.l2 >= 0):
            raise UsageError(f"--l2: the penalty must be a number >= 0, got {self.l2}")
        if not (math.isfinite(self.power_t) and self.power_t >= 0):
            raise UsageError(f"--power-t: must be a number >= 0, got {self.power_t}")
        if self.features is not None:
            if len(self.features) == 0:
                raise UsageError("--features: give at least one column name")
            if self.target in self.features:
                raise UsageError(f"--features: the target column {self.target!r} cannot also be a feature")
        if self.exclude is not None and self.target in self.exclude:
            raise UsageError(f"--exclude: {self.target!r} is the target column; choose another --target or "
                             "leave it out of --exclude")
        if self.weight is not None and self.weight == self.target:
            raise UsageError(f"--weight: the target column {self.target!r} cannot also be the weight; "
                             "name another column")
        object.__setattr__(self, "memory_limit", parse_bytes(self.memory_limit))
        self._check_cluster()

    def _check_cluster(self) -> None:
        _choice("--sync", self.sync, SYNC_MODES)
        if self.sync_every != "auto":
            try:
                every = int(self.sync_every)
            except ValueError:
                raise UsageError(f"--sync-every: expected an integer >= 1 or 'auto'; got {self.sync_every!r}") from None
            _at_least("--sync-every", every, 1)
            object.__setattr__(self, "sync_every", every)
        if self.sync == "models" and self.l1 > 0:
            raise UsageError("--l1: not with --sync models (the shards' penalty debts do not average); "
                             "use --sync gradients")
        for option, value in (("--shards", self.shards), ("--workers", self.workers)):
            if value is not None:
                _at_least(option, value, 1)
        if self.scheduler is not None and self.scheduler_file is not None:
            raise UsageError("--scheduler and --scheduler-file name the same thing: give one of them")
        if self.workers is not None and (self.scheduler or self.scheduler_file):
            raise UsageError("--workers starts a cluster of its own; --scheduler joins one: give one of them")
        if self.sharded:
            where = f"--shards {self.n_shards}" if self.n_shards > 1 else "a cluster"
            if not isinstance(self.batch, int):
                raise UsageError(f"--batch {self.batch}: not with {where}; give the rows per shard and update, "
                                 "e.g. --batch 512")
            if self.hidden:
                raise UsageError(f"--hidden: an MLP does not train on {where} yet; drop --hidden or the shards")
            if self.in_memory:
                raise UsageError(f"--in-memory: not with {where}; each shard streams its own windows")

    @property
    def l2_strength(self) -> float:
        """--l2 as the run trains with it: the trainer's config has it fixed
        (``train.hashed.resolve_defaults``; None is the data-dependent default)."""
        if self.l2 is None:
            raise AssertionError("--l2 is fixed by train.hashed.resolve_defaults before training")
        return self.l2

    @property
    def n_shards(self) -> int:
        """The logical shards S: --shards, else one per --workers, else 1."""
        return self.shards or self.workers or 1

    @property
    def sharded(self) -> bool:
        """Whether the run trains in rounds over shards (train/shards.py)."""
        return self.n_shards > 1 or self.cluster or self.sync == "models"

    @property
    def cluster(self) -> bool:
        """Whether the run uses Dask (--workers, --scheduler or --scheduler-file)."""
        return self.workers is not None or self.scheduler is not None or self.scheduler_file is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored in the model's metadata."""
        out = asdict(self)
        out["features"] = list(self.features) if self.features is not None else None
        out["exclude"] = list(self.exclude) if self.exclude is not None else None
        if self.n_shards > 1 or self.sync == "models":  # the shards fix the mathematics: recorded
            out["shards"] = self.n_shards
        else:  # a single-shard run's options read as they did before shards
            del out["shards"], out["sync"]
        if self.sync != "models":
            del out["sync_every"]
        if self.hidden:
            out["hidden"] = list(self.hidden)
        else:  # a linear model's options read as they did before MLPs
            del out["hidden"], out["activation"]
        return out


def _hidden_widths(value: Any) -> tuple[int, ...]:
    """--hidden as a tuple of layer widths >= 1, from "64,32", a sequence, or None/"" (none)."""
    parts = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else list(value or ())
    try:
        widths = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        widths = (0,)
    if any(w < 1 for w in widths):
        raise UsageError(f"--hidden: expected layer widths >= 1 separated by commas, e.g. 64,32; got {value!r}")
    return widths


def _batch_number(value: int | str) -> int:
    """--batch as an integer >= 1 (it may arrive as text from the command line or a job file)."""
    try:
        batch = int(value) if not isinstance(value, bool) and str(value).strip().lstrip("-").isdigit() else None
    except ValueError:
        batch = None
    if batch is None or batch < 1:
        raise UsageError(f"--batch: expected an integer >= 1, 'full' or 'auto'; got {value!r}")
    return batch


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{option}: expected one of {', '.join(allowed)}; got {value!r}")


def _at_least(option: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{option}: expected an integer >= {low}; got {value!r}")
