"""The gradient-noise meter: McCandlish et al.'s two-batch-size estimators of |G|² and tr(Σ)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamsgd.config import FitConfig
from streamsgd.train import Hooks
from reference import noise_reference

from streamsgd.errors import UsageError
from streamsgd.compute.codes import LINEAR
from streamsgd.compute.losses import NO_SAMPLE_WEIGHTS, accumulate_rows
from streamsgd.compute.noise import NoiseMeter, noise_add, sampling_factor
from streamsgd.compute.optim import standardized_gradient


def population(n: int = 1024, d: int = 6, seed: int = 0):
    """Per-row gradients g_i = G0 + noise: exact G (their mean) and tr Σ (population variance)."""
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((n, d)) + 0.05 * np.ones(d)
    G = P.mean(axis=0)
    trace = float(((P - G) ** 2).sum(axis=1).mean())
    return P, G, trace


def feed(meter: NoiseMeter, grads, rows, interval: int) -> None:
    for k, (g, r) in enumerate(zip(grads, rows)):
        meter.add(g, int(r))
        if (k + 1) % interval == 0:
            meter.close_interval()


@pytest.mark.parametrize("n_rows", [None, 5000])
def test_meter_matches_numpy_reference(n_rows):
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((37, 9)) + 0.3
    rows = rng.integers(1, 300, size=37)
    meter = NoiseMeter(n_rows)
    for g, r in zip(grads, rows):
        meter.add(g, int(r))
    got, want = meter.interval_estimate(), noise_reference(grads, rows, n_rows)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    # one interval: the pooled estimate is that interval's
    assert meter.estimate()["trace_sigma"] == pytest.approx(want["trace_sigma"], rel=1e-12)
    assert set(got) >= {"trace_sigma", "batch_grad_var", "grad_norm2", "b_simple", "temperature"}


def test_unbiased_with_replacement():
    """Batches of b rows drawn with replacement: the pooled estimates of tr Σ and |G|² have
    the exact values as their mean over repetitions."""
    P, G, trace = population()
    R, K, b = 2000, 16, 16
    rng = np.random.default_rng(2)
    batch_means = P[rng.integers(0, P.shape[0], size=(R, K, b))].mean(axis=2)
    traces, grads2 = np.empty(R), np.empty(R)
    for r in range(R):
        meter = NoiseMeter()
        feed(meter, batch_means[r], [b] * K, interval=8)
        est = meter.estimate()
        traces[r], grads2[r] = est["trace_sigma"], est["grad_norm2"]
    # unbiased: the mean over R independent repetitions lies within 4 standard errors
    # (std / sqrt(R)) of the exact value; a false alarm has probability < 1e-4
    for got, exact in ((traces, trace), (grads2, float(G @ G))):
        se = got.std(ddof=1) / math.sqrt(R)
        assert abs(got.mean() - exact) < 4 * se
    # and the test has power: the standard error is 1% of tr Σ, far below a 1/b-sized bias
    assert traces.std(ddof=1) / math.sqrt(R) < 0.01 * trace


def test_unbiased_without_replacement_needs_the_population_size():
    """Disjoint batches of one epoch (b = N/8): with n_rows the estimates are unbiased;
    treating the rows as drawn with replacement biases |G|² by about tr Σ·(1/B_big − c(B_big))."""
    P, G, trace = population()
    N, b, R = P.shape[0], 128, 2000
    rng = np.random.default_rng(3)
    exact_g2 = float(G @ G)
    results = {True: [], False: []}
    for r in range(R):
        means = P[rng.permutation(N)].reshape(N // b, b, -1).mean(axis=1)
        for with_n in (True, False):
            meter = NoiseMeter(N if with_n else None)
            feed(meter, means, [b] * len(means), interval=4)  # intervals of half an epoch
            est = meter.estimate()
            results[with_n].append((est["trace_sigma"], est["grad_norm2"]))
    good, naive = np.array(results[True]), np.array(results[False])
    se = good.std(axis=0, ddof=1) / math.sqrt(R)
    # 4 standard errors: see test_unbiased_with_replacement
    assert abs(good[:, 0].mean() - trace) < 4 * se[0]
    assert abs(good[:, 1].mean() - exact_g2) < 4 * se[1]
    # the naive |G|² is off by tr Σ (1/512 - 512/(512*1023)) ~ tr Σ/1024 ~ 0.006, about
    # 30% of |G|² = 0.019 here and many standard errors: the finite-population factor matters
    assert abs(naive[:, 1].mean() - exact_g2) > 10 * se[1]


def test_pooled_estimate_is_ratio_of_averages():
    rng = np.random.default_rng(4)
    grads = rng.standard_normal((30, 5)) * 0.5 + 0.2
    meter = NoiseMeter()
    intervals = []
    for k in range(30):
        meter.add(grads[k], 32)
        if (k + 1) % 10 == 0:
            intervals.append(meter.close_interval())
    pooled = meter.estimate()
    trace = np.mean([e["trace_sigma"] for e in intervals])
    g2 = np.mean([e["grad_norm2"] for e in intervals])
    assert pooled["trace_sigma"] == pytest.approx(trace, rel=1e-12)
    assert pooled["grad_norm2"] == pytest.approx(g2, rel=1e-12)
    assert pooled["b_simple"] == pytest.approx(trace / g2, rel=1e-12)
    assert pooled["batches"] == 30 and pooled["rows"] == 30 * 32


def test_temperature_and_batch_variance():
    meter = NoiseMeter()
    rng = np.random.default_rng(5)
    for lr, rows in [(0.1, 64), (0.1, 64), (0.05, 32)]:
        meter.add(rng.standard_normal(3), rows, lr=lr)
    est = meter.interval_estimate()
    assert est["temperature"] == pytest.approx((0.1 / 64 * 2 + 0.05 / 32) / 3)
    # Var(ĝ_b) at the mean sampling factor c̄ = mean(1/b)
    assert est["batch_grad_var"] == pytest.approx(est["trace_sigma"] * np.mean([1 / 64, 1 / 64, 1 / 32]))


def test_too_little_data_gives_nan_not_an_error():
    meter = NoiseMeter()
    assert math.isnan(meter.estimate()["b_simple"])
    meter.add(np.ones(3), 10)
    assert math.isnan(meter.interval_estimate()["trace_sigma"])  # one batch: no second size
    assert math.isnan(meter.close_interval()["trace_sigma"])
    assert meter.estimate()["batches"] == 0  # a useless interval is not pooled


def test_bad_input():
    meter = NoiseMeter()
    with pytest.raises(UsageError, match="at least one row"):
        meter.add(np.ones(3), 0)
    meter.add(np.ones(3), 5)
    with pytest.raises(UsageError, match=r"expected shape \(3,\), got \(4,\)"):
        meter.add(np.ones(4), 5)
    with pytest.raises(UsageError, match="n_rows"):
        NoiseMeter(0)


def test_sampling_factor():
    assert sampling_factor(8, None) == 1 / 8
    assert sampling_factor(8, 100) == pytest.approx(92 / (8 * 99))
    assert sampling_factor(100, 100) == 0.0  # the whole data set: no noise left
    assert sampling_factor(150, 100) == 0.0


def test_compiled_loop_path_equals_add():
    """A compiled loop calls noise_add on the meter's own arrays; the result is the same."""
    rng = np.random.default_rng(6)
    grads, rows = rng.standard_normal((20, 4)), rng.integers(1, 100, size=20)
    by_add, by_arrays = NoiseMeter(3000), NoiseMeter(3000, n_params=4)
    total, sums = by_arrays.total, by_arrays.sums
    for k in range(20):
        by_add.add(grads[k], int(rows[k]), lr=0.1)
        noise_add(total, sums, grads[k], float(rows[k]), 3000, 0.1)
        if k == 9:
            assert by_arrays.close_interval() == pytest.approx(by_add.close_interval(), nan_ok=True)
            assert by_arrays.total is total and not total.any()  # cleared in place
    assert by_arrays.estimate() == pytest.approx(by_add.estimate())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standardized_gradient_from_raw_sums(dtype):
    """Raw-space kernel sums, converted, equal the gradient taken in the standardised space."""
    rng = np.random.default_rng(7)
    X = (rng.standard_normal((50, 3)) * [1.0, 3.0, 0.2] + [5.0, -1.0, 0.0]).astype(dtype)
    y = rng.standard_normal(50).astype(dtype)
    mean, scale = X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64)
    theta, l2 = np.array([0.3, -0.7, 1.1, 0.25]), 0.01
    w_eff = theta[:3] / scale
    gw = np.zeros(4)
    _, gw[3] = accumulate_rows(LINEAR, 0.0, np.ones(2), X, y, NO_SAMPLE_WEIGHTS, np.arange(50), w_eff,
                               theta[3] - w_eff @ mean, gw[:3])
    got = np.empty(4)
    standardized_gradient(gw, 50.0, mean, scale, l2, theta, got)
    Z = (X.astype(np.float64) - mean) / scale
    r = Z @ theta[:3] + theta[3] - y
    want = np.append(Z.T @ r / 50 + l2 * theta[:3], r.mean())
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_noise_statistics_do_not_change_the_model_and_can_be_turned_off():
    """The meter only watches: the same model with it on or off; off, the records carry none."""
    from streamsgd.sources.arrays import ArraySource
    from streamsgd.train.trainer import fit

    rng = np.random.default_rng(3)
    X = rng.standard_normal((5_000, 4)).astype(np.float32)
    y = (X[:, 0] + rng.logistic(size=5_000) > 0).astype(np.float32)
    records = {True: [], False: []}
    models = {on: fit(ArraySource(X, y, chunk_rows=1_000),
                      FitConfig(batch=32, epochs=2, noise_stats=on, log_every=20),
                      hooks=Hooks(on_progress=records[on].append)).model for on in (True, False)}
    np.testing.assert_array_equal(models[True].coef, models[False].coef)
    progress = {on: [r for r in records[on] if r["event"] == "progress"] for on in records}
    assert all(r["trace_sigma"] is not None and r["trace_sigma"] > 0 for r in progress[True])
    assert all(r["trace_sigma"] is None for r in progress[False])
