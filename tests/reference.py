"""Plain NumPy twins of package computations, for the tests that check the compiled ones.

They live here rather than in the package because the product never runs them: each is
written from the formula, independently of the code it checks.
"""

from __future__ import annotations

import math

import numpy as np


def sampling_factor(b: float, n_rows: int | None) -> float:
    """c(b): 1/b with replacement, (N − b)/(b (N − 1)) for b distinct rows out of N (0 from N on)."""
    if n_rows is None:
        return 1.0 / b
    return max(n_rows - b, 0.0) / (b * (n_rows - 1.0))


def noise_reference(batch_grads, rows, n_rows: int | None = None) -> dict[str, float]:
    """One ``NoiseMeter`` interval: tr Σ and |G|² from E|ĝ_b|² = |G|² + c(b)·tr Σ at the
    batches' sizes and at the interval's total.

    batch_grads : (n_batches, n_params) batch-mean gradients; rows : (n_batches,) their rows.
    """
    G = np.asarray(batch_grads, dtype=np.float64)
    r = np.asarray(rows, dtype=np.float64)
    big = (r[:, None] * G).sum(axis=0) / r.sum()
    c_small = float(np.mean([sampling_factor(b, n_rows) for b in r]))
    c_big = sampling_factor(float(r.sum()), n_rows)
    trace = (float(np.mean((G * G).sum(axis=1))) - float(big @ big)) / (c_small - c_big)
    grad2 = float(big @ big) - c_big * trace
    return {"trace_sigma": trace, "grad_norm2": grad2, "batch_grad_var": trace * c_small,
            "b_simple": trace / grad2 if grad2 > 0 else math.nan}


def sgd_reference(theta, g, mean, scale, lr):
    """θ − lr·g in the standardised space and its raw-space twin (w / scale, b − Σ (w / scale)·mean),
    the shift summed left to right as the compiled refresh does, so the bits can be compared."""
    d = theta.size - 1
    new = theta - lr * g
    eff = np.empty_like(new)
    eff[:d] = new[:d] / scale
    shift = 0.0
    for j in range(d):
        shift += eff[j] * mean[j]
    eff[d] = new[d] - shift
    return new, eff
