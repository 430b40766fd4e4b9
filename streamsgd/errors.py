"""Our exceptions.

Each one also subclasses the builtin a caller would naturally catch (zarr's
``NodeNotFoundError(BaseZarrError, FileNotFoundError)``), and carries the process exit
code the CLI uses for it, so the codes stay stable in one place.
"""

from __future__ import annotations


class StreamSGDError(Exception):
    """Base of every error streamsgd raises on purpose; the message is meant for the user."""

    exit_code = 1


class UsageError(StreamSGDError, ValueError):
    """An option or argument is invalid (bad value, bad combination)."""

    exit_code = 2


class DataError(StreamSGDError, ValueError):
    """The data is unusable: missing or non-numeric column, null, NaN/inf, bad labels, empty."""

    exit_code = 3


class SourceError(StreamSGDError, OSError):
    """The data cannot be found or read: missing file, corrupt file, storage failure."""

    exit_code = 4


class DivergenceError(StreamSGDError, ArithmeticError):
    """Training produced a non-finite loss or parameters."""

    exit_code = 5


class ModelFileError(StreamSGDError, OSError):
    """A model file is missing, corrupt, or does not match the data it is applied to."""

    exit_code = 6


#: Exit code of a run stopped by SIGINT / Ctrl-C (shell convention 128 + 2).
EXIT_INTERRUPTED = 130


class LockHeldError(StreamSGDError, BlockingIOError):
    """Another live run holds the lock on the same outputs (model file or checkpoint directory)."""

    exit_code = 7


#: Exit code of a run stopped by SIGTERM, e.g. by cron's or a scheduler's timeout (128 + 15).
EXIT_TERMINATED = 143


class RunStopped(StreamSGDError, InterruptedError):
    """Training stopped on request (SIGINT/SIGTERM) at a batch boundary, after its checkpoint.

    The CLI exits with EXIT_INTERRUPTED or EXIT_TERMINATED, by the signal received.
    """

    exit_code = EXIT_INTERRUPTED
