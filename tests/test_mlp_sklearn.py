"""fit --hidden reaches the objective scikit-learn's MLPClassifier / MLPRegressor reach, on its
bundled data sets, with the same architecture and the same L2 penalty.

The two objectives, and the mapping between them (scikit-learn 1.9,
``BaseMultilayerPerceptron._backprop``):

- scikit-learn: mean loss + (alpha / 2) · Σ‖W‖² / n_samples, the sum over every layer's
  weights (``coefs_``), not the biases; the mean loss is the binary log loss, or
  ½ · mean (y − ŷ)² for the regressor.
- streamsgd: (1/N) Σ ℓ_i + (l2 / 2) · Σ‖W‖² over the layers' weights, not the biases
  (``compute.mlp.mean_gradient``), with the same two losses (``linear`` is ½ r²).

So ``l2 = alpha / n_samples``. Both train on the same standardised X (scikit-learn's MLP does
not standardise; streamsgd's own standardisation of already-standardised columns is the
identity, so both networks' first-layer weights act on the same inputs and have the same
penalty); the regressor's target is standardised for both (scikit-learn's lbfgs on diabetes'
raw targets, mean 152, converges to a poor fit).

scikit-learn runs L-BFGS to convergence (tol 1e-12); streamsgd runs Adam (η = 0.01, b = 32,
300 epochs, the step decayed to 0 by a cosine schedule so the last iterate is at rest). A
network's objective is non-convex, so each side's figure is the median of three seeds (three
initialisations): one start that lands in a poorer local minimum does not decide the test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from streamsgd.api import fit

SEEDS = (0, 1, 2)
HIDDEN = 16


def _data(name: str) -> tuple[np.ndarray, ...]:
    """Half of the rows to train on, half held out (stratified for the classifiers), X
    standardised on the training half; wine as class 0 against the rest (an MLP with
    --hidden trains the binary and regression losses; softmax is refused)."""
    if name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    elif name == "wine":
        X, y = load_wine(return_X_y=True)
        y = (y == 0).astype(np.int64)
    else:
        X, y = load_diabetes(return_X_y=True)
        y = (y - y.mean()) / y.std()
    classifier = name != "diabetes"
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y if classifier else None)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), ytr.astype(np.float64), scaler.transform(Xte), yte.astype(np.float64)


def _objective(y: np.ndarray, predicted: np.ndarray, weights: list[np.ndarray], alpha: float, classifier: bool) -> float:
    """scikit-learn's objective: mean loss + alpha/2 · Σ‖W‖² / n (``predicted``: P(y = 1) or ŷ)."""
    if classifier:
        p = np.clip(predicted, 1e-15, 1 - 1e-15)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    else:
        loss = 0.5 * np.mean((predicted - y) ** 2)
    return float(loss + 0.5 * alpha / len(y) * sum(float((W * W).sum()) for W in weights))


def _sklearn(name: str, activation: str, alpha: float, seed: int) -> tuple[float, float]:
    """(objective on the training half, held-out accuracy or R²) of scikit-learn's MLP."""
    Xtr, ytr, Xte, yte = _data(name)
    classifier = name != "diabetes"
    cls = MLPClassifier if classifier else MLPRegressor
    est = cls(hidden_layer_sizes=(HIDDEN,), activation=activation, alpha=alpha, solver="lbfgs", max_iter=20_000,
              max_fun=100_000, tol=1e-12, random_state=seed)
    # one BLAS thread, for this fit only: on tiny matrices more threads only contend (20x slower
    # on the 2-core test machine), and the result does not depend on it
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # lbfgs may stop at float precision first
        est.fit(Xtr, ytr)
    predicted = est.predict_proba(Xtr)[:, 1] if classifier else est.predict(Xtr)
    return _objective(ytr, predicted, list(est.coefs_), alpha, classifier), float(est.score(Xte, yte))


def _streamsgd(name: str, activation: str, alpha: float, seed: int) -> tuple[float, float]:
    """The same figures for ``fit --hidden 16 --l2 alpha/N``."""
    Xtr, ytr, Xte, yte = _data(name)
    classifier = name != "diabetes"
    model = fit((Xtr, ytr), model="logistic" if classifier else "linear", hidden=(HIDDEN,), activation=activation,
                l2=alpha / len(ytr), optimizer="adam", lr=0.01, batch=32, epochs=300, lr_schedule="cosine",
                average=False, seed=seed, log_every=10**6)
    assert model.layers is not None
    predicted = model.predict_proba(Xtr) if classifier else model.predict(Xtr)
    return _objective(ytr, predicted, [W for W, _ in model.layers], alpha, classifier), model.score(Xte, yte)


@pytest.mark.parametrize("name, activation, alpha", [
    ("breast_cancer", "relu", 1.0),  # weak L2: local minima 3 % apart (scikit-learn's own seeds)
    ("breast_cancer", "tanh", 10.0),
    ("wine", "relu", 10.0),
    ("diabetes", "relu", 10.0),
    ("diabetes", "tanh", 10.0),
])
def test_same_objective_as_scikit_learn(name: str, activation: str, alpha: float) -> None:
    theirs = np.median([_sklearn(name, activation, alpha, s) for s in SEEDS], axis=0)
    ours = np.median([_streamsgd(name, activation, alpha, s) for s in SEEDS], axis=0)
    print(f"\n  {name} {activation} alpha={alpha}: objective streamsgd {ours[0]:.5f} vs scikit-learn {theirs[0]:.5f} "
          f"({ours[0] / theirs[0] - 1:+.2%}); held-out {'R2' if name == 'diabetes' else 'accuracy'} "
          f"{ours[1]:.4f} vs {theirs[1]:.4f}")
    # the marks: the objective within 2 %, the held-out score within 1 point
    assert abs(ours[0] / theirs[0] - 1) < 0.02
    assert abs(ours[1] - theirs[1]) <= 0.01
