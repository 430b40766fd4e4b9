"""What a model file holds, for people and for scripts: ``streamsgd show MODEL``.

Everything comes through :func:`streamsgd.model.load`, the loader ``predict`` and
``evaluate`` use, so ``show`` reports exactly what they would apply: the features and the
target (with their roles), the coefficients in the raw feature space, the intercept, the
standardisation (mean and scale per feature), the classes, and the run that wrote the file
(its options and its final metrics).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..persist.model import Model
from ..train.naming import top_buckets


def describe_model(model: Model, top: int | None = None) -> dict[str, Any]:
    """The model as plain JSON values.

    Parameters
    ----------
    model : Model
        As loaded from a file.
    top : int, optional
        Keep only the ``top`` features of largest weight (|coef|, or its largest |coef| over
        the classes for softmax), largest first; None keeps them all, in the file's order.

    Returns
    -------
    dict
        ``model``, ``target``, ``classes``, ``intercept``, ``features`` (one record per
        feature: ``name``, ``role``, ``coef``, ``mean``, ``scale``), ``n_features``,
        ``categorical`` (hashed columns, bits, weights not 0; None without), ``hashed``
        (with ``top`` and hashed weights: the ``top`` buckets of largest weight, named by
        :func:`hashed_top`; else None), ``metrics`` and ``config`` (the training run's
        summary and options).
    """
    coef = np.asarray(model.coef, dtype=np.float64)
    per_class = coef.ndim == 2  # softmax: one row of weights per class
    weight = np.abs(coef).max(axis=0) if per_class else np.abs(coef)
    order = np.argsort(-weight, kind="stable") if top is not None else np.arange(weight.size)
    if top is not None:
        order = order[: max(0, top)]
    mean, scale = np.asarray(model.mean, dtype=np.float64), np.asarray(model.scale, dtype=np.float64)
    features = [
        {"name": model.features[j], "role": "feature",
         "coef": None if model.layers is not None else coef[:, j].tolist() if per_class else float(coef[j]),
         "mean": _at(mean, j), "scale": _at(scale, j)}
        for j in order
    ]
    meta = model.metadata
    table = model.hashed if model.embedding is None else model.embedding  # the hashed columns' weights
    return {
        "model": model.model,
        "target": {"name": model.target, "role": "target", "type": meta.get("target_type")},
        "classes": np.asarray(model.classes_).tolist() if model.is_classifier else None,
        "intercept": None if model.layers is not None else np.asarray(model.intercept, dtype=np.float64).tolist(),
        # an MLP (--hidden): its widths from input to output, and the hidden activation
        "network": None if model.layers is None else {
            "widths": [len(model.features), *(int(W.shape[0]) for W, _ in model.layers)],
            "activation": meta["mlp"]["activation"]},
        "n_features": len(model.features),
        "features": features,
        # hashed categorical columns: their encoding and how many of the 2^bits weights are not 0
        # (an MLP's: the entries of its first layer's embedding, 2^bits rows of H1)
        "categorical": None if table is None else {
            "columns": model.hashed_columns, "bits": meta["categorical"]["bits"],
            "interactions": meta["categorical"].get("interactions", []),
            "nonzero_weights": int(np.count_nonzero(table)),
            # softmax's table holds a weight per class in each bucket (compute.sparse_multi)
            "weights_per_bucket": 1 if table.ndim == 1 or model.embedding is not None else int(table.shape[1]),
            **({} if model.embedding is None else {"embedding_width": int(model.embedding.shape[1])})},
        "hashed": None if top is None or model.hashed is None else hashed_top(model, top),
        "metrics": meta.get("metrics", {}),
        "config": meta.get("config", {}),
        "version": meta.get("version"),
    }


def hashed_top(model: Model, top: int) -> list[dict[str, Any]]:
    """The ``top`` hashed buckets of largest |weight| (softmax: largest over the classes),
    largest first: ``bucket``, ``column`` and ``value`` (the first value of the training
    sample that hashed there, ``train.naming``; None when the sample held none, or the file
    was written without names), ``weight`` (the value's: sign·bucket weight; the bucket's
    own without a name) and ``values_in_sample`` (distinct values of the sample in the
    bucket: more than 1 is a collision)."""
    assert model.hashed is not None
    table = np.asarray(model.hashed, dtype=np.float64)
    names = {r["bucket"]: r for r in model.metadata.get("hashed_names", {}).get("buckets", [])}
    out = []
    for b in top_buckets(table, top).tolist():
        named = names.get(b)
        weight = table[b] * (named["sign"] if named else 1)
        out.append({"bucket": b, "column": named["column"] if named else None,
                    "value": named["value"] if named else None,
                    "weight": weight.tolist() if table.ndim == 2 else float(weight),
                    "values_in_sample": named["values_in_sample"] if named else None})
    return out


def _at(values: np.ndarray, j: int) -> float | None:
    """``values[j]`` as a float; None where the file stores no per-feature value."""
    return float(values[j]) if values.ndim == 1 and j < values.size else None


def format_model(info: dict[str, Any]) -> list[str]:
    """``describe_model``'s result as aligned text lines."""
    lines = [f"model      {info['model']}  ({info['n_features']} features, target {info['target']['name']!r})"]
    if info["classes"] is not None:
        lines.append(f"classes    {', '.join(map(str, info['classes']))}")
    if info.get("network"):
        net = info["network"]
        lines.append(f"network    {' -> '.join(map(str, net['widths']))} ({net['activation']})")
    lines.append(f"intercept  {_number(info['intercept'])}")
    if info["features"]:
        width = max(len("feature"), *(len(f["name"]) for f in info["features"]))
        lines.append(f"{'feature':<{width}}  {'role':<8} {'coef':>12}  {'mean':>12}  {'scale':>12}")
        for f in info["features"]:
            lines.append(f"{f['name']:<{width}}  {f['role']:<8} {_number(f['coef']):>12}  "
                         f"{_number(f['mean']):>12}  {_number(f['scale']):>12}")
    if info.get("categorical"):
        cat = info["categorical"]
        crossed = f" x {', '.join(cat['interactions'])}" if cat["interactions"] else ""
        per = cat.get("weights_per_bucket", 1)
        into = f"2^{cat['bits']} weights" if per == 1 else f"2^{cat['bits']} buckets of {per} weights, one per class"
        if "embedding_width" in cat:
            into = f"2^{cat['bits']} rows of the first layer's {cat['embedding_width']}-wide embedding"
        lines.append(f"categorical  {', '.join(cat['columns'])}{crossed}  (hashed into {into}, "
                     f"{cat['nonzero_weights']} not 0)")
    lines += _hashed_lines(info.get("hashed") or [])
    metrics = info["metrics"]
    summary = [f"{k} {_number(metrics[k])}" for k in ("iterations", "epochs", "rows_seen", "loss", "seconds")
               if k in metrics]
    if summary:
        lines.append("trained    " + "  ".join(summary))
    config = info["config"]
    options = [f"{k}={config[k]}" for k in ("batch", "lr", "l2", "l1", "optimizer", "seed") if k in config]
    if options:
        lines.append("options    " + " ".join(options))
    return lines


def _hashed_lines(buckets: list[dict[str, Any]]) -> list[str]:
    """One line per top hashed bucket: ``column=value  weight`` (pairs ``a=x & b=y``), or
    ``bucket 123 (not in the sample)``; ``(+N colliding)`` where the sample put more values there."""
    labels = [_bucket_label(b) for b in buckets]
    width = max([len("hashed"), *map(len, labels)])
    lines = [f"{'hashed':<{width}}  {'weight':>12}"] if buckets else []
    for label, b in zip(labels, buckets):
        more = (b["values_in_sample"] or 1) - 1
        lines.append(f"{label:<{width}}  {_number(b['weight']):>12}" + (f"  (+{more} colliding)" if more else ""))
    return lines


def _bucket_label(bucket: dict[str, Any]) -> str:
    """``column=value``, ``a=x & b=y`` for a crossed pair, or the bucket's number without a name."""
    if bucket["column"] is None:
        return f"bucket {bucket['bucket']} (not in the sample)"
    show = [("(null)" if v is None else str(v)) for v in
            (bucket["value"] if isinstance(bucket["value"], list) else [bucket["value"]])]
    return " & ".join(f"{c}={v}" for c, v in zip(bucket["column"].split(":"), show)) if len(show) > 1 \
        else f"{bucket['column']}={show[0]}"


def _number(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)
