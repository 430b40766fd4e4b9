"""Update rules, the L1 step and the schedules, each against a plain NumPy (or hand) reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import Lasso

from reference import sgd_reference

from streamsgd.compute.codes import LOSSES, OPTIMIZERS, SCHEDULES
from streamsgd.compute.losses import accumulate
from streamsgd.compute.optim import (
    l1_step,
    optimizer_state,
    optimizer_step,
    refresh_effective,
    schedule_lr,
    standardized_gradient,
)


def reference_step(kind, theta, g, m, v, lr, t, beta1, beta2, eps, wd):
    """One step of each rule, written as PyTorch's single-tensor implementations arrange it.

    (``torch.optim.SGD`` with dampening 0, ``Adagrad``, ``Adam``, ``AdamW``), so the
    comparison also covers a different but equivalent order of operations.
    """
    if kind == "sgd":
        theta -= lr * g
    elif kind in ("momentum", "nesterov"):
        m *= beta1
        m += g
        theta -= lr * (g + beta1 * m if kind == "nesterov" else m)
    elif kind == "adagrad":  # wd: the L2 strength, a proximal step in the metric √v + ε (not the intercept)
        v += g * g
        h = np.sqrt(v) + eps
        theta[:-1] = (theta[:-1] - lr * g[:-1] / h[:-1]) / (1.0 + lr * wd / h[:-1])
        theta[-1] -= lr * g[-1] / h[-1]
    else:
        if kind == "adamw":
            theta[:-1] *= 1.0 - lr * wd  # decoupled, before the Adam step; not the intercept
        m += (g - m) * (1.0 - beta1)  # torch's lerp
        v *= beta2
        v += (1.0 - beta2) * g * g
        step = lr / (1.0 - beta1**t)
        denom = np.sqrt(v) / math.sqrt(1.0 - beta2**t) + eps
        theta -= step * m / denom


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_matches_reference_for_100_steps(kind):
    rng = np.random.default_rng(OPTIMIZERS[kind])
    n = 9
    # start away from 0 so that no coordinate crosses it (a relative tolerance at a value near
    # 0 would test the rounding of a cancellation, not the rule)
    theta = 2.0 + rng.random(n)
    ref = theta.copy()
    state = optimizer_state(n - 1)
    m, v = np.zeros(n), np.zeros(n)
    beta1, beta2, eps, wd = 0.9, 0.999, 1e-8, 0.1
    for t in range(1, 101):
        g = rng.standard_normal(n)
        lr = 0.01 * (1.0 + 0.5 * math.sin(t))  # the step may change every update
        optimizer_step(OPTIMIZERS[kind], theta, g, state, lr, t, beta1, beta2, eps, wd)
        reference_step(kind, ref, g, m, v, lr, t, beta1, beta2, eps, wd)
        np.testing.assert_allclose(theta, ref, rtol=1e-12, atol=0)
    if kind in ("momentum", "nesterov", "adam", "adamw"):
        np.testing.assert_allclose(state[0], m, rtol=1e-12)
    if kind in ("adagrad", "adam", "adamw"):
        np.testing.assert_allclose(state[1], v, rtol=1e-12)


def test_adamw_decay_is_decoupled_and_spares_the_intercept():
    theta = np.array([1.0, -2.0, 3.0])
    state = optimizer_state(2)
    for t in range(1, 11):
        optimizer_step(OPTIMIZERS["adamw"], theta, np.zeros(3), state, 0.1, t, 0.9, 0.999, 1e-8, 0.5)
    # a zero gradient leaves m = v = 0, so only the decay acts: w (1 - lr wd)^t, b untouched
    np.testing.assert_allclose(theta, [0.95**10, -2 * 0.95**10, 3.0], rtol=1e-14)
    optimizer_step(OPTIMIZERS["adam"], theta, np.zeros(3), state, 0.1, 11, 0.9, 0.999, 1e-8, 0.5)
    np.testing.assert_allclose(theta, [0.95**10, -2 * 0.95**10, 3.0], rtol=1e-14)  # adam ignores wd


def test_sgd_step_and_refresh_equal_the_numpy_step():
    rng = np.random.default_rng(3)
    d = 6
    theta = rng.standard_normal(d + 1)
    g = rng.standard_normal(d + 1)
    mean, scale = rng.standard_normal(d), 0.5 + rng.random(d)
    a, a_eff = sgd_reference(theta, g, mean, scale, 0.1)
    b, b_eff = theta.copy(), np.zeros(d + 1)
    optimizer_step(OPTIMIZERS["sgd"], b, g, optimizer_state(d), 0.1, 1, 0.0, 0.0, 0.0, 0.0)
    refresh_effective(b, b_eff, mean, scale)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_eff, b_eff)
    # theta_eff is the same linear function in raw space: w_eff.x + b_eff = w.(x - mean)/scale + b
    x = rng.standard_normal(d)
    assert b_eff[:d] @ x + b_eff[d] == pytest.approx(b[:d] @ ((x - mean) / scale) + b[d], rel=1e-12)


def quadratic(seed=0, n=5, mu=1.0, L=10.0):
    """f(θ) = ½ (θ − θ*)ᵀ A (θ − θ*), eigenvalues of A from mu to L, and a start with ∇f(θ₀) = 1."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = Q @ np.diag(np.linspace(mu, L, n)) @ Q.T
    opt = rng.standard_normal(n)
    return A, opt, opt + np.linalg.solve(A, np.ones(n))


# Step sizes, for mu = 1, L = 10 (kappa = 10):
# - sgd: 1/L, gradient descent's classic step; the error contracts by 1 - mu/L = 0.9 per step.
# - momentum: Polyak's optimal heavy ball, lr = 4 / (sqrt L + sqrt mu)^2 and
#   beta = ((sqrt kappa - 1) / (sqrt kappa + 1))^2 (PyTorch's lr * buffer is the heavy ball's
#   step with the same lr and beta); rate (sqrt kappa - 1) / (sqrt kappa + 1) = 0.52.
# - nesterov: lr = 1/L, beta = (sqrt kappa - 1) / (sqrt kappa + 1), rate 1 - 1/sqrt kappa.
# - adagrad: the start has |g_j| = 1, and the sums of squares only grow, so every
#   coordinate's step lr / (sqrt v_j + eps) stays <= lr = 1/L: a diagonally preconditioned
#   gradient step D <= I/L, which decreases f at every update (descent lemma); the sums stay
#   finite as the gradients shrink geometrically, so the step stays bounded below too.
# - adam, adamw (wd = 0: with decay the fixed point is not f's minimum): each coordinate
#   moves by about lr at most (|m^/sqrt v^| <= 1 for beta1^2 <= beta2, Kingma & Ba §2.1).
#   At a constant lr, once v^ has forgotten the early gradients Adam can settle into an
#   O(lr) cycle around the optimum, so the step is annealed: cosine from 0.03 to 0 over 2000
#   updates (0.03 covers the unit distance to the optimum within the first few hundred).
QUADRATIC_RUNS = {
    "sgd": (0.1, 0.0, 300, "constant"),
    "momentum": (4 / (math.sqrt(10) + 1) ** 2, ((math.sqrt(10) - 1) / (math.sqrt(10) + 1)) ** 2, 100, "constant"),
    "nesterov": (0.1, (math.sqrt(10) - 1) / (math.sqrt(10) + 1), 150, "constant"),
    "adagrad": (0.1, 0.0, 1000, "constant"),
    "adam": (0.03, 0.9, 2000, "cosine"),
    "adamw": (0.03, 0.9, 2000, "cosine"),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_minimises_a_strongly_convex_quadratic(kind):
    A, opt, theta = quadratic()
    lr0, beta1, steps, schedule = QUADRATIC_RUNS[kind]
    state = optimizer_state(theta.size - 1)
    for t in range(1, steps + 1):
        lr = schedule_lr(SCHEDULES[schedule], lr0, t, 0.5, 0, steps, 1, 1.0)
        optimizer_step(OPTIMIZERS[kind], theta, A @ (theta - opt), state, lr, t, beta1, 0.999, 1e-8, 0.0)
    err = theta - opt
    assert np.abs(err).max() < 1e-6
    assert 0.5 * err @ A @ err < 1e-6


@pytest.mark.parametrize("l2", [0.5, 50.0])
def test_adagrad_with_l2_reaches_the_penalised_minimum(l2):
    """AdaGrad's L2 (sums of the loss gradient's squares, the penalty in the same metric) has
    the L2 objective's stationary point, f(θ) + (l2/2)‖w‖² with the intercept free: the
    minimiser solves (A + l2·P)θ = A·θ* (P: ones but the intercept). l2 = 50 makes lr·l2 / h
    far above 1 (h ≈ 1 after the first step), where the proximal step still shrinks the
    weights monotonically."""
    A, opt, theta = quadratic()
    P = np.diag(np.r_[np.ones(theta.size - 1), 0.0])
    want = np.linalg.solve(A + l2 * P, A @ opt)
    state = optimizer_state(theta.size - 1)
    for t in range(1, 3001):
        optimizer_step(OPTIMIZERS["adagrad"], theta, A @ (theta - opt), state, 0.1, t, 0.0, 0.0, 1e-8, l2)
    np.testing.assert_allclose(theta, want, rtol=1e-8, atol=1e-10)
    assert np.abs(want - opt).max() > 0.05  # the penalty moved the minimum: the test can tell


def lasso_problem(seed=0, n=400, d=20):
    """A sparse ground truth: 4 of 20 weights non-zero, and scikit-learn's Lasso solution."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = np.zeros(d)
    w[[1, 5, 11, 17]] = [1.5, -2.0, 1.0, -0.8]
    y = X @ w + 0.7 + 0.3 * rng.standard_normal(n)
    alpha = 0.1
    # Lasso: (1/2n)||y - Xw - b||^2 + alpha ||w||_1 = our objective for linear loss, l1 = alpha
    lasso = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(X, y)
    return X, y, alpha, lasso


def run_l1(X, y, alpha, batch, lr, epochs, seed=0):
    """Plain SGD + cumulative L1 penalty through the kernels, as the loop composes them."""
    n, d = X.shape
    theta, theta_eff = np.zeros(d + 1), np.zeros(d + 1)
    gw, g = np.zeros(d + 1), np.zeros(d + 1)
    q, u = np.zeros(d), np.zeros(1)
    mean, scale = np.zeros(d), np.ones(d)
    state = optimizer_state(d)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n) if batch < n else np.arange(n)
        for k in range(0, n, batch):
            idx = order[k:k + batch]
            gw[:] = 0.0
            _, gw[d] = accumulate(LOSSES["linear"], X, y, idx, theta_eff[:d], theta_eff[d], gw[:d])
            standardized_gradient(gw, idx.size, mean, scale, 0.0, theta, g)
            optimizer_step(OPTIMIZERS["sgd"], theta, g, state, lr, 1, 0.0, 0.0, 0.0, 0.0)
            l1_step(theta, q, u, lr * alpha)
            refresh_effective(theta, theta_eff, mean, scale)
    return theta


def test_l1_full_batch_reaches_the_lasso_solution_with_exact_zeros():
    X, y, alpha, lasso = lasso_problem()
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    lr = 1.0 / np.linalg.eigvalsh(A.T @ A / X.shape[0]).max()  # 1/L of the smooth part
    theta = run_l1(X, y, alpha, X.shape[0], lr, 2000)
    support = np.flatnonzero(lasso.coef_)
    assert set(support) == {1, 5, 11, 17}  # the problem is one where Lasso finds the truth
    np.testing.assert_array_equal(np.flatnonzero(theta[:-1]), support)
    assert (theta[:-1][lasso.coef_ == 0] == 0.0).all()  # exactly, not merely small
    np.testing.assert_allclose(theta[:-1], lasso.coef_, atol=1e-8)
    assert theta[-1] == pytest.approx(lasso.intercept_, abs=1e-8)  # intercept not penalised


def test_l1_minibatch_keeps_exact_zeros_despite_gradient_noise():
    X, y, alpha, lasso = lasso_problem(seed=1)
    # a subgradient step would leave every zero weight jittering at about lr * |noise|; the
    # cumulative penalty leaves them at exactly zero after every update
    theta = run_l1(X, y, alpha, 16, 0.01, 30)
    np.testing.assert_array_equal(np.flatnonzero(theta[:-1]), np.flatnonzero(lasso.coef_))
    np.testing.assert_allclose(theta[:-1], lasso.coef_, atol=0.05)


def test_l1_step_by_hand():
    theta = np.array([0.5, -0.05, 0.02, 0.0, 9.0])  # last: the intercept
    q, u = np.zeros(4), np.zeros(1)
    l1_step(theta, q, u, 0.1)
    np.testing.assert_array_equal(theta, [0.4, 0.0, 0.0, 0.0, 9.0])
    np.testing.assert_allclose(q, [-0.1, 0.05, -0.02, 0.0])
    assert u[0] == 0.1
    # weight 1 received only 0.05 of its 0.1: it still owes 0.05 + 0.1 if it turns negative
    theta[1] = -0.3
    l1_step(theta, q, u, 0.1)
    assert theta[1] == pytest.approx(-0.15) and q[1] == pytest.approx(0.2)
    assert theta[0] == pytest.approx(0.3)  # owed exactly this step's 0.1


def test_schedule_values_by_hand():
    c, inv, step, cos = (SCHEDULES[k] for k in ("constant", "invscaling", "step", "cosine"))
    # warmup of 4: lr0 * t / 4, then the schedule starts over at lr0
    assert [schedule_lr(c, 2.0, t, 0.5, 4, 100, 1, 1.0) for t in (1, 2, 4, 5, 50)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    # invscaling: lr0 / t^p without warmup (scikit-learn), lr0 / (t - warmup)^p after it
    assert schedule_lr(inv, 1.0, 16, 0.25, 0, 0, 1, 1.0) == pytest.approx(0.5)
    assert schedule_lr(inv, 1.0, 19, 0.5, 3, 0, 1, 1.0) == pytest.approx(0.25)
    assert schedule_lr(inv, 1.0, 2, 0.5, 3, 0, 1, 1.0) == pytest.approx(2 / 3)  # in the warmup
    # step: 10 updates at lr0, 10 at lr0 * gamma, ...
    vals = [schedule_lr(step, 1.0, t, 0.0, 0, 0, 10, 0.5) for t in (1, 10, 11, 20, 21, 35)]
    assert vals == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    assert schedule_lr(step, 1.0, 15, 0.0, 5, 0, 10, 0.5) == 1.0  # the 10th update after warmup
    assert schedule_lr(step, 1.0, 16, 0.0, 5, 0, 10, 0.5) == 0.5
    # cosine over total = 110 with warmup 10: T = 100 updates, lr0 (1 + cos(pi k / T)) / 2
    assert schedule_lr(cos, 1.0, 11, 0.0, 10, 110, 1, 1.0) == 1.0
    assert schedule_lr(cos, 1.0, 61, 0.0, 10, 110, 1, 1.0) == pytest.approx(0.5)
    assert schedule_lr(cos, 1.0, 36, 0.0, 10, 110, 1, 1.0) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert schedule_lr(cos, 1.0, 110, 0.0, 10, 110, 1, 1.0) == pytest.approx((1 + math.cos(math.pi * 0.99)) / 2)
    assert schedule_lr(cos, 1.0, 111, 0.0, 10, 110, 1, 1.0) == pytest.approx(0.0, abs=1e-16)
    assert schedule_lr(cos, 1.0, 500, 0.0, 10, 110, 1, 1.0) == pytest.approx(0.0, abs=1e-16)


def test_linear_scaling_rule_scales_the_given_step_by_the_batch():
    """--lr-scale-with-batch REF: a step tuned at batch REF is taken as lr · B / REF (Goyal et
    al. 2017); the run is the run at that step."""
    from streamsgd.sources import ArraySource
    from streamsgd.config import FitConfig
    from streamsgd.train.trainer import fit

    rng = np.random.default_rng(4)
    X = rng.standard_normal((4_000, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.standard_normal(4_000)
    runs = {}
    for lr, reference in ((0.01, 64), (0.04, None)):  # 0.01 · 256 / 64 = 0.04
        result = fit(ArraySource(X, y, chunk_rows=1_000),
                     FitConfig(model="linear", batch=256, epochs=2, lr=lr, lr_reference_batch=reference, seed=3))
        runs[reference] = result
    assert runs[64].summary["lr"] == pytest.approx(0.04, rel=1e-15)
    np.testing.assert_array_equal(runs[64].model.coef, runs[None].model.coef)
    assert runs[64].model.intercept == runs[None].model.intercept
