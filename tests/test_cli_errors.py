"""Bad input through the real CLI: one clear stderr line, a documented exit code, no
traceback, nothing on stdout, and no output file (nor a stray temporary) left behind.

Each case runs the installed ``streamsgd`` console script as a subprocess, so what is
checked is exactly what a user sees. Exit codes (streamsgd/errors.py): usage 2, data 3,
source/storage 4, divergence 5, model file 6.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

STREAMSGD = os.path.join(os.path.dirname(sys.executable), "streamsgd")

USAGE, DATA, SOURCE, DIVERGED, MODEL_FILE = 2, 3, 4, 5, 6

ROWS, GROUP = 40, 10  # four row groups of ten rows: bad values go in row group 2


def _write(path, columns: dict, row_group_size: int = GROUP) -> None:
    pq.write_table(pa.table(columns), str(path), row_group_size=row_group_size)


def _good_columns(rows: int = ROWS) -> dict:
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=rows)
    x1 = rng.normal(size=rows)
    return {
        "x0": x0,
        "x1": x1,
        "s": pa.array([f"id{i}" for i in range(rows)]),
        "raw": pa.array([b"\x00"] * rows),  # bytes: no feature of any kind
        "y": (x0 + x1 > 0).astype(np.int64),
    }


def _with(column: str, values, rows: int = ROWS) -> dict:
    cols = _good_columns(rows)
    cols[column] = values
    return cols


def _bad_in_group_2(values: np.ndarray, bad) -> np.ndarray:
    values = values.astype(np.float64)
    values[2 * GROUP + 3] = bad  # row 23: row group 2
    return values


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shared input files, written once; the tests only ever read them."""
    d = tmp_path_factory.mktemp("data")
    good = _good_columns()
    _write(d / "good.parquet", good)

    null_x1 = pa.array([None if i == 2 * GROUP + 3 else v for i, v in enumerate(good["x1"])], pa.float64())
    _write(d / "null_feature.parquet", _with("x1", null_x1))
    null_y = pa.array([None if i == 2 * GROUP + 3 else int(v) for i, v in enumerate(good["y"])], pa.int64())
    _write(d / "null_target.parquet", _with("y", null_y))
    _write(d / "nan_feature.parquet", _with("x1", _bad_in_group_2(good["x1"], np.nan)))
    _write(d / "inf_feature.parquet", _with("x0", _bad_in_group_2(good["x0"], np.inf)))
    _write(d / "nan_target.parquet", _with("y", _bad_in_group_2(good["y"], np.nan)))
    _write(d / "inf_target.parquet", _with("y", _bad_in_group_2(good["y"], -np.inf)))

    labels = good["y"].copy()
    labels[2 * GROUP + 3] = 2
    _write(d / "labels.parquet", _with("y", labels))
    _write(d / "string_target.parquet", _with("y", pa.array(["yes" if v else "no" for v in good["y"]])))

    _write(d / "empty.parquet", {"x0": pa.array([], pa.float64()), "x1": pa.array([], pa.float64()),
                                 "y": pa.array([], pa.int64())})
    (d / "emptydir").mkdir()

    (d / "notparquet.parquet").write_text("x0,x1,y\n1,2,0\n3,4,1\n")
    raw = (d / "good.parquet").read_bytes()
    (d / "truncated.parquet").write_bytes(raw[: len(raw) // 2])

    # a directory whose second file lacks a column the first one has
    (d / "mixed").mkdir()
    _write(d / "mixed" / "a.parquet", good)
    _write(d / "mixed" / "b.parquet", {"x0": good["x0"], "y": good["y"]})

    # large raw values: a linear model with a huge step and no standardisation overflows
    rng = np.random.default_rng(1)
    big = rng.uniform(1e3, 1e4, size=(ROWS, 2))
    _write(d / "big.parquet", {"x0": big[:, 0], "x1": big[:, 1], "y": big @ np.array([2.0, -1.0])})

    # same rows, other feature names: a model trained on good.parquet cannot use it
    _write(d / "other_columns.parquet", {"a": good["x0"], "b": good["x1"], "y": good["y"]})

    (d / "not_a_model.npz").write_text("this is not a model\n")
    proc = _run("fit", str(d / "good.parquet"), "--steps", "3", "-o", str(d / "model.npz"), cwd=str(d))
    assert proc.returncode == 0, proc.stderr
    return d


def _run(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STREAMSGD, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _expand(args: tuple[str, ...], data, out) -> list[str]:
    return [a.format(d=data, o=out) for a in args]


def _assert_clean_failure(proc: subprocess.CompletedProcess, code: int, pattern: str, out) -> None:
    report = f"exit {proc.returncode}\nstdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
    assert proc.returncode == code, report
    assert "Traceback" not in proc.stderr, report
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one stderr line\n{report}"
    assert re.search(pattern, lines[0]), f"stderr does not match {pattern!r}\n{report}"
    assert proc.stdout == "", report
    assert sorted(os.listdir(out)) == [], f"output directory not empty: {sorted(os.listdir(out))}\n{report}"


# (args, exit code, regex the single stderr line must match); {d} is the data directory,
# {o} the (empty) output directory, which is also the working directory.
FIT_CASES = {
    # the data cannot be found or read
    "missing-file": (("fit", "{d}/nope.parquet"), SOURCE, r"nope\.parquet"),
    "missing-glob": (("fit", "{d}/nope-*.parquet"), SOURCE, r"nope-\*\.parquet"),
    "not-parquet": (("fit", "{d}/notparquet.parquet"), SOURCE, r"notparquet\.parquet"),
    "truncated-parquet": (("fit", "{d}/truncated.parquet"), SOURCE, r"truncated\.parquet"),
    # columns
    "missing-target": (("fit", "{d}/good.parquet", "--target", "label"), DATA, r"'label'.*--target|--target.*'label'"),
    "missing-feature": (("fit", "{d}/good.parquet", "--features", "x0,nope"), DATA, r"'nope'"),
    "non-numeric-feature": (("fit", "{d}/good.parquet", "--features", "x0,raw"), DATA, r"good\.parquet.*'raw'"),
    "non-numeric-target": (("fit", "{d}/string_target.parquet", "--model", "linear"), DATA, r"string_target\.parquet.*'y'"),
    "column-missing-in-second-file": (("fit", "{d}/mixed", "--features", "x0,x1"), DATA, r"b\.parquet.*'x1'"),
    # bad values: the message names the column and the file's row group
    "null-feature": (("fit", "{d}/null_feature.parquet", "--missing", "error"), DATA, r"null_feature\.parquet row group 2.*'x1'"),
    "null-target": (("fit", "{d}/null_target.parquet", "--missing", "error"), DATA, r"null_target\.parquet row group 2.*'y'"),
    "nan-feature": (("fit", "{d}/nan_feature.parquet"), DATA, r"nan_feature\.parquet row group 2.*'x1'"),
    "inf-feature": (("fit", "{d}/inf_feature.parquet"), DATA, r"inf_feature\.parquet row group 2.*'x0'"),
    "nan-target": (("fit", "{d}/nan_target.parquet", "--model", "linear"), DATA, r"nan_target\.parquet row group 2.*'y'"),
    "inf-target": (("fit", "{d}/inf_target.parquet", "--model", "linear"), DATA, r"inf_target\.parquet row group 2.*'y'"),
    "nan-feature-no-standardize": (
        ("fit", "{d}/nan_feature.parquet", "--no-standardize", "--lr", "0.1"), DATA, r"nan_feature\.parquet row group 2.*'x1'"),
    "labels-not-0-1": (("fit", "{d}/labels.parquet", "--model", "logistic"), DATA, r"labels\.parquet.*'y'.*logistic"),
    # nothing to train on
    "empty-file": (("fit", "{d}/empty.parquet"), DATA, r"empty\.parquet.*no rows"),
    "empty-directory": (("fit", "{d}/emptydir"), DATA, r"emptydir"),
    # options
    "batch-zero": (("fit", "{d}/good.parquet", "--batch", "0"), USAGE, r"--batch"),
    "batch-negative": (("fit", "{d}/good.parquet", "--batch", "-3"), USAGE, r"--batch"),
    "batch-not-integer": (("fit", "{d}/good.parquet", "--batch", "abc"), USAGE, r"--batch"),
    "lr-zero": (("fit", "{d}/good.parquet", "--lr", "0"), USAGE, r"--lr"),
    "lr-negative": (("fit", "{d}/good.parquet", "--lr", "-0.5"), USAGE, r"--lr"),
    "lr-nan": (("fit", "{d}/good.parquet", "--lr", "nan"), USAGE, r"--lr"),
    "memory-limit-words": (("fit", "{d}/good.parquet", "--memory-limit", "lots"), USAGE, r"--memory-limit.*lots"),
    "memory-limit-zero": (("fit", "{d}/good.parquet", "--memory-limit", "0"), USAGE, r"--memory-limit"),
    "unknown-option": (("fit", "{d}/good.parquet", "--bogus"), USAGE, r"--bogus"),
    "missing-argument": (("fit",), USAGE, r"DATA"),
    "unknown-model": (("fit", "{d}/good.parquet", "--model", "svm"), USAGE, r"--model"),
    # a missing output folder is created (a job file's models/); one that cannot be is a usage error
    "output-directory-impossible": (("fit", "{d}/good.parquet", "-o", "{d}/good.parquet/model.npz"), USAGE, r"--output"),
    # training blows up: stop, say what to change, keep no model
    "diverges": (
        ("fit", "{d}/big.parquet", "--model", "linear", "--lr", "1e6", "--no-standardize", "--lr-schedule", "constant"),
        DIVERGED, r"diverge.*--lr"),
}


APPLY_CASES = {
    "evaluate-missing-model": (("evaluate", "{o}/absent.npz", "{d}/good.parquet"), MODEL_FILE, r"absent\.npz"),
    "evaluate-corrupt-model": (("evaluate", "{d}/not_a_model.npz", "{d}/good.parquet"), MODEL_FILE, r"not_a_model\.npz"),
    "evaluate-missing-data": (("evaluate", "{d}/model.npz", "{d}/nope.parquet"), SOURCE, r"nope\.parquet"),
    "evaluate-features-absent": (("evaluate", "{d}/model.npz", "{d}/other_columns.parquet"), DATA,
                                 r"other_columns\.parquet.*'x0'.*model"),
    "evaluate-nan-feature": (("evaluate", "{d}/model.npz", "{d}/nan_feature.parquet"), DATA,
                             r"nan_feature\.parquet row group 2.*'x1'"),
    "predict-missing-model": (("predict", "{o}/absent.npz", "{d}/good.parquet", "-o", "{o}/preds.parquet"), MODEL_FILE,
                              r"absent\.npz"),
    "predict-missing-data": (("predict", "{d}/model.npz", "{d}/nope.parquet", "-o", "{o}/preds.parquet"), SOURCE,
                             r"nope\.parquet"),
    "predict-features-absent": (("predict", "{d}/model.npz", "{d}/other_columns.parquet", "-o", "{o}/preds.parquet"),
                                DATA, r"other_columns\.parquet.*'x0'.*model"),
    "predict-null-feature": (("predict", "{d}/model.npz", "{d}/null_feature.parquet", "-o", "{o}/preds.parquet"), DATA,
                             r"null_feature\.parquet row group 2.*'x1'"),
    "predict-missing-keep-column": (("predict", "{d}/model.npz", "{d}/good.parquet", "-o", "{o}/preds.parquet",
                                     "--keep", "nope"), DATA, r"'nope'.*--keep"),
}

CASES = {**FIT_CASES, **APPLY_CASES}
assert len(CASES) == len(FIT_CASES) + len(APPLY_CASES)


@pytest.fixture(scope="module")
def outcomes(request, data, tmp_path_factory):
    """Run the selected cases concurrently (each is a ~1 s process start), once per module.

    Each case gets its own empty output directory, also its working directory, so a
    default ``-o model.npz`` or a stray temporary file would show up there.
    """
    selected = {
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "callspec", None) is not None and "case" in item.callspec.params
    }
    jobs = {}
    for case in CASES:
        if case not in selected:
            continue
        args = CASES[case][0]
        out = tmp_path_factory.mktemp("out")
        argv = _expand(args, data, out)
        if argv[0] == "fit" and len(argv) > 1 and "-o" not in argv:
            argv += ["-o", str(out / "model.npz")]
        jobs[case] = (argv, out)
    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {case: pool.submit(_run, *argv, cwd=str(out)) for case, (argv, out) in jobs.items()}
        return {case: (future.result(), jobs[case][1]) for case, future in futures.items()}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly(outcomes, case):
    _, code, pattern = CASES[case]
    proc, out = outcomes[case]
    _assert_clean_failure(proc, code, pattern, out)


def test_good_input_still_works(data, tmp_path):
    """The fixtures are not broken by accident: the same commands succeed on good data."""
    out = tmp_path
    model = out / "model.npz"
    fit = _run("fit", str(data / "good.parquet"), "--steps", "3", "-o", str(model), cwd=str(out))
    assert fit.returncode == 0, fit.stderr
    assert fit.stderr == "" and "Traceback" not in fit.stdout
    preds = out / "preds.parquet"
    predict = _run("predict", str(model), str(data / "good.parquet"), "-o", str(preds), cwd=str(out))
    assert predict.returncode == 0, predict.stderr
    assert sorted(os.listdir(out)) == ["model.npz", "preds.parquet"]
    assert pq.read_metadata(str(preds)).num_rows == ROWS
