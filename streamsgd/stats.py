"""The streaming pass before training: feature moments for standardisation, label checks,
and a small row sample for choosing the default step size, all in fixed memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .errors import DataError
from .kernels import moments
from .prefetch import Prefetcher
from .shuffle import epoch_plan
from .sources import Source
from .windows import Window, read_window, window_bytes

SAMPLE_ROWS = 4096


@dataclass(frozen=True)
class DataStats:
    """rows; mean and scale of shape (n_features,), float64; sample of shape (<=4096, n_features);
    chunk_target_mean of shape (n_chunks,), the strata of the shuffle plan."""

    rows: int
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    sample: NDArray
    chunk_target_mean: NDArray[np.float64]


def check_labels(model: str, source: Source, window: Window) -> None:
    """Refuse labels the loss cannot use (logistic needs 0/1)."""
    if model != "logistic" or window.y is None:
        return
    bad = (window.y != 0) & (window.y != 1)
    if bad.any():
        value = window.y[np.argmax(bad)]
        raise DataError(
            f"{source.url}: target column {source.target!r} holds {value:g}, but --model logistic "
            "needs labels 0 and 1; recode the target or choose --model linear"
        )


def scan(
    source: Source, model: str, dtype: str, window_rows: int, max_bytes: int, readers: int
) -> DataStats:
    """One ordered pass: Chan's parallel merge of per-window moments, in float64."""
    d = len(source.features)
    n = 0
    mean = np.zeros(d)
    m2 = np.zeros(d)
    sample = None
    chunk_target_mean = np.zeros(len(source.chunk_rows))
    windows = epoch_plan(source.chunk_rows, 0, 0, window_rows, shuffle=False)
    with ThreadPoolExecutor(readers) as pool, Prefetcher(
        windows,
        lambda chunks: read_window(source, chunks, dtype, True, pool),
        lambda chunks: window_bytes(source, chunks, dtype, True),
        max_bytes,
    ) as stream:
        for window in stream:
            check_labels(model, source, window)
            start = 0
            for c in window.chunks:
                stop = start + source.chunk_rows[c]
                chunk_target_mean[c] = window.y[start:stop].mean() if stop > start else 0.0
                start = stop
            k = window.X.shape[0]
            wmean, wm2 = moments(window.X)
            delta = wmean - mean
            total = n + k
            mean = mean + delta * (k / total)
            m2 = m2 + wm2 + delta**2 * (n * k / total)
            n = total
            if sample is None:
                step = max(1, k // SAMPLE_ROWS)
                sample = window.X[::step][:SAMPLE_ROWS].copy()
            stream.release(window.nbytes)
    if n == 0:
        raise DataError(f"{source.url}: the data set has no rows")
    std = np.sqrt(m2 / n)
    # constant columns keep scale 1, as scikit-learn's StandardScaler does
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return DataStats(n, mean, scale, sample, chunk_target_mean)
