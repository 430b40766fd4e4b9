"""Gradient-noise diagnostics from quantities the training loop already has.

The mini-batch gradient ĝ_b is an unbiased estimate of the full gradient G, with
covariance Σ/b (rows drawn with replacement) or Σ/b·(N − b)/(N − 1) (without
replacement, as within one epoch). How much a batch of ``b`` rows helps depends on the
ratio of the two: McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
call B_simple = tr(Σ) / |G|² the *simple noise scale*. Batches much smaller than B_simple
are noise dominated (doubling b nearly halves the steps needed), batches much larger
waste rows (doubling b barely reduces the steps).

Neither tr(Σ) nor |G|² needs per-row gradients. Their Appendix A estimates both from the
squared norm of the gradient at two batch sizes, since E|ĝ_b|² = |G|² + c(b)·tr(Σ) with
c(b) = 1/b (or (N − b)/(b (N − 1)) without replacement). Here the small batch is each
update's own batch gradient and the big batch is the row-weighted mean of all the batch
gradients of a logging interval, which is the gradient of the interval's B_big rows.
Two linear equations in two unknowns give

    tr(Σ) ≈ (mean_b |ĝ_b|² − |ĝ_big|²) / (c̄(b) − c(B_big))
    |G|²  ≈ |ĝ_big|² − c(B_big)·tr(Σ)

both unbiased at a fixed θ. The work per update is O(d): one squared norm and one axpy.
During training θ moves inside an interval, so the estimates describe the interval's
neighbourhood of θ; as McCandlish et al. recommend, the ratio is taken of the averages
over intervals, not averaged itself (a ratio of noisy estimates is biased).

The SGD temperature is η / b (DESIGN.md §2.10): near a minimum the stationary spread of
the iterate grows with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from ..errors import UsageError


#: Layout of a meter's interval sums (float64), shared with compiled training loops.
NORM2, C_SUM, ROWS, BATCHES, TEMP, LR_BATCHES = range(6)
N_NOISE_SUMS = 6


@njit(nogil=True, cache=True)
def _factor(b, n_rows):
    if n_rows <= 0:
        return 1.0 / b
    if n_rows <= 1:
        return 0.0
    return max(n_rows - b, 0.0) / (b * (n_rows - 1.0))


@njit(nogil=True, cache=True)
def noise_add(total, sums, g, rows, n_rows, lr):
    """Record one batch-mean gradient ``g`` of ``rows`` rows: O(d), one pass.

    Adds ``rows * g`` to ``total`` and |g|², the sampling factor c(rows), the row and
    batch counts and η/rows into ``sums`` (see NORM2 … LR_BATCHES). ``n_rows`` <= 0 means
    rows drawn with replacement; a negative or NaN ``lr`` records no temperature. Plain
    arrays and numbers only, so a compiled training loop can call it once per update.
    """
    norm2 = 0.0
    for j in range(g.shape[0]):
        gj = g[j]
        norm2 += gj * gj
        total[j] += rows * gj
    sums[NORM2] += norm2
    sums[C_SUM] += _factor(rows, n_rows)
    sums[ROWS] += rows
    sums[BATCHES] += 1.0
    if lr >= 0.0:
        sums[TEMP] += lr / rows
        sums[LR_BATCHES] += 1.0


def sampling_factor(b: float, n_rows: int | None) -> float:
    """c(b): the batch mean's covariance is c(b)·Σ.

    1/b for rows drawn with replacement (``n_rows`` None), (N − b)/(b (N − 1)) for b
    distinct rows out of N; zero once the batch is the whole data set.
    """
    return float(_factor(float(b), -1 if n_rows is None else int(n_rows)))


def _solve(norm2_mean: float, c_small: float, big_norm2: float, c_big: float) -> tuple[float, float]:
    """(tr Σ, |G|²) from E|ĝ_b|² = |G|² + c·tr Σ at two batch sizes; NaN when they coincide."""
    gap = c_small - c_big
    if not gap > 0.0:
        return math.nan, math.nan
    trace = (norm2_mean - big_norm2) / gap
    return trace, big_norm2 - c_big * trace


def _report(trace: float, grad2: float, c_small: float, batch: float, temperature: float,
            batches: int, rows: int) -> dict[str, Any]:
    return {
        "trace_sigma": trace,
        # the variance E|ĝ_b − G|² of one update's gradient at the mean batch size
        "batch_grad_var": trace * c_small,
        "grad_norm2": grad2,
        # a |G|² estimate at or below zero means the gradient is lost in the noise
        "b_simple": trace / grad2 if grad2 > 0.0 else math.nan,
        "temperature": temperature,
        "batch": batch,
        "batches": batches,
        "rows": rows,
    }


def reported(estimate: dict[str, Any]) -> dict[str, Any]:
    """``estimate`` as users see it (metrics records, tune-batch): |G|² NaN (null in JSON)
    where its estimate is not positive.

    The estimate of |G|² is unbiased, so near an optimum it is often negative, and the meter
    keeps it so (pooling intervals needs the signed values). Reported, a negative squared
    norm is nonsense; 0 would claim the gradient vanished and make B_simple infinite. Not
    positive only says |G|² is below what the interval's noise resolves, so it is reported
    as not measured, as B_simple already is then.
    """
    out = dict(estimate)
    if not out["grad_norm2"] > 0.0:
        out["grad_norm2"] = math.nan
    return out


class NoiseMeter:
    """Accumulates batch gradients and estimates tr(Σ), |G|² and B_simple = tr(Σ)/|G|².

    Call :meth:`add` once per update with the batch-mean gradient (all parameters,
    intercept included, as one flat vector) and :meth:`close_interval` at each logging
    interval. The batches of one interval must be disjoint, as consecutive batches of an
    epoch are; pass ``n_rows`` (N) to account for sampling without replacement.

    A compiled loop can skip :meth:`add` and call :func:`noise_add` on :attr:`total` and
    :attr:`sums` directly (give ``n_params`` so they exist from the start); the meter
    clears them in place, so the loop's references stay valid.

    Parameters
    ----------
    n_rows : rows in the data set, or None to treat rows as drawn with replacement.
    n_params : length of the gradient vectors; default: taken from the first :meth:`add`.
    """

    def __init__(self, n_rows: int | None = None, n_params: int | None = None) -> None:
        if n_rows is not None and n_rows < 1:
            raise UsageError(f"n_rows: expected an integer >= 1 or None; got {n_rows!r}")
        self.n_rows = n_rows
        self._n = -1 if n_rows is None else int(n_rows)
        self.total: NDArray[np.float64] | None = None if n_params is None else np.zeros(int(n_params))
        self.sums = np.zeros(N_NOISE_SUMS)
        self._pooled = np.zeros(4)  # batch-weighted sums of tr Σ, |G|², c̄(b), mean batch rows
        self._pooled_counts = np.zeros(4)  # batches, rows, Σ η/b, batches with an η

    def add(self, batch_grad: NDArray[np.float64], rows: int, lr: float | None = None) -> None:
        """Record one update's batch-mean gradient.

        Parameters
        ----------
        batch_grad : ndarray of shape (n_params,), the mean gradient over the batch's rows.
        rows : rows in the batch.
        lr : the step size of this update, for the temperature η / b (optional).
        """
        if rows < 1:
            raise UsageError(f"rows: a batch has at least one row; got {rows!r}")
        g = np.asarray(batch_grad, dtype=np.float64)
        if self.total is None:
            if g.ndim != 1:
                raise UsageError(f"batch_grad: expected a flat vector, got shape {g.shape}")
            self.total = np.zeros(g.shape[0])
        elif g.shape != self.total.shape:
            raise UsageError(f"batch_grad: expected shape {self.total.shape}, got {g.shape}")
        noise_add(self.total, self.sums, g, float(rows), self._n, -1.0 if lr is None else float(lr))

    def _interval(self) -> tuple[float, float, float]:
        """(tr Σ, |G|², c̄(b)) of the open interval; NaN when it cannot be estimated."""
        s = self.sums
        if s[BATCHES] < 2 or self.total is None:
            return math.nan, math.nan, math.nan
        big = self.total / s[ROWS]
        c_small = s[C_SUM] / s[BATCHES]
        trace, grad2 = _solve(s[NORM2] / s[BATCHES], c_small, float(big @ big), sampling_factor(s[ROWS], self.n_rows))
        return trace, grad2, c_small

    def _counts(self) -> NDArray[np.float64]:
        return np.array([self.sums[BATCHES], self.sums[ROWS], self.sums[TEMP], self.sums[LR_BATCHES]])

    def interval_estimate(self) -> dict[str, Any]:
        """The estimate from the open interval alone (NaN with fewer than two batches)."""
        trace, grad2, c_small = self._interval()
        batches, rows, temp, lr_batches = self._counts()
        return _report(trace, grad2, c_small, rows / max(batches, 1.0), temp / lr_batches if lr_batches else math.nan,
                       int(batches), int(rows))

    def close_interval(self) -> dict[str, Any]:
        """End the logging interval: return its estimate and fold it into the running one."""
        out = self.interval_estimate()
        self._pooled, self._pooled_counts = self._with_open_interval()
        if self.total is not None:
            self.total[:] = 0.0
        self.sums[:] = 0.0
        return out

    def _with_open_interval(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        pooled, counts = self._pooled.copy(), self._pooled_counts.copy()
        trace, grad2, c_small = self._interval()
        if math.isfinite(trace):  # a useless interval (one batch) is not pooled
            # weight intervals by their batch count, so that short ones count less
            n = self.sums[BATCHES]
            pooled += n * np.array([trace, grad2, c_small, self.sums[ROWS] / n])
            counts += self._counts()
        return pooled, counts

    def estimate(self) -> dict[str, Any]:
        """The estimate pooled over every closed interval and the open one.

        B_simple is the ratio of the pooled tr(Σ) and |G|², never a mean of ratios.
        """
        pooled, (batches, rows, temp, lr_batches) = self._with_open_interval()
        if batches == 0:
            return _report(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0)
        trace, grad2, c_small, batch = pooled / batches
        return _report(float(trace), float(grad2), float(c_small), float(batch),
                       temp / lr_batches if lr_batches else math.nan, int(batches), int(rows))
