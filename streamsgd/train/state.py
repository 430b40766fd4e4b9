"""The trainer's state: everything a resumed run needs to continue bit for bit."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..compute.loop import AVERAGE_FROM, AVERAGED, BLOCKS, EPS, N_COUNTERS, N_SUMS, T
from ..compute.embedding import N_EMBEDDING
from ..compute.sparse import (N_HASHED, catch_up_all, catch_up_all_l1, catch_up_all_momentum, folded, lazy_l1, lazy_l2,
                              lazy_momentum, pack_hashed)
from ..compute.sparse_multi import table_shape
from ..errors import DataError


#: The hashed state's arrays by name, in ``compute.sparse``'s slot order (HW … HI).
HASHED = ("hw", "hg", "hsq", "hsum", "hstamp", "htouched", "hf", "hi", "hq")
assert len(HASHED) == N_HASHED
#: An MLP's embedding state by name, in ``compute.embedding``'s slot order (EU … EI).
EMBEDDING = ("emb_u", "emb_sq", "emb_sum", "emb_g", "emb_stamp", "emb_slot", "emb_touched", "emb_f", "emb_i")
assert len(EMBEDDING) == N_EMBEDDING


class State:
    """Everything a resumed run needs to continue bit for bit: plain arrays only.

    The place in the plan is two integers (epoch, rows of it consumed); the plan itself is
    a function of the seed, so nothing about the data's order needs storing.
    """

    ARRAYS = ("theta", "theta_eff", "avg", "gw", "l1_q", "l1_u", "cw", "opt_state", "counters", "sums",
              "epoch_sums", "rows_seen", "mean", "scale", "hyper", "spec", "guard", "sample", "sample_y", "shard_round",
              "sync_every", "early", *HASHED, *EMBEDDING)
    #: arrays a checkpoint written before they existed may lack (their defaults then stay);
    #: the step-size sample is drawn from the first window, which a resumed run does not read
    #: again, and a growing batch (``--batch auto``) sizes its step from it
    OPTIONAL = ("guard", "sample", "sample_y", "shard_round", "sync_every", "early", *HASHED, *EMBEDDING)

    def __init__(self, d: int, blocks: int = 1):
        self.theta, self.theta_eff, self.avg, self.gw = (np.zeros(blocks * (d + 1)) for _ in range(4))
        # the L1 penalty received by each weight of every block (the intercepts get none)
        self.l1_q, self.l1_u, self.cw = np.zeros(blocks * d), np.zeros(1), np.ones(2)
        self.opt_state = np.zeros((2, blocks * (d + 1)))
        self.counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self.sums = np.zeros(N_SUMS)
        self.epoch_sums = np.zeros(2)  # loss and rows of the epoch's completed intervals
        self.rows_seen = np.zeros(1, dtype=np.int64)
        # rounds of the epoch in progress made by a run on shards (train/shards.py): every
        # shard's place in its epoch follows from it
        self.shard_round = np.zeros(1, dtype=np.int64)
        # --sync models: the updates each shard makes per round (0: not chosen yet)
        self.sync_every = np.zeros(1, dtype=np.int64)
        # early stopping's best validation loss so far and the epochs since it improved by --tol:
        # a resumed run must count --patience from where the interrupted one was
        self.early = np.array([np.inf, 0.0])
        # standardisation and step-size figures: set by the first window (stepsize.start) or a checkpoint
        self.mean: NDArray[np.float64] | None = None
        self.scale: NDArray[np.float64] | None = None
        self.hyper: NDArray[np.float64] | None = None
        self.spec: NDArray[np.int64] | None = None
        self.sample: NDArray | None = None  # rows for the step size: kept when the batch size may change
        self.sample_y: NDArray | None = None  # their labels (Poisson's curvature, the starting loss)
        # guard.REFERENCE, ROW_MAX, SMOOTH: the starting model's loss (NaN: not measured), the
        # largest row curvature seen, and the sample's smoothness L (NaN: not measured)
        self.guard = np.array([np.nan, 0.0, np.nan])
        # softmax's label values as the kernel sees them (class indices for text labels)
        self.classes: NDArray | None = None
        # the loss's curvature bound, when the data sets it (poisson, class weights)
        self.curvature: float | None = None
        # the hashed categorical weights and their state (compute.sparse), None without categorical columns
        self.hw: NDArray | None = None
        self.hg = self.hsq = self.hsum = self.hstamp = self.htouched = self.hf = self.hi = self.hq = self.hw
        #: categorical columns per row (k): each adds a ±1 feature to a row's norm (the step size)
        self.hashed_columns = 0
        # an MLP's embedding of the categorical columns (compute.embedding), None without
        self.emb_u: NDArray | None = None
        self.emb_sq = self.emb_sum = self.emb_g = self.emb_stamp = self.emb_slot = self.emb_touched = self.emb_u
        self.emb_f = self.emb_i = self.emb_u

    def embed(self, emb: tuple[NDArray, ...]) -> None:
        """Hold an MLP's embedding state (``compute.embedding.pack_embedding``), so checkpoints
        carry it and a resumed run restores it in place."""
        for name, array in zip(EMBEDDING, emb):
            setattr(self, name, array)

    def embedding(self) -> tuple[NDArray, ...] | None:
        """The embedding state as ``compute.embedding`` takes it (EU … EI), or None."""
        return None if self.emb_u is None else tuple(getattr(self, name) for name in EMBEDDING)

    def hash_columns(self, k: int, bits: int, outputs: int = 1, *, extra: bool = False) -> None:
        """Room for the hashed weights of ``k`` categorical columns in 2**bits buckets of
        ``outputs`` weights each (softmax: one per class, ``compute.sparse_multi``), and one
        more figure per weight (``compute.sparse.needs_extra``)."""
        self.hashed_columns = k
        for name, array in zip(HASHED, pack_hashed(bits, outputs, extra=extra)):
            setattr(self, name, array)

    def hashed(self) -> tuple[NDArray, ...] | None:
        """The hashed state as ``compute.sparse`` takes it (HW … HI), or None."""
        return None if self.hw is None else tuple(getattr(self, name) for name in HASHED)

    def hashed_weights(self) -> NDArray[np.float64] | None:
        """The hashed weights as the model holds them (``compute.sparse.folded``: every lazy
        scale folded in, the Polyak mean once averaging started), or None: (2**bits,), or
        (2**bits, C) for softmax (``compute.sparse_multi.table_shape``)."""
        hashed = self.hashed()
        if hashed is None:
            return None
        assert self.spec is not None and self.hyper is not None  # set before any update
        lazy = (int(self.counters[T]), lazy_l2(self.spec, self.hyper), float(self.hyper[EPS]),
                int(self.spec[AVERAGE_FROM]))
        return table_shape(folded(hashed, int(self.counters[AVERAGED]), lazy, lazy_l1(self.spec, self.hyper, self.l1_u),
                                  lazy_momentum(self.spec, self.hyper)), int(self.spec[BLOCKS]))

    def catch_up(self) -> None:
        """Bring every hashed weight up to the last update under AdaGrad's lazy L2, the L1
        penalty or momentum (nothing otherwise): before the step η changes, as the lazy forms
        hold for one η."""
        hashed = self.hashed()
        if hashed is None or self.spec is None or self.hyper is None:
            return
        lr_l2, l1 = lazy_l2(self.spec, self.hyper), lazy_l1(self.spec, self.hyper, self.l1_u)
        momentum = lazy_momentum(self.spec, self.hyper)
        if l1 is not None:
            catch_up_all_l1(hashed, int(self.counters[T]), *l1, float(self.hyper[EPS]), int(self.spec[AVERAGE_FROM]))
        elif momentum is not None:
            catch_up_all_momentum(hashed, int(self.counters[T]), *momentum, int(self.spec[AVERAGE_FROM]))
        elif lr_l2 > 0.0:
            catch_up_all(hashed, int(self.counters[T]), lr_l2, float(self.hyper[EPS]), int(self.spec[AVERAGE_FROM]))

    def arrays(self) -> dict[str, NDArray]:
        return {name: getattr(self, name).copy() for name in self.ARRAYS if getattr(self, name) is not None}

    def restore(self, arrays: dict[str, NDArray]) -> None:
        for name in self.ARRAYS:
            if name in self.OPTIONAL and name not in arrays:
                continue
            old, new = getattr(self, name), np.asarray(arrays[name])
            if old is not None and (new.shape != old.shape or new.dtype != old.dtype):
                raise DataError(f"the checkpoint's {name} has shape {new.shape}, this run needs {old.shape}; "
                                "it was written for other data or options: start without --resume")
            if (name in HASHED or name in EMBEDDING) and old is not None:
                old[...] = new  # in place: compute.sparse's slab (the hashed columns share its cache lines), or
                # the embedding's arrays, which the MLP run's compiled calls hold
            else:
                setattr(self, name, new.copy())
