"""Synthetic data with known true weights, streamed to disk (Parquet or Zarr) in fixed memory.

Rows of row group ``k`` come from ``default_rng([sample_seed, k])``, so any row group can
be regenerated on its own; ``sorted`` output is made by regenerating the data once per
class and keeping that class's rows, which orders a file of any size by label while
holding at most two row groups in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from ..errors import UsageError
from ..persist.atomic import atomic_directory, atomic_file

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


def _row_groups(task, params, rows, row_group_rows, sample_seed, sorted_by_label, classes):
    """Rows in groups of exactly ``row_group_rows`` (the last may be shorter)."""
    if not sorted_by_label:
        yield from _chunks(task, params, rows, row_group_rows, sample_seed)
        return
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
                yield X_all[:row_group_rows], y_all[:row_group_rows]
                buf_X, buf_y = [X_all[row_group_rows:]], [y_all[row_group_rows:]]
                held -= row_group_rows
    if held:
        yield np.concatenate(buf_X), np.concatenate(buf_y)


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
    format: str = "parquet",
) -> dict:
    """Write ``rows`` rows to ``out``, atomically.

    Parquet: feature columns x0..x{d-1} (float32) and ``y``, row groups of
    ``row_group_rows``. Zarr (format 3): arrays ``X`` (rows x d, float32, chunks of
    ``row_group_rows`` rows, feature names in its attributes) and ``y``.
    """
    if task not in TASKS:
        raise UsageError(f"--task: expected one of {', '.join(TASKS)}; got {task!r}")
    if format not in ("parquet", "zarr"):
        raise UsageError(f"--format: expected parquet or zarr; got {format!r}")
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
    info = {
        "task": task, "seed": seed, "sample_seed": sample_seed, "rows": rows,
        "coef": params["coef"].tolist(), "intercept": params["intercept"].tolist(),
        "loc": params["loc"].tolist(), "scale": params["scale"].tolist(),
        "note": "coef/intercept act on standardised features (x - loc) / scale",
    }
    groups = _row_groups(task, params, rows, row_group_rows, sample_seed, sorted_by_label, classes)
    if format == "zarr":
        with atomic_directory(out) as tmp:
            _write_zarr(tmp, groups, info, rows, features, row_group_rows, compression)
        return info
    with atomic_file(out) as f:
        _write_parquet(f, groups, info, features, row_group_rows, compression)
    return info


def _write_parquet(path, groups, info, features, row_group_rows, compression) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    y_type = pa.float64() if info["task"] == "linear" else pa.int64()
    schema = pa.schema([(f"x{j}", pa.float32()) for j in range(features)] + [("y", y_type)]).with_metadata(
        {"streamsgd": json.dumps(info)}
    )
    # random floats never repeat: dictionary encoding would only inflate the file
    with pq.ParquetWriter(path, schema, compression=compression, use_dictionary=False) as writer:
        for X, y in groups:
            t = pa.Table.from_arrays([pa.array(X[:, j]) for j in range(features)] + [pa.array(y)], schema=schema)
            writer.write_table(t, row_group_size=row_group_rows)


def _write_zarr(path, groups, info, rows, features, row_group_rows, compression) -> None:
    import zarr
    from zarr.codecs import GzipCodec, ZstdCodec

    codec = {"none": None, "zstd": ZstdCodec(), "gzip": GzipCodec()}.get(compression, ZstdCodec())
    compressors = [codec] if codec is not None else None
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs["streamsgd"] = info
    X_out = group.create_array("X", shape=(rows, features), chunks=(row_group_rows, features), dtype="float32",
                               compressors=compressors)
    X_out.attrs["feature_names"] = [f"x{j}" for j in range(features)]
    y_out = group.create_array("y", shape=(rows,), chunks=(row_group_rows,),
                               dtype="float64" if info["task"] == "linear" else "int64", compressors=compressors)
    start = 0
    for X, y in groups:
        X_out[start : start + len(y)] = X
        y_out[start : start + len(y)] = y
        start += len(y)
