"""The mini-batch theory of DESIGN.md §2, checked on the product's own plan, kernels and trainer.

Each test states a claim of the source chapters and measures it. Statistical tolerances
come from the standard error of the measured quantity over the number of repetitions,
computed in the test itself where it depends on the data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamsgd.config import FitConfig
from streamsgd.train import Hooks
from streamsgd.compute.codes import LOGISTIC
from streamsgd.compute.losses import NO_SAMPLE_WEIGHTS, accumulate_rows
from streamsgd.compute.noise import NoiseMeter, sampling_factor
from streamsgd.plan.shuffle import iterations_per_epoch
from streamsgd.sources import ArraySource
from streamsgd.train.trainer import fit


def logistic_data(n: int, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.linspace(0.5, 2.0, d) + 0.3
    w_true = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w_true)))).astype(np.float64)
    theta = rng.standard_normal(d) * 0.3  # a fixed θ away from the optimum
    return X, y, theta, 0.1


def batch_grad(X, y, idx, w, b) -> np.ndarray:
    """The mean gradient (w then intercept) of rows ``idx``, through the kernel the loop calls."""
    gw = np.zeros(X.shape[1])
    _, rsum = accumulate_rows(LOGISTIC, 0.0, np.ones(2), X, y, NO_SAMPLE_WEIGHTS, idx, w, b, gw)
    return np.append(gw, rsum) / idx.size


def row_grads(X, y, w, b) -> np.ndarray:
    """NumPy twin of the kernel, one gradient per row: (σ(z) − y)·(x, 1)."""
    r = 1 / (1 + np.exp(-(X @ w + b))) - y
    return np.column_stack([r[:, None] * X, r])


def exact_noise(X, y, w, b):
    """Full gradient G and tr Σ, Σ the per-row gradients' covariance (divisor N)."""
    P = row_grads(X, y, w, b)
    G = P.mean(axis=0)
    # the NumPy twin agrees with the kernel on the full data
    np.testing.assert_allclose(batch_grad(X, y, np.arange(len(y)), w, b), G, rtol=1e-10, atol=1e-14)
    return G, float(((P - G) ** 2).sum(axis=1).mean())


def rel_se(samples: np.ndarray) -> float:
    """Relative standard error of the mean of ``samples``."""
    return float(samples.std(ddof=1) / samples.mean() / math.sqrt(samples.size))


# --- §2.4: the mini-batch gradient is unbiased --------------------------------------------


@pytest.mark.parametrize("batch", [1, 64, 1000])
def test_epoch_of_batch_gradients_averages_to_the_full_gradient(batch):
    """Over one epoch of the trainer (chunk order, windows, in-window permutation, batches
    straddling windows, the short last batch), the row-weighted mean of the batch gradients
    is the full gradient: every row is used exactly once.

    The trainer's noise meter sums rows·ĝ_b over each logging interval; with one interval
    per epoch its |G|² estimate is |mean|² exactly (c(N) = 0 for N rows out of N). A step of
    1e-300 keeps θ at 0 to the last bit (every margin rounds σ to 1/2), so every batch
    gradient is taken at the same θ.
    """
    X, y, _, _ = logistic_data(3000)
    ipe = iterations_per_epoch(3000, batch)
    records = []
    # 160KB leaves windows of at most 592 rows: the 3000 rows come in six or more
    result = fit(ArraySource(X, y, chunk_rows=100),
                 FitConfig(model="logistic", batch=batch, epochs=3, lr=1e-300, lr_schedule="constant",
                           standardize=False, l2=0.0, dtype="float64", memory_limit="160KB", seed=7, log_every=ipe),
                 hooks=Hooks(on_progress=records.append))
    assert result.summary["iterations"] == 3 * ipe  # §2.2: ceil(N / B) updates per epoch
    assert result.summary["rows_seen"] == 3 * 3000
    G = np.append((0.5 - y) @ X, (0.5 - y).sum()) / 3000  # the full gradient at θ = 0
    epochs = [r for r in records if r["event"] == "progress"]
    assert [r["iteration"] for r in epochs] == [ipe, 2 * ipe, 3 * ipe]
    # float tolerance: the same 3000 float64 terms summed in another order
    for r in epochs:
        assert r["grad_norm2"] == pytest.approx(G @ G, rel=1e-12)
    # the claim could fail: one row used twice instead of another moves |mean|² far more
    twice = G + (np.append(X[0], 1.0) * (0.5 - y[0]) - np.append(X[1], 1.0) * (0.5 - y[1])) / 3000
    assert abs(twice @ twice / (G @ G) - 1) > 1e-6


# --- §2.5: variance shrinks as 1/b, with the finite-population factor ---------------------


@pytest.mark.parametrize("b", [8, 64, 512])
def test_batch_gradient_variance_is_trace_sigma_over_b(b):
    """Batches of b distinct rows (the batches of many epochs): E|ĝ_b − G|² equals
    tr(Σ)/b·(N − b)/(N − 1); the noise meter recovers tr(Σ) from the same batches."""
    N = 4096
    X, y, w, bias = logistic_data(N, seed=1)
    G, trace = exact_noise(X, y, w, bias)
    rng = np.random.default_rng(b)
    meter = NoiseMeter(n_rows=N)
    per_epoch = N // b
    dev2 = []
    for _ in range(4096 // per_epoch):  # 4096 batches for every b
        perm = rng.permutation(N)
        for k in range(per_epoch):
            g = batch_grad(X, y, perm[k * b:(k + 1) * b], w, bias)
            dev2.append(float((g - G) @ (g - G)))
            meter.add(g, b)
            if (k + 1) % max(per_epoch // 2, 2) == 0:  # intervals of half an epoch
                meter.close_interval()
    dev2 = np.array(dev2)
    expected = trace / b * (N - b) / (N - 1)
    # the tolerance is at least 4 standard errors of the mean of 4096 squared deviations
    assert rel_se(dev2) < 0.10 / 4
    assert dev2.mean() == pytest.approx(expected, rel=0.10)
    # the factor (N - b)/(N - 1) = 0.875 at b = 512 is resolved: without it the error
    # would exceed 12%, more than the tolerance
    est = meter.estimate()
    assert est["trace_sigma"] == pytest.approx(trace, rel=0.10)
    assert est["batch_grad_var"] == pytest.approx(expected, rel=0.10)


# --- §2.7: identical rows: mini-batch GD is full-batch GD --------------------------------


def _path(X, y, batch, steps):
    """Coefficients after ``steps`` updates and the per-update loss path, from the real trainer."""
    losses = []
    result = fit(ArraySource(X, y, chunk_rows=256),
                 FitConfig(model="linear", batch=batch, steps=steps, lr=0.05, lr_schedule="constant", average=False,
                           standardize=False, dtype="float64", l2=1e-3, seed=11, log_every=1),
                 hooks=Hooks(on_progress=lambda r: losses.append(r["loss"]) if r["event"] == "progress" else None))
    return np.append(result.model.coef, result.model.intercept), np.array(losses)


def test_identical_rows_make_minibatch_gd_follow_full_batch_gd():
    N = 2048
    row = np.array([0.5, -1.25, 2.0])
    X, y = np.tile(row, (N, 1)), np.full(N, 1.5)
    for steps in (1, 3, 10, 40):
        small, small_loss = _path(X, y, 64, steps)
        full, full_loss = _path(X, y, N, steps)
        # identical up to float rounding of the batch sums (64 vs 2048 equal terms): the
        # paths agree to 1e-12 relative
        np.testing.assert_allclose(small, full, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(small_loss, full_loss, rtol=1e-12, atol=1e-15)
    assert abs(full[-1]) > 0.1  # the path went somewhere

    # the claim could be false: rows with the same mean but their own spread give another path
    X_noisy = X + np.random.default_rng(0).standard_normal(X.shape)
    noisy_small, _ = _path(X_noisy, y, 64, 40)
    noisy_full, _ = _path(X_noisy, y, N, 40)
    assert np.abs(noisy_small - noisy_full).max() > 1e-3


# --- §2.11: K workers with batch b = one batch of K·b ------------------------------------


def test_k_workers_averaged_have_the_variance_of_one_batch_of_k_times_b():
    N, b, K, R = 8192, 16, 8, 4096
    X, y, w, bias = logistic_data(N, seed=2)
    G, trace = exact_noise(X, y, w, bias)
    rng = np.random.default_rng(5)
    workers, single, big = [], [], []
    per_epoch = N // (K * b)
    for _ in range(R // per_epoch):
        perm = rng.permutation(N)  # the epoch's rows, sharded: worker k takes its own b rows
        for s in range(per_epoch):
            step = perm[s * K * b:(s + 1) * K * b].reshape(K, b)
            grads = np.array([batch_grad(X, y, idx, w, bias) for idx in step])
            workers.append(float(((grads.mean(axis=0) - G) ** 2).sum()))
            single.append(float(((grads[0] - G) ** 2).sum()))
        perm = rng.permutation(N)
        for s in range(per_epoch):
            g = batch_grad(X, y, perm[s * K * b:(s + 1) * K * b], w, bias)
            big.append(float(((g - G) ** 2).sum()))
    workers, single, big = map(np.array, (workers, single, big))
    # 4096 samples each: relative standard errors below 2.5%, so the 10% tolerance is
    # over 2.8 standard errors of the difference of the two means
    assert max(rel_se(workers), rel_se(big)) < 0.025
    assert workers.mean() == pytest.approx(big.mean(), rel=0.10)
    assert big.mean() == pytest.approx(trace * sampling_factor(K * b, N), rel=0.10)
    # and the averaging is what does it: one worker's own batch is ~K times noisier
    assert single.mean() / workers.mean() == pytest.approx(K, rel=0.15)


# --- §2.6: near a minimum of curvature k the iterate's variance is ησ²/(k(2 − ηk)) -------


@pytest.mark.parametrize("eta_k", [0.1, 1.0, 1.8])
def test_stationary_variance_on_a_quadratic(eta_k):
    """θ ← θ − η(kθ + σξ) is an AR(1) process with coefficient 1 − ηk; its stationary
    variance η²σ²/(1 − (1 − ηk)²) = ησ²/(k(2 − ηk)): sharp minima (large k) are left
    with less spread until ηk nears 2, where the spread explodes."""
    eta, sigma, chains = 0.1, 1.0, 20_000
    k = eta_k / eta
    rng = np.random.default_rng(int(eta_k * 10))
    theta = np.ones(chains)  # start away from the minimum: the chains must forget it
    burn_in, measured = 400, 200  # |1 − ηk|^(2·400) < 1e-36 for these ηk
    variances = []
    for t in range(burn_in + measured):
        theta -= eta * (k * theta + sigma * rng.standard_normal(chains))
        if t >= burn_in:
            variances.append(float(theta.var()))
    predicted = eta * sigma**2 / (k * (2 - eta_k))
    # one variance over 20,000 independent chains has relative standard error
    # sqrt(2/20000) = 1%; 15% is a wide margin for the average over 200 correlated steps
    assert np.mean(variances) == pytest.approx(predicted, rel=0.15)
    # the temperature form: the variance per unit of η·σ² is 1/(k(2 − ηk))
    assert np.mean(variances) / (eta * sigma**2) * k * (2 - eta_k) == pytest.approx(1.0, rel=0.15)
