"""A cron-grade training run: lock the outputs, resume from the newest valid checkpoint,
checkpoint on a schedule and on SIGTERM/SIGINT, log events, and write the model atomically.

This is what ``streamsgd fit`` runs; it holds no click and prints nothing (events go to
the :class:`~streamsgd.logs.RunLog`). A nightly job that is killed (OOM killer,
pre-emption, a reboot) and started again with ``--resume`` ends with exactly the model an
uninterrupted run would have written: the trainer's state is plain arrays and its place
in the shuffle plan follows from the update count.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ..compute.loop import T
from ..persist.checkpoint import CheckpointStore, compare_manifests, manifest_of
from ..config import EXECUTION_ONLY, FitConfig
from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, DataError, ModelFileError, RunStopped, UsageError
from .lock import RunLock
from .logs import RunLog
from ..persist.model import load
from ..sources.columns import describe as describe_columns, summary_line
from ..sources import Source
from ..train import Checkpointing, FitResult, Hooks, WarmStart
from ..train import fit as train
from ..train.hashed import resolve_defaults


class Terminated(KeyboardInterrupt):
    """A second SIGTERM: stop at once, without waiting for a batch boundary."""

    exit_code = EXIT_TERMINATED


@dataclass
class Job:
    """Where a run writes, and how it survives being stopped."""

    output: str
    metrics: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None
    keep_checkpoints: int = 3
    resume: bool = False
    allow_data_change: bool = False
    init: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: the command line's other options (DATA, output, metrics …; never storage options or
    #: anything secret), stored in each checkpoint so that ``--resume --checkpoint-dir D``
    #: alone can restart the run: see :func:`recorded_options`
    recorded: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resume and not self.checkpoint_dir:
            raise UsageError("--resume: give --checkpoint-dir, the directory the earlier run checkpointed to")
        for option, value in (("--checkpoint-every", self.checkpoint_every),
                              ("--checkpoint-seconds", self.checkpoint_seconds)):
            if value is not None and not value > 0:
                raise UsageError(f"{option}: expected a number > 0; got {value!r}")
            if value is not None and not self.checkpoint_dir:
                raise UsageError(f"{option}: give --checkpoint-dir too, where the checkpoints go")


def run(
    source: Source,
    config: FitConfig,
    job: Job,
    log: RunLog,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    backend: Callable[[Any], Any] | None = None,
) -> FitResult:
    """Train ``source`` under ``job``'s rules and write the model; returns the trainer's result.
    ``backend`` runs the shards' rounds (a Dask cluster's; None: in this process)."""
    with ExitStack() as stack:
        # an object store has no lock files: there the model's one PUT is what keeps it whole
        outputs = [path.removeprefix("file://") for path in (job.output, job.checkpoint_dir)
                   if path and _is_local(path)]
        for path in outputs:
            lock = stack.enter_context(RunLock(path))
            if lock.took_over:
                log.warning(f"took over the lock of a dead run (pid {lock.took_over.get('pid')})", lock=lock.lock_path)
        init = load(job.init) if job.init else None
        manifest = manifest_of(source)
        store = (CheckpointStore(job.checkpoint_dir, job.storage_options, job.keep_checkpoints)
                 if job.checkpoint_dir else None)
        resume = None
        # --optimizer auto as the trainer resolves it: the checkpoint records the optimizer that ran
        chosen, why = resolve_defaults(source, config)
        if job.resume:
            assert store is not None  # Job refuses --resume without --checkpoint-dir
            resume = _resume_state(store, chosen, manifest, job, log)
        columns = describe_columns(source, nulls=True)  # fit reads the null counts anyway (--missing impute)
        log.event("start", message=summary_line(columns), data=source.url, rows=int(sum(source.chunk_rows)),
                  model=config.model, optimizer=chosen.optimizer, optimizer_why=why, output=job.output,
                  resumed_at=None if resume is None else int(resume["counters"][T]),
                  detail={"features": columns["columns"], "skipped": columns["skipped"],
                          "warnings": columns["warnings"]})
        for warning in columns["warnings"]:
            log.warning(warning["message"], column=warning["column"])

        meta = {"config": _model_options(chosen), "data": manifest, "job": job.recorded, "adagrad_l2": ADAGRAD_L2}

        def save(arrays: dict[str, Any]) -> None:
            assert store is not None  # handed to the trainer only with a checkpoint store
            store.save(int(arrays["counters"][T]), arrays, meta)

        def events(record: dict[str, Any]) -> None:
            if record["event"] in ("epoch", "checkpoint"):
                log.event(record["event"], **{k: v for k, v in record.items() if k != "event"})
            if on_progress is not None:
                on_progress(record)

        stop = threading.Event()
        checkpointing = Checkpointing(save=save if store else None, every=job.checkpoint_every,
                                      seconds=job.checkpoint_seconds, stop=stop)
        with _stop_on_signals(stop) as received:
            try:
                result = train(source, config, warm=WarmStart(init), resume=resume,
                               hooks=Hooks(job.metrics, events, checkpointing, backend))
            except RunStopped as exc:
                name = signal.Signals(received[0]).name if received else "a stop request"
                where = (f"a checkpoint is in {job.checkpoint_dir}; continue with --resume" if store
                         else "no output was written")
                stopped = RunStopped(f"{name} received: {exc}; {where}")
                stopped.exit_code = EXIT_TERMINATED if received == [signal.SIGTERM] else EXIT_INTERRUPTED
                raise stopped from None
        result.model.save(job.output, job.storage_options)
        if store is not None:
            # the model is written: the checkpoints have served, and a later --resume (the
            # next night's run of the same job) starts afresh instead of redoing this run's tail
            store.clear()
        log.event("summary", **{k: v for k, v in result.summary.items()}, model=job.output)
        return result


#: AdaGrad's L2 rule, recorded in every checkpoint (compute.optim): a checkpoint of an adagrad run
#: with --l2 > 0 written before this rule (its sums held the L2 term too) is refused on --resume
ADAGRAD_L2 = "proximal"


def _resume_state(store: CheckpointStore, config: FitConfig, manifest: dict[str, Any], job: Job,
                  log: RunLog) -> dict[str, Any] | None:
    """The newest valid checkpoint's arrays, after checking it belongs to this run."""
    found = store.latest(on_skip=lambda message: log.warning(message))
    if found is None:
        log.warning(f"--resume: no checkpoint in {job.checkpoint_dir} yet; starting from the beginning")
        return None
    arrays, meta = found
    ours = _model_options(config)
    for key, value in meta.get("config", {}).items():
        if ours.get(key) != value:
            raise UsageError(
                f"--resume: the checkpoint in {job.checkpoint_dir} was written with {key}={value!r}, this run "
                f"has {ours.get(key)!r}; rerun with the same options, or use another --checkpoint-dir"
            )
    if config.optimizer == "adagrad" and config.l2_strength > 0 and meta.get("adagrad_l2") != ADAGRAD_L2:
        raise ModelFileError(
            f"--resume: the checkpoint in {job.checkpoint_dir} was written by an older streamsgd, whose adagrad "
            "summed the L2 term's squares too (its --l2 is now a proximal step); start the run over (delete the "
            "checkpoints) or resume with the streamsgd version that wrote it")
    change = compare_manifests(meta.get("data", {}), manifest)
    if change is not None:
        if not job.allow_data_change:
            raise DataError(f"--resume: the data changed since the checkpoint ({change}); "
                            "rerun with --allow-data-change to continue on the new data, or without --resume")
        log.warning(f"--allow-data-change: continuing on changed data ({change})")
    return arrays


#: fit's options a checkpoint records besides the model options (FitConfig's), so that
#: ``--resume --checkpoint-dir D`` alone restarts the run; never the storage options.
RECORDED = ("metrics", "checkpoint_every", "checkpoint_seconds", "keep_checkpoints", "init", "data_format",
            "x_array", "readers", "log_every", "noise_stats")
_LOCAL_PATHS = ("data", "output", "metrics", "init")


def recordable(data: Sequence[str], output: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The job options a checkpoint keeps (:data:`RECORDED`, DATA and the output): local
    paths made absolute (the resumed run may start elsewhere), and a URL's ``user:password@``
    part dropped (secrets never persist)."""
    values = {"data": list(data), "output": output, **{k: options.get(k) for k in RECORDED}}
    for key in _LOCAL_PATHS:
        value = values[key]
        values[key] = [_plain_path(v) for v in value] if isinstance(value, list) else _plain_path(value)
    return values


def _plain_path(path: str | None) -> str | None:
    if path is None:
        return None
    if "://" in path:
        head, _, rest = path.partition("://")
        host, slash, tail = rest.partition("/")
        return f"{head}://{host.rpartition('@')[2]}{slash}{tail}"
    return os.path.abspath(path)


def recorded_options(checkpoint_dir: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The options of the run that wrote the newest valid checkpoint in ``checkpoint_dir``:
    its model options and its recorded job options (DATA, output, metrics …), by their
    ``fit`` parameter names. Storage options are never among them (DESIGN.md §4, "Secrets
    never persist"): the resumed run takes them afresh from its own command line."""
    found = CheckpointStore(checkpoint_dir, storage_options).latest()
    if found is None:
        raise UsageError(f"--resume: no checkpoint in {checkpoint_dir} to take the run's options from; give DATA "
                         "and the run's options on the command line (or --config JOB.toml)")
    meta = found[1]
    if "job" not in meta:
        raise UsageError(f"--resume: the checkpoint in {checkpoint_dir} was written by an older streamsgd that did "
                         "not record the run's options; give DATA and the options on the command line")
    return {**meta.get("config", {}), **meta["job"]}


def resumed_shards(job: Job, config: FitConfig) -> FitConfig:
    """``config`` with the shards of the run ``--resume`` continues, when --shards was not
    given: S fixes the mathematics and the workers only the speed (DESIGN.md §7), so a run
    resumed on another number of workers keeps the checkpoint's S instead of taking one per
    worker (which the options check would refuse). Unchanged without a checkpoint, or when
    the checkpoint was written without shards."""
    if not job.resume or config.shards is not None:
        return config
    assert job.checkpoint_dir is not None  # Job refuses --resume without it
    found = CheckpointStore(job.checkpoint_dir, job.storage_options).latest()
    shards = None if found is None else found[1].get("config", {}).get("shards")
    return config if shards is None else replace(config, shards=int(shards))


def _model_options(config: FitConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[list[int]]:
    """First SIGTERM/SIGINT: ask the trainer to stop after a checkpoint; second: stop at once.

    Yields the list of signals received. Outside the main thread (where Python cannot
    install handlers) it does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
