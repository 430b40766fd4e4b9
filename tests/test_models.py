"""Each convex model reaches the optimum of a trusted solver, judged by our own objective
(DESIGN.md §4: L = (1/N) Σ ℓ(w·z_i + b, y_i) + (l2/2)‖w‖² + l1‖w‖₁ on standardised z, the
intercept unpenalised): the objective at our model is within 1e-3 (relative) of its value
at the reference solution. The parameter mapping to each reference is in its test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor, QuantileRegressor
from sklearn.svm import LinearSVC

from streamsgd.config import FitConfig
from streamsgd.train import Hooks, WarmStart
from streamsgd.compute.losses import row_loss
from streamsgd.sources.arrays import ArraySource
from streamsgd.train.trainer import fit

pytestmark = pytest.mark.slow

N, D = 3_000, 4


def data(task: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)) * np.array([1.0, 2.0, 0.5, 3.0]) + 1.0
    w = np.array([0.6, -0.4, 0.9, 0.2])
    z = (X - 1.0) / np.array([1.0, 2.0, 0.5, 3.0]) @ w
    if task == "classification":
        y = (z + rng.logistic(size=N) > 0).astype(float)
    elif task == "counts":
        y = rng.poisson(np.exp(0.5 * z)).astype(float)
    else:
        y = z + rng.standard_t(3, size=N)  # heavy tails: where huber and quantile matter
    return X, y


def objective(model: str, Z, y, w, b, l2, l1=0.0, param=None) -> float:
    return float(row_loss(model, Z @ w + b, y, param).mean() + 0.5 * l2 * w @ w + l1 * np.abs(w).sum())


def ours(model: str, X, y, **options):
    m = fit(ArraySource(X, y, chunk_rows=500), FitConfig(model=model, dtype="float64", **options)).model
    Z = (X - m.mean) / m.scale
    return m, Z, np.array(m.metadata["coef_standardized"]), m.metadata["intercept_standardized"]


def test_poisson_reaches_poisson_regressor():
    X, y = data("counts")
    l2 = 1e-3
    m, Z, w, b = ours("poisson", X, y, l2=l2, epochs=60, batch=64, lr_schedule="invscaling", power_t=0.5)
    # PoissonRegressor: (1/2n) Σ deviance + (alpha/2)‖w‖², the deviance being 2(y log(y/μ) − y + μ):
    # the same minimiser as (1/n) Σ (e^z − y z) + (l2/2)‖w‖² with alpha = l2
    ref = PoissonRegressor(alpha=l2, tol=1e-12, max_iter=10_000).fit(Z, y)
    mine, best = objective("poisson", Z, y, w, b, l2), objective("poisson", Z, y, ref.coef_, ref.intercept_, l2)
    assert (mine - best) / abs(best) < 1e-3, (mine, best)


def test_quantile_reaches_quantile_regressor():
    X, y = data("regression")
    tau = 0.8
    m, Z, w, b = ours("quantile", X, y, quantile=tau, l2=0.0, epochs=100, batch=32, lr_schedule="invscaling",
                      power_t=0.5, lr=0.5)
    # QuantileRegressor(alpha=0) minimises (1/n) Σ pinball_τ exactly (a linear program, HiGHS)
    ref = QuantileRegressor(quantile=tau, alpha=0.0, solver="highs").fit(Z, y)
    mine = objective("quantile", Z, y, w, b, 0.0, param=tau)
    best = objective("quantile", Z, y, ref.coef_, ref.intercept_, 0.0, param=tau)
    assert (mine - best) / abs(best) < 1e-3, (mine, best)


# liblinear's dual coordinate descent stops at its iteration cap before its tiny tolerance:
# the reference is then at least as good as that point, which is all the comparison needs
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_hinge_reaches_the_linear_svm():
    X, y = data("classification")
    l2 = 1e-2
    m, Z, w, b = ours("hinge", X, y, l2=l2, epochs=100, batch=32, lr_schedule="invscaling", power_t=0.5)
    # LinearSVC(loss="hinge"): (1/2)‖w‖² + C Σ max(0, 1 − s(w·z + b)) = N·C·[our objective] with
    # C = 1/(N·l2); its intercept is penalised through intercept_scaling, made large to free it
    ref = LinearSVC(loss="hinge", C=1 / (N * l2), intercept_scaling=10.0, tol=1e-8, max_iter=1_000_000,
                    dual=True).fit(Z, y)
    mine = objective("hinge", Z, y, w, b, l2)
    best = objective("hinge", Z, y, ref.coef_[0], ref.intercept_[0], l2)
    assert (mine - best) / abs(best) < 1e-3, (mine, best)


def test_huber_reaches_the_exact_minimum():
    from scipy.optimize import minimize

    X, y = data("regression")
    l2, eps = 1e-3, 1.0
    m, Z, w, b = ours("huber", X, y, l2=l2, epsilon=eps, epochs=60, batch=64, lr_schedule="invscaling", power_t=0.5)

    # scikit-learn's HuberRegressor estimates a scale jointly (another objective), so the
    # reference is L-BFGS on our own (smooth, convex) objective, to gradient norm 1e-12
    def f(p):
        r = Z @ p[:D] + p[D] - y
        slope = np.clip(r, -eps, eps)
        return objective("huber", Z, y, p[:D], p[D], l2, param=eps), np.append(Z.T @ slope / N + l2 * p[:D], slope.mean())

    ref = minimize(f, np.zeros(D + 1), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "maxiter": 10_000}).x
    mine, best = objective("huber", Z, y, w, b, l2, param=eps), objective("huber", Z, y, ref[:D], ref[D], l2, param=eps)
    assert (mine - best) / abs(best) < 1e-3, (mine, best)


@pytest.mark.parametrize("model", ["huber", "quantile"])
def test_bounded_slope_losses_start_at_the_targets_location(model):
    """Huber (ε 0.1) and the pinball loss move the intercept by at most the step times ε (or
    τ) per update: from 0, a target around 150 is out of reach of one epoch. They start at
    the first window's median (τ-quantile) instead, so one epoch at batch 32 lands near the
    optimum: objective within 5 % (from 0 it is ~100x the optimum: intercept ~2 of 150)."""
    X, y = data("regression")
    y = y + 150.0
    m, Z, w, b = ours(model, X, y, epochs=1, batch=32, l2=0.0)
    ref = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(Z, y)
    mine = objective(model, Z, y, w, b, 0.0, param=FitConfig().epsilon if model == "huber" else 0.5)
    best = objective(model, Z, y, ref.coef_, ref.intercept_, 0.0, param=FitConfig().epsilon if model == "huber" else 0.5)
    assert (mine - best) / abs(best) < 0.05, (mine, best)


def test_l1_gives_exact_zeros_on_a_sparse_truth():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N, 10))
    y = X[:, 0] * 2.0 - X[:, 3] * 1.5 + 0.1 * rng.standard_normal(N)
    m = fit(ArraySource(X, y, chunk_rows=500),
            FitConfig(model="linear", l1=0.05, l2=0.0, epochs=30, batch=64, dtype="float64", average=False)).model
    support = np.flatnonzero(np.array(m.metadata["coef_standardized"]) != 0.0)
    assert list(support) == [0, 3]  # exactly zero elsewhere, as Lasso selects


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adagrad", "adam", "adamw"])
def test_each_optimizer_trains_the_logistic_benchmark(optimizer):
    X, y = data("classification", seed=2)
    base = fit(ArraySource(X, y, chunk_rows=500), FitConfig(model="logistic", epochs=30, dtype="float64")).model
    lr = {"momentum": 0.2, "nesterov": 0.2, "adagrad": 1.0, "adam": 0.1, "adamw": 0.1}[optimizer]
    other = fit(ArraySource(X, y, chunk_rows=500),
                FitConfig(model="logistic", epochs=30, batch=32, dtype="float64", optimizer=optimizer, lr=lr,
                          lr_schedule="invscaling", power_t=0.5)).model
    Z = (X - base.mean) / base.scale

    def loss(m):
        return objective("logistic", Z, y, np.array(m.metadata["coef_standardized"]),
                         m.metadata["intercept_standardized"], 1e-4)

    # the reference is plain SGD with the defaults (itself within 1e-4 of the optimum, test_fit)
    assert loss(other) <= loss(base) * (1 + 2e-3), (loss(other), loss(base))


def test_validation_chunks_are_held_out_and_early_stopping_stops_at_the_plateau():
    X, y = data("classification", seed=7)  # 3,000 rows in 6 chunks of 500
    # a learning rate too small to move: the validation loss is flat from the first epoch,
    # so the run stops after epoch 1 + patience, as documented
    result = fit(ArraySource(X, y, chunk_rows=500),
                 FitConfig(model="logistic", epochs=50, lr=1e-300, validation_fraction=0.34, early_stopping=True,
                           patience=3, seed=1))
    held = result.model.metadata["validation"]
    assert len(held["chunks"]) == 2 and held["rows"] == 1_000
    assert held["stopped_early_at_epoch"] == 4
    # every epoch trained on the other 2,000 rows only
    assert result.summary["rows_seen"] == 4 * 2_000
    # a learning model keeps improving, and keeps training
    moving = fit(ArraySource(X, y, chunk_rows=500),
                 FitConfig(model="logistic", epochs=6, batch=32, validation_fraction=0.34, early_stopping=True,
                           patience=3, seed=1))
    assert moving.model.metadata["validation"]["stopped_early_at_epoch"] is None


def test_softmax_reaches_multinomial_logistic_regression():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((N, D)) * np.array([1.0, 2.0, 0.5, 3.0]) + 1.0
    z = X @ rng.standard_normal((3, D)).T
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random(N)[:, None] > np.cumsum(p, axis=1)).sum(axis=1) * 2.0 + 3.0  # labels 3, 5, 7
    l2 = 1e-3
    result = fit(ArraySource(X, y, chunk_rows=500),
                 FitConfig(model="softmax", l2=l2, epochs=60, batch=64, dtype="float64"))
    m = result.model
    assert m.coef.shape == (3, D) and list(m.classes_) == [3.0, 5.0, 7.0]
    Z = (X - m.mean) / m.scale
    index = np.searchsorted(m.classes_, y)
    W, b = np.array(m.metadata["coef_standardized"]), np.array(m.metadata["intercept_standardized"])

    def objective_(W, b):
        return float(row_loss("softmax", Z @ W.T + b, index).mean() + 0.5 * l2 * (W * W).sum())

    # LogisticRegression (lbfgs, multinomial): (1/2)‖W‖² + C Σ ℓ = N·C·[ours] with C = 1/(N·l2)
    ref = LogisticRegression(C=1 / (N * l2), tol=1e-12, max_iter=10_000).fit(Z, index)
    mine, best = objective_(W, b), objective_(ref.coef_, ref.intercept_)
    assert (mine - best) / best < 1e-3, (mine, best)  # measured 7e-5
    assert np.mean(m.predict(X) == y) > 0.8
    np.testing.assert_allclose(m.predict_proba(X).sum(axis=1), 1.0)


def test_softmax_from_the_command_line(tmp_path):
    import json

    import pyarrow.parquet as pq
    from helpers import run_cli

    from streamsgd.tools.generate import generate

    data = tmp_path / "d.parquet"
    generate(str(data), rows=6_000, features=5, task="softmax", classes=4, seed=2, row_group_rows=1_000)
    run_cli("fit", data, "--model", "softmax", "--epochs", "5", "-o", tmp_path / "m.npz")
    scored = json.loads(run_cli("evaluate", tmp_path / "m.npz", data, "--json").stdout)
    assert scored["rows"] == 6_000 and scored["accuracy"] > 0.5  # 4 classes: chance is 0.25
    run_cli("predict", tmp_path / "m.npz", data, "-o", tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["prediction", "prob_0", "prob_1", "prob_2", "prob_3"]
    assert set(table["prediction"].to_pylist()) <= {0, 1, 2, 3}


SCALES = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 1.5])


def softmax_data(seed: int, W: np.ndarray, shift=None):
    """Rows on different scales and offsets; labels 0, 1, 2 drawn from the multinomial model W
    (3 x d) on the standardised features, with class intercepts ``shift``."""
    rng = np.random.default_rng(seed)
    d = W.shape[1]
    X = rng.standard_normal((N, d)) * SCALES[:d] + 1.0
    z = (X - 1.0) / SCALES[:d] @ W.T + (0.0 if shift is None else shift)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return X, (rng.random(N)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).astype(float)


def softmax_objective(Z, index, W, b, l2=0.0, l1=0.0, weights=None):
    """(1/N) Σ w_{y_i} ℓ_i + (l2/2)‖W‖² + l1‖W‖₁ (DESIGN.md §4, one row of W per class)."""
    w = np.ones(Z.shape[0]) if weights is None else weights[index]
    return float((w * row_loss("softmax", Z @ W.T + b, index)).mean() + 0.5 * l2 * (W * W).sum() + l1 * np.abs(W).sum())


@pytest.mark.parametrize("l1, l2", [(0.01, 0.0), (0.01, 0.002)])
def test_softmax_l1_gives_exact_zeros_and_reaches_saga(l1, l2):
    true = np.random.default_rng(11).standard_normal((3, 6))
    true[:, 4:] = 0.0  # features 4 and 5 carry nothing
    X, y = softmax_data(11, true)
    # no averaging: the mean of sparse iterates is not sparse; invscaling's decay settles them
    m = fit(ArraySource(X, y, chunk_rows=500),
            FitConfig(model="softmax", l1=l1, l2=l2, epochs=100, batch=64, lr_schedule="invscaling", power_t=0.5,
                      average=False, dtype="float64")).model
    Z = (X - m.mean) / m.scale
    index = y.astype(int)
    W, b = np.array(m.metadata["coef_standardized"]), np.array(m.metadata["intercept_standardized"])
    assert (W[:, 4:] == 0.0).all() and (m.coef[:, 4:] == 0.0).all()  # exact zeros, raw space too
    # LogisticRegression (saga, multinomial, elastic net): C Σ ℓ + l1_ratio‖W‖₁ + (1 − l1_ratio)/2 ‖W‖²
    # = N·C·[ours] with 1/(N·C) = l1 + l2 and l1_ratio = l1 / (l1 + l2); saga's prox step gives exact zeros
    ref = LogisticRegression(C=1 / (N * (l1 + l2)), l1_ratio=l1 / (l1 + l2), solver="saga", tol=1e-12,
                             max_iter=100_000).fit(Z, index)
    mine = softmax_objective(Z, index, W, b, l2, l1)
    best = softmax_objective(Z, index, ref.coef_, ref.intercept_, l2, l1)
    assert (mine - best) / best < 1e-3, (mine, best)  # measured 3e-7 (l1) and 3e-7 (elastic net)
    np.testing.assert_array_equal(W == 0.0, ref.coef_ == 0.0)  # the same support as saga's


@pytest.mark.parametrize("spec", ["balanced", '{"0": 1, "1": 4, "2.0": 0.5}'])
def test_softmax_class_weights_reach_weighted_logistic_regression(spec):
    true = np.random.default_rng(9).standard_normal((3, 4))
    X, y = softmax_data(9, true, shift=np.array([1.0, -1.0, 0.0]))  # classes of 50 %, 24 %, 26 %
    l2 = 1e-3
    m = fit(ArraySource(X, y, chunk_rows=500),
            FitConfig(model="softmax", l2=l2, epochs=60, batch=64, dtype="float64", class_weight=spec)).model
    Z = (X - m.mean) / m.scale
    index = y.astype(int)
    counts = np.bincount(index)
    weights = N / (3 * counts) if spec == "balanced" else np.array([1.0, 4.0, 0.5])
    W, b = np.array(m.metadata["coef_standardized"]), np.array(m.metadata["intercept_standardized"])
    # LogisticRegression(class_weight): C Σ w_{y_i} ℓ_i + ½‖W‖² = N·C·[ours] with C = 1/(N·l2)
    ref = LogisticRegression(C=1 / (N * l2), tol=1e-12, max_iter=10_000,
                             class_weight="balanced" if spec == "balanced" else dict(enumerate(weights))).fit(Z, index)
    mine = softmax_objective(Z, index, W, b, l2, weights=weights)
    best = softmax_objective(Z, index, ref.coef_, ref.intercept_, l2, weights=weights)
    assert (mine - best) / best < 1e-3, (mine, best)  # measured 5e-5 (balanced) and 1e-5 (JSON)
    # the weights matter: the unweighted optimum is far from the weighted one
    plain = LogisticRegression(C=1 / (N * l2), tol=1e-12, max_iter=10_000).fit(Z, index)
    unweighted = softmax_objective(Z, index, plain.coef_, plain.intercept_, l2, weights=weights)
    assert (unweighted - best) / best > 1e-2  # measured 6 % (balanced) and 30 % (JSON)


def test_softmax_warm_start_starts_from_the_model_and_continues_it(tmp_path):
    import json

    from streamsgd.errors import DataError

    X, y = softmax_data(4, np.random.default_rng(4).standard_normal((3, 4)))
    source = ArraySource(X, y, chunk_rows=500)
    options = dict(model="softmax", shuffle=False, average=False, dtype="float64", batch=64, l2=1e-3)
    one = fit(source, FitConfig(epochs=1, **options)).model
    # one update from all rows at once: its loss is the data loss of the given parameters
    fit(source, FitConfig(batch="full", steps=1, log_every=1, **{k: v for k, v in options.items() if k != "batch"}),
        warm=WarmStart(init=one), hooks=Hooks(metrics=str(tmp_path / "m.jsonl")))
    first = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert first["event"] == "progress" and first["iteration"] == 1
    at_init = row_loss("softmax", one.decision_function(X), y).mean()
    assert first["loss"] == pytest.approx(at_init, rel=1e-12)  # the same sums, in another order
    assert at_init < np.log(3) - 0.1  # not the cold start's log C
    # one epoch more from it is two epochs of one run (unshuffled, constant step: the same updates)
    two = fit(source, FitConfig(epochs=1, **options), warm=WarmStart(init=one)).model
    both = fit(source, FitConfig(epochs=2, **options)).model
    np.testing.assert_allclose(two.coef, both.coef, rtol=1e-10)
    np.testing.assert_allclose(two.intercept, both.intercept, rtol=1e-10, atol=1e-12)
    assert two.metadata["init"]["metrics"]["iterations"] == 47  # ceil(3000 / 64)
    # the model's classes are kept: a label outside them is refused
    with pytest.raises(DataError, match="holds 3, not one of the classes of --init"):
        fit(ArraySource(X, np.where(y == 2, 3.0, y), chunk_rows=500), FitConfig(epochs=1, **options),
            warm=WarmStart(init=one))


def test_softmax_takes_its_classes_from_the_caller():
    """fit(classes=...): the data may lack a class (it still gets its parameters), not add one."""
    from streamsgd.errors import DataError, UsageError

    X, y = softmax_data(5, np.random.default_rng(5).standard_normal((3, 4)))
    m = fit(ArraySource(X, y, chunk_rows=500), FitConfig(model="softmax", epochs=1),
            warm=WarmStart(classes=[3.0, 1.0, 0.0, 2.0])).model
    np.testing.assert_array_equal(m.classes_, [0.0, 1.0, 2.0, 3.0])  # sorted, as the parameter blocks are
    assert m.coef.shape == (4, 4)
    assert (m.predict_proba(X)[:, 3] < 0.1).all()  # never seen: pushed down by every row
    with pytest.raises(DataError, match="holds 2, not one of the classes of classes= \\(0, 1\\)"):
        fit(ArraySource(X, y, chunk_rows=500), FitConfig(model="softmax", epochs=1),
            warm=WarmStart(classes=[0.0, 1.0]))
    with pytest.raises(UsageError, match="classes= fixes the classes of a softmax model"):
        fit(ArraySource(X, (y > 0).astype(float), chunk_rows=500), FitConfig(model="logistic", epochs=1),
            warm=WarmStart(classes=[0.0, 1.0]))


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov"])
def test_momentum_with_the_default_step_trains_as_well_as_sgd(optimizer):
    """The default step is scaled by (1 − β): heavy ball's effective step is η / (1 − β)."""
    X, y = data("classification", seed=3)
    sgd = fit(ArraySource(X, y, chunk_rows=500), FitConfig(epochs=20, batch=32)).summary
    heavy = fit(ArraySource(X, y, chunk_rows=500), FitConfig(epochs=20, batch=32, optimizer=optimizer)).summary
    assert heavy["lr"] == pytest.approx(sgd["lr"] * (1 - 0.9))
    # measured within 0.3 %; unscaled, momentum's loss was 60 % higher on a 1M-row benchmark
    assert heavy["loss"] <= sgd["loss"] * 1.02
