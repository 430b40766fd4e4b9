"""The MLP kernels (compute/mlp.py) equal a plain NumPy twin and their own finite differences,
for every loss, both activations and one or two hidden layers, and they learn what a linear
model cannot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from streamsgd.compute import mlp
from streamsgd.compute.codes import OPTIMIZERS
from streamsgd.compute.optim import optimizer_state, optimizer_step
from streamsgd.config import LOSS_TASK
from streamsgd.errors import UsageError

LOSS_NAMES = sorted(LOSS_TASK)
#: a parameter for each loss that puts rows on both sides of its kink
PARAMS = {"huber": 0.7, "quantile": 0.3}
#: softmax's labels: any sorted values, found by binary search
CLASSES = np.array([-1.0, 2.0, 5.0])
NO_WEIGHTS = np.zeros(0)
D = 7  # not a multiple of 4: the forward pass's one-input tail runs too
LO, HI = 3, 150  # two full blocks of 64 and a 19-row one (three rows past the four-row steps)


def twin_loss_slope(loss, z, y, param):
    """Per-row loss and dl/dz (shape (n, out)), from the formulas."""
    z1 = z[:, 0]
    s = 2.0 * y - 1.0
    if loss == "softmax":
        label = np.searchsorted(CLASSES, y)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        onehot = np.eye(z.shape[1])[label]
        return -np.log(p[np.arange(len(y)), label]), p - onehot
    if loss == "linear":
        value, slope = 0.5 * (z1 - y) ** 2, z1 - y
    elif loss == "logistic":
        value, slope = np.logaddexp(0.0, z1) - y * z1, 1.0 / (1.0 + np.exp(-z1)) - y
    elif loss == "huber":
        r = z1 - y
        value = np.where(np.abs(r) <= param, 0.5 * r**2, param * np.abs(r) - 0.5 * param**2)
        slope = np.clip(r, -param, param)
    elif loss == "hinge":
        value, slope = np.maximum(0.0, 1.0 - s * z1), np.where(s * z1 <= 1.0, -s, 0.0)
    elif loss == "modified_huber":
        m = s * z1
        value = np.where(m >= 1, 0.0, np.where(m >= -1, (1 - m) ** 2, -4 * m))
        slope = np.where(m >= 1, 0.0, np.where(m >= -1, -2 * s * (1 - m), -4 * s))
    elif loss == "poisson":
        value = y * np.log(np.where(y > 0, y / np.exp(z1), 1.0)) - y + np.exp(z1)
        slope = np.exp(z1) - y
    else:  # quantile
        r = y - z1
        value = np.where(r >= 0, param * r, (param - 1) * r)
        slope = np.where(r > 0, -param, np.where(r < 0, 1 - param, 0.0))
    return value, slope[:, None]


def unpack(lay, theta):
    """Each layer's (W (n_in, n_out), b (n_out,)) as views of theta (stored as (n_out, n_in))."""
    return [(theta[w:w + i * o].reshape(o, i).T, theta[b:b + o]) for i, o, w, b in lay]


def twin(X, y, sw, lay, activation, loss, theta, cw=None):
    """Summed weighted loss and its gradient over rows [LO, HI), in float64 matrix products."""
    f = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))
    df = (lambda a: 1.0 - a * a) if activation == "tanh" else (lambda a: (a > 0.0).astype(np.float64))
    layers = unpack(lay, theta)
    acts = [X[LO:HI].astype(np.float64)]
    for W, b in layers[:-1]:
        acts.append(f(acts[-1] @ W + b))
    z = acts[-1] @ layers[-1][0] + layers[-1][1]
    yb = y[LO:HI].astype(np.float64)
    value, delta = twin_loss_slope(loss, z, yb, PARAMS.get(loss, 0.0))
    c = np.ones_like(yb)
    if cw is not None:
        c = cw[np.searchsorted(CLASSES, yb)] if loss == "softmax" else np.where(yb > 0.5, cw[1], cw[0])
    if sw.size:
        c = c * sw[LO:HI]
    delta = delta * c[:, None]
    grads = []
    for k in range(len(layers) - 1, -1, -1):
        grads.append(np.concatenate([(delta.T @ acts[k]).ravel(), delta.sum(axis=0)]))
        if k:
            delta = (delta @ layers[k][0].T) * df(acts[k])
    return float((c * value).sum()), np.concatenate(grads[::-1]), z


def problem(loss, activation, hidden, seed=0, n=160):
    """Rows, labels of the loss's kind, the network and a starting theta (``init_params``'s draw, biases set)."""
    rng = np.random.default_rng([seed, len(hidden)])
    X = rng.standard_normal((n, D)).astype(np.float32)
    task = LOSS_TASK[loss]
    if task == "classification":
        y = (rng.random(n) < 0.5).astype(np.float32)
    elif task == "multiclass":
        y = rng.choice(CLASSES, n).astype(np.float32)
    elif task == "counts":
        y = rng.poisson(2.0, n).astype(np.float32)
    else:
        y = rng.standard_normal(n).astype(np.float32)
    out = len(CLASSES) if loss == "softmax" else 1
    lay = mlp.layout(D, hidden, out)
    theta = mlp.init_params(lay, rng)
    theta += 0.1 * rng.standard_normal(theta.shape)  # non-zero biases: their gradient is checked too
    classes = CLASSES if loss == "softmax" else None
    net = mlp.network(lay, activation, loss, param=PARAMS.get(loss), classes=classes)
    return X, y, lay, net, theta


def kernel(X, y, sw, net, theta, dtype=np.float64, batch=512):
    grad = np.zeros_like(theta)
    ws = mlp.workspace(batch, net[mlp.LAYOUT], dtype)
    return mlp.batch_gradient(X, y, sw, LO, HI, net, theta, grad, ws), grad


CASES = [(loss, act, hidden) for loss in LOSS_NAMES for act in mlp.ACTIVATIONS for hidden in ((6,), (6, 5))]


@pytest.mark.parametrize("loss, activation, hidden", CASES)
def test_gradient_equals_numpy_twin(loss, activation, hidden):
    X, y, lay, net, theta = problem(loss, activation, hidden)
    value, grad = kernel(X, y, NO_WEIGHTS, net, theta)
    want_value, want_grad, _ = twin(X, y, NO_WEIGHTS, lay, activation, loss, theta)
    assert value == pytest.approx(want_value, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12 * np.abs(want_grad).max())
    # float32 activations (the product's): the same to float32's precision
    value32, grad32 = kernel(X, y, NO_WEIGHTS, net, theta, np.float32)
    assert value32 == pytest.approx(want_value, rel=1e-5)
    np.testing.assert_allclose(grad32, want_grad, rtol=1e-3, atol=1e-5 * np.abs(want_grad).max())


@pytest.mark.parametrize("loss, activation, hidden", CASES)
def test_gradient_equals_finite_differences_per_layer(loss, activation, hidden):
    X, y, lay, net, theta = problem(loss, activation, hidden, seed=1)
    _, grad = kernel(X, y, NO_WEIGHTS, net, theta)
    h = 1e-6
    fd = np.empty_like(theta)
    for j in range(theta.size):
        step = np.zeros_like(theta)
        step[j] = h
        fd[j] = (kernel(X, y, NO_WEIGHTS, net, theta + step)[0] - kernel(X, y, NO_WEIGHTS, net, theta - step)[0]) / (2 * h)
    for layer, (n_in, n_out, w_at, b_at) in enumerate(lay):
        part = slice(w_at, b_at + n_out)  # the layer's weights and biases
        scale = max(np.abs(fd[part]).max(), 1.0)
        np.testing.assert_allclose(grad[part], fd[part], rtol=0, atol=1e-6 * scale, err_msg=f"layer {layer}")


@pytest.mark.parametrize("loss", ["logistic", "hinge", "softmax"])
def test_class_and_sample_weights_scale_each_row(loss):
    X, y, lay, net, theta = problem(loss, "relu", (6, 5), seed=2)
    cw = np.array([0.5, 2.0, 3.0]) if loss == "softmax" else np.array([0.5, 2.0])
    net = mlp.network(lay, "relu", loss, cw=cw, classes=net[mlp.CLASSES] if loss == "softmax" else None)
    sw = np.random.default_rng(3).uniform(0.0, 2.0, X.shape[0])
    value, grad = kernel(X, y, sw, net, theta)
    want_value, want_grad, _ = twin(X, y, sw, lay, "relu", loss, theta, cw)
    assert value == pytest.approx(want_value, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12 * np.abs(want_grad).max())


@pytest.mark.parametrize("batch", [1, 5, 64, 512])
def test_any_block_size_gives_the_same_gradient(batch):
    X, y, lay, net, theta = problem("softmax", "tanh", (6, 5))
    want_value, want_grad, _ = twin(X, y, NO_WEIGHTS, lay, "tanh", "softmax", theta)
    value, grad = kernel(X, y, NO_WEIGHTS, net, theta, batch=batch)
    assert value == pytest.approx(want_value, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12 * np.abs(want_grad).max())


@pytest.mark.parametrize("hidden", [(), (6,), (6, 5)])
def test_margins_equal_the_forward_pass(hidden):
    X, y, lay, net, theta = problem("softmax", "relu", hidden)
    out = np.zeros((HI - LO, len(CLASSES)))
    mlp.margins(X, LO, HI, net, theta, mlp.workspace(512, lay, np.float64), out)
    np.testing.assert_allclose(out, twin(X, y, NO_WEIGHTS, lay, "relu", "softmax", theta)[2], rtol=1e-12)


def test_without_hidden_layers_it_is_the_linear_model():
    lay = mlp.layout(D, (), 1)
    assert lay.tolist() == [[D, 1, 0, D]]  # d weights then the intercept: the linear model's theta
    assert mlp.n_params(lay) == D + 1
    two = mlp.layout(D, (6, 5), 3)
    assert two[:, mlp.W_AT].tolist() == [0, 48, 83] and two[:, mlp.B_AT].tolist() == [42, 78, 98]
    assert mlp.n_params(two) == 101


@pytest.mark.parametrize("hidden", [(0,), (4, -1), (2.5,)])
def test_bad_widths_are_refused(hidden):
    with pytest.raises(UsageError, match="positive integers"):
        mlp.layout(D, hidden, 1)


def test_network_checks_its_names_and_outputs():
    with pytest.raises(UsageError, match="--activation: expected one of relu, tanh; got 'sigmoid'"):
        mlp.network(mlp.layout(D, (4,), 1), "sigmoid", "logistic")
    with pytest.raises(UsageError, match="needs one output margin"):
        mlp.network(mlp.layout(D, (4,), 3), "relu", "logistic")
    with pytest.raises(UsageError, match="needs C >= 2 output margins"):
        mlp.network(mlp.layout(D, (4,), 1), "relu", "softmax")
    with pytest.raises(UsageError, match="needs 3 class weights and 3 classes; got 3 and 2"):
        mlp.network(mlp.layout(D, (4,), 3), "relu", "softmax", classes=np.array([0.0, 1.0]))
    with pytest.raises(UsageError, match=r"needs 2 class weights \(one per binary label\); got 3"):
        mlp.network(mlp.layout(D, (4,), 1), "relu", "hinge", cw=np.ones(3))


def test_initialisation_is_pytorchs_default_for_every_layer_and_activation():
    lay = mlp.layout(400, (300, 200), 1)
    relu = mlp.init_params(lay, np.random.default_rng(0))
    for (w, b), n_in in zip(unpack(lay, relu), (400, 300, 200)):
        limit = 1 / np.sqrt(n_in)  # U(±1/sqrt(n_in)), the output layer's too
        # reaches the bound: the output layer's 200 draws all fall inside 0.9 of it with probability 0.9^200 ~ 1e-9
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
        assert not b.any()
        if w.size >= 10_000:  # 60,000+ draws: the std's relative standard error is 0.45/sqrt(n) < 0.2 %
            assert w.std() == pytest.approx(1 / np.sqrt(3 * n_in), rel=0.01)
    # a function of the seed alone (the same for every activation: init_params does not take one)
    np.testing.assert_array_equal(relu, mlp.init_params(lay, np.random.default_rng(0)))
    assert not np.array_equal(relu, mlp.init_params(lay, np.random.default_rng(1)))


def test_mean_gradient_penalises_weights_not_biases():
    lay = mlp.layout(3, (2,), 1)
    theta = np.arange(1.0, mlp.n_params(lay) + 1)
    grad = np.full_like(theta, 4.0)
    out = np.empty_like(theta)
    mlp.mean_gradient(grad, 2, 0.5, theta, lay, out)
    biases = np.zeros(theta.size, bool)
    for _, n_out, _, b_at in lay:
        biases[b_at:b_at + n_out] = True
    np.testing.assert_array_equal(out[biases], 2.0)
    np.testing.assert_array_equal(out[~biases], 2.0 + 0.5 * theta[~biases])


def circles(n, rng):
    """Two concentric rings (radius 0.5: label 1, radius 1: label 0): no line separates them."""
    angle = rng.uniform(0, 2 * np.pi, n)
    label = rng.random(n) < 0.5
    radius = np.where(label, 0.5, 1.0) + 0.05 * rng.standard_normal(n)
    X = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return X.astype(np.float32), label.astype(np.float32)


def test_sgd_on_the_kernel_learns_what_no_linear_model_can():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    X, y = circles(2048, rng)
    best_linear = sklearn.LogisticRegression(C=1e6).fit(X, y)
    p = best_linear.predict_proba(X)[:, 1]
    linear_loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))  # about log 2
    lay = mlp.layout(2, (16,), 1)
    net = mlp.network(lay, "tanh", "logistic")
    theta = mlp.init_params(lay, np.random.default_rng(1))
    ws, grad, g = mlp.workspace(64, lay), np.zeros_like(theta), np.zeros_like(theta)
    state, batch = optimizer_state(theta.size - 1), 64  # the optimizers' (2, P) state, as the linear model's
    for t in range(600):  # an existing optimizer, unchanged, drives the flat vector
        lo = (t * batch) % X.shape[0]
        grad[:] = 0.0
        mlp.batch_gradient(X, y, NO_WEIGHTS, lo, lo + batch, net, theta, grad, ws)
        mlp.mean_gradient(grad, batch, 0.0, theta, lay, g)
        optimizer_step(OPTIMIZERS["sgd"], theta, g, state, 0.5, t + 1, 0.9, 0.999, 1e-8, 0.0)
    grad[:] = 0.0
    mlp_loss = mlp.batch_gradient(X, y, NO_WEIGHTS, 0, X.shape[0], net, theta, grad, ws) / X.shape[0]
    assert linear_loss > 0.65
    assert mlp_loss < 0.2, (mlp_loss, linear_loss)


def test_benchmark_script_runs_and_reports_a_ratio(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mlp_kernel.py"
    spec = importlib.util.spec_from_file_location("streamsgd_bench_mlp_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--rows", "2048", "--features", "10", "--hidden", "8", "--runs", "1"])
    assert result["numba_ns_per_row"] > 0 and result["numpy_ns_per_row"] > 0
    assert "ratio" in capsys.readouterr().out
