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
