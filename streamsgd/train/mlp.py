"""Training an MLP (``--hidden 64,32``): the epoch loop of :class:`~.run.Run` driving the
compiled MLP loop (``compute.mlp_loop``) on the network's flat parameters.

The run reuses the linear trainer's setup (split, plan, schedule, class weights), its stops
(log lines, ``--steps``, the schedule), its divergence check and its records; what differs is
the first window (standardisation, PyTorch-default initialisation from the seed's ``MLP_INIT``
stream, a default step), the compiled calls, the epoch's penalised loss and the model: its
layers act on standardised inputs (x − mean) / scale, and the model keeps mean and scale.
Checkpoints, --resume, --init (from an MLP file of the same layers, checked by
:func:`check_mlp` before any work), validation and early stopping, --batch auto and every
optimizer and penalty work as for linear models; --shards/--workers are refused by FitConfig.

Categorical columns enter the first layer as an embedding bag (``compute.embedding``): a
(2**bits, H1) table E, drawn from the same seed's stream after the layers, whose touched rows
train with sgd (+ L2, exact by a global scale) or adagrad without L2 (exact lazily), Polyak
averaging included; train.hashed refuses the rest. The model keeps E with every scale folded
in (``Model.embedding``), and the rows' hashed features enter validation and inference as here.
"""

from __future__ import annotations

from contextlib import closing

import numpy as np
from numpy.typing import NDArray

from ..compute import embedding
from ..compute.loop import AVERAGED, DIVERGED, EPOCH_ROWS, FILLED, T, pack_hyper
from ..compute.mlp import (B_AT, N_IN, N_OUT, W_AT, first_fan_in, init_params, layout, n_params, network,
                           scratch_rows, workspace)
from ..compute.losses import row_loss
from ..compute.mlp_loop import G, finish_mlp_batch, mlp_rows
from ..compute.noise import NoiseMeter
from ..config import FitConfig
from ..errors import UsageError
from ..persist.model import Model, embedding_bag
from ..pipeline.epochs import EpochStream
from ..pipeline.windows import Window, hashed_columns, read_window
from ..plan.rng import MLP_INIT, stream
from . import guard
from .hashed import warn_row_names
from .inputs import Hooks
from .run import Run, _UNWEIGHTED
from .setup import Setup
from .targets import standardization

#: The default step on standardised inputs when --lr is not given, by optimizer: Adam's
#: customary 1e-3; plain SGD's 0.05, divided by 1/(1 − β) for the heavy-ball optimizers.
MLP_LR = {"sgd": 0.05, "momentum": 0.005, "nesterov": 0.005, "adagrad": 0.05, "adam": 1e-3, "adamw": 1e-3}


def check_mlp(config: FitConfig, init: Model | None) -> None:
    """Refuse, in one line, an ``init`` model that is not a network of this run's layers
    (a linear model, other widths or another activation)."""
    if init is None:
        return
    want = {"hidden": list(config.hidden), "activation": config.activation}
    have = init.metadata.get("mlp") if init.layers is not None else None
    if have != want:
        what = "a linear model" if have is None else f"hidden {have.get('hidden')}, {have.get('activation')}"
        raise UsageError(f"--init: the model is {what}, this run trains hidden {want['hidden']}, "
                         f"{want['activation']}; give a model file of the same layers or start without --init")


class MLPRun(Run):
    """A :class:`Run` whose compiled calls train the network; ``st.theta``/``st.avg`` hold its
    flat parameters, so the divergence check and the averaging start work as they are."""

    def __init__(self, setup: Setup, hooks: Hooks, resume: dict[str, NDArray] | None, started: float) -> None:
        super().__init__(setup, hooks, None, started)
        config, st = self.config, self.st
        d = len(setup.source.features)
        softmax = config.model == "softmax"  # one output margin per class (setup.blocks), else one
        self.lay = layout(d, config.hidden, setup.blocks)
        param = config.epsilon if config.model == "huber" else config.quantile
        self.net = network(self.lay, config.activation, config.model, param, cw=st.cw,
                           classes=st.classes if softmax else None)
        P = n_params(self.lay)
        k = hashed_columns(setup.source)
        self.emb = self.embedding_state(k)
        if setup.init is not None:  # a warm start: the given network's layers (check_mlp matched them)
            st.theta = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in setup.init.layers or ()])
        else:
            rng = stream(config.seed, MLP_INIT)
            st.theta = init_params(self.lay, rng, first_fan_in(d, k))
            # E: the first layer's weights for the hashed inputs, the same draw after the layers'
            embedding.init_table(self.emb, rng, 1.0 / np.sqrt(first_fan_in(d, k)))
        st.avg, st.gw, st.opt_state = np.zeros(P), np.zeros(P), np.zeros((2, P))
        st.l1_q = np.zeros(int((self.lay[:, N_IN] * self.lay[:, N_OUT]).sum()))  # one per weight, biases skipped
        if resume is not None:  # the checkpoint's parameters, optimizer state, sums and counters
            st.restore(resume)
            self.first_rows = int(st.rows_seen[0])  # rows/s counts this run's rows only
        self.mlp_params = (st.theta, st.avg, st.gw, np.zeros(P), st.l1_q, st.l1_u)
        # the noise meter over the network's parameters (Run sized it for a linear model)
        self.meter = meter = NoiseMeter(n_rows=self.schedule.N, n_params=P)
        assert meter.total is not None  # sized by n_params
        if resume is not None and "noise_total" in resume:  # the interval in progress
            meter.total[:], meter.sums[:] = resume["noise_total"], resume["noise_sums"]
        self.noise = (meter.total, meter.sums, self.mlp_params[G])
        # a growing batch (--batch auto) is fed through the largest scratch block
        rows = scratch_rows(config.batch == "auto", setup.schedule.B)
        dtype = np.dtype(config.dtype)
        self.ws = workspace(rows, self.lay, dtype)
        self.scratch = (np.zeros((rows, d), dtype), np.zeros(rows), np.zeros(rows), np.zeros((rows, k), np.int32),
                        np.zeros((rows, k), np.int8))

    def embedding_state(self, k: int) -> tuple[NDArray, ...]:
        """The embedding's state for ``k`` categorical features per row, held by the run's
        state (so checkpoints carry it); the empty state of a network without them."""
        config, width = self.config, int(self.config.hidden[0])
        if not k:
            return embedding.pack_embedding(-1, width, 0, False, False)
        cap = embedding.batch_buckets(config.hash_bits, k, self.schedule.B, config.batch == "auto")
        emb = embedding.pack_embedding(config.hash_bits, width, cap, config.optimizer == "adagrad", config.average)
        self.st.embed(emb)
        return emb

    def begin(self, window: Window) -> None:
        """The first window: standardisation, the step size and the divergence reference."""
        st, config = self.st, self.config
        assert window.y is not None
        init = self.setup.init
        if init is not None:  # the warm start's layers act on its own standardisation
            st.mean, st.scale = np.asarray(init.mean, np.float64), np.asarray(init.scale, np.float64)
        else:
            st.mean, st.scale = standardization(window.X, config.standardize, window.slots)
        warn_row_names(self.setup.full_source, window.idx)
        st.sample, st.sample_y = guard.sample_rows(window.X, window.y, order=window.slots)
        if config.lr is None:
            lr0 = MLP_LR[config.optimizer]
        else:  # the linear scaling rule, when asked: the given lr was tuned at the reference batch
            lr0 = config.lr * (self.schedule.B / config.lr_reference_batch if config.lr_reference_batch else 1.0)
        param = config.epsilon if config.model == "huber" else config.quantile
        st.hyper = pack_hyper(lr0=lr0, power_t=config.power_t, l2=config.l2_strength, l1=config.l1, param=param,
                              beta1=config.beta1, beta2=config.beta2, eps=config.eps, gamma=config.gamma)
        assert st.classes is not None
        blocks = self.setup.blocks  # the zero network's margins: zero for every class
        st.guard[guard.REFERENCE] = guard.reference_loss(config.model, st.sample, st.sample_y,
                                                         np.zeros(blocks * window.X.shape[1]),
                                                         np.zeros(blocks) if blocks > 1 else 0.0, param, st.cw,
                                                         st.classes)

    def train_window(self, window: Window, order: NDArray, epoch: int) -> None:
        """The window's rows in ``order``, one compiled call between stops."""
        st = self.st
        assert window.y is not None
        if st.hyper is None:
            self.begin(window)
        assert st.spec is not None and st.hyper is not None and st.mean is not None and st.scale is not None
        pos = 0
        sw = _UNWEIGHTED if window.w is None else window.w
        while pos < order.size and not self.done():
            pos = mlp_rows(window.X, window.y, sw, window.idx, window.sign, order, pos, order.size, self.next_stop(),
                           st.spec, st.hyper, self.net, self.mlp_params, st.opt_state, st.mean, st.scale, st.counters,
                           st.sums, self.ws, self.scratch, self.noise, self.emb)
            if st.counters[DIVERGED]:
                raise self.diverged(epoch)
            if st.counters[FILLED] == 0:
                self.at_boundary(epoch)

    def train_epoch(self, stream: EpochStream, epoch: int) -> None:
        """The epoch's windows from where the counters stand, then its short last batch."""
        st = self.st
        with closing(stream.epoch(epoch, int(st.counters[EPOCH_ROWS]))) as windows:
            for window, order in windows:
                self.train_window(window, order, epoch)
                if self.done():
                    break
        if st.counters[FILLED]:
            assert st.spec is not None and st.hyper is not None
            finish_mlp_batch(st.spec, st.hyper, self.net, self.mlp_params, st.opt_state, st.counters, st.sums,
                             self.noise, self.emb)
            if st.counters[DIVERGED]:
                raise self.diverged(epoch)
            if st.counters[T] % self.config.log_every == 0:
                self.progress(epoch)
        self.check_interval(epoch)
        self.fold_interval()

    def weight_norm2(self) -> float:
        """Σ w² over the layers' weights and the embedding (the biases are not penalised)."""
        theta = self.st.theta
        return float(sum((theta[int(a):int(b)] ** 2).sum() for a, b in zip(self.lay[:, W_AT], self.lay[:, B_AT]))
                     + embedding.norm2(self.emb))

    def validation_loss(self) -> float:
        """Mean loss of the network (the running average once it has started) on the held-out
        chunks, read one at a time; no penalty, weighted by the sample weights if any, as the
        linear trainer's ``run.validation_loss`` reports it."""
        config, st = self.config, self.st
        assert self.setup.validation is not None and st.mean is not None and st.scale is not None
        validation, layers, table = self.setup.validation, self.layers(), self.embedding_table()
        param = config.epsilon if config.model == "huber" else config.quantile
        total, rows = 0.0, 0.0
        for c in range(len(validation.chunk_rows)):
            window = read_window(validation, np.array([c]), np.float64, True)
            assert window.y is not None  # read with the target
            bag = None if table is None else embedding_bag(table, window.idx, window.sign)
            z = forward(layers, config.activation, (window.X - st.mean) / st.scale, bag)
            y = window.y if z.ndim == 1 else np.searchsorted(np.asarray(st.classes), window.y)  # softmax: indices
            losses = row_loss(config.model, z, y, param)
            total += float(losses.sum() if window.w is None else losses @ window.w)
            rows += window.y.size if window.w is None else float(window.w.sum())
        return total / rows if rows > 0 else 0.0

    def layers(self) -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
        """Each layer's (W (n_out, n_in), b (n_out,)), of the running average once it has started."""
        theta = self.st.avg if self.st.counters[AVERAGED] else self.st.theta
        out = []
        for n_in, n_out, w_at, b_at in self.lay[:, [N_IN, N_OUT, W_AT, B_AT]]:
            out.append((theta[w_at:b_at].reshape(n_out, n_in).copy(), theta[b_at:b_at + n_out].copy()))
        return out

    def embedding_table(self) -> NDArray[np.float64] | None:
        """The embedding E (2**bits, H1) as the model holds it, every scale folded in (the
        running average's once it has started); None without categorical columns."""
        if not self.emb[embedding.EU].shape[0]:
            return None
        return embedding.table(self.emb, int(self.st.counters[AVERAGED]))


def forward(layers: list[tuple[NDArray[np.float64], NDArray[np.float64]]], activation: str,
            h: NDArray[np.float64], bag: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """The output margins of standardised rows ``h`` in float64, (n,) or (n, C) for softmax
    (NumPy: validation reads a chunk at a time, once an epoch, so the compiled forward pass
    would buy nothing). ``bag``: the rows' embedding bags (n, H1), added to the first layer's
    pre-activations (``persist.model.embedding_bag``)."""
    for k, (W, b) in enumerate(layers[:-1]):
        a = h @ W.T + b
        if k == 0 and bag is not None:
            a += bag
        h = np.maximum(a, 0.0) if activation == "relu" else np.tanh(a)
    W, b = layers[-1]
    z = h @ W.T + b
    return z[:, 0] if z.shape[1] == 1 else z
