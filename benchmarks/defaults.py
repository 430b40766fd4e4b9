"""Do the defaults train well without tuning? Compare streamsgd.fit with no options against the
exact optimum of the same objective on the real data sets that ship with scikit-learn and statsmodels.

    .venv/bin/python benchmarks/defaults.py                 # the defaults, as shipped
    .venv/bin/python benchmarks/defaults.py --budgets       # and --epochs 5|20|50 x --batch 32|256
    .venv/bin/python benchmarks/defaults.py --quick         # one data set per model, defaults + one budget
    .venv/bin/python benchmarks/defaults.py --lr-schedule constant --min-updates 10000
                                                             # a proposed change, via explicit options

The objective, in standardised feature space z = (x - mean) / scale (population std, as
StandardScaler and streamsgd's scan compute it), intercept unpenalised:

    F(w, b) = (1/N) sum_i loss(z_i . w + b, y_i) + (l2 / 2) ||w||^2
    linear:   loss = (z - y)^2 / 2          logistic: loss = log(1 + e^z) - y z,  y in {0, 1}
    huber:    r^2/2 or eps |r| - eps^2/2 (eps 0.1)    modified_huber: (1 - s z)^2, -4 s z, 0
    poisson:  y log(y / e^z) - y + e^z (half deviance) softmax: logsumexp(z) - z_y (penalty on every class)

The optimum is computed in memory by a trusted solver: the closed-form ridge normal equations
(intercept = mean of y, since standardised columns are centred) for linear, scikit-learn's
LogisticRegression(C = 1 / (N l2), lbfgs, tol 1e-12) for logistic, and scipy's L-BFGS-B on the exact
objective and gradient (gtol 1e-12) for huber, modified_huber, poisson and softmax (smooth or C1),
LinearSVC(loss="hinge", C = 1/(N l2), intercept freed by intercept_scaling 10, tol 1e-8) for hinge,
and QuantileRegressor(quantile 0.5, alpha 0, HiGHS: an exact linear program) for quantile, whose
runs therefore use --l2 0. Every model is scored by the same function of the raw-space model (coef,
intercept) so the comparison needs nothing from streamsgd's internals. The relative gap is (F_sgd - F_opt) / F_opt; "left" is the share of the
possible decrease not yet made, (F_sgd - F_opt) / (F(0) - F_opt), which is kinder to problems
whose optimum is near zero (almost separable classes).

Each real data set is split 80/20 (stratified for classes, seed 0); the objective is the
training objective on the 80 %, the held-out metric (accuracy, or R^2) is on the 20 %. The pass
mark (issue 13) is the held-out loss: within 2 % of the exact solver's with the defaults, within
5 % with a user-fixed budget (--epochs 5|20|50 x --batch 32|256); cases with no held-out rows
(*_x512) are judged by the training objective's gap instead.

Data sets. All are real measurements bundled with scikit-learn (nothing is downloaded):
  breast_cancer      logistic  malignant vs benign
  wine_class0        logistic  cultivar 0 vs the other two
  digits_lt5         logistic  digit < 5 vs >= 5 (8x8 pixel intensities)
  iris_versicolor    logistic  versicolor vs rest (not linearly separable)
  iris_virginica     logistic  virginica vs rest
  diabetes           linear    disease progression after one year (the real target)
  linnerud_weight    linear    body weight from three exercise counts (real, but 20 rows)
  wine_alcohol       linear    real features, target = one real column (alcohol) predicted
                               from the other 12 chemistry columns; not a published task
  bc_worst_area      linear    same construction: breast-cancer "worst area" from the other 29
                               columns; nearly collinear (radius, perimeter), so badly
                               conditioned: a stress test for a first-order method
  wine / iris / digits  softmax  the three, three and ten classes as published
  linnerud_situps    poisson   sit-up counts (up to 251) from weight, waist and pulse (20 rows)
  large_counts       poisson   breast-cancer features, counts drawn as Poisson(e^(4 + 0.6 z)) with a
                               fixed seed: means up to thousands, as statsmodels' star98 (not bundled)
  rare_onehot        linear    20,000 rows: 8 normal columns, a one-hot column set on 6 rows and a
                               three-level category; the case whose worst row a row sample misses
  name:model         another model on the same data (huber, modified_huber, hinge, quantile)
  sm_*               statsmodels' bundled data sets (STATSMODELS: its published regressors, the
                     model of its published example where ours has it: star98, fair, randhie,
                     cpunish, committee Poisson; spector, anes96 vote logistic; anes96 party id
                     softmax; stackloss, engel quantile; the rest least squares); skipped, saying
                     so, where statsmodels is not installed ([bench] installs it)
  *_x512             the same data resampled with replacement to 512 x 512 = 262,144 rows
                     (seed 0), so that B = 512 is much smaller than N and SGD runs in the
                     streaming regime the package is built for. The optimum is exact: the
                     resampled objective equals the original rows weighted by their counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamsgd.config import FitConfig
import streamsgd
from streamsgd.train import trainer as train
from streamsgd.train.hashed import DEFAULT_L2
#: Gap above which the run counts as a failure (the target is "within a few percent").
MAX_GAP = 0.05
#: issue 13: held-out loss within 2 % of the exact solver's with the defaults, 5 % with a budget
MAX_TEST_GAP_DEFAULTS = 0.02
MAX_TEST_GAP_BUDGET = 0.05
#: the user-fixed budgets: every --epochs with every --batch
BUDGETS = [{"epochs": e, "batch": b} for e in (5, 20, 50) for b in (32, 256)]
HUBER_EPSILON = 0.1  # FitConfig's default
SEED = 0
BOOTSTRAP_ROWS = 512 * 512


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    bootstrap: bool = False
    fit: tuple[tuple[str, Any], ...] = ()  # options the model needs (quantile's exact solver: l2 = 0)
    needs: str = "sklearn"  # the package that ships the data set


def _sk():
    from sklearn import datasets

    return datasets


def _breast_cancer():
    X, y = _sk().load_breast_cancer(return_X_y=True)
    return X, y.astype(np.float64)


def _wine_class0():
    X, y = _sk().load_wine(return_X_y=True)
    return X, (y == 0).astype(np.float64)


def _digits_lt5():
    X, y = _sk().load_digits(return_X_y=True)
    return X, (y < 5).astype(np.float64)


def _iris(cls):
    def load():
        X, y = _sk().load_iris(return_X_y=True)
        return X, (y == cls).astype(np.float64)

    return load


def _diabetes():
    X, y = _sk().load_diabetes(return_X_y=True)
    return X, y.astype(np.float64)


def _linnerud_weight():
    X, Y = _sk().load_linnerud(return_X_y=True)
    return X.astype(np.float64), Y[:, 0].astype(np.float64)


def _wine_alcohol():
    X, _ = _sk().load_wine(return_X_y=True)
    return X[:, 1:], X[:, 0].copy()


def _multiclass(name):
    def load():
        X, y = getattr(_sk(), f"load_{name}")(return_X_y=True)
        return X, y.astype(np.float64)

    return load


def _linnerud_situps():
    X, Y = _sk().load_linnerud(return_X_y=True)
    return Y.astype(np.float64), X[:, 1].astype(np.float64)


def _large_counts():
    X, _ = _sk().load_breast_cancer(return_X_y=True)
    Z = (X - X.mean(0)) / X.std(0)
    w = np.random.default_rng(SEED).standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
    return X, np.random.default_rng([SEED, 1]).poisson(np.exp(4.0 + 0.6 * Z @ w)).astype(np.float64)


def _rare_onehot():
    rng = np.random.default_rng(SEED)
    n = 20_000
    X = np.zeros((n, 12))
    X[:, :8] = rng.standard_normal((n, 8))
    X[rng.choice(n, 6, replace=False), 8] = 1.0
    X[np.arange(n), 9 + rng.integers(0, 3, n)] = 1.0
    y = X[:, :8] @ np.linspace(-1, 1, 8) + 3.0 * X[:, 8] + X[:, 9:] @ np.array([0.0, 0.5, 1.0])
    return X, y + rng.standard_normal(n)


def _bc_worst_area():
    d = _sk().load_breast_cancer()
    j = list(d.feature_names).index("worst area")
    keep = [k for k in range(d.data.shape[1]) if k != j]
    return d.data[:, keep], d.data[:, j].copy()


def _statsmodels(name: str, target: str, columns: tuple[str, ...] | None = None):
    """statsmodels' bundled data set ``name``: ``target`` from its published regressors
    (``exog``), or from ``columns`` of its data."""
    def load():
        from statsmodels import datasets

        data = getattr(datasets, name).load_pandas()
        X = data.data[list(columns)] if columns else data.exog
        return X.to_numpy(np.float64), data.data[target].to_numpy(np.float64)

    return load


#: statsmodels' bundled data sets, each with the model of its published example where ours has
#: it (Poisson for counts, logistic for a binary outcome, multinomial logit for anes96's party id,
#: quantile for stackloss and engel), else least squares
STATSMODELS = [
    Case("sm_star98", "poisson", _statsmodels("star98", "NABOVE"), needs="statsmodels"),
    Case("sm_fair", "linear", _statsmodels("fair", "affairs"), needs="statsmodels"),
    Case("sm_fair:poisson", "poisson", _statsmodels("fair", "affairs"), needs="statsmodels"),
    Case("sm_randhie", "poisson", _statsmodels("randhie", "mdvis"), needs="statsmodels"),
    Case("sm_spector", "logistic", _statsmodels("spector", "GRADE"), needs="statsmodels"),
    Case("sm_anes96_vote", "logistic", _statsmodels("anes96", "vote"), needs="statsmodels"),
    Case("sm_anes96_pid", "softmax", _statsmodels("anes96", "PID"), needs="statsmodels"),
    Case("sm_longley", "linear", _statsmodels("longley", "TOTEMP"), needs="statsmodels"),
    Case("sm_scotland", "linear", _statsmodels("scotland", "YES"), needs="statsmodels"),
    Case("sm_cpunish", "poisson", _statsmodels("cpunish", "EXECUTIONS"), needs="statsmodels"),
    Case("sm_committee", "poisson", _statsmodels("committee", "BILLS104"), needs="statsmodels"),
    Case("sm_copper", "linear", _statsmodels("copper", "WORLDCONSUMPTION"), needs="statsmodels"),
    Case("sm_stackloss", "linear", _statsmodels("stackloss", "STACKLOSS"), needs="statsmodels"),
    Case("sm_stackloss:quantile", "quantile", _statsmodels("stackloss", "STACKLOSS"), fit=(("l2", 0.0),),
         needs="statsmodels"),
    Case("sm_engel", "linear", _statsmodels("engel", "foodexp", ("income",)), needs="statsmodels"),
    Case("sm_engel:quantile", "quantile", _statsmodels("engel", "foodexp", ("income",)), fit=(("l2", 0.0),),
         needs="statsmodels"),
    Case("sm_statecrime", "linear", _statsmodels("statecrime", "murder"), needs="statsmodels"),
    Case("sm_grunfeld", "linear", _statsmodels("grunfeld", "invest", ("value", "capital", "year")),
         needs="statsmodels"),
]

CASES = [
    Case("breast_cancer", "logistic", _breast_cancer),
    Case("wine_class0", "logistic", _wine_class0),
    Case("digits_lt5", "logistic", _digits_lt5),
    Case("iris_versicolor", "logistic", _iris(1)),
    Case("iris_virginica", "logistic", _iris(2)),
    Case("diabetes", "linear", _diabetes),
    Case("linnerud_weight", "linear", _linnerud_weight),
    Case("wine_alcohol", "linear", _wine_alcohol),
    Case("bc_worst_area", "linear", _bc_worst_area),
    Case("breast_cancer_x512", "logistic", _breast_cancer, bootstrap=True),
    Case("digits_lt5_x512", "logistic", _digits_lt5, bootstrap=True),
    Case("diabetes_x512", "linear", _diabetes, bootstrap=True),
    Case("wine_alcohol_x512", "linear", _wine_alcohol, bootstrap=True),
    Case("iris", "softmax", _multiclass("iris")),
    Case("wine", "softmax", _multiclass("wine")),
    Case("digits", "softmax", _multiclass("digits")),
    Case("linnerud_situps", "poisson", _linnerud_situps),
    Case("large_counts", "poisson", _large_counts),
    Case("rare_onehot", "linear", _rare_onehot),
    Case("breast_cancer:modified_huber", "modified_huber", _breast_cancer),
    Case("wine_class0:modified_huber", "modified_huber", _wine_class0),
    Case("iris_versicolor:modified_huber", "modified_huber", _iris(1)),
    Case("diabetes:huber", "huber", _diabetes),
    Case("wine_alcohol:huber", "huber", _wine_alcohol),
    Case("linnerud_weight:huber", "huber", _linnerud_weight),
    Case("breast_cancer:hinge", "hinge", _breast_cancer),
    Case("wine_class0:hinge", "hinge", _wine_class0),
    Case("iris_versicolor:hinge", "hinge", _iris(1)),
    Case("diabetes:quantile", "quantile", _diabetes, fit=(("l2", 0.0),)),
    Case("wine_alcohol:quantile", "quantile", _wine_alcohol, fit=(("l2", 0.0),)),
    Case("linnerud_weight:quantile", "quantile", _linnerud_weight, fit=(("l2", 0.0),)),
    *STATSMODELS,
]
#: --quick: one data set per model (and the rare one-hot table), small enough for the test suite
QUICK = ["diabetes", "breast_cancer", "iris", "linnerud_situps", "large_counts", "rare_onehot",
         "breast_cancer:modified_huber", "diabetes:huber", "breast_cancer:hinge", "diabetes:quantile"]
CASES_BY_NAME = {c.name: c for c in CASES}


def weighted_scaler(X: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std per column (constant columns keep scale 1, as both
    StandardScaler and streamsgd do)."""
    mean = np.average(X, axis=0, weights=weight)
    std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=weight))
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, scale


def loss_slope(model: str, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and dl/dz (for softmax, z is (n, C), y the class index, the slope (n, C))."""
    if model == "linear":
        return 0.5 * (z - y) ** 2, z - y
    if model == "logistic":
        return np.logaddexp(0.0, z) - y * z, 0.5 * (1.0 + np.tanh(0.5 * z)) - y
    if model == "huber":
        r, e = z - y, HUBER_EPSILON
        return np.where(np.abs(r) <= e, 0.5 * r * r, e * np.abs(r) - 0.5 * e * e), np.clip(r, -e, e)
    if model == "modified_huber":
        s = 2.0 * y - 1.0
        m = s * z
        loss = np.where(m >= 1, 0.0, np.where(m >= -1, (1 - m) ** 2, -4 * m))
        return loss, np.where(m >= 1, 0.0, np.where(m >= -1, -2 * s * (1 - m), -4 * s))
    if model == "hinge":
        s = 2.0 * y - 1.0
        return np.maximum(0.0, 1.0 - s * z), np.where(s * z < 1.0, -s, 0.0)
    if model == "quantile":  # tau = 0.5, FitConfig's default
        r = y - z
        return np.maximum(0.5 * r, -0.5 * r), np.where(r > 0, -0.5, 0.5)
    if model == "poisson":
        mu = np.exp(np.minimum(z, 700.0))
        offset = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)) - y, 0.0)
        return mu - y * z + offset, mu - y
    if model == "softmax":
        top = z.max(axis=1, keepdims=True)
        p = np.exp(z - top)
        norm = p.sum(axis=1, keepdims=True)
        rows = np.arange(z.shape[0])
        idx = y.astype(np.intp)
        slope = p / norm
        slope[rows, idx] -= 1.0
        return (np.log(norm[:, 0]) + top[:, 0] - z[rows, idx]), slope
    raise KeyError(model)


def data_loss(model: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return loss_slope(model, z, y)[0]


def margins(X, coef, intercept) -> np.ndarray:
    return X @ np.asarray(coef).T + intercept


def objective(model, X, y, weight, coef, intercept, scale, l2) -> float:
    """F of a raw-space model (X @ coef + intercept); the penalty is on the standardised
    weights coef * scale (every class's, for softmax)."""
    ws = np.asarray(coef) * scale
    return float(np.average(data_loss(model, margins(X, coef, intercept), y), weights=weight)
                 + 0.5 * l2 * float(np.sum(ws * ws)))


def _lbfgs(model, Z, y, weight, l2, classes) -> tuple[np.ndarray, np.ndarray]:
    """The exact minimiser by L-BFGS-B on F and its gradient, in standardised space."""
    from scipy.optimize import minimize

    n, d = Z.shape
    C = max(classes, 1)
    A = np.hstack([Z, np.ones((n, 1))])
    wn = weight / weight.sum()

    def f(theta):
        T = theta.reshape(C, d + 1)
        z = A @ T.T
        loss, slope = loss_slope(model, z if model == "softmax" else z[:, 0], y)
        slope = slope if model == "softmax" else slope[:, None]
        grad = (slope * wn[:, None]).T @ A
        grad[:, :d] += l2 * T[:, :d]
        return float(wn @ loss + 0.5 * l2 * np.sum(T[:, :d] ** 2)), grad.ravel()

    start = np.zeros(C * (d + 1))
    if model == "poisson":  # the intercept-only optimum: a start where e^z is of the right size
        start[d] = np.log(max(float(wn @ y), 1e-12))
    res = minimize(f, start, jac=True, method="L-BFGS-B", options={"maxiter": 100_000, "maxfun": 200_000,
                                                                   "gtol": 1e-12, "ftol": 1e-15})
    T = res.x.reshape(C, d + 1)
    return T[:, :d], T[:, d]


def optimum(model, X, y, weight, l2) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Exact minimiser of F: (coef, intercept) in raw space, plus the scaler."""
    mean, scale = weighted_scaler(X, weight)
    Z = (X - mean) / scale
    n = float(weight.sum())
    if model == "linear":
        ybar = np.average(y, weights=weight)
        Zw = Z * weight[:, None]
        w = np.linalg.solve(Zw.T @ Z / n + l2 * np.eye(Z.shape[1]), Zw.T @ (y - ybar) / n)
        b = float(ybar)
    elif model == "hinge":
        import warnings

        from sklearn.svm import LinearSVC

        with warnings.catch_warnings():  # liblinear stops at its cap before tol 1e-8: still the better point
            warnings.simplefilter("ignore")
            svc = LinearSVC(loss="hinge", C=1.0 / (n * l2), intercept_scaling=10.0, tol=1e-8, max_iter=1_000_000,
                            dual=True).fit(Z, y, sample_weight=weight)
        w, b = svc.coef_[0], float(svc.intercept_[0])
    elif model == "quantile":
        from sklearn.linear_model import QuantileRegressor

        qr = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(Z, y, sample_weight=weight)
        w, b = qr.coef_, float(qr.intercept_)
    elif model == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1.0 / (n * l2), tol=1e-12, max_iter=100_000)
        clf.fit(Z, y, sample_weight=weight)
        w, b = clf.coef_[0], float(clf.intercept_[0])
    else:
        W, B = _lbfgs(model, Z, y, weight, l2, int(y.max()) + 1 if model == "softmax" else 1)
        coef = W / scale
        intercept = B - coef @ mean
        if model != "softmax":
            return coef[0], float(intercept[0]), mean, scale
        return coef, intercept, mean, scale
    coef = w / scale
    return coef, b - float(coef @ mean), mean, scale


def split(case: Case, X, y):
    from sklearn.model_selection import train_test_split

    strat = y if case.model in ("logistic", "modified_huber", "hinge", "softmax") else None
    return train_test_split(X, y, test_size=0.2, random_state=SEED, stratify=strat)


def metric(model, X, y, coef, intercept) -> float:
    """Accuracy (classifiers), D^2 = 1 - deviance / null deviance (poisson) or R^2."""
    z = margins(X, coef, intercept)
    if model == "softmax":
        return float(np.mean(np.argmax(z, axis=1) == y))
    if model in ("logistic", "modified_huber", "hinge"):
        return float(np.mean((z > 0) == (y == 1)))
    if model == "poisson":
        return float(1.0 - data_loss(model, z, y).sum() / data_loss(model, np.full_like(z, np.log(y.mean())), y).sum())
    return float(1.0 - np.sum((y - z) ** 2) / np.sum((y - y.mean()) ** 2))


def held_out_loss(model, X, y, coef, intercept) -> float:
    """Mean data loss (no penalty), as scikit-learn reports a held-out loss."""
    return float(np.mean(data_loss(model, margins(X, coef, intercept), y)))


def evaluate(case: Case, min_updates: int | None = None, **fit_options: Any) -> dict[str, Any]:
    """Fit ``case`` with streamsgd (defaults unless options are given) and compare with the
    optimum. ``min_updates`` emulates a different auto-epochs rule: epochs = ceil(U / ipe),
    with no upper cap."""
    fit_options = {**dict(case.fit), **fit_options}
    l2 = fit_options.get("l2", DEFAULT_L2)  # --l2's default on dense data (FitConfig's None)
    X, y = case.load()
    if case.bootstrap:
        rows = np.random.default_rng(SEED).integers(0, X.shape[0], BOOTSTRAP_ROWS)
        weight = np.bincount(rows, minlength=X.shape[0]).astype(np.float64)
        X_fit, y_fit = X[rows], y[rows]  # what streamsgd streams
        X_obj, y_obj = X, y  # the same objective, as count-weighted original rows
        X_test = y_test = None
    else:
        X_obj, X_test, y_obj, y_test = split(case, X, y)
        weight = np.ones(X_obj.shape[0])
        X_fit, y_fit = X_obj, y_obj
    N, d = X_fit.shape

    coef_o, b_o, _, scale = optimum(case.model, X_obj, y_obj, weight, l2)
    f_opt = objective(case.model, X_obj, y_obj, weight, coef_o, b_o, scale, l2)
    f_zero = objective(case.model, X_obj, y_obj, weight, np.zeros_like(coef_o), np.zeros_like(b_o), scale, l2)

    options = dict(fit_options)
    if min_updates is not None and "epochs" not in options and "steps" not in options:
        B = min(options.get("batch", streamsgd.FitConfig().batch), N)
        options["epochs"] = max(1, math.ceil(min_updates / math.ceil(N / B)))
    start = time.perf_counter()
    result = train.fit(streamsgd.ArraySource(X_fit, y_fit), FitConfig(model=case.model, **options))
    seconds = time.perf_counter() - start
    m = result.model
    f_sgd = objective(case.model, X_obj, y_obj, weight, m.coef, m.intercept, scale, l2)

    peer = None if case.bootstrap else sklearn_sgd(case.model, X_obj, y_obj, X_test, y_test, l2,
                                                   fit_options.get("epochs"))
    row = {
        "dataset": case.name,
        "N": N,
        "d": d,
        "model": case.model,
        "f_opt": f_opt,
        "f_sgd": f_sgd,
        "gap": (f_sgd - f_opt) / abs(f_opt),
        "left": (f_sgd - f_opt) / (f_zero - f_opt),
        "updates": result.summary["iterations"],
        "lr": result.summary["lr"],
        "seconds": seconds,
        "train_sgd": metric(case.model, X_obj, y_obj, m.coef, m.intercept),
        "train_opt": metric(case.model, X_obj, y_obj, coef_o, b_o),
        "test_sgd": None,
        "test_opt": None,
        "test_gap": None,
        "budget": {k: fit_options[k] for k in ("epochs", "batch") if k in fit_options},
        "sklearn_test_gap": None,
    }
    if X_test is not None:
        row["test_sgd"] = metric(case.model, X_test, y_test, m.coef, m.intercept)
        row["test_opt"] = metric(case.model, X_test, y_test, coef_o, b_o)
        opt_loss = held_out_loss(case.model, X_test, y_test, coef_o, b_o)
        row["test_gap"] = (held_out_loss(case.model, X_test, y_test, m.coef, m.intercept) - opt_loss) / abs(opt_loss)
        if peer is not None:
            row["sklearn_test_gap"] = (held_out_loss(case.model, X_test, y_test, *peer) - opt_loss) / abs(opt_loss)
    return row


#: scikit-learn's SGD losses for ours (same per-row loss and penalty alpha/2 ||w||^2); poisson,
#: quantile and softmax (its log_loss is one-vs-rest) have no SGD twin there
SKLEARN_LOSS = {"linear": "squared_error", "logistic": "log_loss", "huber": "huber",
                "modified_huber": "modified_huber", "hinge": "hinge"}


def sklearn_sgd(model, X, y, X_test, y_test, l2, epochs):
    """The peer a user would try: scikit-learn's SGDClassifier/SGDRegressor on StandardScaler'd
    features, the same loss and L2 (alpha = l2), its own defaults (batch 1, its default step
    schedule; max_iter=1000 with tol=1e-3 stopping) or, for a budget, exactly ``epochs`` passes
    (tol=None). Returns the raw-space (coef, intercept), or None where it has no such loss."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier, SGDRegressor

    if model not in SKLEARN_LOSS or X_test is None:
        return None
    kind = SGDRegressor if model in ("linear", "huber") else SGDClassifier
    extra = {"epsilon": HUBER_EPSILON} if model == "huber" else {}
    budget = {"max_iter": epochs, "tol": None} if epochs else {}
    mean, scale = weighted_scaler(X, np.ones(X.shape[0]))
    with warnings.catch_warnings():  # a budget ends before convergence by design
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = kind(loss=SKLEARN_LOSS[model], alpha=l2, random_state=SEED, **extra, **budget)
        est.fit((X - mean) / scale, y)
    coef = np.ravel(est.coef_) / scale
    return coef, float(np.ravel(est.intercept_)[0] - coef @ mean)


def passed(row: dict[str, Any]) -> bool:
    """Issue 13's mark: the held-out loss gap (or, without held-out rows, the objective's)."""
    limit = MAX_TEST_GAP_BUDGET if row["budget"] else MAX_TEST_GAP_DEFAULTS
    gap = row["test_gap"] if row["test_gap"] is not None else row["gap"]
    return gap <= limit


def _fmt_metric(sgd, opt, model) -> str:
    if sgd is None:
        return "-"
    return f"{sgd:.3f}/{opt:.3f}"


def _budget(r: dict[str, Any]) -> str:
    b = r["budget"]
    return f"e{b['epochs']}/b{b['batch']}" if b else "defaults"


HEADER = (f"{'dataset':30s} {'budget':9s} {'N':>6s} {'d':>3s} {'model':14s} {'optimum F':>10s} {'streamsgd F':>11s} "
          f"{'rel gap':>8s} {'test gap':>8s} {'updates':>7s} {'lr':>8s} {'train sgd/opt':>13s} "
          f"{'test sgd/opt':>13s} {'seconds':>7s}")


def format_row(r: dict[str, Any]) -> str:
    flag = "" if passed(r) else "  FAIL"
    test_gap = "-" if r["test_gap"] is None else f"{r['test_gap']:.2%}"
    peer = "-" if r["sklearn_test_gap"] is None else f"{r['sklearn_test_gap']:.2%}"
    return (f"{r['dataset']:30s} {_budget(r):9s} {r['N']:6d} {r['d']:3d} {r['model']:14s} {r['f_opt']:10.5g} "
            f"{r['f_sgd']:11.5g} {r['gap']:8.2%} {test_gap:>8s} {peer:>8s} {r['updates']:7d} {r['lr']:8.3g} "
            f"{_fmt_metric(r['train_sgd'], r['train_opt'], r['model']):>13s} "
            f"{_fmt_metric(r['test_sgd'], r['test_opt'], r['model']):>13s} {r['seconds']:7.2f}{flag}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(CASES_BY_NAME), help="run these data sets only")
    p.add_argument("--no-bootstrap", action="store_true", help="skip the *_x512 streaming-regime rows")
    p.add_argument("--budgets", action="store_true", help="also every --epochs 5|20|50 x --batch 32|256")
    p.add_argument("--quick", action="store_true",
                   help="one data set per model, the defaults and --epochs 20 --batch 32 (make bench)")
    p.add_argument("--lr-schedule", choices=["constant", "invscaling"], help="override the default")
    p.add_argument("--power-t", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch", type=int)
    p.add_argument("--epochs", type=int, help="a fixed budget for every data set (with --batch)")
    p.add_argument("--json", type=Path, help="also write every row, and whether it passed, to this file")
    p.add_argument("--min-updates", type=int,
                   help="emulate auto epochs = ceil(U / iterations per epoch), uncapped")
    args = p.parse_args(argv)

    options = {k: v for k, v in [("lr_schedule", args.lr_schedule), ("power_t", args.power_t),
                                  ("lr", args.lr), ("batch", args.batch), ("epochs", args.epochs)]
               if v is not None}
    names = args.only or (QUICK if args.quick else [c.name for c in CASES])
    cases = [CASES_BY_NAME[n] for n in names if not (args.no_bootstrap and CASES_BY_NAME[n].bootstrap)]
    missing = sorted({c.needs for c in cases if importlib.util.find_spec(c.needs) is None})
    if missing:  # make bench installs them ([bench]); a bare venv runs what it has
        print(f"skipped: the data sets of {', '.join(missing)} (not installed: pip install -e '.[bench]')")
        cases = [c for c in cases if c.needs not in missing]
    budgets = [{}] + (BUDGETS if args.budgets else [{"epochs": 20, "batch": 32}] if args.quick else [])
    cfg = streamsgd.FitConfig(**options)
    print(f"streamsgd {streamsgd.__version__}: batch={cfg.batch} lr={cfg.lr or '1/L_B (auto)'} "
          f"schedule={cfg.lr_schedule} power_t={cfg.power_t} l2={cfg.l2 or DEFAULT_L2} "
          f"epochs={'ceil(%d / ipe)' % args.min_updates if args.min_updates else 'auto'}")
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for budget in budgets:
        for case in cases:
            if budget and case.bootstrap:
                continue  # 262,144 rows at batch 32 x 50 epochs is the streaming benchmarks' job
            rows.append(evaluate(case, args.min_updates, **{**options, **budget}))
            print(format_row(rows[-1]), flush=True)
    print("metric: accuracy (classifiers), D^2 (poisson) or R^2; test = held-out 20 % (none for *_x512);")
    print("rel gap = (F_sgd - F_opt) / F_opt; test gap = the same for the held-out mean loss; sklearn = the test")
    print("gap of scikit-learn's SGDClassifier/SGDRegressor, same loss and L2, its defaults or the same epochs;")
    print(f"pass: test gap <= {MAX_TEST_GAP_DEFAULTS:.0%} with the defaults, <= {MAX_TEST_GAP_BUDGET:.0%} with a "
          "budget (rel gap where there is no held-out set)")
    failed = [f"{r['dataset']} ({_budget(r)})" for r in rows if not passed(r)]
    if args.json:
        args.json.write_text(json.dumps([{**r, "passed": passed(r)} for r in rows], indent=1, default=float) + "\n")
    if failed:
        print(f"\n{len(failed)} of {len(rows)} runs failed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(rows)} runs passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
