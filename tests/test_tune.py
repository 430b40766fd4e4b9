"""tune-batch's engine: τ_f and τ_d timed, the noise scale B_simple, b_opt, the 1/B knee."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.sources import ArraySource
from streamsgd.tools.tune import (ChunkSubset, TuneOptions, fit_inverse_batch, fit_iteration_time, knee_batch, optimal_batch,
                            plot_tuning, tune)

D, SIGMA = 4, 1.0
W_TRUE, B_TRUE = np.random.default_rng(0).standard_normal(D), 0.5


def linear_rows(n: int, seed: int):
    """x ~ N(0, I_d), y = x·w* + b* + σε: a regression with known noise scale."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    return X, X @ W_TRUE + B_TRUE + SIGMA * rng.standard_normal(n)


def analytic_b_simple(X, y, theta):
    """B_simple of the generator at θ (standardised weights, then intercept).

    With x̃ = (x, 1), x ~ N(0, I_d), the row gradient is g = (x̃·δ − ε)x̃, δ = θ − θ̂ its
    distance to the least-squares solution θ̂ (ε: the residual there, variance σ²).
    G = E[x̃x̃ᵀ]δ = δ, so |G|² = |δ_w|² + δ_0². Gaussian fourth moments,
    E[(x·δ_w)²|x|²] = (d + 2)|δ_w|², give E|g|² = (d + 3)|δ_w|² + (d + 1)δ_0² + (d + 1)σ²,
    so tr Σ = E|g|² − |G|² = (d + 2)|δ_w|² + d·δ_0² + (d + 1)σ², and
    B_simple = tr Σ / |G|².
    """
    Z = (X - X.mean(axis=0)) / X.std(axis=0)  # the trainer's standardised space
    theta_hat = np.linalg.lstsq(np.column_stack([Z, np.ones(len(y))]), y, rcond=None)[0]
    delta = np.asarray(theta) - theta_hat
    dw2, d02 = float(delta[:-1] @ delta[:-1]), float(delta[-1] ** 2)
    return ((D + 2) * dw2 + D * d02 + (D + 1) * SIGMA**2) / (dw2 + d02)


@pytest.fixture(scope="module")
def result():
    X, y = linear_rows(40_000, 1)
    Xv, yv = linear_rows(10_000, 2)
    out = tune(ArraySource(X, y, chunk_rows=2000), FitConfig(model="linear", l2=0.0, seed=3),
               TuneOptions(batches=(16, 64, 256, 1024), timing_batches=(16, 64, 256, 1024, 4096), timing_rows=100_000),
               validation=ArraySource(Xv, yv, chunk_rows=5000))
    return X, y, out


def test_b_simple_matches_the_generators_noise_scale(result):
    X, y, out = result
    at = out["noise_at"]
    want = analytic_b_simple(X, y, at["coef_standardized"] + [at["intercept_standardized"]])
    # the estimate is from one exact pass (the batches' mean is the full gradient), so it
    # errs only by float32 rounding and the analytic formula's use of population moments
    # for 40,000 rows (about 1%); the factor 1.5 is the tolerance the issue asks for
    assert want / 1.5 < out["b_simple"] < want * 1.5
    assert at["batch"] == min(out["trials"], key=lambda t: t["val_loss"])["batch"]
    assert out["trace_sigma"] / out["grad_norm2"] == pytest.approx(out["b_simple"])


def test_b_opt_is_the_formula_on_the_measured_inputs(result):
    _, _, out = result
    # τ_f and τ_d are the fit of the timings it reports
    tau = fit_iteration_time([t["batch"] for t in out["timings"]], [t["seconds_per_iteration"] for t in out["timings"]])
    assert tau == pytest.approx((out["tau_f"], out["tau_d"]), rel=1e-12)
    assert out["tau_d"] > 0  # a row costs time: 4096 rows take ms where the fixed cost is µs
    if out["tau_f"] <= 0:
        # the fixed cost per update (a few µs) is the fit's intercept, which timing noise on a
        # loaded machine can push below 0 (CI saw -6.6e-8 s): then no optimum, no batch
        assert math.isnan(out["b_opt"]) and out["batch"] is None
        return
    want = math.sqrt(out["c_var"] * out["tau_f"] / (out["n_iter"] * out["tau_d"]))
    assert out["b_opt"] == pytest.approx(want, rel=1e-12)
    # C_var / N_iter is the noise scale, so b_opt = sqrt(B_simple·τ_f/τ_d)
    assert out["b_opt"] == pytest.approx(math.sqrt(out["b_simple"] * out["tau_f"] / out["tau_d"]), rel=1e-9)
    assert out["batch"] == min(max(round(out["b_opt"]), 1), out["rows"])


def test_trials_see_the_same_rows_and_the_knee_follows_the_fit(result):
    _, _, out = result
    assert [t["batch"] for t in out["trials"]] == [16, 64, 256, 1024]
    for t in out["trials"]:
        # the same rows for every B: one pass of the 40,000 training rows
        assert t["steps"] == math.ceil(40_000 / t["batch"])
        assert math.isfinite(t["val_loss"]) and t["seconds"] > 0
        # validation loss is at least the irreducible noise σ²/2 (squared loss / 2), less
        # sampling error of 10,000 rows (std of ε²/2 is 0.71, 5 standard errors = 0.035)
        assert t["val_loss"] > SIGMA**2 / 2 - 0.035
    a, c = fit_inverse_batch([t["batch"] for t in out["trials"]], [t["val_loss"] for t in out["trials"]])
    assert out["loss_fit"] == pytest.approx({"a": a, "c": c})
    # never below the smallest trial (16): the fit a + c/B says nothing below it
    assert out["knee_batch"] == min(max(math.ceil(knee_batch(a, c, out["min_gain"])), 16), out["rows"])


def test_plot_tuning_writes_the_figure(result, tmp_path):
    _, _, out = result
    path = tmp_path / "tune.png"
    plot_tuning(out, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_iteration_time_recovers_exact_times():
    b = np.array([16, 64, 256, 1024, 4096])
    assert fit_iteration_time(b, 3e-6 + 2e-8 * b) == pytest.approx((3e-6, 2e-8), rel=1e-9)


def test_fit_inverse_batch_and_knee():
    b = np.array([16, 32, 64, 128, 256])
    a, c = fit_inverse_batch(b, 0.4 + 3.0 / b)
    assert (a, c) == pytest.approx((0.4, 3.0), rel=1e-9)
    knee = knee_batch(a, c, 0.01)
    loss = lambda B: a + c / B  # noqa: E731
    # at the knee, doubling B gains exactly min_gain of the large-batch loss; before it, more
    assert loss(knee) - loss(2 * knee) == pytest.approx(0.01 * a)
    assert loss(knee / 2) - loss(knee) > 0.01 * a
    assert knee_batch(0.4, -1.0, 0.01) == 1.0  # larger batches do not help


def test_optimal_batch_minimises_total_time():
    n_iter, c_var, tau_f, tau_d = 200.0, 5e4, 4e-6, 3e-8
    b_opt = optimal_batch(c_var, n_iter, tau_f, tau_d)
    total = lambda b: (n_iter + c_var / b) * (tau_f + tau_d * b)  # noqa: E731
    grid = np.geomspace(1, 1e6, 2001)
    assert abs(math.log(grid[np.argmin(total(grid))] / b_opt)) < 0.01
    assert math.isnan(optimal_batch(c_var, n_iter, -1e-7, tau_d))


def test_holdout_is_whole_chunks_and_disjoint():
    X, y = linear_rows(12_000, 4)
    source = ArraySource(X, y, chunk_rows=1000)
    out = tune(source, FitConfig(model="linear", seed=5),
               TuneOptions(holdout=0.25, batches=(16, 64), timing_batches=(16, 256), timing_rows=5_000))
    assert out["validation_rows"] == 3000 and out["rows"] == 9000
    held = ChunkSubset(source, [0, 2])
    assert held.chunk_rows == [1000, 1000] and held.chunk_name(1) == source.chunk_name(2)
    buf = np.empty((1000, D))
    held.read_into(1, buf, None)
    assert (buf == X[2000:3000]).all()


def test_bad_options():
    X, y = linear_rows(2000, 6)
    with pytest.raises(UsageError, match="min_gain"):
        tune(ArraySource(X, y, chunk_rows=500), FitConfig(model="linear"), TuneOptions(min_gain=2.0))
    with pytest.raises(UsageError, match="two or more trial batch sizes"):
        tune(ArraySource(X, y, chunk_rows=500), FitConfig(model="linear"), TuneOptions(batches=(16, 10**6)))


def test_cli_tune_batch_json_and_plot(tmp_path):
    """The command prints one strict-JSON object with the documented keys, and the figure."""
    import json

    from helpers import run_cli

    from streamsgd.tools.generate import generate

    data = tmp_path / "d.parquet"
    generate(str(data), rows=20_000, features=5, task="logistic", seed=3, row_group_rows=2_000)
    png = tmp_path / "tune.png"
    done = run_cli("tune-batch", str(data), "--json", "--batches", "16,64,256", "--timing-batches", "16,256",
                   "--timing-rows", "20000", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("tau_f", "tau_d", "c_var", "n_iter", "b_opt", "b_simple", "knee_batch"):
        assert key in result
    assert [t["batch"] for t in result["trials"]] == [16, 64, 256]
    assert all(set(t) >= {"batch", "val_loss", "seconds"} for t in result["trials"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
