"""A run with categorical columns: the defaults they change (``resolve_defaults``: --optimizer
auto, --l2), what it refuses, the encoding it fixes, what its model holds.

The hashed weights train in the compiled loop beside the dense block (``compute.sparse``);
this module is the trainer's side of them: one line per option the sparse kernels do not
serve yet (each a :class:`~streamsgd.errors.UsageError` naming the option), the run's
:class:`~streamsgd.sources.encoding.Encoding` set on the source before any window is read,
and the model's hashed weights with every lazy scale folded in.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..config import FitConfig
from ..errors import UsageError
from ..sources import Source, n_rows
from ..sources.encoding import Encoding
from .naming import name_buckets
from .state import State

#: Models whose output is one margin: the scalar table serves them (compute.sparse).
SCALAR_MODELS = ("linear", "logistic", "poisson", "huber", "hinge", "modified_huber", "quantile")
#: Models with C margins: the (2**bits, C) table serves them (compute.sparse_multi).
TABLE_MODELS = ("softmax",)
#: Optimizers with an exact O(nnz) update of the hashed weights (compute.sparse).
SPARSE_OPTIMIZERS = ("sgd", "adagrad", "momentum", "nesterov", "adam", "adamw")
#: Those whose untouched hashed weights still move: their catch-up holds for one step.
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")
#: Those that train the hashed weights by lazy Adam (compute.sparse.hashed_step_adam).
ADAM_OPTIMIZERS = ("adam", "adamw")
#: Optimizers the (2**bits, C) table trains with (compute.sparse_multi: SGD's scale, AdaGrad's lazy L2).
TABLE_OPTIMIZERS = ("sgd", "adagrad")


#: A categorical column whose values differ in at least this share of the first window's rows
#: (of at least ``ROW_NAMES_MIN_ROWS``) names rows rather than kinds of rows.
ROW_NAMES_SHARE = 0.9
ROW_NAMES_MIN_ROWS = 50


def warn_row_names(source: Source, idx: NDArray[np.int32]) -> None:
    """Warn (the ``streamsgd`` logger) about each scalar categorical column whose hashed values
    differ in nearly every row of the first window (``idx``): a date or an id written as text
    (pandas writes an unparsed CSV date so). As a category it gives every row a weight of its
    own, which the model fits to the row's target: a training loss near 0 that nothing else
    learns from."""
    encoding, rows = getattr(source, "encoding", None), idx.shape[0]
    if encoding is None or rows < ROW_NAMES_MIN_ROWS:
        return
    j, seen = 0, np.zeros(encoding.size, dtype=bool)  # distinct buckets in O(rows), where np.unique sorts
    for name, width in zip(encoding.columns, encoding.widths or (1,) * len(encoding.columns)):
        seen[:] = False
        seen[idx[:, j]] = True
        distinct = int(np.count_nonzero(seen)) if width == 1 else 0
        if distinct >= ROW_NAMES_SHARE * rows:
            logging.getLogger("streamsgd").warning(
                "%s: categorical column %r holds a different value in %d of the first %d rows: as a category it "
                "names rows, and the model will learn each row's target by heart; leave it out with --exclude %s, "
                "or write it as a number or a date", source.url, name, distinct, rows, name)
        j += width


def categorical_columns(source: Source) -> list[str]:
    """The source's hashed columns (none for sources that have no categorical reader)."""
    return list(getattr(source, "categorical", ()))


#: Models --optimizer auto trains with adagrad on categorical columns: the classifiers, whose
#: margins are O(1) whatever the data (``_resolve_optimizer``). Softmax too: its C margins are
#: log-odds alike, and adagrad's held-out loss was lower than sgd's on every table measured
#: (penguins' species from island and sex: 0.0916 against 0.0937; a synthetic 4-class table
#: of 30,000 rows, a 2,000-level Zipf column: 1.049 against 1.059 at the default epochs, 1.056
#: against 1.200 after one epoch; held-out rows, fit's other defaults)
CLASSIFIERS = ("logistic", "hinge", "modified_huber", "softmax")
#: --l2's default without categorical columns (and its cap with them)
DEFAULT_L2 = 1e-4


def resolve_defaults(source: Source, config: FitConfig) -> tuple[FitConfig, str]:
    """``config`` with the data-dependent defaults fixed, ``--l2`` then ``--optimizer auto``,
    and why, in one line (``given`` when the user named both). The same on shards as in one
    process (AdaGrad's lazy L2 holds on both)."""
    config, l2_why = _resolve_l2(source, config)
    config, why = _resolve_optimizer(source, config)
    config, bits_why = _resolve_bits(source, config)
    return config, "; ".join(w for w in (why, l2_why, bits_why) if w)


def _embedded(source: Source, config: FitConfig) -> bool:
    """An MLP classifier on categorical columns, whose embedding adagrad trains (``_resolve_l2``)."""
    return bool(config.hidden and categorical_columns(source) and config.model in CLASSIFIERS
                and config.optimizer in ("auto", "adagrad"))


def _resolve_bits(source: Source, config: FitConfig) -> tuple[FitConfig, str]:
    """--hash-bits at its default (20) with --hidden: as many bits as the (2**bits, H1)
    embedding fits beside the network in half of --memory-limit (2^20 x 16 with AdaGrad takes
    ~670 MiB, more than the default 512 MiB), said in the run's line; a value the user gives
    that does not fit is refused, naming the bits that would."""
    if not config.hidden or not categorical_columns(source) or config.hash_bits != FitConfig.hash_bits:
        return config, ""
    from .setup import embedding_bits  # setup imports this module

    bits = embedding_bits(source, config)
    if bits == config.hash_bits:
        return config, ""
    return replace(config, hash_bits=bits), (f"hash bits {bits}: an embedding of 2^{config.hash_bits} rows does not "
                                             "fit half of --memory-limit beside the network")


def _resolve_l2(source: Source, config: FitConfig) -> tuple[FitConfig, str]:
    """--l2 not given: 1e-4 on dense data (unchanged: the defaults suite); with categorical
    columns min(1e-4, 1/N), N the rows: (1/N)·Σℓ + (1/2N)‖w‖² is the MAP estimate under a
    unit Gaussian prior on the weights, whose pull on a hashed value's weight fades as its
    rows grow, where a fixed 1e-4 holds a value seen 100 times in 10^6 rows at a fraction of
    its fit (held-out log loss: benchmarks/README.md, ctr.py)."""
    if config.l2 is not None:
        return config, ""
    if _embedded(source, config):  # compute.embedding: adagrad has no exact lazy L2 on the embedding
        return replace(config, l2=0.0), "l2 0: adagrad trains an MLP's embedding without a lazy L2"
    if not categorical_columns(source):
        return replace(config, l2=DEFAULT_L2), ""
    n = max(n_rows(source), 1)
    l2 = min(DEFAULT_L2, 1.0 / n)
    return replace(config, l2=l2), f"l2 {l2:.3g} = min(1e-4, 1/rows) with categorical columns"


def _resolve_optimizer(source: Source, config: FitConfig) -> tuple[FitConfig, str]:
    """--optimizer auto. Dense data: sgd, whose step 1/L_B the data fixes (unchanged: the
    defaults suite). Categorical columns and a classifier (softmax too): adagrad, whose per-weight steps let
    a rare value's weight move as its own gradients allow, where SGD's one step is the
    intercept's, with its lazy L2 (compute.sparse). AdaGrad's first step moves a weight by
    ±lr whatever its gradient, so its lr is in the weights' units: a classifier's margins
    (hence weights) are O(1), as 1/L_B assumes, where a regression's weights scale with the
    target (measured: benchmarks/README.md, ctr.py), so regressions keep sgd. sgd also where
    the lazy L2 is not served (a schedule that changes the step); on shards and clusters it
    is (compute.sparse: each weight caught up before its margin is read, and before local
    SGD's merge averages it)."""
    if config.optimizer != "auto":
        return config, "given"
    columns = categorical_columns(source)
    if config.hidden and _embedded(source, config) and config.l2_strength == 0:
        return replace(config, optimizer="adagrad"), (f"auto: an MLP classifier on {len(columns)} categorical "
                                                      "columns, adagrad (a step per embedding row)")
    if config.hidden:
        return replace(config, optimizer="sgd"), "auto: an MLP, sgd"
    if not columns:
        return replace(config, optimizer="sgd"), "auto: dense features, sgd with the step 1/L_B from the data"
    k = f"{len(columns)} categorical column{'s' if len(columns) > 1 else ''}"
    if config.model not in CLASSIFIERS:
        return replace(config, optimizer="sgd"), (f"auto: {k}, but --model {config.model} is a regression (adagrad's "
                                                  "step is in the weights' units): sgd")
    if config.l2_strength > 0 and (config.lr_schedule != "constant" or config.warmup > 0):
        return replace(config, optimizer="sgd"), (f"auto: {k}, but adagrad's lazy L2 needs a constant step: sgd "
                                                  f"(--lr-schedule {config.lr_schedule}, --warmup {config.warmup})")
    return replace(config, optimizer="adagrad"), f"auto: {k}, adagrad (a step per hashed weight)"


def check(source: Source, config: FitConfig, init: Any) -> None:
    """Refuse, in one line naming the option, what the sparse kernels do not serve yet."""
    columns = categorical_columns(source)
    if config.interactions and not columns:
        raise UsageError(f"--interactions: {source.url} has no categorical column to cross; drop --interactions")
    if not columns:
        return
    shown = ", ".join(columns[:5]) + (", …" if len(columns) > 5 else "")
    fix = f"or leave the categorical columns ({shown}) out with --exclude"
    lazy = config.optimizer == "adagrad" and config.l2_strength > 0  # compute.sparse: the catch-up needs one step
    moving = config.optimizer in MOMENTUM_OPTIMIZERS
    varying = config.lr_schedule != "constant" or config.warmup > 0
    schedule = f"--lr-schedule {config.lr_schedule}" + (f" --warmup {config.warmup}" if config.warmup else "")
    refusals = [
        (config.model not in SCALAR_MODELS + TABLE_MODELS,
         f"--model {config.model}: categorical columns train with --model "
         f"{', '.join(SCALAR_MODELS + TABLE_MODELS)} for now; {fix}"),
        (bool(config.hidden) and config.model in TABLE_MODELS,
         f"--hidden with --model {config.model}: an MLP's embedding of categorical columns trains models of one "
         f"output for now; drop --hidden {fix}"),
        (bool(config.hidden) and config.optimizer == "adagrad" and config.l2_strength > 0, "--l2: an MLP's embedding of "
         "categorical columns trains with adagrad only without L2 (no exact lazy rule); give --l2 0 or --optimizer sgd"),
        (config.optimizer not in SPARSE_OPTIMIZERS, f"--optimizer {config.optimizer}: categorical columns train with "
                                                    f"--optimizer {', '.join(SPARSE_OPTIMIZERS)}; {fix}"),
        (lazy and (config.lr_schedule != "constant" or config.warmup > 0),
         f"--lr-schedule {config.lr_schedule}" + (f" --warmup {config.warmup}" if config.warmup else "")
         + ": adagrad's lazy L2 on categorical columns needs one step for every update; give --lr-schedule "
           "constant --warmup 0, or --l2 0"),
        (config.l1 > 0 and varying, f"{schedule}: the L1 penalty on categorical columns, applied when a row touches a "
                                    "weight, needs one step for every update; give --lr-schedule constant --warmup 0, "
                                    "or --l1 0"),
        (moving and config.l1 > 0, f"--l1: not with --optimizer {config.optimizer} on categorical columns (a weight "
                                   "its momentum carries across zero between touches has no closed form); give --l1 0 "
                                   "or --optimizer sgd or adagrad"),
        (moving and varying, f"{schedule}: --optimizer {config.optimizer} on categorical columns moves the untouched "
                             "weights by a closed form in one step; give --lr-schedule constant --warmup 0"),
        (moving and config.sharded, f"--optimizer {config.optimizer}: categorical columns train with momentum in one "
                                    "process for now; give --optimizer sgd or adagrad with --shards or --workers"),
        (config.optimizer in ADAM_OPTIMIZERS and config.l1 > 0,
         f"--l1: not with --optimizer {config.optimizer} on categorical columns (lazy Adam); give --l1 0 or "
         "--optimizer sgd or adagrad"),
        (config.optimizer in ADAM_OPTIMIZERS and config.sharded and config.sync == "models",
         f"--sync models: --optimizer {config.optimizer} on categorical columns does not average its moments across "
         "shards yet; give --sync gradients"),
        (config.l1 > 0 and config.sharded, "--l1: the L1 penalty on categorical columns trains in one process for now; "
                                           "give --l1 0 with --shards or --workers"),
        (config.model in TABLE_MODELS and config.optimizer not in TABLE_OPTIMIZERS,
         f"--optimizer {config.optimizer}: --model {config.model} on categorical columns trains with --optimizer "
         f"{' or '.join(TABLE_OPTIMIZERS)}; {fix}"),
        (config.model in TABLE_MODELS and config.l1 > 0,
         f"--l1: not yet with --model {config.model} on categorical columns; give --l1 0 {fix}"),
        (init is not None, "--init: a warm start does not carry hashed weights yet; start without --init"),
    ]
    for refused, message in refusals:
        if refused:
            raise UsageError(message)


def encode(source: Source, config: FitConfig) -> Encoding | None:
    """Fix the run's encoding on ``source`` (before any window is read): None without
    categorical columns."""
    columns = categorical_columns(source)
    if not columns:
        return None
    pairs = [tuple(p.split(":")) for p in config.interactions or ()]
    bad = [":".join(p) for p in pairs if len(p) != 2]
    if bad:
        raise UsageError(f"--interactions {bad[0]}: expected two categorical columns as a:b; fix --interactions")
    encoding = Encoding.of(columns, config.hash_bits, config.seed, pairs)  # type: ignore[arg-type]
    source.encode(encoding)  # type: ignore[attr-defined]
    return encoding


def model_fields(source: Source, st: State) -> tuple[NDArray[np.float64] | None, dict[str, Any]]:
    """The model's hashed weights (the Polyak mean when averaging ran) and its metadata
    entries: the encoding, and the names of its largest weights (``naming.name_buckets``)."""
    weights, encoding = st.hashed_weights(), getattr(source, "encoding", None)
    if weights is None or encoding is None:
        return None, {}
    return weights, {"categorical": encoding.to_json(), "hashed_names": name_buckets(source, encoding, weights)}
