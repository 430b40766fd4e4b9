"""Everything a run needs before its first update: the checks, the source cut for the memory
limit, the validation split, the classes, the schedule in updates, and the starting state.

:func:`prepare` builds a :class:`Setup`; :class:`~streamsgd.train.run.Run` trains from it.
The memory plan's arithmetic is :mod:`streamsgd.plan.memory`; here it meets the sources
(re-cutting Parquet row groups, the rewrite a refused plan advises).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from ..compute.codes import LOSSES, OPTIMIZERS, SCHEDULES
from ..compute.embedding import batch_buckets
from ..compute.embedding import state_bytes as embedding_state_bytes
from ..compute.loop import pack_spec
from ..compute.mlp import layout, scratch_rows
from ..compute.mlp import state_bytes as network_bytes
from ..compute.sparse import needs_extra, state_bytes
from ..config import LOSS_TASK, FitConfig
from ..errors import DataError, UsageError
from ..persist.model import Model
from ..pipeline.windows import HASHED_BYTES, WEIGHT_BYTES, hashed_columns, sample_weight_column
from ..plan.memory import MemoryPlan, data_limit, lanes, row_bytes, window_rows_cap
from ..plan.rng import SPLIT, SPLIT_ROWS, stream
from ..plan.shards import shard_chunks
from ..plan.shuffle import iterations_per_epoch
from ..sources import ParquetSource, Source, n_rows
from ..sources.missing import impute_nulls, skip_null_targets
from ..sources.labels import ClassIndexSource, is_text_type, not_numeric_target
from ..sources.parquet import DECODE_FACTOR, SEGMENTS
from ..sources.subset import ChunkSubset, RowSubset, holds_whole_chunks, split_rows
from . import hashed
from .classes import binary_text_classes, class_weights, softmax_classes
from .inputs import WarmStart
from .state import State
from .stepsize import batch_rows, curvature_bound
from .targets import chunk_target_means, max_sample_weight

#: Without ``--epochs`` a run makes at least this many updates (SGD converges in updates,
#: not in passes), within [1, MAX_AUTO_EPOCHS] epochs.
MIN_AUTO_UPDATES = 20_000
MAX_AUTO_EPOCHS = 20_000

#: ``spec[AVERAGE_FROM]`` of a run that does not average (yet).
NEVER = int(np.iinfo(np.int64).max)

def source_row_bytes(source: Source, config: FitConfig) -> int:
    """Window bytes per row of ``source`` (a float64 sample weight when it has a weight column,
    an int32 id and an int8 sign per categorical column)."""
    extra = (WEIGHT_BYTES if sample_weight_column(source) else 0) + HASHED_BYTES * hashed_columns(source)
    return row_bytes(len(source.features), config.dtype, extra)


def _extra(config: FitConfig) -> bool:
    """Whether the hashed state holds one more figure per weight (``compute.sparse.needs_extra``)."""
    return needs_extra(config.l1, OPTIMIZERS.get(config.optimizer, -1))


def table_bytes(source: Source, config: FitConfig, shards: int = 1, advise: bool = True, outputs: int = 1) -> int:
    """The hashed weight table's memory (0 without categorical columns): ``compute.sparse.
    state_bytes``, what ``pack_hashed`` allocates for ``outputs`` weights per bucket (softmax's
    C classes), held once by a run and once by each of its shards (their copy of the weights
    or tables lives in it). ``config`` is one holder's (a shard's share of --memory-limit);
    more than half of it is refused in one line naming --hash-bits, --shards and a
    --memory-limit that plans (``advise``; else no limit is named)."""
    need = state_bytes(config.hash_bits, outputs, extra=_extra(config)) if hashed_columns(source) else 0
    if need <= config.memory_limit // 2:
        return need
    bits = config.hash_bits
    while bits > 0 and state_bytes(bits, outputs, extra=_extra(config)) > config.memory_limit // 2:
        bits -= 1
    limit = "raise --memory-limit"
    if advise:
        limit = _working_limit(source, replace(config, memory_limit=config.memory_limit * shards), shards, outputs)
    if shards == 1:
        raise UsageError(f"--hash-bits {config.hash_bits}: the hashed weights and their optimizer state take "
                         f"{need / 2**20:,.0f} MiB, more than half of --memory-limit; lower --hash-bits to {bits} or "
                         f"{limit}")
    raise UsageError(f"--hash-bits {config.hash_bits} on --shards {shards}: each shard holds its own copy of the hashed "
                     f"weights and their optimizer state, {need / 2**20:,.0f} MiB, more than half of its share of "
                     f"--memory-limit ({config.memory_limit / 2**20:,.0f} MiB, --memory-limit / --shards); lower "
                     f"--hash-bits to {bits}, use fewer --shards (the model changes) or {limit}")


def model_bytes(source: Source, config: FitConfig, shards: int = 1, advise: bool = True, outputs: int = 1) -> int:
    """What the model's own state holds beside the windows: the hashed weight table
    (``table_bytes``), or an MLP's parameters, optimizer state and scratch blocks
    (``compute.mlp.state_bytes``; softmax's output layer counted for one class, its classes
    not being known yet) and its embedding of the categorical columns (``embedding_bytes``).
    An MLP taking more than half of --memory-limit is refused, naming --hidden. ``config`` is
    one holder's (a shard's share of the limit on ``shards``); ``outputs``: the hashed table's
    weights per bucket (softmax's classes, once known)."""
    if not config.hidden:
        return table_bytes(source, config, shards, advise, outputs)
    rows = scratch_rows(config.batch == "auto", batch_rows(config, n_rows(source)))  # as MLPRun sizes it
    network = (network_bytes(layout(len(source.features), config.hidden, 1), rows, config.dtype)
               + rows * HASHED_BYTES * hashed_columns(source))
    if network > config.memory_limit // 2:
        raise UsageError(f"--hidden {','.join(map(str, config.hidden))}: the network's parameters, optimizer "
                         f"state and scratch blocks take {network / 2**20:,.0f} MiB, more than half of "
                         "--memory-limit; use narrower layers or raise --memory-limit")
    return network + embedding_bytes(source, config, config.memory_limit // 2 - network)


def embedding_bits(source: Source, config: FitConfig) -> int:
    """The most hash bits, up to ``config.hash_bits``, whose embedding fits beside the network
    (``model_bytes``' rule) for an MLP on categorical columns; ``config.hash_bits`` when none
    does (the run is then refused by ``model_bytes`` itself, naming the fix)."""
    for bits in range(config.hash_bits, 0, -1):
        try:
            model_bytes(source, replace(config, hash_bits=bits))
            return bits
        except UsageError:
            continue
    return config.hash_bits


def embedding_bytes(source: Source, config: FitConfig, room: int) -> int:
    """An MLP's embedding of the categorical columns (0 without them): the (2**bits, H1) table,
    its optimizer state and average, the batch's sums (``compute.embedding.state_bytes``). More
    than ``room`` (what half of --memory-limit leaves beside the network) is refused in one
    line naming --hash-bits and --hidden."""
    k = hashed_columns(source)
    if not k:
        return 0

    def need(bits: int) -> int:
        cap = batch_buckets(bits, k, batch_rows(config, n_rows(source)), config.batch == "auto")
        return embedding_state_bytes(bits, config.hidden[0], cap, config.optimizer == "adagrad", config.average)

    if need(config.hash_bits) <= room:
        return need(config.hash_bits)
    bits = config.hash_bits
    while bits > 0 and need(bits) > room:
        bits -= 1
    raise UsageError(f"--hash-bits {config.hash_bits} with --hidden {','.join(map(str, config.hidden))}: the "
                     f"embedding of the categorical columns (2^{config.hash_bits} x {config.hidden[0]} weights, with "
                     f"their optimizer state) takes {need(config.hash_bits) / 2**20:,.0f} MiB, more than half of "
                     f"--memory-limit with the network; lower --hash-bits to {bits}, narrow the first hidden layer or "
                     "raise --memory-limit")


def plan_memory(source: Source, config: FitConfig, with_table: bool = True, shards: int = 1,
                outputs: int = 1) -> MemoryPlan:
    """The memory plan of ``source`` under ``config`` (on ``shards`` shards, each planned within
    --memory-limit / --shards, and holding its own hashed table of ``outputs`` weights per
    bucket); a limit too small for one reader and a window of the largest chunk is refused,
    naming a limit that works. ``with_table``: the model's own state is paid for (a training
    run; a batch stream holds none)."""
    share = config if shards == 1 else replace(config, memory_limit=config.memory_limit // shards)
    table = model_bytes(source, share, shards, outputs=outputs) if with_table else 0
    plan = MemoryPlan.solve(source, share, source_row_bytes(source, share), table)
    if plan is None:
        biggest = max(source.chunk_rows, default=0)
        each = f" (each of --shards {shards} gets {share.memory_limit} bytes)" if shards > 1 else ""
        raise UsageError(
            f"--memory-limit {config.memory_limit} bytes{each} is too small for {source.url}: its largest chunk "
            f"({biggest} rows) needs {max(source.chunk_bytes, default=0)} bytes to decode and "
            f"{3 * biggest * source_row_bytes(source, share)} to shuffle; "
            f"{_working_limit(source, config, shards, outputs)}"
        )
    return plan


def max_row_group_bytes(memory_limit: int) -> int:
    """The decoded size of the largest Parquet row group one reader decodes whole within
    the limit (``streamsgd convert`` writes row groups of this size)."""
    return MemoryPlan.max_chunk_bytes(memory_limit) // DECODE_FACTOR


def cut_to_limit(source: Source, config: FitConfig, warn: bool = True) -> None:
    """Cut a Parquet source's row groups into chunks this run's limit can decode and
    shuffle (a no-op for other sources, whose chunks are fixed by their layout); row groups
    too big to decode at once are cut to stream several at a time (``_cut_in_lanes``), or,
    when the limit cannot pay for that, one at a time, with a warning unless not ``warn``."""
    if not isinstance(source, ParquetSource):
        return
    limit = data_limit(source, config.memory_limit)
    budget = MemoryPlan.max_chunk_bytes(limit)
    cap = window_rows_cap(source, config.memory_limit, source_row_bytes(source, config))
    source.cut(budget, cap)
    # shards and a validation split plan the chunks of a subset one by one (sources.subset.ChunkSubset):
    # no lanes there, and thinner slices would only restart more streams
    if source.stream_fixed and config.shuffle and config.n_shards == 1 and config.validation_fraction == 0:
        groups = len(set(source.chunk_groups or ()))
        # a lone sliced row group streams as SEGMENTS segments: lanes of its own (ParquetSource.cut)
        units = groups - 1 + SEGMENTS if source.sliced_groups == 1 else groups
        one_lane = not _cut_in_lanes(source, config, budget, cap, lanes(source.stream_fixed, limit, units))
        # a limit the plan refuses is said in its own one line: no warning before it
        if one_lane and warn and MemoryPlan.solve(source, config, source_row_bytes(source, config),
                                                  model_bytes(source, config)) is not None:
            held = "one or two row groups" if groups > 1 else "consecutive rows of its one row group"
            logging.getLogger("streamsgd").warning(
                "%s: its row groups are too big to decode at once and --memory-limit %d pays for one open row "
                "group only, so each shuffle window holds %s: sorted data will train poorly; rewrite it shuffled "
                "with `streamsgd shuffle`, or raise --memory-limit", source.url, config.memory_limit, held)


def _cut_in_lanes(source: ParquetSource, config: FitConfig, budget: int, cap: int, k: int) -> bool:
    """Cut ``source``'s sliced row groups to be streamed ``k`` at once (``plan.shuffle.laned_order``),
    in slices of at most 1/(2k) of the window the plan then has, so that every window holds
    slices of k row groups; False (one lane) when the limit cannot pay for two."""
    lane_rows = cap // (2 * k)
    while k >= 2 and lane_rows >= 1:  # thinner slices decode in less, leaving the windows more
        source.cut(budget, cap, k, lane_rows)  # the extra streams charged: the windows this leaves
        plan = MemoryPlan.solve(source, config, source_row_bytes(source, config), model_bytes(source, config))
        if plan is not None and plan.window_rows >= 2 * k * lane_rows:
            return True
        lane_rows //= 2
    source.cut(budget, cap)
    return False


def _working_limit(source: Source, config: FitConfig, shards: int = 1, outputs: int = 1) -> str:
    """The fix for a refused plan: the smallest --memory-limit (in steps of 1/8) under which
    the data, cut again for each shard's share of it, plans with the model's state; and the
    rewrite that avoids the need."""
    rewrite = "or rewrite the data with smaller row groups"
    if isinstance(source, ParquetSource):
        rows = source.whole_rows(MemoryPlan.max_chunk_bytes(config.memory_limit // shards))
        rewrite = (f"or rewrite the data with row groups of at most {rows} rows and no dictionary encoding "
                   f"(pyarrow.parquet.write_table(table, path, row_group_size={rows}, use_dictionary=False))")
    limit = config.memory_limit
    try:
        for _ in range(64):
            limit += max(limit // 8, 1 << 20)
            trial = replace(config, memory_limit=limit // shards)
            try:
                cut_to_limit(source, trial, warn=False)
                state = model_bytes(source, trial, shards, advise=False, outputs=outputs)
                if MemoryPlan.solve(source, trial, source_row_bytes(source, trial), state) is None:
                    continue
            except UsageError:  # the footers or the model's state alone are too much for this limit
                continue
            return f"raise --memory-limit to {math.ceil(limit / 2**20)}MiB {rewrite}"
    finally:
        cut_to_limit(source, replace(config, memory_limit=config.memory_limit // shards), warn=False)
    return f"raise --memory-limit {rewrite}"


def split_validation(source: Source, fraction: float, seed: int) -> tuple[Source, ChunkSubset | RowSubset | None]:
    """(training part, validation part), chosen by the seed, so validation rows are never
    trained on and the split is the same on every resume.

    Whole chunks are held out when there are enough of them to come close to ``fraction``
    (``holds_whole_chunks``); otherwise ``fraction`` of every chunk's rows (a file with one
    row group, or a few).
    """
    if fraction == 0:
        return source, None
    n = len(source.chunk_rows)
    if not holds_whole_chunks(n, fraction):
        return split_rows(source, fraction, seed, SPLIT_ROWS)
    held = round(fraction * n)
    order = stream(seed, SPLIT).permutation(n)
    return ChunkSubset(source, sorted(order[held:])), ChunkSubset(source, sorted(order[:held]))


def auto_epochs(iters_per_epoch: int) -> int:
    return max(1, min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_UPDATES / iters_per_epoch)))


@dataclass(frozen=True)
class Schedule:
    """The run's length: rows per update (``B``), updates per epoch, epochs, total updates
    (None: a growing batch, measured in epochs) and the update the averaging starts at."""

    N: int
    B: int
    ipe: int
    n_epochs: int
    total_steps: int | None
    average_from: int

    @classmethod
    def of(cls, config: FitConfig, N: int) -> "Schedule":
        B = batch_rows(config, N)
        ipe = iterations_per_epoch(N, B)
        n_epochs = config.epochs or auto_epochs(ipe)
        if config.steps is not None:
            total_steps: int | None = config.steps
        elif config.batch != "auto":
            total_steps = n_epochs * ipe
        else:  # the batch grows: the run is measured in epochs, the number of updates is open
            total_steps = None
        # Polyak-Ruppert tail averaging: the mean of the second half of the iterates cancels
        # most of the constant step's noise (its error shrinks like 1/updates averaged).
        # With a growing batch the second half is counted in rows (see Run.at_boundary).
        average_from = NEVER if not config.average or total_steps is None else total_steps // 2
        return cls(N, B, ipe, n_epochs, total_steps, average_from)

    @classmethod
    def sharded(cls, config: FitConfig, source: Source) -> "Schedule":
        """The schedule of a run on S shards: an update takes one batch from each shard
        (S·B rows; with --sync models each shard updates on its own B), an epoch lasts as
        many updates as its largest shard has batches, and the deal of chunks to shards
        changes each epoch."""
        N, S, B = n_rows(source), config.n_shards, int(config.batch)
        groups = getattr(source, "chunk_groups", None)

        def rounds(epoch: int) -> int:
            deal = shard_chunks(source.chunk_rows, config.seed, epoch, S, groups)
            return max(-(-sum(int(source.chunk_rows[c]) for c in chunks) // B) for chunks in deal)

        ipe = rounds(0)
        n_epochs = config.epochs or auto_epochs(ipe)
        total_steps = config.steps if config.steps is not None else sum(rounds(e) for e in range(n_epochs))
        average_from = NEVER if not config.average else total_steps // 2
        return cls(N, S * B if config.sync == "gradients" else B, ipe, n_epochs, total_steps, average_from)

    @property
    def last_epoch(self) -> int:
        """The last epoch the run should reach: the readers read ahead up to it (only the
        read-ahead depends on it: a run that goes further starts its readers afresh)."""
        return self.n_epochs - 1 if self.total_steps is None else math.ceil(self.total_steps / self.ipe) - 1


@dataclass
class Setup:
    """What a run trains from: the sources, the memory plan, the classes, the schedule and
    the state (fresh, or restored from a checkpoint)."""

    config: FitConfig
    full_source: Source  # the data as given: its URL, rows and fingerprint go into the model
    source: Source  # the training part (class indices for text labels)
    validation: Source | None
    split: str  # "chunks" or "rows": how the validation part was held out
    held_chunks: list[int] | None
    plan: MemoryPlan
    labels: NDArray | None  # softmax's class labels
    strata: NDArray[np.float64]
    schedule: Schedule
    st: State
    init: Model | None
    text_classes: NDArray | None = None  # a binary classifier's two text labels (class 0, class 1)

    @property
    def blocks(self) -> int:
        """Parameter blocks: one per class for softmax, else one."""
        return 1 if self.labels is None else int(self.labels.size)


def prepare(source: Source, config: FitConfig, warm: WarmStart, resume: dict[str, NDArray] | None) -> Setup:
    """Check the run, cut and split the data, find the classes and build the starting state."""
    if config.missing == "impute":
        skip_null_targets(source)  # before the means: they are over the rows that train
    text = _check(source, config, warm)
    hashed.check(source, config, warm.init)
    hashed.encode(source, config)
    if config.missing == "impute":
        impute_nulls(source)
    # each of S shards streams within its share of the limit, wherever it runs (DESIGN.md §7)
    shard_config = replace(config, memory_limit=config.memory_limit // config.n_shards)
    cut_to_limit(source, shard_config)
    full_source = source
    source, held_out = split_validation(source, config.validation_fraction, config.seed)
    split = "chunks" if isinstance(held_out, ChunkSubset) else "rows"  # before a text target wraps it
    held_chunks = None if held_out is None else held_out.chunks
    validation: Source | None = held_out
    plan = plan_memory(source, config, shards=config.n_shards)
    labels: NDArray | None = None
    counts: NDArray[np.int64] | None = None
    if config.model == "softmax":  # one block of parameters per class, its labels from a pass over the target
        labels, counts = softmax_classes(source, validation, plan.readers, warm.classes, warm.init)
        if hashed_columns(source):  # the hashed table holds a weight per class: planned again with C of them
            plan = plan_memory(source, config, shards=config.n_shards, outputs=labels.size)
        if text:  # the trainer sees each label's index
            source = ClassIndexSource(source, labels)
            validation = None if validation is None else ClassIndexSource(validation, labels)
    text_classes = None
    if text and config.model != "softmax":  # a binary classifier on two text labels: 0 and 1 by their order
        text_classes = binary_text_classes(source, validation, plan.readers, config.model, warm.init)
        source = ClassIndexSource(source, text_classes)
        validation = None if validation is None else ClassIndexSource(validation, text_classes)
    strata = chunk_target_means(source, config.model, plan.readers)
    if validation is not None:  # its targets, read for val_loss, pass the same one check before training
        chunk_target_means(validation, config.model, plan.readers)
    schedule = Schedule.of(config, n_rows(source)) if config.n_shards == 1 else Schedule.sharded(config, source)
    st = _state(source, config, plan, schedule, labels, counts, strata, text, warm.step_offset)
    if resume is not None:
        st.restore(resume)
    return Setup(config, full_source, source, validation, split, held_chunks, plan, labels, strata, schedule, st,
                 warm.init, text_classes)


def _check(source: Source, config: FitConfig, warm: WarmStart) -> bool:
    """Refuse a run that cannot train; whether the target holds text labels."""
    if n_rows(source) == 0:
        skipped = getattr(source, "skipped_rows", 0)
        raise DataError(f"{source.url}: the data set has no rows" if not skipped else
                        f"{source.url}: all {skipped} rows have a null target {source.target!r}; fix --target")
    if source.target is None:
        raise DataError(f"{source.url}: training needs a target column; set --target")
    text = is_text_type(source.target_type)
    if text and LOSS_TASK.get(config.model) != "classification" and config.model != "softmax":
        raise not_numeric_target(source, config.model)
    if warm.classes is not None and config.model != "softmax":
        raise UsageError(f"classes= fixes the classes of a softmax model; this run trains {config.model!r}: drop it")
    if config.weight is not None and sample_weight_column(source) != config.weight:
        raise UsageError(f"--weight {config.weight}: open the data with weight={config.weight!r} "
                         "(streamsgd.sources.open_source) so the column is read with the target")
    if warm.init is not None:
        _check_init(warm.init, source, config)
    return text


def _state(source: Source, config: FitConfig, plan: MemoryPlan, schedule: Schedule, labels: NDArray | None,
           counts: NDArray[np.int64] | None, strata: NDArray[np.float64], text: bool, step_offset: int) -> State:
    """The starting state: zero parameters, the compiled loop's settings, class weights and
    the loss's curvature bound (the step size waits for the first window)."""
    N, B, total_steps, average_from = schedule.N, schedule.B, schedule.total_steps, schedule.average_from
    # the kernel's classes: the label values, or class indices 0 … C-1 for text labels
    blocks = 1 if labels is None else labels.size
    if labels is None:
        kernel_classes = np.zeros(1)
    else:
        kernel_classes = np.arange(blocks, dtype=np.float64) if text else labels.astype(np.float64)
    st = State(len(source.features), blocks)
    if hashed_columns(source) and not config.hidden:  # an MLP embeds them instead (train.mlp)
        st.hash_columns(hashed_columns(source), config.hash_bits, blocks, extra=_extra(config))
    st.classes = kernel_classes
    st.spec = pack_spec(loss=LOSSES[config.model], batch=B, schedule=SCHEDULES[config.lr_schedule],
                        average_from=average_from, n_rows=N, optimizer=OPTIMIZERS[config.optimizer],
                        warmup=config.warmup, total=total_steps or 0, step_every=config.step_every,
                        noise=config.noise_stats, t0=step_offset, blocks=blocks)
    st.cw = class_weights(config.class_weight, strata, source.chunk_rows, config.model, labels, counts)
    # the default step must be safe for the heaviest row: its loss counts w_max times
    top_weight = max_sample_weight(source, plan.readers) if sample_weight_column(source) else 1.0
    st.curvature = curvature_bound(config.model, strata, source.chunk_rows, st.cw) * top_weight
    return st


def _check_init(init: Model, source: Source, config: FitConfig) -> None:
    if init.model != config.model:
        raise UsageError(f"--init: the model is {init.model!r}, this run trains {config.model!r}; "
                         f"use --model {init.model} or start without --init")
    if list(init.features) != list(source.features) or init.target != source.target:
        raise UsageError(f"--init: the model was trained on features {init.features[:5]}… and target "
                         f"{init.target!r}, which differ from this data's; choose matching --features/--target")
    if init.model == "softmax" and np.shape(init.coef) != (len(init.classes_), len(source.features)):
        raise UsageError(f"--init: the softmax model's coef has shape {np.shape(init.coef)}, not (classes, features) = "
                         f"({len(init.classes_)}, {len(source.features)}); give a model file written by streamsgd fit")
