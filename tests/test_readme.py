"""The README's examples, run for real, so the user's manual cannot drift from the code.

Fenced blocks are found by their info string (```toml job-file, ```crontab, ```json log-lines,
```python api-example, ```sh quick-start). The job file is loaded with the real loader and run
with ``fit --config``; the crontab line's command is run as cron would run it, stopped by
SIGTERM after its first checkpoint (read from its own JSON log, no sleeping), then resumed;
the log examples are checked against the events real runs emit; the exit-code table against
``streamsgd.errors``; the quick start and the Python example are executed.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import STREAMSGD, run_cli

from streamsgd import errors
from streamsgd.tools.generate import generate
from streamsgd.run.jobfile import canonical, load_config
from streamsgd.persist.model import load

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")

#: The job file's knobs the tests change besides paths: small shuffle windows and one reader,
#: so that a 200,000-row run lasts long enough after its first checkpoint to be stopped.
SCALE = {"memory_limit": '"2MB"', "readers": "1"}
PATH_KEYS = ("data", "output", "metrics", "checkpoint_dir")


def blocks(lang: str, marker: str = "") -> list[str]:
    """The bodies of the README's fenced blocks whose info string is ``lang [marker]``."""
    pattern = re.compile(r"^```(\S*)[ \t]*(.*?)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
    return [body for info, extra, body in pattern.findall(TEXT) if info == lang and extra == marker]


def block(lang: str, marker: str = "") -> str:
    found = blocks(lang, marker)
    assert len(found) == 1, f"README.md: expected one ```{lang} {marker} block, found {len(found)}"
    return found[0]


def section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}\s*$(.*?)(?=^#)", TEXT, re.M | re.S)
    assert match, f"README.md: no section {heading!r}"
    return match.group(1)


def rewrite_job(text: str, values: dict[str, str]) -> str:
    """The job file with the top-level keys in ``values`` (canonical names) set to TOML values."""
    lines, done = [], set()
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+)\s*=", line)
        name = canonical(match.group(1)) if match else None
        if name in values:
            line = f"{match.group(1)} = {values[name]}"
            done.add(name)
        lines.append(line)
    missing = [f"{name} = {value}" for name, value in values.items() if name not in done]
    return "\n".join(missing + lines) + "\n"  # top-level keys first: before any [table]


def job_in(workdir: Path, events: Path) -> tuple[str, dict]:
    """The README's job file with paths under ``workdir`` (data: ``events``), and its options."""
    readme = load_config_text(block("toml", "job-file"), workdir / "readme-job.toml")
    paths = {"data": events}
    for key in PATH_KEYS[1:]:
        assert key in readme, f"the README's job file should show {key}"
        paths[key] = workdir / readme[key]
        paths[key].parent.mkdir(parents=True, exist_ok=True)
    values = {**{k: json.dumps(str(p)) for k, p in paths.items()}, **SCALE}
    return rewrite_job(block("toml", "job-file"), values), readme


def load_config_text(text: str, path: Path) -> dict:
    path.write_text(text)
    return load_config(str(path))


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    """Hive-partitioned Parquet like the job file's data: two days, target named as in the file."""
    target = load_config_text(block("toml", "job-file"), tmp_path_factory.mktemp("cfg") / "job.toml")["target"]
    root = tmp_path_factory.mktemp("events")
    for day in (1, 2):
        raw = root / f"raw-{day}.parquet"
        generate(str(raw), rows=100_000, features=10, task="logistic", seed=4, sample_seed=day,
                 row_group_rows=2_000)
        table = pq.read_table(raw)
        table = table.rename_columns([target if c == "y" else c for c in table.column_names])
        (root / "events" / f"day={day}").mkdir(parents=True)
        pq.write_table(table, root / "events" / f"day={day}" / "part-0.parquet", row_group_size=2_000)
        raw.unlink()
    return root / "events"


@pytest.fixture(scope="module")
def uninterrupted(events, tmp_path_factory):
    """``streamsgd fit --config job.toml`` with the README's job file, run to the end."""
    workdir = tmp_path_factory.mktemp("job")
    text, readme = job_in(workdir, events)
    (workdir / "job.toml").write_text(text)
    proc = run_cli("fit", "--config", workdir / "job.toml", "--log-format", "json", cwd=workdir)
    return proc, load_config(str(workdir / "job.toml")), readme


def crontab_command() -> tuple[str, list[str]]:
    """The crontab line's directory and command (after ``cd DIR &&``, redirection dropped)."""
    lines = [ln for ln in block("crontab").splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), lines[0]
    cd, sep, command = fields[5].partition("&&")
    assert sep and cd.split()[0] == "cd", "the crontab line should cd into the job's directory first"
    command = re.sub(r"\s+2>>?\s*\S+\s*$", "", command.strip())
    argv = shlex.split(command)
    assert argv[:2] == ["streamsgd", "fit"], argv
    return cd.split()[1], [STREAMSGD, *argv[1:]]


@pytest.fixture(scope="module")
def cron_runs(events, tmp_path_factory):
    """The crontab command run twice in the job's directory: SIGTERM'd after its first
    checkpoint, then again (its --resume continues). Returns both processes' results."""
    _, argv = crontab_command()
    workdir = tmp_path_factory.mktemp("srv")
    text, _ = job_in(workdir, events)
    (workdir / argv[argv.index("--config") + 1]).write_text(text)

    first = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in first.stderr:
        seen.append(line)
        if json.loads(line)["event"] == "checkpoint":
            first.send_signal(signal.SIGTERM)
            break
    _, rest = first.communicate(timeout=120)
    first_log = "".join(seen) + rest
    model_after_first = Path(load_config(str(workdir / argv[argv.index("--config") + 1]))["output"]).exists()
    second = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=120)
    return {"first": (first.returncode, first_log), "second": (second.returncode, second.stderr),
            "model_after_first": model_after_first,
            "config": load_config(str(workdir / argv[argv.index("--config") + 1])), "workdir": workdir}


def events_of(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


# --- the job file ----------------------------------------------------------------------------


def test_the_job_file_loads_and_runs_with_fit_config(uninterrupted):
    proc, config, readme = uninterrupted
    assert {"data", "target", "model", "output", "checkpoint_dir", "checkpoint_every"} <= readme.keys()
    summary = events_of(proc.stderr)[-1]
    assert summary["event"] == "summary"
    model = load(config["output"])
    stored = model.metadata["config"]
    for key in ("model", "target", "batch", "epochs", "l2", "seed"):
        assert stored[key] == readme[key], key  # the file's options are the model's
    assert model.target == readme["target"]
    assert Path(config["metrics"]).stat().st_size > 0
    checkpoints = [e for e in events_of(proc.stderr) if e["event"] == "checkpoint"]
    assert checkpoints  # it checkpointed while it ran; the model written, they are deleted
    assert not sorted(Path(config["checkpoint_dir"]).glob("ckpt-*.npz"))


# --- the crontab line ------------------------------------------------------------------------


def test_the_crontab_command_stopped_by_sigterm_exits_143_and_resumes(cron_runs, uninterrupted):
    code, log = cron_runs["first"]
    assert code == errors.EXIT_TERMINATED == 143, log
    last = events_of(log)[-1]
    assert last["event"] == "error" and last["exit_code"] == 143
    assert not cron_runs["model_after_first"]  # a stopped run writes no model

    code, log = cron_runs["second"]
    assert code == 0, log
    records = events_of(log)
    start = next(r for r in records if r["event"] == "start")
    assert start["resumed_at"] > 0
    assert records[-1]["event"] == "summary"
    resumed, reference = load(cron_runs["config"]["output"]), load(uninterrupted[1]["output"])
    for name in ("coef", "mean", "scale"):  # the resumed run is the uninterrupted one, bit for bit
        np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
    assert resumed.intercept == reference.intercept


# --- the log format --------------------------------------------------------------------------


def test_log_examples_have_the_fields_real_runs_emit(cron_runs, uninterrupted):
    real: dict[str, set[str]] = {}
    for log in (cron_runs["first"][1], cron_runs["second"][1], uninterrupted[0].stderr):
        for record in events_of(log):
            real.setdefault(record["event"], set()).update(record)
    examples = [json.loads(line) for line in block("json", "log-lines").splitlines() if line.strip()]
    kinds = [e["event"] for e in examples]
    assert sorted(kinds) == sorted({"start", "epoch", "checkpoint", "warning", "error", "summary"}), kinds
    for example in examples:
        kind = example["event"]
        assert kind in real, f"no real run emitted a {kind!r} event"
        extra = set(example) - real[kind]
        assert not extra, f"README's {kind!r} example has fields real runs do not emit: {sorted(extra)}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", example["time"])


# --- the exit codes --------------------------------------------------------------------------


def documented_exit_codes() -> dict[int, str]:
    rows = {}
    for line in section("Exit codes").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = line
    return rows


def subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]


def test_exit_code_table_matches_streamsgd_errors():
    table = documented_exit_codes()
    ours = {0, errors.StreamSGDError.exit_code, errors.EXIT_INTERRUPTED, errors.EXIT_TERMINATED}
    for cls in subclasses(errors.StreamSGDError):
        assert cls.exit_code in table, f"{cls.__name__}'s exit code {cls.exit_code} is not in the README"
        assert f"`{cls.__name__}`" in table[cls.exit_code], f"{cls.__name__} not named in row {cls.exit_code}"
        ours.add(cls.exit_code)
    assert set(table) == ours, f"README codes {sorted(table)} vs streamsgd.errors {sorted(ours)}"
    assert "SIGINT" in table[errors.EXIT_INTERRUPTED] and "SIGTERM" in table[errors.EXIT_TERMINATED]


# --- quick start and Python API --------------------------------------------------------------


def test_quick_start_runs(tmp_path):
    """The quick start's commands as written, on fewer rows."""
    outputs = []
    for line in block("sh", "quick-start").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        argv = shlex.split(re.sub(r"--rows \d+", "--rows 20000", line))
        assert argv[0] == "streamsgd", line
        outputs.append(run_cli(*argv[1:], cwd=tmp_path).stdout)
    evaluated = json.loads(next(o for o in outputs if o.startswith("{")))
    assert evaluated["rows"] == 20000 and evaluated["accuracy"] > 0.6
    assert (tmp_path / "predictions.parquet").exists() and (tmp_path / "metrics.jsonl").exists()


def test_python_api_example_runs(tmp_path, monkeypatch):
    generate(str(tmp_path / "train.parquet"), rows=20_000, features=6, task="logistic", seed=2, row_group_rows=5_000)
    generate(str(tmp_path / "test.parquet"), rows=5_000, features=6, task="logistic", seed=2, sample_seed=9,
             row_group_rows=5_000)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(block("python", "api-example"), "README.md:api-example", "exec"), namespace)
    model, X, y = namespace["model"], namespace["X"], namespace["y"]
    assert namespace["p"].shape == (X.shape[0],) and model.score(X, y) > 0.6
    np.testing.assert_allclose(namespace["sk"].decision_function(X), model.decision_function(X))
    assert (tmp_path / "model.npz").exists()


def test_torch_example_trains_on_a_file_larger_than_its_limit(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    # one intra-op thread: two spinning OpenMP threads on a busy 2-core CI machine make this
    # tiny network 7x slower (measured 52 s vs 7 s an epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generate(str(tmp_path / "big.parquet"), rows=400_000, features=12, task="logistic", seed=3,
             row_group_rows=20_000)
    assert (tmp_path / "big.parquet").stat().st_size > 16 * 2**20
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(block("python", "torch-example"), "README.md:torch-example", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert namespace["seen"] == -(-400_000 // 512)  # a whole epoch, every batch once
    assert namespace["loss"].item() < 0.6  # better than the 0.69 of a coin flip on these labels
