"""Synthetic data with known true weights, streamed to disk in fixed memory.

Rows of row group ``k`` come from ``default_rng([sample_seed, k])``, so any row group can
be regenerated on its own; ``sorted`` output is made by regenerating the data once per
class and keeping that class's rows, which orders a file of any size by label while
holding at most two row groups in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from .errors import UsageError

TASKS = ("linear", "logistic", "softmax")
NOISE = 0.5  # standard deviation of the linear task's additive noise


def true_parameters(task: str, features: int, classes: int, seed: int) -> dict[str, NDArray]:
    """Feature offsets/scales and the true weights, all drawn from ``seed``."""
    rng = np.random.default_rng([seed, 2**31])
    params = {
        "loc": rng.uniform(-2, 2, features),
        "scale": np.exp(rng.uniform(-1, 1, features)),
    }
    # margins of standard deviation ~2 give a learnable but noisy classification problem
    k = classes if task == "softmax" else 1
    params["coef"] = rng.standard_normal((k, features)) * (2.0 / np.sqrt(features))
    params["intercept"] = rng.standard_normal(k) * 0.5
    return params


def _rows(task: str, params: dict, n: int, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
    Z = rng.standard_normal((n, params["loc"].size))
    X = (params["loc"] + params["scale"] * Z).astype(np.float32)
    margins = Z @ params["coef"].T + params["intercept"]
    if task == "linear":
        y = margins[:, 0] + NOISE * rng.standard_normal(n)
    elif task == "logistic":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-margins[:, 0]))).astype(np.int64)
    else:
        p = np.exp(margins - margins.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).astype(np.int64)
    return X, y


def _chunks(task, params, rows, row_group_rows, sample_seed) -> Iterator[tuple[NDArray, NDArray]]:
    for k, start in enumerate(range(0, rows, row_group_rows)):
        n = min(row_group_rows, rows - start)
        yield _rows(task, params, n, np.random.default_rng([sample_seed, k]))


def generate(
    out: str,
    rows: int,
    features: int,
    task: str = "logistic",
    classes: int = 2,
    seed: int = 0,
    sample_seed: int | None = None,
    row_group_rows: int = 65536,
    sorted_by_label: bool = False,
    compression: str = "snappy",
) -> dict:
    """Write a Parquet file of ``rows`` rows: feature columns x0..x{d-1} (float32) and ``y``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if task not in TASKS:
        raise UsageError(f"--task: expected one of {', '.join(TASKS)}; got {task!r}")
    for option, value in (("--rows", rows), ("--features", features), ("--row-group-rows", row_group_rows)):
        if value < 1:
            raise UsageError(f"{option}: expected an integer >= 1; got {value}")
    if task == "softmax" and classes < 2:
        raise UsageError(f"--classes: softmax needs at least 2 classes; got {classes}")
    if sorted_by_label and task == "linear":
        raise UsageError("--sorted orders rows by class label; use it with --task logistic or softmax")
    classes = 2 if task == "logistic" else classes
    params = true_parameters(task, features, classes, seed)
    sample_seed = seed if sample_seed is None else sample_seed
    names = [f"x{j}" for j in range(features)]
    info = {
        "task": task, "seed": seed, "sample_seed": sample_seed, "rows": rows,
        "coef": params["coef"].tolist(), "intercept": params["intercept"].tolist(),
        "loc": params["loc"].tolist(), "scale": params["scale"].tolist(),
        "note": "coef/intercept act on standardised features (x - loc) / scale",
    }
    y_type = pa.float64() if task == "linear" else pa.int64()
    schema = pa.schema([(n, pa.float32()) for n in names] + [("y", y_type)]).with_metadata(
        {"streamsgd": json.dumps(info)}
    )

    def write(X, y):
        t = pa.Table.from_arrays([pa.array(X[:, j]) for j in range(features)] + [pa.array(y)], schema=schema)
        writer.write_table(t, row_group_size=row_group_rows)

    directory = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=directory)
    os.close(fd)
    try:
        # random floats never repeat: dictionary encoding would only inflate the file
        with pq.ParquetWriter(tmp, schema, compression=compression, use_dictionary=False) as writer:
            if not sorted_by_label:
                for X, y in _chunks(task, params, rows, row_group_rows, sample_seed):
                    write(X, y)
            else:
                buf_X, buf_y = [], []
                held = 0
                for label in range(classes):
                    for X, y in _chunks(task, params, rows, row_group_rows, sample_seed):
                        keep = y == label
                        buf_X.append(X[keep])
                        buf_y.append(y[keep])
                        held += int(keep.sum())
                        if held >= row_group_rows:
                            X_all, y_all = np.concatenate(buf_X), np.concatenate(buf_y)
                            write(X_all[:row_group_rows], y_all[:row_group_rows])
                            buf_X, buf_y = [X_all[row_group_rows:]], [y_all[row_group_rows:]]
                            held -= row_group_rows
                if held:
                    write(np.concatenate(buf_X), np.concatenate(buf_y))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return info
