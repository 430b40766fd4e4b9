"""The shuffle plan: which rows, in which order, cut into which batches.

Everything here is a pure function of integers (seed, epoch, chunk sizes, window size),
computed from metadata alone, so batch ``i`` of epoch ``e`` is known without reading any
data, whatever the number of reader threads. Randomness comes from the tagged streams of
:mod:`streamsgd.plan.rng` (``default_rng([seed, TAG, epoch, ...])``).

The plan is the classic two-level shuffle for data larger than memory: the chunk order is
permuted every epoch, consecutive chunks of that order are grouped into *windows* that fit
the shuffle buffer, and the rows of each window are permuted. The batch stream is the
concatenation of the windows' permuted rows, cut every ``batch`` rows as the compiled loop
feeds them (``compute.loop.train_rows``), so every batch has exactly ``batch`` rows except
the epoch's last one. When the target pass has measured each
chunk's mean target, windows are instead *stratified* (see ``stratified_windows``), so
that data sorted by label still gives every window the whole data's label mix.

The run's first window is read whole before the first update, so epoch 0 *ramps up*: its
first window is cut into windows of at most W/8, W/4 and W/2 rows and the rest (see
``ramp_up``), and the readers fill each while the trainer trains on the one before.

Any change to the plan changes the models trained with it: bump
``persist.model.FORMAT_VERSION`` so that resuming an older run's checkpoint is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .rng import CHUNK_ORDER, LANES, ROW_ORDER, STRATA, stream


#: Epoch 0's first window is cut into windows of at most W / k rows for each k here, then the
#: rest: the first update waits for W/8 rows to be read instead of W (the whole data set
#: when it fits one window), and each later piece is read while the one before trains.
RAMP = (8, 4, 2)


def iterations_per_epoch(n_rows: int, batch: int) -> int:
    """Updates in one full pass: ``ceil(N / B)``, the short last batch counting as one."""
    return math.ceil(n_rows / batch)


def chunk_order(n_chunks: int, seed: int, epoch: int, shuffle: bool = True) -> NDArray[np.int64]:
    """The order in which chunks are read in ``epoch``: a fresh permutation per epoch."""
    if not shuffle or n_chunks <= 1:  # one chunk has one order: no stream to seed (tiny data: every epoch)
        return np.arange(n_chunks, dtype=np.int64)
    return stream(seed, CHUNK_ORDER, epoch).permutation(n_chunks)


def group_windows(
    chunk_rows: Sequence[int], order: NDArray[np.int64], window_rows: int
) -> list[NDArray[np.int64]]:
    """Cut the chunk order into consecutive groups of at most ``window_rows`` rows.

    A chunk larger than the window forms a window of its own.
    """
    windows: list[NDArray[np.int64]] = []
    start, total = 0, 0
    for pos, chunk in enumerate(order):
        rows = int(chunk_rows[chunk])
        if pos > start and total + rows > window_rows:
            windows.append(order[start:pos])
            start, total = pos, 0
        total += rows
    if start < len(order):
        windows.append(order[start:])
    return windows


def row_order(n_rows: int, seed: int, epoch: int, window: int, shuffle: bool = True) -> NDArray[np.int64]:
    """The permutation of a window's rows (indices into the window's buffer): the stream's
    ``permutation(n_rows)``, drawn by a compiled shuffle (``plan.permute``, the same integers)."""
    if not shuffle:
        return np.arange(n_rows, dtype=np.int64)
    from .permute import permutation  # numba: imported when a window is first ordered

    return permutation(stream(seed, ROW_ORDER, epoch, window), n_rows)


def stratified_windows(
    chunk_rows: Sequence[int], strata: NDArray[np.float64], seed: int, epoch: int, window_rows: int
) -> list[NDArray[np.int64]]:
    """Deal chunks into windows so that every window holds the data's mix of ``strata``.

    ``strata`` is one number per chunk (its mean target, from the target pass before training). Chunks are
    ranked by it, the ranking is cut into bands of ``m`` chunks (one per window), and each
    band is dealt to the windows in a fresh random order. A file sorted by label thus
    gives windows with the same label mix as the whole file, which random windows of
    whole chunks cannot promise. Falls back to random windows when chunk sizes differ
    so much that dealing would overflow a window.
    """
    n = len(chunk_rows)
    m = max(1, math.ceil(sum(chunk_rows) / window_rows))
    if m == 1 or m >= n:
        return group_windows(chunk_rows, chunk_order(n, seed, epoch), window_rows)
    rng = stream(seed, STRATA, epoch)
    ranked = np.lexsort((rng.random(n), strata))  # random tie-break among equal strata
    members: list[list[int]] = [[] for _ in range(m)]
    for start in range(0, n, m):
        band = ranked[start : start + m]
        for chunk, w in zip(band, rng.permutation(m)[: len(band)]):
            members[w].append(int(chunk))
    if any(sum(chunk_rows[c] for c in chunks) > window_rows for chunks in members):
        return group_windows(chunk_rows, chunk_order(n, seed, epoch), window_rows)
    dealt = [np.array(chunks, dtype=np.int64) for chunks in members]
    if epoch == 0:  # listed band by band: spread out, each piece of the ramp (ramp_up) spans the bands
        dealt[0] = dealt[0][_spread(len(dealt[0]))]
    return dealt


def _spread(n: int) -> NDArray[np.int64]:
    """The positions 0 … n-1 in bit-reversed order (0, n/2, n/4, 3n/4, …): every prefix of
    the list they reorder is spread evenly over it."""
    bits = max(1, (n - 1).bit_length())
    reversed_ = [int(format(p, f"0{bits}b")[::-1], 2) for p in range(1 << bits)]
    return np.array([p for p in reversed_ if p < n], dtype=np.int64)


def ramp_up(chunk_rows: Sequence[int], windows: list[NDArray[np.int64]], window_rows: int) -> list[NDArray[np.int64]]:
    """``windows`` with the first one cut, in its chunk order, into windows of at most
    ``window_rows // k`` rows for each k of RAMP, then the rest. A piece holds at least two
    chunks (when there are two): a window of one chunk is read by one thread, leaving the
    other reader idle (benchmarks/README.md, throughput.py, session 8)."""
    if not windows:
        return windows
    first, start, total = windows[0], 0, 0
    pieces: list[NDArray[np.int64]] = []
    for pos, chunk in enumerate(first):
        cap = window_rows // RAMP[len(pieces)] if len(pieces) < len(RAMP) else window_rows
        rows = int(chunk_rows[chunk])
        if pos > start + 1 and total + rows > cap:  # two chunks at least
            pieces.append(first[start:pos])
            start, total = pos, 0
        total += rows
    return pieces + [first[start:]] + windows[1:]


def grouped_order(groups: Sequence[int], seed: int, epoch: int, shuffle: bool = True) -> NDArray[np.int64]:
    """A chunk order that permutes *groups* and keeps each group's chunks together, ascending.

    ``groups`` gives each chunk's group (e.g. the slices of one large Parquet row group,
    which stream efficiently only front to back).
    """
    group_of = np.asarray(groups)
    _, first = np.unique(group_of, return_index=True)
    ids = group_of[np.sort(first)]  # groups in order of first appearance
    members = {g: np.flatnonzero(group_of == g) for g in ids}
    picked = ids[chunk_order(len(ids), seed, epoch, shuffle)]
    return np.concatenate([members[g] for g in picked]).astype(np.int64)


def laned_order(
    chunk_rows: Sequence[int], groups: Sequence[int], seed: int, epoch: int, lanes: int,
    strata: NDArray[np.float64] | None = None,
) -> NDArray[np.int64]:
    """A chunk order that streams ``lanes`` groups side by side, each group's chunks ascending.

    The groups are dealt to the lanes in runs of about equal rows: of a random order, or,
    given ``strata`` (one number per chunk), of the groups ranked by their rows' mean
    stratum, then shuffled within each lane, so the K groups streamed at any time span the
    data's strata (on label-sorted data, both labels at once). The order then takes the
    next chunk of the lane least far through its rows, so the lanes advance together and
    any run of K consecutive chunks holds one chunk of each lane.
    """
    rows = np.asarray(chunk_rows, dtype=np.int64)
    members: dict[int, list[int]] = {}
    for chunk, g in enumerate(groups):
        members.setdefault(int(g), []).append(chunk)
    units = list(members.values())  # in order of first appearance
    sizes = np.array([rows[m].sum() for m in units], dtype=np.float64)
    rng = stream(seed, LANES, epoch)
    if strata is None:
        ranked = rng.permutation(len(units))
    else:
        level = np.array([np.dot(np.asarray(strata)[m], rows[m]) / max(s, 1.0) for m, s in zip(units, sizes)])
        ranked = np.lexsort((rng.random(len(units)), level))
    k = max(1, min(int(lanes), len(units)))
    ends = np.cumsum(sizes[ranked])
    lane_of = np.minimum((k * (ends - sizes[ranked] / 2) // max(ends[-1], 1.0)).astype(np.int64), k - 1)
    queues = []
    for lane in range(k):
        picked = ranked[lane_of == lane]
        if strata is not None:
            picked = picked[rng.permutation(len(picked))]
        if len(picked):
            queues.append([c for u in picked for c in units[u]])
    return _interleave(queues, rows)


def _interleave(queues: list[list[int]], rows: NDArray[np.int64]) -> NDArray[np.int64]:
    """The chunks of every queue, each queue's in its order, the next one always taken from
    the queue least far through its rows (measured at the chunk's middle; ties: lowest)."""
    totals = [max(int(rows[q].sum()), 1) for q in queues]
    done, pos = [0] * len(queues), [0] * len(queues)
    out: list[int] = []
    live = [i for i, q in enumerate(queues) if q]
    while live:
        i = min(live, key=lambda j: ((done[j] + rows[queues[j][pos[j]]] / 2) / totals[j], j))
        chunk = queues[i][pos[i]]
        out.append(chunk)
        done[i] += int(rows[chunk])
        pos[i] += 1
        if pos[i] == len(queues[i]):
            live.remove(i)
    return np.array(out, dtype=np.int64)


def epoch_plan(
    chunk_rows: Sequence[int],
    seed: int,
    epoch: int,
    window_rows: int,
    shuffle: bool = True,
    strata: NDArray[np.float64] | None = None,
    groups: Sequence[int] | None = None,
    lanes: int = 1,
) -> list[NDArray[np.int64]]:
    """The windows (lists of chunk ids, in buffer order) of one epoch; epoch 0's first
    window cut into a ramp (``ramp_up``).

    When ``groups`` ties chunks together (slices of a row group larger than the memory
    budget), each group's chunks are read front to back: ``lanes`` groups at once
    (``laned_order``, stratified across the lanes when ``strata`` is given), or, with one
    lane, whole groups one after the other in a random order (not stratified: a window is
    then slices of one or two groups).
    """
    if groups is not None and len(set(groups)) < len(groups):
        if shuffle and lanes > 1:
            order = laned_order(chunk_rows, groups, seed, epoch, lanes, strata)
        else:
            order = grouped_order(groups, seed, epoch, shuffle)
        windows = group_windows(chunk_rows, order, window_rows)
    elif shuffle and strata is not None:
        windows = stratified_windows(chunk_rows, strata, seed, epoch, window_rows)
    else:
        windows = group_windows(chunk_rows, chunk_order(len(chunk_rows), seed, epoch, shuffle), window_rows)
    return ramp_up(chunk_rows, windows, window_rows) if epoch == 0 else windows
