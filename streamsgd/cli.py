"""The command line: options → config → library call → print. Nothing else lives here."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from .config import (DEFAULT_MEMORY_LIMIT, DEFAULT_TARGET, DTYPES, MODELS, OPTIMIZER_CHOICES, SCHEDULES, SYNC_MODES, FitConfig, parse_bytes,
                     storage_option)
from .errors import EXIT_INTERRUPTED, RunStopped, StreamSGDError, UsageError
from .run.runtime import freeze_imports, retry_policy_from_environment, tune_allocator

if TYPE_CHECKING:
    from .run.logs import RunLog
    from .sources.retry import RetryPolicy


@dataclass
class Session:
    """One command's state, carried as click's context object (``ctx.obj``): what the door
    read from the environment once, and the running fit's log, so that :func:`main` reports
    an error in the format the fit was asked for."""

    retry_policy: RetryPolicy = field(default_factory=retry_policy_from_environment)
    tuned: bool = False  # main() tuned the allocators at start-up: retune them once the data is open
    log: RunLog | None = None


def _session() -> Session:
    """The running command's :class:`Session` (a fresh one when click runs a command without :func:`main`)."""
    return click.get_current_context().ensure_object(Session)


def _fit_allocator(source) -> None:
    """Pin the allocator to the data's largest chunk, and take the imports' objects out of the
    garbage collector's walks, when the command started from :func:`main`."""
    if _session().tuned:
        tune_allocator(max(source.chunk_rows, default=0))
        freeze_imports()


def _split(values: tuple[str, ...]) -> tuple[str, ...] | None:
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    return names or None


def _needs(model_path: str) -> str:
    return f"the model {model_path} needs it; apply the model to data with its feature columns"


def _check_output_dir(path: str, option: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create the folders a local output goes into (a job file's ``models/``, ``logs/``); for
    an object-store URL, check that its bucket answers, before hours of training are spent."""
    from .persist.model import is_remote

    if is_remote(path):
        from .sources.fs import check_bucket

        check_bucket(path, option, storage_options)
        return
    directory = os.path.dirname(os.path.abspath(path.removeprefix("file://")))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option}: cannot create the directory {directory} ({exc.strerror}); "
                         "give a path you can write to") from None


#: --exclude, as fit, info and tune-batch take it
_EXCLUDE = click.option("--exclude", multiple=True,
                        help="Columns never used as features: names or globs ('id,*_id'), comma-separated or repeated.")


#: --categorical, as fit and info take it
_CATEGORICAL = click.option("--categorical", multiple=True, metavar="COLS",
                            help="Integer columns to hash as categories (text columns always are), comma-separated.")


def store_options(command):
    """Options saying where and how to read DATA: format, Zarr array names, fsspec options."""
    for option in reversed([
        click.option("--format", "data_format", type=click.Choice(["auto", "parquet", "zarr"]), default="auto",
                     show_default=True, help="Format of DATA; auto detects a Zarr group."),
        click.option("--x-array", default="X", show_default=True, help="Zarr: the 2-D feature array."),
        click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                     help="fsspec option for the store, repeatable (e.g. endpoint_url=http://…, anon=true)."),
    ]):
        command = option(command)
    return command


def _storage_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    return dict(storage_option(pair) for pair in pairs)


def _open(data: str | tuple[str, ...], target: str | None, features, store: dict[str, Any],
          feature_hint: str = "fix --features", memory_limit: int | None = None, exclude=None,
          weight: str | None = None, categorical=None):
    """DATA (one or several paths/URLs) as a source; with ``memory_limit``, chunks are cut to fit it."""
    from .tools.convert import refuse_text
    from .sources import open_source
    from .plan.memory import MemoryPlan

    urls = [data] if isinstance(data, str) else list(data)
    refuse_text(urls)
    return open_source(urls[0] if len(urls) == 1 else urls, target=target, features=features,
                       feature_hint=feature_hint, storage_options=_storage_options(store["storage_option"]),
                       format=store["data_format"], x_array=store["x_array"],
                       max_chunk_bytes=MemoryPlan.max_chunk_bytes(memory_limit) if memory_limit else None,
                       exclude=exclude, weight=weight, retry_policy=_session().retry_policy,
                       categorical=categorical)


def _store(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the store options out of a command's keyword arguments."""
    return {k: options.pop(k) for k in ("data_format", "x_array", "storage_option")}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamsgd")
def cli() -> None:
    """Train linear models by mini-batch SGD on data larger than RAM, in fixed memory."""


@cli.command()
@click.argument("data", nargs=-1)
@click.option("--config", "config_path", default=None, metavar="JOB.toml",
              help="Options from a TOML file; flags given here override it.")
@click.option("--target", "--y-array", default=DEFAULT_TARGET, show_default=True, help="Target column (Zarr: the 1-D target array).")
@click.option("--features", multiple=True, help="Feature columns: names or globs ('carrier_*'), comma-separated or repeated; "
                                                "default: every numeric column but the target, --exclude and pandas' index.")
@_EXCLUDE
@click.option("--weight", default=None, metavar="COL", help="Column of per-row sample weights (>= 0; not a feature).")
@click.option("--missing", type=click.Choice(["impute", "error"]), default=FitConfig.missing, show_default=True,
              help="Numeric nulls: the column's mean plus a <col>__missing indicator, or refuse them.")
@_CATEGORICAL
@click.option("--hash-bits", type=int, default=FitConfig.hash_bits, show_default=True,
              help="Categorical columns are hashed into 2^BITS weights.")
@click.option("--interactions", multiple=True, metavar="A:B",
              help="Cross two categorical columns (one more hashed feature per row), comma-separated or repeated.")
@store_options
@click.option("--model", type=click.Choice(MODELS), default=FitConfig.model, show_default=True)
@click.option("--batch", default=str(FitConfig.batch), show_default=True,
              help="Rows per update: a number, 'full' (one exact-gradient step per pass) or 'auto' "
                   "(grown by the norm test from --batch-min).")
@click.option("--batch-min", type=int, default=FitConfig.batch_min, show_default=True, help="--batch auto: first size.")
@click.option("--batch-theta", type=float, default=FitConfig.batch_theta, show_default=True,
              help="--batch auto: grow B until tr(Σ)/B <= θ²‖G‖².")
@click.option("--in-memory", is_flag=True, help="Load all data once and keep it (refused if it does not fit).")
@click.option("--epochs", type=int, default=None, help="Full passes; default: enough for 20,000 updates.")
@click.option("--steps", type=int, default=None, help="Stop after this many updates (overrides --epochs).")
@click.option("--lr", type=float, default=None, help="Initial learning rate; default: 1/L_B measured on the data.")
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=FitConfig.lr_schedule, show_default=True)
@click.option("--power-t", type=float, default=FitConfig.power_t, show_default=True, help="Exponent of invscaling.")
@click.option("--warmup", type=int, default=FitConfig.warmup, show_default=True, help="Updates of linear warm-up.")
@click.option("--step-every", type=int, default=FitConfig.step_every, show_default=True, help="step schedule: updates per decay.")
@click.option("--gamma", type=float, default=FitConfig.gamma, show_default=True, help="step schedule: decay factor.")
@click.option("--lr-scale-with-batch", "lr_reference_batch", type=int, default=None, metavar="REF",
              help="Linear scaling rule: use --lr x batch / REF (Goyal et al. 2017).")
@click.option("--optimizer", type=click.Choice(OPTIMIZER_CHOICES), default=FitConfig.optimizer, show_default=True,
              help="auto: adagrad for a classifier on categorical columns, else sgd "
                   "(the run's summary says which and why).")
@click.option("--beta1", type=float, default=FitConfig.beta1, show_default=True, help="Momentum / Adam's first moment.")
@click.option("--beta2", type=float, default=FitConfig.beta2, show_default=True, help="Adam's second moment.")
@click.option("--eps", type=float, default=FitConfig.eps, show_default=True, help="Adagrad/Adam denominator guard.")
@click.option("--l2", type=float, default=FitConfig.l2, show_default=True,
              help="L2 penalty (l2/2)·||w||²; default 1e-4, or min(1e-4, 1/rows) with categorical columns.")
@click.option("--l1", type=float, default=FitConfig.l1, show_default=True, help="L1 penalty l1·||w||₁ (exact zeros).")
@click.option("--epsilon", type=float, default=FitConfig.epsilon, show_default=True, help="huber: width of the quadratic zone.")
@click.option("--quantile", type=float, default=FitConfig.quantile, show_default=True, help="quantile: the quantile τ.")
@click.option("--validation-fraction", type=float, default=FitConfig.validation_fraction, show_default=True,
              help="Share of chunks held out for a per-epoch validation loss.")
@click.option("--early-stopping", is_flag=True, help="Stop when the validation loss stops improving.")
@click.option("--patience", type=int, default=FitConfig.patience, show_default=True,
              help="--early-stopping: epochs without improvement before stopping.")
@click.option("--tol", type=float, default=FitConfig.tol, show_default=True,
              help="--early-stopping: the least improvement that counts.")
@click.option("--class-weight", default=None, help="Binary classifiers: balanced, or JSON such as '{\"0\": 1, \"1\": 5}'.")
@click.option("--seed", type=int, default=FitConfig.seed, show_default=True)
@click.option("--shuffle/--no-shuffle", default=True, show_default=True)
@click.option("--standardize/--no-standardize", default=True, show_default=True)
@click.option("--average/--no-average", default=True, show_default=True, help="Return the mean of the second half of the iterates (Polyak-Ruppert).")
@click.option("--memory-limit", default=f"{DEFAULT_MEMORY_LIMIT // 2**20}MiB", show_default=True, help="Bytes for data buffers, e.g. 512MB, 2GiB.")
@click.option("--readers", type=int, default=FitConfig.readers, show_default=True, help="Reader threads.")
@click.option("--dtype", type=click.Choice(DTYPES), default=FitConfig.dtype, show_default=True)
@click.option("--log-every", type=int, default=FitConfig.log_every, show_default=True, help="Updates per metrics record.")
@click.option("--noise-stats/--no-noise-stats", default=True, show_default=True,
              help="Gradient-noise statistics (tr Σ, B_simple, η/B) in the metrics.")
@click.option("--hidden", default="", help="An MLP: hidden layer widths, e.g. 64,32 (default: the linear model).")
@click.option("--activation", type=click.Choice(["relu", "tanh"]), default="relu", show_default=True,
              help="--hidden: the hidden layers' activation.")
@click.option("--shards", type=int, default=None, metavar="S",
              help="Logical data shards; each update is one batch from every shard (S x --batch rows). "
                   "Default: --workers, else 1. They fix the model; the workers only the speed.")
@click.option("--sync", type=click.Choice(SYNC_MODES), default=FitConfig.sync, show_default=True,
              help="How shards combine: gradients (one exact update of S x --batch rows per round) or models "
                   "(local SGD: each shard makes --sync-every updates, then the models are averaged).")
@click.option("--sync-every", default=str(FitConfig.sync_every), show_default=True, metavar="H|auto",
              help="--sync models: updates per shard between averagings; auto: chosen from the measured "
                   "round time (recorded in the model).")
@click.option("--workers", type=int, default=None, metavar="K",
              help="Train on an embedded Dask cluster of K worker processes (pip install 'streamsgd[dask]').")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Train on the Dask cluster at this scheduler.")
@click.option("--scheduler-file", default=None, metavar="FILE", help="Train on the Dask cluster this file names.")
@click.option("-o", "--output", default="model.npz", show_default=True, help="Model file to write.")
@click.option("--metrics", default=None, help="Append JSON-lines metrics to this file.")
@click.option("--checkpoint-dir", default=None, help="Directory or URL for checkpoints (enables --resume).")
@click.option("--checkpoint-every", type=int, default=None, help="Checkpoint every N updates (and at each epoch's end).")
@click.option("--checkpoint-seconds", type=float, default=None, help="Checkpoint every S seconds of training.")
@click.option("--keep-checkpoints", type=int, default=3, show_default=True, help="Checkpoints kept.")
@click.option("--resume", is_flag=True, help="Continue from the newest valid checkpoint in --checkpoint-dir.")
@click.option("--allow-data-change", is_flag=True, help="With --resume: continue even if the data changed.")
@click.option("--init", default=None, metavar="MODEL", help="Start from this model (warm start on new data).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Events on stderr: readable lines, or one JSON object per line.")
@click.option("--quiet", is_flag=True, help="Log only warnings and errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def fit(ctx: click.Context, config_path: str | None, **given: Any) -> None:
    """Train a model on DATA (Parquet file, directory, glob or URL; Zarr group)."""
    from .integrations.dask import cluster_for
    from .run.job import Job, recordable, resumed_shards, run
    from .run.logs import RunLog

    session = ctx.ensure_object(Session)
    session.log = RunLog(given["log_format"], quiet=True)  # a bad job file is reported in the format asked for
    opts = _with_config_file(ctx, config_path, given)
    if opts["resume"] and opts["checkpoint_dir"] and not opts["data"]:
        opts = _from_checkpoint(ctx, config_path, opts)
    # text: stderr carries only warnings and errors (the summary line is on stdout, progress
    # is the bar on a terminal); json: every event, for log shippers and cron mail parsers
    log_format, quiet = opts.pop("log_format"), opts.pop("quiet")
    # a person at a terminal also sees the start line: the columns used and skipped
    shown = ("start",) if log_format == "text" and not quiet and sys.stderr.isatty() else ()
    session.log = RunLog(log_format, quiet=quiet or log_format == "text", also=shown)
    data, target, output, as_json = opts.pop("data"), opts.pop("target"), opts.pop("output"), opts.pop("as_json")
    if not data:
        raise UsageError("DATA: give the data set on the command line, or as data = … in --config")
    store = _store(opts)
    job = Job(output=output, storage_options=_storage_options(store["storage_option"]),
              recorded=recordable(data, output, {**store, **opts}),
              **{k: opts.pop(k) for k in ("metrics", "checkpoint_dir", "checkpoint_every", "checkpoint_seconds",
                                          "keep_checkpoints", "resume", "allow_data_change", "init")})
    config = FitConfig(target=target, features=_split(opts.pop("features")), exclude=_split(opts.pop("exclude")),
                       categorical=_split(opts.pop("categorical")), interactions=_split(opts.pop("interactions")),
                       memory_limit=parse_bytes(opts.pop("memory_limit")), **opts)
    config = resumed_shards(job, config)
    _check_output_dir(output, "--output", job.storage_options)
    if job.metrics:
        _check_output_dir(job.metrics, "--metrics")
    source = _open(data, target, config.features, store, memory_limit=config.memory_limit, exclude=config.exclude,
                   weight=config.weight, categorical=config.categorical)
    _fit_allocator(source)
    progress = _ProgressBar() if sys.stderr.isatty() and log_format == "text" and not quiet else None
    try:
        if config.cluster:  # stderr carries our lines, not Dask's INFO log (nor the embedded workers')
            import dask

            dask.config.set({"logging.distributed": "error",
                             "distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "error"})
        with cluster_for(config) as (config, cluster), session.log.forwarding():
            result = run(source, config, job, session.log, on_progress=progress, backend=cluster)
    finally:
        if progress:
            progress.close()
    s = result.summary
    if as_json:
        click.echo(json.dumps({**s, "model": output}))
    else:
        click.echo(
            f"trained {config.model} on {source.url}: {s['iterations']} iterations, {s['epochs']:.2f} epochs, "
            f"loss {s['loss']:.6g}, {s['rows_per_second']:,.0f} rows/s, peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB "
            + (f"({s['skipped_rows']:,} rows with a null target skipped) " if s["skipped_rows"] else "")
            + f"-> {output}"
        )


def _from_checkpoint(ctx: click.Context, config_path: str | None, opts: dict[str, Any]) -> dict[str, Any]:
    """``fit --resume --checkpoint-dir D`` without DATA: every option the command line (or
    the job file) did not give comes from the newest checkpoint in D. Credentials are not
    in it: --storage-option must be given again."""
    from click.core import ParameterSource

    from .run.job import recorded_options

    recorded = recorded_options(opts["checkpoint_dir"], _storage_options(opts["storage_option"]))
    given = {name for name in opts if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    if config_path is not None:
        from .run.jobfile import load_config

        back = {v: k for k, v in _FILE_KEYS.items()}
        given |= {back.get(name, name) for name in load_config(config_path)}
    out = dict(opts)
    for name, value in recorded.items():
        if name in out and name not in given and name != "storage_option":
            if value is None and isinstance(out[name], tuple):
                continue  # e.g. features=None (every column): the flag's own empty default says so
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


#: click parameter name -> the job file's key (streamsgd.jobconfig.OPTIONS)
_FILE_KEYS = {"data_format": "format", "as_json": "json", "storage_option": "storage_options"}


def _with_config_file(ctx: click.Context, path: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The fit options: the job file's values where the command line did not give the flag."""
    if path is None:
        return dict(given)
    from click.core import ParameterSource

    from .run.jobfile import load_config, merge

    explicit = {_FILE_KEYS.get(name, name) for name in given
                if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    cli_values = {_FILE_KEYS.get(name, name): value for name, value in given.items()}
    merged = merge(load_config(path), cli_values, explicit)
    back = {v: k for k, v in _FILE_KEYS.items()}
    out = {back.get(name, name): value for name, value in merged.items()}
    if isinstance(out.get("storage_option"), dict):  # the file's table -> KEY=VALUE pairs
        out["storage_option"] = tuple(f"{k}={v}" for k, v in out["storage_option"].items())
    for key in ("features", "exclude"):
        if isinstance(out.get(key), (list, tuple)):
            out[key] = tuple(out[key])
    return out


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("data", nargs=-1, required=True)
@click.option("--target", "--y-array", default=None, help="Target column of DATA; default: the model's target.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--weight", default=None, metavar="COL", help="Weigh each row's figures by this column (>= 0).")
@store_options
def evaluate(model_path: str, data: str, target: str | None, as_json: bool, weight: str | None, **store: Any) -> None:
    """Loss and accuracy (classifier) or R² (regressor) of MODEL on DATA."""
    from .tools.inference import evaluate as run
    from .persist.model import load

    model = load(model_path, _storage_options(store["storage_option"]))
    hashed = model.hashed_columns
    result = run(model, _open(data, target or model.target, model.features + hashed, store, _needs(model_path),
                              weight=weight, categorical=hashed))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo("  ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("data", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Parquet file of predictions to write (a path or URL).")
@click.option("--keep", multiple=True, help="Columns of DATA to copy alongside (e.g. ids).")
@store_options
def predict(model_path: str, data: str, output: str, keep: tuple[str, ...], **store: Any) -> None:
    """Write a column `prediction` (and `probability` for classifiers) for every row of DATA."""
    from .tools.inference import predict as run
    from .persist.model import load

    options = _storage_options(store["storage_option"])
    model = load(model_path, options)
    keep_names = _split(keep) or ()
    _check_output_dir(output, "--output", options)
    source = _open(data, None, model.features + model.hashed_columns, store, _needs(model_path),
                   categorical=model.hashed_columns)
    rows = run(model, source, output, keep_names, storage_options=options)
    click.echo(f"wrote {rows} predictions -> {output}", err=True)


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Only the K features of largest |coef|, and the K largest hashed weights by (column, value).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option for a MODEL URL, repeatable.")
def show(model_path: str, top: int | None, as_json: bool, storage_option: tuple[str, ...]) -> None:
    """Features (with roles), coefficients, intercept, scaling, classes and training summary of MODEL."""
    from .persist.model import load
    from .tools.show import describe_model, format_model

    info = describe_model(load(model_path, _storage_options(storage_option)), top=top)
    if as_json:
        click.echo(json.dumps(_json_safe(info)))
    else:
        for line in format_model(info):
            click.echo(line)


@cli.command()
@click.argument("data")
@click.option("-o", "--output", required=True, help="Parquet file to write (a path or URL).")
@click.option("--memory-limit", default=f"{DEFAULT_MEMORY_LIMIT // 2**20}MiB", show_default=True,
              help="The limit fit will run under: row groups are sized so one decodes within it.")
@click.option("--column-type", multiple=True, metavar="COLUMN=TYPE",
              help="Arrow type of a column whose first rows mislead inference (e.g. zip=string, price=float64).")
@click.option("--block-size", default="1MiB", show_default=True,
              help="Text parsed at a time; types are inferred from the first block.")
@click.option("--compression", type=click.Choice(["none", "snappy", "zstd", "gzip"]), default="snappy",
              show_default=True)
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option for DATA and the output, repeatable.")
def convert(data: str, output: str, memory_limit: str, column_type: tuple[str, ...], block_size: str,
            compression: str, storage_option: tuple[str, ...]) -> None:
    """Rewrite a CSV, TSV or JSON-lines file as Parquet, in fixed memory."""
    from .tools.convert import convert as run
    from .tools.convert import parse_column_types
    from .train.setup import max_row_group_bytes

    _check_output_dir(output, "--output", _storage_options(storage_option))
    stats = run(data, output, row_group_bytes=max_row_group_bytes(parse_bytes(memory_limit)),
                column_types=parse_column_types(column_type), block_size=parse_bytes(block_size, "--block-size"),
                compression=compression, storage_options=_storage_options(storage_option))
    click.echo(f"wrote {stats['rows']} rows, {stats['columns']} columns in {stats['row_groups']} row groups "
               f"-> {output}", err=True)


# --- shuffle: an external shuffle (tools/shuffle.py) -------------------------------------


class _ProgressLines:
    """A progress bar without tqdm: one ``description: n/total unit`` line per update."""

    def __init__(self, description: str, total: int, unit: str) -> None:
        self.description, self.total, self.unit, self.n = description, total, unit, 0

    def update(self, n: int) -> None:
        self.n += n
        click.echo(f"{self.description}: {self.n}/{self.total} {self.unit}", err=True)

    def close(self) -> None:
        pass


def _progress_bar(description: str, total: int, unit: str) -> Any:
    """A tqdm bar on stderr (plain lines where tqdm is not installed)."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return _ProgressLines(description, total, unit)
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, unit_scale=unit == "rows")


@cli.command()
@click.argument("data", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Folder (path or URL) for part-NNNNN.parquet and _manifest.json.")
@click.option("--memory-limit", default=f"{DEFAULT_MEMORY_LIMIT // 2**20}MiB", show_default=True,
              help="Bytes of rows held at once; the output also depends on it (the number of buckets).")
@click.option("--seed", type=int, default=0, show_default=True, help="The same data, seed and limit: the same output.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option for DATA and the output, repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bars on stderr.")
def shuffle(data: tuple[str, ...], output: str, memory_limit: str, seed: int, storage_option: tuple[str, ...],
            quiet: bool) -> None:
    """Rewrite Parquet rows in a uniformly random order (for data sorted by time or label), in fixed memory."""
    from .tools.shuffle import shuffle as run

    result = run(list(data), output, memory_limit=parse_bytes(memory_limit), seed=seed,
                 storage_options=_storage_options(storage_option), progress=None if quiet else _progress_bar)
    what = "already shuffled, nothing to do:" if result["skipped"] else "wrote"
    click.echo(f"{what} {result['rows']} rows in {len(result['files'])} files -> {output}", err=True)


@cli.command()
@click.argument("data", nargs=-1, required=True)
@click.option("--target", "--y-array", default=DEFAULT_TARGET, show_default=True)
@click.option("--features", multiple=True)
@_EXCLUDE
@_CATEGORICAL
@store_options
@click.option("--batch", type=int, default=FitConfig.batch, show_default=True)
@click.option("--steps", type=int, default=None, help="Also report how many full epochs this many updates make.")
@click.option("--memory-limit", default=f"{DEFAULT_MEMORY_LIMIT // 2**20}MiB", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default=FitConfig.dtype, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def info(data: str, target: str, features: tuple[str, ...], exclude: tuple[str, ...], categorical: tuple[str, ...],
         batch: int, steps: int | None, memory_limit: str, dtype: str, as_json: bool, **store: Any) -> None:
    """Rows, chunks, iterations per epoch, and the memory full-batch GD would need vs streaming."""
    from .tools.describe import describe

    config = FitConfig(target=target, features=_split(features), exclude=_split(exclude), batch=batch, steps=steps,
                       memory_limit=parse_bytes(memory_limit), dtype=dtype, categorical=_split(categorical))
    result = describe(_open(data, target, config.features, store, memory_limit=config.memory_limit,
                            exclude=config.exclude, categorical=config.categorical), config)
    if as_json:
        click.echo(json.dumps(result))
    else:
        columns, skipped, warnings = result.pop("columns"), result.pop("skipped"), result.pop("warnings")
        for key, value in result.items():
            click.echo(f"{key:>22}  {value}")
        for c in columns:  # one line per column: a list of 100 would be unreadable on one
            nulls = f"  nulls {c['null_count']}" if c.get("null_count") is not None else ""
            read_as = f" as {c['read_as']}" if "read_as" in c else ""
            click.echo(f"{'column':>22}  {c['name']}  {c['role']}  {c['type']}{read_as}{nulls}")
        for name, reason in skipped.items():
            click.echo(f"{'skipped':>22}  {name}  {reason}")
        for w in warnings:
            click.echo(f"{'warning':>22}  {w['message']}")


@cli.command()
@click.argument("out")
@click.option("--rows", type=int, required=True)
@click.option("--features", type=int, required=True)
@click.option("--task", type=click.Choice(["linear", "logistic", "softmax"]), default="logistic", show_default=True)
@click.option("--classes", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the true weights (and the rows, unless --sample-seed).")
@click.option("--sample-seed", type=int, default=None, help="Seeds the rows only: same model, fresh rows (held-out sets).")
@click.option("--row-group-rows", type=int, default=65536, show_default=True)
@click.option("--sorted", "sorted_by_label", is_flag=True, help="Order rows by label (hardest case for a shuffle).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "zarr"]), default="parquet", show_default=True)
@click.option("--compression", type=click.Choice(["none", "snappy", "zstd", "gzip"]), default="snappy", show_default=True)
def generate(out: str, fmt: str, **options: Any) -> None:
    """Write synthetic data with known true weights to OUT, in fixed memory."""
    from .tools.generate import generate as run

    _check_output_dir(out, "OUT")
    info = run(out, format=fmt, **options)
    click.echo(f"wrote {info['rows']} rows ({options['task']}) -> {out}", err=True)


class _ProgressBar:
    """One self-rewriting stderr line; only used when stderr is a terminal."""

    def __call__(self, record: dict[str, Any]) -> None:
        if record.get("event") != "progress":
            return
        done, total = record["iteration"], record["total_iterations"]
        rate = record["rows_per_second"]
        eta = (total - done) / done * record["seconds"] if done else math.nan
        sys.stderr.write(
            f"\repoch {record['epoch']}  iter {done}/{total}  loss {record['loss']:.4g}  "
            f"{rate:,.0f} rows/s  ETA {eta:,.0f}s   "
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated integers, e.g. 16,64,256; got {text!r}") from None


def _json_safe(obj: Any) -> Any:
    """NaN and infinity become null: strict JSON for other tools."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


@cli.command("tune-batch")
@click.argument("data", nargs=-1, required=True)
@click.option("--target", "--y-array", default=DEFAULT_TARGET, show_default=True)
@click.option("--features", multiple=True)
@_EXCLUDE
@store_options
@click.option("--model", type=click.Choice(MODELS), default=FitConfig.model, show_default=True)
@click.option("--validation", default=None, help="Held-out data set; default: --holdout of the chunks.")
@click.option("--holdout", type=float, default=0.2, show_default=True, help="Share of chunks held out.")
@click.option("--batches", default="16,32,64,128,256,512,1024", show_default=True, help="Trial batch sizes.")
@click.option("--timing-batches", default="16,64,256,1024,4096", show_default=True)
@click.option("--trial-rows", type=int, default=None, help="Rows per trial; default: one pass.")
@click.option("--timing-rows", type=int, default=200_000, show_default=True)
@click.option("--min-gain", type=float, default=0.01, show_default=True,
              help="Knee: gain per doubling of B below this fraction of the loss.")
@click.option("--lr", type=float, default=None)
@click.option("--l2", type=float, default=FitConfig.l2, show_default=True)
@click.option("--seed", type=int, default=FitConfig.seed, show_default=True)
@click.option("--memory-limit", default=f"{DEFAULT_MEMORY_LIMIT // 2**20}MiB", show_default=True)
@click.option("--missing", type=click.Choice(["impute", "error"]), default=FitConfig.missing, show_default=True,
              help="Numeric nulls: the column's mean plus a <col>__missing indicator, or refuse them.")
@click.option("--dtype", type=click.Choice(DTYPES), default=FitConfig.dtype, show_default=True)
@click.option("--plot", "plot_path", default=None, help="Also write the tuning figure (PNG); needs streamsgd[plot].")
@click.option("--json", "as_json", is_flag=True)
def tune_batch(data, target, features, exclude, validation, holdout, batches, timing_batches, trial_rows, timing_rows,
               min_gain, plot_path, as_json, memory_limit, **options):
    """Time τ_f, τ_d and measure the gradient noise on DATA; suggest a batch size."""
    from .tools.tune import TuneOptions, plot_tuning, tune

    store = _store(options)
    config = FitConfig(target=target, features=_split(features), exclude=_split(exclude),
                       memory_limit=parse_bytes(memory_limit), **options)
    if plot_path:
        _check_output_dir(plot_path, "--plot")
    source = _open(data, target, config.features, store, memory_limit=config.memory_limit, exclude=config.exclude)
    _fit_allocator(source)
    val = _open(validation, target, list(source.features), store) if validation else None
    result = tune(source, config, TuneOptions(holdout=holdout, batches=_ints(batches, "--batches"),
                  timing_batches=_ints(timing_batches, "--timing-batches"), trial_rows=trial_rows,
                  timing_rows=timing_rows, min_gain=min_gain), validation=val,
                  on_trial=lambda t: click.echo(f"  B={t['batch']:>6}  val loss {t['val_loss']:.6g}  "
                                                f"{t['seconds']:.2f}s", err=True))
    if plot_path:
        plot_tuning(result, plot_path)
    if as_json:
        click.echo(json.dumps(_json_safe(result)))
    else:
        r = result
        click.echo(f"tau_f {r['tau_f'] * 1e6:.3g} us/iteration   tau_d {r['tau_d'] * 1e9:.3g} ns/row")
        click.echo(f"B_simple {r['b_simple']:.4g}   N_iter {r['n_iter']:.4g}   C_var {r['c_var']:.4g}")
        click.echo(f"b_opt {r['b_opt']:.4g}  -> --batch {r['batch']}   knee of a + c/B: {r['knee_batch']}")


@cli.command()
@click.argument("metrics", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="PNG to write.")
@click.option("--x", "x_axis", type=click.Choice(["iteration", "rows_seen", "seconds", "batch"]), default="iteration",
              show_default=True)
@click.option("--log-y", is_flag=True, help="Logarithmic loss axis.")
def plot(metrics, output, x_axis, log_y):
    """Draw the loss curves of METRICS files (written by fit --metrics) into a PNG."""
    from .tools.plot import plot_metrics

    _check_output_dir(output, "--output")
    plot_metrics(list(metrics), output, x=x_axis, log_y=log_y)
    click.echo(f"wrote {output}", err=True)


def _report(session: Session, kind: str, message: str, code: int) -> None:
    """The run's last word: one line on stderr (a JSON object in --log-format json), then exit."""
    if session.log is not None and session.log.format == "json":
        session.log.error(message, outcome=kind, exit_code=code)
    else:
        click.echo(f"streamsgd: {kind}: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every expected failure is one line on stderr and a documented exit code."""
    tune_allocator()  # before pyarrow is imported: the CLI imports it lazily
    try:
        session = Session(tuned=True)
    except UsageError as exc:  # the retry policy's environment variables
        click.echo(f"streamsgd: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    try:
        cli.main(args=argv, prog_name="streamsgd", standalone_mode=False, obj=session)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"streamsgd: error: {exc.format_message()}", err=True)
        sys.exit(UsageError.exit_code if isinstance(exc, click.UsageError) else exc.exit_code)
    except RunStopped as exc:
        _report(session, "interrupted", str(exc), exc.exit_code)
    except StreamSGDError as exc:
        _report(session, "error", str(exc), exc.exit_code)
    except Exception as exc:
        # an object store's credential failure can surface from any call into s3fs: one
        # line saying how to pass credentials, not botocore's traceback; anything else is a bug
        from .sources.retry import credential_problem, credentials_error

        problem = credential_problem(exc)
        if problem is None:
            raise
        urls = [a for a in (sys.argv[1:] if argv is None else argv) if "://" in a and "=" not in a]
        error = credentials_error(urls[0] if urls else "the object store", problem)
        _report(session, "error", str(error), error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort) as exc:  # click turns Ctrl-C into Abort
        _report(session, "interrupted", "stopped at once; no output was written", getattr(exc, "exit_code", EXIT_INTERRUPTED))
    sys.exit(0)
