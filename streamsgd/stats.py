"""The streaming pass before training: feature moments for standardisation, label checks,
and a small row sample for choosing the default step size, all in fixed memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .errors import DataError
from .kernels import moments
from .shuffle import epoch_plan
from .sources import Source
from .windows import prefetch_windows

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


def merge_moments(n: int, mean, m2, k: int, mean_k, m2_k):
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations); arrays or scalars."""
    total = n + k
    delta = mean_k - mean
    return total, mean + delta * (k / total), m2 + m2_k + delta**2 * (n * k / total)


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
    with prefetch_windows(source, windows, np.dtype(dtype), model, readers, max_bytes) as stream:
        for window in stream:
            start = 0
            for c in window.chunks:
                stop = start + source.chunk_rows[c]
                chunk_target_mean[c] = window.y[start:stop].mean() if stop > start else 0.0
                start = stop
            n, mean, m2 = merge_moments(n, mean, m2, window.X.shape[0], *moments(window.X))
            if sample is None:
                k = window.X.shape[0]
                step = max(1, k // SAMPLE_ROWS)
                sample = window.X[::step][:SAMPLE_ROWS].copy()
            stream.release(window.nbytes)
            del window  # not kept alive while the next one is read
    if n == 0:
        raise DataError(f"{source.url}: the data set has no rows")
    std = np.sqrt(m2 / n)
    # constant columns keep scale 1, as scikit-learn's StandardScaler does
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return DataStats(n, mean, scale, sample, chunk_target_mean)
