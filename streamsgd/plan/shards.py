"""Logical shards: the chunks of one epoch dealt to S shards, balanced by rows.

A pure function of (seed, epoch, S) and the layout, so every worker, rank or process that
knows the seed computes the same assignment without talking to the others, and a resumed
run deals exactly as the first did. Chunks that are slices of one row group (``groups``)
stay together, so a shard's readers read a row group's slices front to back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

#: The random stream of the shard assignment (distinct from the plan's ``[seed, epoch]``).
SHARD_TAG = 0x5A4D


def shard_chunks(chunk_rows: Sequence[int], seed: int, epoch: int, shards: int,
                 groups: Sequence[int] | None = None) -> list[NDArray[np.int64]]:
    """The chunk ids of each of ``shards`` shards for ``epoch``, every chunk in exactly one.

    Units (chunks, or whole groups of chunks) are visited in a seeded random order and each
    goes to the shard holding the fewest rows so far: shards differ by at most one unit's
    rows, and which shard reads which rows changes from epoch to epoch.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1; got {shards}")
    ids = list(range(len(chunk_rows))) if groups is None else [int(g) for g in groups]
    units: dict[int, list[int]] = {}
    for chunk, unit in enumerate(ids):
        units.setdefault(unit, []).append(chunk)
    keys = list(units)
    rng = np.random.default_rng([int(seed), SHARD_TAG, int(epoch), int(shards)])
    rows = np.zeros(shards, dtype=np.int64)
    out: list[list[int]] = [[] for _ in range(shards)]
    for k in rng.permutation(len(keys)):
        chunks = units[keys[k]]
        s = int(np.argmin(rows))
        out[s] += chunks
        rows[s] += sum(int(chunk_rows[c]) for c in chunks)
    return [np.array(sorted(chunks), dtype=np.int64) for chunks in out]
