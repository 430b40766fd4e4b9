"""Every random stream a run draws from its seed, each under its own named tag.

A stream is ``np.random.default_rng([seed, TAG, *keys])``: a pure function of integers, so a
checkpoint stores integers, not generator states, and a resume draws exactly what the first
run drew. The tag keeps the streams' key spaces apart: without it the plan's ``[seed, epoch]``
and the tuner's ``[seed, 13]`` were the same stream at epoch 13. Each tag also has a fixed
number of keys (checked), because ``SeedSequence`` pads short keys with zeros, which would
make ``[seed, TAG, e]`` at ``e = 0`` the stream ``[seed, TAG]`` of a tag with no key.

Changing a tag or the keys of a stream changes every model trained with it: bump
``persist.model.FORMAT_VERSION`` so that resuming an older run's checkpoint is refused.
"""

from __future__ import annotations

import numpy as np

#: The order in which an epoch reads its chunks; keys: epoch.
CHUNK_ORDER = 1
#: The permutation of one window's rows; keys: epoch, window.
ROW_ORDER = 2
#: The tie-break and dealing of stratified windows; keys: epoch.
STRATA = 3
#: The chunks held out for validation during training; no keys.
SPLIT = 4
#: The rows held out of each chunk when there are too few chunks to hold out; keys: chunk.
SPLIT_ROWS = 5
#: The chunks ``tune`` holds out to score its trials; no keys.
HOLDOUT = 6
#: The rows ``tune`` holds out of each chunk when there are too few chunks; keys: chunk.
HOLDOUT_ROWS = 7
#: The chunks ``tune`` reads for its gradient-noise pass; no keys.
NOISE_CHUNKS = 8
#: The order of the rows in ``tune``'s gradient-noise pass; no keys.
NOISE_ROWS = 9

#: The initial weights of an MLP (``--hidden``); no keys.
MLP_INIT = 10

#: The deal of row groups to the lanes that stream them side by side; keys: epoch.
LANES = 11

#: Tag -> how many integer keys follow it.
KEYS = {CHUNK_ORDER: 1, ROW_ORDER: 2, STRATA: 1, SPLIT: 0, SPLIT_ROWS: 1,
        HOLDOUT: 0, HOLDOUT_ROWS: 1, NOISE_CHUNKS: 0, NOISE_ROWS: 0, MLP_INIT: 0, LANES: 1}


def stream(seed: int, tag: int, *keys: int) -> np.random.Generator:
    """The generator of stream ``tag`` of a run seeded ``seed``, at ``keys`` (epoch, window, chunk…).

    Raises ``ValueError`` for an unknown tag or the wrong number of keys: a programming error,
    since two streams of different tags must never be able to meet.
    """
    if KEYS.get(tag) != len(keys):
        raise ValueError(f"random stream tag {tag!r} takes {KEYS.get(tag)} keys; got {len(keys)}")
    return np.random.default_rng([seed, tag, *keys])


__all__ = ["CHUNK_ORDER", "ROW_ORDER", "STRATA", "SPLIT", "SPLIT_ROWS", "HOLDOUT", "HOLDOUT_ROWS",
           "NOISE_CHUNKS", "NOISE_ROWS", "MLP_INIT", "LANES", "KEYS", "stream"]
