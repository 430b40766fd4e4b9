"""How ``--memory-limit`` is spent: footers, shuffle windows and decode buffers.

Pure arithmetic on a data set's layout (chunk sizes, decode costs, footer bytes) and the
run's options; the sources themselves are known only through :class:`Layout`. The
trainer's side (re-cutting a Parquet source, the advice when a plan is refused) is
``streamsgd.train.setup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..config import FitConfig
from ..errors import UsageError

#: Parsed format metadata (Parquet footers) the plan does not charge: what the idle footprint
#: of a run (~200 MiB of libraries) absorbs. Below it the plan, hence the model, does not
#: depend on the container: the same rows in Parquet, Zarr or arrays train identically.
METADATA_ALLOWANCE = 16 << 20

#: Share of --memory-limit for the shuffle windows; the rest is for decoding.
WINDOW_SHARE = 2 / 3

#: The most row groups streamed side by side (``plan.shuffle.laned_order``), and the share
#: of the limit their open streams may hold beyond the first.
MAX_LANES = 8
LANE_SHARE = 1 / 3
#: Where LANE_SHARE pays for no second lane, a second one may still hold up to this share:
#: one lane makes windows of slices of one row group, which on sorted data is no shuffle at
#: all. Two lanes of pyarrow's default 1,048,576-row groups (d = 100, 235 MB a stream) at the
#: default 512 MiB peak 803-812 MB against limit + idle = 827 MB (benchmarks/README.md,
#: stream_cost.py; over it only while the decoder's allocations went to mimalloc).
SECOND_LANE_SHARE = 1 / 2

#: Window bytes per row besides the data: the int64 row permutation and the one-byte masks
#: of the label and finite checks made on every window.
ROW_OVERHEAD_BYTES = 8 + 4


class Layout(Protocol):
    """What the memory plan reads of a source: its metadata, never its rows."""

    @property
    def url(self) -> str: ...
    @property
    def chunk_rows(self) -> Sequence[int]: ...
    @property
    def chunk_bytes(self) -> Sequence[int]: ...  # bytes a reader holds while decoding the chunk
    @property
    def metadata_bytes(self) -> int: ...  # format metadata held while reading (Parquet footers)


@dataclass(frozen=True)
class MemoryPlan:
    """How --memory-limit is spent: first the parsed footers the source holds, then of the
    rest two thirds for shuffle windows (up to three alive: one or two trained on, one
    being filled) and one third for the reader threads' decode buffers.

    The window size depends only on the limit, the row width and the largest chunk's
    decode cost, never on the number of readers, so the shuffle plan (and the model) is
    the same whatever ``--readers`` is; fewer reader threads run when the decode share
    cannot pay for them. When even one reader needs more than a third (a streamed row
    group of many columns holds a page and a dictionary per column), the windows give up
    what it needs. Row groups streamed side by side (the layout's ``stream_bytes``: the
    lanes' open streams beyond one per reader) are paid out of the windows' share too.
    """

    window_rows: int
    buffer_bytes: int
    row_bytes: int
    readers: int

    @staticmethod
    def max_chunk_bytes(memory_limit: int) -> int:
        """What one reader may hold decoding a chunk within the limit: larger Parquet row
        groups are read in slices."""
        return int(memory_limit * (1 - WINDOW_SHARE))

    @classmethod
    def solve(cls, layout: Layout, config: FitConfig, row_bytes: int, fixed_bytes: int = 0) -> "MemoryPlan | None":
        """The plan, or None when the limit cannot pay for one reader and the windows;
        ``fixed_bytes`` (the model's state: the hashed table, ``compute.sparse.state_bytes``) is paid first."""
        limit = data_limit(layout, config.memory_limit) - fixed_bytes
        # the streams the plan's lanes hold open besides the readers' own (sources.parquet.cut)
        # come out of the windows: the decode share is what the chunks were cut for
        streams = getattr(layout, "stream_bytes", 0)
        buffer_bytes = max(0, int(limit * WINDOW_SHARE) - streams)
        limit -= streams
        decode = max(layout.chunk_bytes, default=0)
        if decode > limit - buffer_bytes:  # one reader's decode comes before the windows' share
            buffer_bytes = max(0, limit - decode)
        # three windows fit: the one trained on, one read ahead, and the one the prefetcher
        # may start while the trainer waits (see prefetch.ByteBudget)
        window_rows = max(1, buffer_bytes // 3 // row_bytes)
        if config.in_memory:
            window_rows = in_memory_rows(int(sum(layout.chunk_rows)), row_bytes, buffer_bytes)
        readers = min(config.readers, (limit - buffer_bytes) // decode) if decode else config.readers
        if streams and readers >= 1:
            readers = max(readers, lane_readers(layout, config.readers, limit - buffer_bytes - decode))
        if readers < 1 or max(layout.chunk_rows, default=0) > window_rows:
            return None
        return cls(window_rows, buffer_bytes, row_bytes, int(readers))


def lane_readers(layout: Layout, readers: int, spare: int) -> int:
    """Reader threads for a layout streamed in lanes, ``spare`` bytes of the decode share left
    after the first reader's chunk: the lanes' open streams are paid for already (one in that
    chunk, the others in ``stream_bytes``), so a reader beyond the first holds a slice only,
    up to one reader per lane: the lanes' streams, each of a different row group or segment,
    then decode at once. When a lane streams several row groups one after the other, one
    more stream is held while a reader opens a lane's next group as another ends its last."""
    lanes = int(getattr(layout, "chunk_lanes", 1))
    fixed = int(getattr(layout, "stream_fixed", 0))
    decode = max(layout.chunk_bytes, default=0)
    units = len(set(getattr(layout, "chunk_groups", None) or ()))
    handover = fixed if units > lanes else 0
    return min(readers, lanes, 1 + max(0, spare - handover) // max(1, decode - fixed))


def row_bytes(n_features: int, dtype: str, weight_bytes: int) -> int:
    """Window bytes per row: features + target at ``dtype`` (and ``weight_bytes`` of sample
    weight), plus the row permutation and the check masks."""
    return (n_features + 1) * np.dtype(dtype).itemsize + ROW_OVERHEAD_BYTES + weight_bytes


def data_limit(layout: Layout, memory_limit: int) -> int:
    """The limit less the format metadata held while reading (Parquet footers) beyond an
    allowance, so peak memory stays put however many row groups a file has."""
    metadata = max(0, layout.metadata_bytes - METADATA_ALLOWANCE)
    limit = memory_limit - metadata
    if limit < memory_limit / 2:
        raise UsageError(
            f"--memory-limit {memory_limit} bytes is too small for this data: the footers of "
            f"{layout.url} take about {metadata + METADATA_ALLOWANCE} bytes once parsed (one entry per row "
            f"group and column); raise --memory-limit to at least {2 * metadata} bytes or write the data "
            "with fewer, larger row groups"
        )
    return limit


def window_rows_cap(layout: Layout, memory_limit: int, row_bytes: int) -> int:
    """The rows of one window under the limit: the most rows a chunk may hold to be shuffled."""
    return int(data_limit(layout, memory_limit) * WINDOW_SHARE) // 3 // row_bytes


def in_memory_rows(rows: int, row_bytes: int, buffer_bytes: int) -> int:
    """All ``rows`` in one window, read once and kept: refused when they would not fit."""
    import psutil

    need = rows * row_bytes
    available = psutil.virtual_memory().available
    if need > min(buffer_bytes, available):
        raise UsageError(
            f"--in-memory: the data needs {need / 2**20:,.0f} MiB in memory, more than the "
            f"{buffer_bytes / 2**20:,.0f} MiB --memory-limit gives the data ({available / 2**20:,.0f} MiB of RAM are "
            "free); drop --in-memory to stream it, or raise --memory-limit"
        )
    return rows


def lanes(stream_fixed: int, limit: int, groups: int) -> int:
    """How many sliced row groups to stream side by side under ``limit`` (the data's share
    of --memory-limit), each open stream holding ``stream_fixed`` bytes: as many as
    LANE_SHARE of the limit pays for beyond the first (two when SECOND_LANE_SHARE pays for
    the second), at most MAX_LANES and the row groups there are."""
    if stream_fixed <= 0:
        return 1
    k = 1 + int(limit * LANE_SHARE) // stream_fixed
    if k == 1 and stream_fixed <= limit * SECOND_LANE_SHARE:
        k = 2
    return max(1, min(MAX_LANES, groups, k))
