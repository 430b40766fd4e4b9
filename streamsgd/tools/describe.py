"""What a data set means for training: counts from metadata, and the memory each method needs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..config import FitConfig
from ..plan.shuffle import iterations_per_epoch
from ..sources import Source, n_rows
from ..sources.columns import describe as describe_columns
from ..train.hashed import resolve_defaults
from ..train.setup import cut_to_limit, plan_memory
from ..train.stepsize import batch_rows


def describe(source: Source, config: FitConfig) -> dict[str, Any]:
    """Counts and memory figures, read from metadata only (no data is decoded).

    ``full_batch_bytes`` is what one full-batch gradient step holds: every row's features
    and target at ``config.dtype`` plus one float64 margin per row. ``stream_bytes`` is
    what the streaming fit holds for data: its window buffer (two thirds of --memory-limit,
    up to three windows), capped by the data size.
    ``store`` is the URL's protocol (file, s3, memory …); the chunking is reported as the
    chunk count, the smallest and largest chunk in rows, and the format's own layout:
    files and row groups per file for Parquet, the chunk shape for Zarr. ``columns`` lists
    each used column with its role, type and footer null count; ``skipped`` the columns
    left out with the reason; ``warnings`` the constant and id-like features.
    """
    N = n_rows(source)
    d = len(source.features)
    itemsize = np.dtype(config.dtype).itemsize
    full = N * (d + 1) * itemsize + N * 8
    with _collected() as planned:  # the plan's own warnings (one lane), as info's rather than a bare stderr line
        cut_to_limit(source, config)  # as fit cuts it
        plan = plan_memory(source, config)
    ipe = iterations_per_epoch(N, batch_rows(config, N)) if N else 0  # rows per update, as fit takes them
    chosen, why = resolve_defaults(source, config)
    out: dict[str, Any] = {
        "url": source.url,
        "format": source.format,
        "store": "memory (arrays)",
        "rows": N,
        "chunks": len(source.chunk_rows),
        "chunk_rows_min": int(min(source.chunk_rows, default=0)),
        "chunk_rows_max": int(max(source.chunk_rows, default=0)),
        "features": d,
        "feature_names": list(source.features),
        "categorical": list(getattr(source, "categorical", ())),
        "target": source.target,
        "batch": config.batch,
        "iterations_per_epoch": ipe,
        "full_batch_bytes": full,
        "stream_bytes": min(plan.buffer_bytes, N * plan.row_bytes),
        "window_rows": plan.window_rows,
        "memory_limit": config.memory_limit,
        # what fit's --optimizer (default auto) trains this data with, and why (train.hashed)
        "optimizer": chosen.optimizer,
        "optimizer_why": why,
    }
    out.update(source.layout())  # store, and the format's own chunking (row groups, chunk shape)
    out.update(describe_columns(source, nulls=True))
    out["warnings"] += [{"kind": "plan", "message": message} for message in planned]
    if config.steps is not None and ipe:
        out["steps"] = config.steps
        out["full_epochs"] = config.steps // ipe
    return out



@contextmanager
def _collected(name: str = "streamsgd") -> Iterator[list[str]]:
    """The messages of the warnings logged on ``name`` while inside (then not printed by
    Python's last-resort handler): ``info`` reports them with its own."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
