"""An MLP with categorical (hashed) columns: the first layer's embedding bag (compute/embedding.py)
is the dense first layer applied to the hashed indicator vector, in its forward pass, its
gradient, its lazy updates and its average; then through the CLI (fit, predict, evaluate,
held-out loss against the linear model) and an exact resume."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pandas as pd
import pytest

import streamsgd
from streamsgd.compute import embedding, mlp
from streamsgd.compute.codes import LOSSES, OPTIMIZERS, SCHEDULES
from streamsgd.compute.loop import AVERAGED, FILLED, N_COUNTERS, N_SUMS, T, pack_hyper, pack_spec
from streamsgd.compute.mlp_loop import AVG, THETA, finish_mlp_batch, mlp_rows
from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.sources import open_source
from streamsgd.tools.inference import evaluate
from streamsgd.train import Hooks
from streamsgd.train.trainer import Checkpointing, fit as train_fit

from helpers import run_cli, start_fit, wait_for

NO_WEIGHTS = np.zeros(0)
D, K, BITS, H = 3, 2, 4, (5, 3)  # 3 numeric inputs, 2 categorical columns into 16 buckets, 5 then 3 units


def _problem(seed: int = 0, n: int = 150):
    """Rows with D numeric features and K hashed ones (collisions included: 2 columns share 16
    buckets), a label that needs both, and the dense twin's inputs: the numeric columns, then
    the hashed indicator vector (the row's Σ_c sign·onehot(idx), 2**BITS columns)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    idx = rng.integers(0, 1 << BITS, (n, K)).astype(np.int32)
    sign = rng.choice(np.array([-1, 1], np.int8), (n, K))
    onehot = np.zeros((n, 1 << BITS))
    for c in range(K):
        np.add.at(onehot, (np.arange(n), idx[:, c]), sign[:, c])
    y = ((X[:, 0] * sign[:, 0] + (idx[:, 1] % 3 == 0)) > 0.5).astype(np.float64)
    return X, idx, sign, y, np.hstack([X, onehot])


def _networks(seed: int = 1):
    """The embedded network (θ, E) and its dense twin (θ with E's rows as the first layer's
    weights for the indicator columns), from the same random draw."""
    lay, twin_lay = mlp.layout(D, H, 1), mlp.layout(D + (1 << BITS), H, 1)
    rng = np.random.default_rng(seed)
    twin = mlp.init_params(twin_lay, rng)
    twin[twin_lay[0, mlp.B_AT]:twin_lay[0, mlp.B_AT] + H[0]] = rng.uniform(-0.5, 0.5, H[0])  # biases not 0
    W1 = twin[:H[0] * (D + (1 << BITS))].reshape(H[0], D + (1 << BITS))
    b1 = twin[twin_lay[0, mlp.B_AT]:twin_lay[0, mlp.B_AT] + H[0]]
    theta = np.concatenate([W1[:, :D].ravel(), b1, twin[twin_lay[1, mlp.W_AT]:]])
    E = W1[:, D:].T.copy()  # (2**BITS, H1): row h is bucket h's weights into the H1 units
    return lay, twin_lay, theta, E, twin


def _state(E: np.ndarray, batch: int, optimizer: str = "sgd", average: bool = False) -> tuple:
    emb = embedding.pack_embedding(BITS, E.shape[1], embedding.batch_buckets(BITS, K, batch, False),
                                   optimizer == "adagrad", average)
    emb[embedding.EU][:] = E
    return emb


def _split(twin_grad: np.ndarray, twin_lay, lay) -> tuple[np.ndarray, np.ndarray]:
    """A twin's flat vector as (the embedded network's θ layout, the indicator columns' (2**BITS, H1))."""
    W1 = twin_grad[:H[0] * (D + (1 << BITS))].reshape(H[0], D + (1 << BITS))
    b1 = twin_grad[twin_lay[0, mlp.B_AT]:twin_lay[0, mlp.B_AT] + H[0]]
    return np.concatenate([W1[:, :D].ravel(), b1, twin_grad[twin_lay[1, mlp.W_AT]:]]), W1[:, D:].T


def _gathered(emb: tuple, stamp: int) -> np.ndarray:
    """The batch's gradient sums of every bucket as a (2**BITS, H1) table (0 where untouched)."""
    out = np.zeros_like(emb[embedding.EU])
    touched = np.flatnonzero(emb[embedding.ESTAMP] == stamp)
    out[touched] = emb[embedding.EG][emb[embedding.ESLOT][touched]]
    return out


# rtol 1e-12: the two sums hold the same terms in another order (the bag's, float64, is added
# to the dense part's sum), a few ulps apart at float64
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["logistic", "linear"])
def test_the_bag_forward_and_gradient_equal_the_dense_first_layer_on_the_indicator_vector(activation, loss):
    X, idx, sign, y, X_twin = _problem()
    lay, twin_lay, theta, E, twin = _networks()
    net, twin_net = mlp.network(lay, activation, loss), mlp.network(twin_lay, activation, loss)
    lo, hi = 5, 140  # blocks of 64 rows, the last one short
    emb = _state(E, hi - lo)
    grad, twin_grad = np.zeros_like(theta), np.zeros_like(twin)
    got = mlp.embedded_gradient(X, idx, sign, y, NO_WEIGHTS, lo, hi, net, theta, grad,
                                mlp.workspace(hi - lo, lay, np.float64), emb, 7)
    want = mlp.batch_gradient(X_twin, y, NO_WEIGHTS, lo, hi, twin_net, twin, twin_grad,
                              mlp.workspace(hi - lo, twin_lay, np.float64))
    assert got == pytest.approx(want, rel=1e-12)
    dense, table = _split(twin_grad, twin_lay, lay)
    np.testing.assert_allclose(grad, dense, rtol=1e-12, atol=1e-12 * np.abs(dense).max())
    np.testing.assert_allclose(_gathered(emb, 7), table, rtol=1e-12, atol=1e-12 * np.abs(table).max())
    # the buckets the batch touched, each once in the touched list
    touched = emb[embedding.ETOUCHED][:emb[embedding.EI][embedding.E_TOUCHED]]
    assert sorted(touched) == sorted(set(idx[lo:hi].ravel()))
    assert np.abs(table).max() > 0


def _train(X, y, idx, sign, theta, optimizer, l2, average_from, emb, batch=32):
    """The product's compiled loop (mlp_loop.mlp_rows) over two epochs in a fixed order, stopping
    every 3 updates as log lines make it, the step decaying (invscaling), standardisation off
    (mean 0, scale 1); returns (θ, its running average, the iterates averaged)."""
    lay = mlp.layout(X.shape[1], H, 1)
    n, k, P = X.shape[0], idx.shape[1], mlp.n_params(lay)
    net = mlp.network(lay, "tanh", "logistic")
    spec = pack_spec(loss=LOSSES["logistic"], batch=batch, schedule=SCHEDULES["invscaling"], average_from=average_from,
                     n_rows=n, optimizer=OPTIMIZERS[optimizer], warmup=0, total=0, step_every=1, noise=False, t0=0,
                     blocks=1)
    hyper = pack_hyper(lr0=0.3, power_t=0.5, l2=l2, l1=0.0, param=0.0, beta1=0.9, beta2=0.999, eps=1e-8, gamma=0.5)
    params = (theta.copy(), np.zeros(P), np.zeros(P), np.zeros(P), np.zeros(int((lay[:, 0] * lay[:, 1]).sum())),
              np.zeros(1))
    counters, sums, opt_state = np.zeros(N_COUNTERS, np.int64), np.zeros(N_SUMS), np.zeros((2, P))
    noise = (np.zeros(2), np.zeros(4), np.zeros(P))
    scratch = (np.zeros((batch, X.shape[1])), np.zeros(batch), np.zeros(batch), np.zeros((batch, k), np.int32),
               np.zeros((batch, k), np.int8))
    ws = mlp.workspace(batch, lay, np.float64)
    order = np.random.default_rng(3).permutation(n)
    mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    for _ in range(2):
        pos = 0
        while pos < n:
            pos = mlp_rows(X, y, NO_WEIGHTS, idx, sign, order, pos, n, counters[T] + 3, spec, hyper, net, params,
                           opt_state, mean, scale, counters, sums, ws, scratch, noise, emb)
        if counters[FILLED]:  # the epoch's short last batch
            finish_mlp_batch(spec, hyper, net, params, opt_state, counters, sums, noise, emb)
    assert counters[T] == 10
    return params[THETA], params[AVG], int(counters[AVERAGED])


# rtol 1e-10: the same updates from sums of the same terms in another order, ten updates of
# a tanh network (each rounding difference of ~1e-16 grows by at most the steps' Lipschitz
# factors); the global scale and its fold (l2 3.0) add one rounding per weight and update
@pytest.mark.parametrize("optimizer, l2, average_from", [("sgd", 0.05, 4), ("sgd", 3.0, 4), ("sgd", 0.0, 1 << 40),
                                                         ("adagrad", 0.0, 6)])
def test_the_trained_network_equals_its_dense_twin(optimizer, l2, average_from):
    """Ten updates of the product's loop (150 rows in batches of 32, two epochs): the network,
    its embedding and their running averages equal the dense twin's, trained on the indicator
    columns. sgd + l2 shrinks E by the global scale (l2 3.0 drives it past RENORMALIZE, so the
    fold runs too), adagrad without L2 skips the untouched rows."""
    X, idx, sign, y, X_twin = _problem()
    lay, twin_lay, theta, E, twin = _networks()
    average = average_from < 1 << 40
    emb = _state(E, 32, optimizer, average)
    got, got_avg, averaged = _train(X, y, idx, sign, theta, optimizer, l2, average_from, emb)
    none = embedding.pack_embedding(-1, H[0], 0, False, False)
    want, want_avg, _ = _train(X_twin, y, np.zeros((150, 0), np.int32), np.zeros((150, 0), np.int8), twin, optimizer,
                               l2, average_from, none)
    dense, table = _split(want, twin_lay, lay)
    np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-10 * np.abs(dense).max())
    current = embedding.table(emb, 0)
    np.testing.assert_allclose(current, table, rtol=1e-10, atol=1e-10 * np.abs(table).max())
    assert np.abs(current - E).max() > 1e-3  # E moved
    if l2 == 3.0:
        assert emb[embedding.EI][embedding.E_FOLDS] > 0
    if average:
        assert averaged > 0
        dense_avg, table_avg = _split(want_avg, twin_lay, lay)
        np.testing.assert_allclose(got_avg, dense_avg, rtol=1e-10, atol=1e-10 * np.abs(dense_avg).max())
        mean = embedding.table(emb, averaged)
        np.testing.assert_allclose(mean, table_avg, rtol=1e-10, atol=1e-10 * np.abs(table_avg).max())


def test_finite_differences_of_the_whole_gradient_with_the_embedding():
    """The summed loss's gradient, every layer's and E's rows, against central differences (a
    float64 network; tanh, whose derivative has no kink)."""
    X, idx, sign, y, _ = _problem(seed=4, n=40)
    lay, _, theta, E, _ = _networks(seed=5)
    net = mlp.network(lay, "tanh", "logistic")
    ws = mlp.workspace(40, lay, np.float64)

    def loss(th: np.ndarray, table: np.ndarray) -> float:
        return mlp.embedded_gradient(X, idx, sign, y, NO_WEIGHTS, 0, 40, net, th, np.zeros_like(th), ws,
                                     _state(table, 40), 1)

    emb = _state(E, 40)
    grad = np.zeros_like(theta)
    mlp.embedded_gradient(X, idx, sign, y, NO_WEIGHTS, 0, 40, net, theta, grad, ws, emb, 1)
    table = _gathered(emb, 1)
    h = 1e-6  # central differences: truncation O(h²) ≈ 1e-12 against rounding O(ε·loss/h) ≈ 1e-9
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        assert grad[j] == pytest.approx((loss(theta + e, E) - loss(theta - e, E)) / (2 * h), rel=1e-6, abs=1e-7)
    assert np.count_nonzero(table) > 0
    for b in range(1 << BITS):
        for o in range(H[0]):
            e = np.zeros_like(E)
            e[b, o] = h
            fd = (loss(theta, E + e) - loss(theta, E - e)) / (2 * h)
            assert table[b, o] == pytest.approx(fd, rel=1e-6, abs=1e-7)


# --- through the CLI and the trainer: palmerpenguins (tests/data) ---------------------------------

PENGUINS = os.path.join(os.path.dirname(__file__), "data", "penguins.csv")
CATEGORICAL = ["species", "island", "sex"]
#: the options both models train with: the same columns, batches, epochs, L2 and table
OPTIONS = ["--hash-bits", "12", "--l2", "1e-3", "--batch", "16", "--epochs", "300"]


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> tuple[dict[str, str], pd.DataFrame]:
    """Is a penguin heavier than 4,050 g, from its species, island and sex (text, sex with
    nulls) and its measurements: test_categorical's table and split, written by pandas."""
    df = pd.read_csv(PENGUINS)
    df = df[df.body_mass_g.notna()].copy()
    df["y"] = (df.body_mass_g > 4050).astype("int64")
    df = df.drop(columns=["body_mass_g"]).reset_index(drop=True)
    test = np.random.default_rng(0).random(len(df)) < 0.3
    root = tmp_path_factory.mktemp("penguins_mlp")
    paths = {"train": str(root / "train.parquet"), "test": str(root / "test.parquet")}
    df[~test].to_parquet(paths["train"], index=False, row_group_size=60)
    df[test].to_parquet(paths["test"], index=False)
    return paths, df[test]


def test_fit_predict_evaluate_with_hidden_and_text_columns_beat_the_linear_model(penguins, tmp_path):
    """`fit --hidden 16` on a table with text columns trains; the model file holds the
    embedding and the encoding; predict and evaluate hash the rows as training did (their
    figures agree); the held-out log loss is no worse than the linear model's with the same
    columns and options (measured: 0.162 against 0.190 on the 88 held-out rows)."""
    paths, test = penguins
    mlp_path, linear_path, preds = tmp_path / "mlp.npz", tmp_path / "linear.npz", tmp_path / "p.parquet"
    run_cli("fit", paths["train"], "--hidden", "16", *OPTIONS, "-o", mlp_path)
    run_cli("fit", paths["train"], *OPTIONS, "-o", linear_path)
    model = streamsgd.load(mlp_path)
    assert model.embedding is not None and model.embedding.shape == (2**12, 16) and model.hashed is None
    assert model.metadata["categorical"]["columns"] == CATEGORICAL and model.metadata["mlp"]["hidden"] == [16]
    ev = json.loads(run_cli("evaluate", mlp_path, paths["test"], "--json").stdout)
    linear = json.loads(run_cli("evaluate", linear_path, paths["test"], "--json").stdout)
    run_cli("predict", mlp_path, paths["test"], "-o", preds, "--keep", "species")
    p, y = pd.read_parquet(preds).probability.to_numpy(), test.y.to_numpy()
    assert ev["loss"] == pytest.approx(float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))), rel=1e-9)
    assert ev["accuracy"] == pytest.approx(float(np.mean((p > 0.5) == (y == 1))))
    # fixed seeds make both figures deterministic here; 0.005 leaves room for another
    # platform's float32 rounding, far below the measured margin (0.028)
    assert ev["loss"] <= linear["loss"] + 0.005, (ev, linear)
    # the embedding carries signal: the same network without the text columns does worse
    run_cli("fit", paths["train"], "--hidden", "16", *OPTIONS, "--exclude", ",".join(CATEGORICAL), "-o",
            tmp_path / "numeric.npz")
    numeric = evaluate(streamsgd.load(tmp_path / "numeric.npz"), open_source(paths["test"], exclude=CATEGORICAL))
    assert ev["loss"] < numeric["loss"], (ev, numeric)
    with pytest.raises(UsageError, match="hashes the categorical columns"):
        model.decision_function(np.zeros((1, len(model.features))))
    shown = run_cli("show", mlp_path).stdout
    assert "species, island, sex  (hashed into 2^12 rows of the first layer's 16-wide embedding" in shown


def test_the_validation_loss_scores_the_embedding(penguins):
    """The last epoch's val_loss is the final network's loss on the held-out chunk, as
    evaluate computes it from the model's layers and embedding."""
    from streamsgd.sources.subset import ChunkSubset

    paths, _ = penguins
    records: list = []
    model = train_fit(open_source(paths["train"]), FitConfig(hidden=(8,), hash_bits=10, epochs=30, batch=32,
                                                             validation_fraction=0.25),
                      hooks=Hooks(on_progress=records.append)).model
    held = model.metadata["validation"]["chunks"]
    last = [r for r in records if r["event"] == "epoch"][-1]
    subset = ChunkSubset(open_source(paths["train"], features=model.features + model.hashed_columns,
                                     categorical=model.hashed_columns), held)
    assert model.embedding is not None and model.metadata["validation"]["rows"] > 0
    assert last["val_loss"] == pytest.approx(evaluate(model, subset)["loss"], rel=1e-9)


def _fit(paths: dict[str, str], saved: list, **options):
    config = FitConfig(**{"hidden": (8,), "batch": 16, "epochs": 3, "log_every": 5, "hash_bits": 10, "seed": 2,
                          **options})
    return train_fit(open_source(paths["train"]), config, hooks=Hooks(checkpointing=Checkpointing(save=saved.append,
                                                                                                   every=7)))


@pytest.mark.parametrize("options", [{}, {"optimizer": "adagrad", "l2": 0.0, "lr": 0.05}])
def test_resume_with_hidden_and_a_categorical_column_is_bit_identical(penguins, options):
    """Resumed from any of its checkpoints (inside an epoch, with averaging running in the
    third), a run ends with the uninterrupted network and embedding, bit for bit: sgd with
    its L2 scale (the default) and adagrad's sums."""
    paths, _ = penguins
    saved: list = []
    whole = _fit(paths, saved, **options).model
    assert len(saved) > 6 and "emb_u" in saved[0] and whole.embedding is not None
    for state in (saved[1], saved[len(saved) // 2], saved[-2]):
        config = FitConfig(**{"hidden": (8,), "batch": 16, "epochs": 3, "log_every": 5, "hash_bits": 10, "seed": 2,
                              **options})
        resumed = train_fit(open_source(paths["train"]), config, resume=state,
                            hooks=Hooks(checkpointing=Checkpointing(save=lambda _: None, every=7))).model
        np.testing.assert_array_equal(resumed.embedding, whole.embedding)
        assert whole.layers is not None and resumed.layers is not None
        for (W, b), (W2, b2) in zip(whole.layers, resumed.layers):
            np.testing.assert_array_equal(W, W2)
            np.testing.assert_array_equal(b, b2)


def test_the_embedding_is_charged_and_what_it_does_not_serve_is_refused(penguins):
    """The memory plan charges E (2**bits x H1 float64), its optimizer state and average
    (doubled for a checkpoint's copies); a table over half the limit is refused naming
    --hash-bits; adagrad with L2 is refused naming --l2."""
    from streamsgd.train.setup import model_bytes

    paths, _ = penguins
    source = open_source(paths["train"])
    small, big = (model_bytes(source, FitConfig(hidden=(16,), hash_bits=b, l2=1e-3, optimizer="sgd")) for b in (10, 14))
    # 2**bits rows of 16: the table, the average's sums (twice each) and the model's copy, 5 x 8 bytes a weight
    assert big - small >= 5 * 8 * 16 * (2**14 - 2**10)
    with pytest.raises(UsageError, match=r"^--hash-bits 20 with --hidden 16: the embedding .* lower --hash-bits to"):
        train_fit(open_source(paths["train"]), FitConfig(hidden=(16,), epochs=1))
    with pytest.raises(UsageError, match="^--l2: an MLP's embedding of categorical columns trains with adagrad only"):
        train_fit(open_source(paths["train"]), FitConfig(hidden=(16,), hash_bits=10, optimizer="adagrad", l2=1e-3,
                                                         epochs=1))


def test_sigkill_then_resume_with_hidden_and_text_columns_is_bit_identical(penguins, tmp_path):
    """test_mlp_state's SIGKILL test on a table with text columns: killed right after its 2nd
    to 5th checkpoint (synchronised by the run's own log lines) and resumed, the run writes
    the uninterrupted model file's network and embedding."""
    paths, _ = penguins
    ckpt, out, reference = tmp_path / "ckpt", tmp_path / "m.npz", tmp_path / "ref.npz"
    train = ["--hidden", "16", *OPTIONS, "--epochs", "400"]  # ~6,000 updates: the kill lands mid-run
    run_cli("fit", paths["train"], *train, "-o", reference)
    rng = random.Random(7)
    kills = 0
    for every in ("1", "13"):
        proc = start_fit(paths["train"], *train, "--checkpoint-dir", str(ckpt), "--checkpoint-every", every,
                         "--resume", "-o", str(out))
        if wait_for(proc, "checkpoint", rng.randint(2, 5)) is not None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=120)
    assert kills == 2 and not out.exists()
    done = run_cli("fit", paths["train"], *train, "--checkpoint-dir", ckpt, "--resume", "-o", out, "--log-format",
                   "json")
    start = next(json.loads(line) for line in done.stderr.splitlines() if json.loads(line)["event"] == "start")
    assert start["resumed_at"] > 0
    with np.load(out, allow_pickle=False) as x, np.load(reference, allow_pickle=False) as y:
        names = [n for n in x.files if n.startswith("layer")] + ["embedding", "mean", "scale"]
        assert len(names) == 7
        for name in names:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def test_the_network_learns_an_interaction_of_a_text_column_with_a_number(tmp_path):
    """y = (x > 0) XOR (color is red or green): no linear model on x and the color's hashed
    weights can tell it (each color shifts all its rows alike, x's weight is shared: measured
    0.692, chance is ln 2 = 0.693); the network, whose first layer adds each color's embedding
    row to x's pre-activations, can (measured 0.151, 99 % of 600 held-out rows right)."""
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.standard_normal(n)
    color = rng.choice(["red", "green", "blue", "amber"], n)
    df = pd.DataFrame({"x": x, "z": rng.standard_normal(n), "color": color,
                       "y": ((x > 0) ^ np.isin(color, ["red", "green"])).astype("int64")})
    train, test = str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet")
    df[:2400].to_parquet(train, row_group_size=400, index=False)
    df[2400:].to_parquet(test, index=False)
    figures = {}
    for name, hidden in (("linear", []), ("mlp", ["--hidden", "16"])):
        out = tmp_path / f"{name}.npz"
        run_cli("fit", train, *hidden, "--hash-bits", "10", "--batch", "32", "--epochs", "20", "-o", out)
        figures[name] = json.loads(run_cli("evaluate", out, test, "--json").stdout)
    assert figures["linear"]["loss"] > 0.65 and figures["linear"]["accuracy"] < 0.6, figures
    assert figures["mlp"]["loss"] < 0.3 and figures["mlp"]["accuracy"] > 0.95, figures
