"""Opt-in, process-wide settings for streaming runs: the allocators and the retry policy.

The library never changes process-global state (DESIGN.md §3): a ``train.fit``, an
estimator's ``partial_fit`` or a worker process leaves the allocators and the environment as
it found them. A program that owns its process, as the ``streamsgd`` command does, opts in
here: :func:`tune_allocator` once at start-up (before pyarrow is imported) and again once the
data's largest chunk is known, then :func:`freeze_imports`; :func:`retry_policy_from_environment`
reads the retry policy's environment variables once, at the door, and the policy then travels
with the storage options.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:  # not at run time: ``streamsgd.sources`` imports pyarrow, which must wait for tune_allocator
    from ..sources.retry import RetryPolicy

#: Arrow reads this variable once, when pyarrow is first imported, to choose its default pool.
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
#: The environment variables of the retry policy (a documented contract of the CLI).
RETRIES_VARIABLE = "STREAMSGD_RETRIES"
RETRY_DELAY_VARIABLE = "STREAMSGD_RETRY_DELAY"

#: Bytes per row of one decoded column: readers decode a numeric column as float64.
DECODED_BYTES_PER_ROW = 8
#: glibc's ``mallopt`` parameter number of the mmap threshold (``M_MMAP_THRESHOLD`` in malloc.h).
M_MMAP_THRESHOLD = -3
#: glibc's initial threshold and the largest it accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD_MIN = 128 << 10
MMAP_THRESHOLD_MAX = 32 << 20
#: Room above a column for Arrow's padding and the allocator's headers.
COLUMN_HEADROOM = 64 << 10
#: glibc's ``mallopt`` parameter number of the cap on malloc arenas (``M_ARENA_MAX``), the
#: variable that sets it instead, and the cap the command uses.
M_ARENA_MAX = -8
ARENA_VARIABLE = "MALLOC_ARENA_MAX"
ARENAS = 2


def tune_allocator(largest_chunk_rows: int | None = None) -> None:
    """Set the process's allocators for streaming windows: Arrow's pool and glibc's mmap threshold.

    It does three things, all process-wide and never undone:

    1. **Arrow allocates through malloc** (``ARROW_DEFAULT_MEMORY_POOL=system``, unless the
       variable is already set: the user's choice wins). Arrow's default pool (mimalloc) keeps
       the decode buffers it frees; malloc hands them back, so peak RSS stays at the memory
       limit plus the process's footprint. Arrow reads the variable when pyarrow is imported:
       call this first, before anything imports pyarrow. If pyarrow is already loaded and the
       variable was unset, the system pool is installed as pyarrow's default instead.
    2. Given ``largest_chunk_rows``, **window buffers are mapped and decoded columns stay on
       the heap**: glibc's mmap threshold is pinned just above one decoded column of that many
       rows (see :func:`map_windows_keep_columns_on_heap`).
    3. At start-up (no ``largest_chunk_rows``), before any reader thread exists, **glibc keeps
       two malloc arenas** (:func:`cap_arenas`).

    Calling it again is harmless; the ``streamsgd`` command calls it at start-up and again
    with the largest chunk of the data it opened. A no-op for (2) where libc is not glibc.
    """
    if ARROW_POOL_VARIABLE not in os.environ:
        os.environ[ARROW_POOL_VARIABLE] = "system"
        if "pyarrow" in sys.modules:  # too late for the variable: set pyarrow's default directly
            import pyarrow

            pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    if largest_chunk_rows is None:
        cap_arenas()
    else:
        map_windows_keep_columns_on_heap(DECODED_BYTES_PER_ROW * largest_chunk_rows)


def freeze_imports() -> None:
    """Move every object alive now (the interpreter's, the imported libraries') out of the
    cyclic garbage collector's sight, for good.

    Each full collection walks every tracked object; a run's windows and chunks make enough
    short-lived containers to trigger several, and the imports' objects, which live as long as
    the process, were most of what they walked (benchmarks/README.md, ctr.py). Call it once
    the data is open, as the ``streamsgd`` command does."""
    import gc

    gc.freeze()


def cap_arenas(arenas: int = ARENAS) -> None:
    """Let glibc keep at most ``arenas`` malloc arenas (unless ``MALLOC_ARENA_MAX`` says).

    Each reader thread otherwise gets an arena of its own (up to 8 per core), and the decoded
    columns it frees stay in it: how much lingers depends on how far the readers run ahead of
    the trainer, so a slower kernel raised peak RSS with the rows read (benchmarks/README.md,
    ctr.py: 10^6 to 3·10^6 rows). Two arenas serve two cores' readers.
    """
    if not sys.platform.startswith("linux") or ARENA_VARIABLE in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc
        pass


def map_windows_keep_columns_on_heap(column_bytes: int) -> None:
    """Pin glibc's mmap threshold just above a decoded column (``column_bytes``): buffers larger
    than that (windows) are mapped, so freeing one returns it to the OS, while decoded columns
    come from the heap and reuse its pages.

    Window and column buffers are large and short-lived. Left alone, glibc raises its
    threshold after the first window is freed and serves the next windows from the heap, where
    freed buffers linger and peak RSS creeps up with the number of windows read. At glibc's
    floor instead, every column a reader decodes would be a fresh mapping whose pages the kernel
    zeroes on first touch: slower, for no memory gain inside the plan's share for readers.
    """
    if not sys.platform.startswith("linux"):
        return
    threshold = min(max(MMAP_THRESHOLD_MIN, column_bytes + COLUMN_HEADROOM), MMAP_THRESHOLD_MAX)
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):  # not glibc
        pass


def retry_policy_from_environment(environ: Mapping[str, str] | None = None) -> RetryPolicy:
    """The retry policy the environment asks for (``STREAMSGD_RETRIES`` tries,
    ``STREAMSGD_RETRY_DELAY`` seconds before the second), else the defaults. Read once, at the
    door; pass the result to :func:`~streamsgd.sources.open_source` (``retry_policy=``)."""
    from ..sources.retry import DELAY, TRIES, RetryPolicy

    environ = os.environ if environ is None else environ
    try:
        tries = int(environ.get(RETRIES_VARIABLE, TRIES))
        delay = float(environ.get(RETRY_DELAY_VARIABLE, DELAY))
    except ValueError as exc:
        raise UsageError(f"{RETRIES_VARIABLE} / {RETRY_DELAY_VARIABLE}: expected numbers ({exc}); "
                         "unset them or give e.g. 5 and 0.2") from None
    return RetryPolicy(max(1, tries), max(0.0, delay))
