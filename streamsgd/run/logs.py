"""The run's log on stderr: one line per event, readable text or JSON lines for machines.

A cron job's stderr usually ends up in a file or a log collector. ``--log-format json``
makes every line one JSON object with ``time`` (ISO 8601, UTC, milliseconds) and
``event``, so a collector can index runs without parsing prose; ``text`` is the same
events for a person. ``--quiet`` keeps only warnings and errors, which is what cron mails.

Events: ``start``, ``progress``, ``epoch``, ``checkpoint``, ``warning``, ``error``,
``summary``. Text mode leaves ``progress`` to the progress bar (a terminal) and writes
nothing for it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO, Any

import numpy as np

from ..errors import UsageError

FORMATS = ("text", "json")
KINDS = ("start", "progress", "epoch", "checkpoint", "warning", "error", "summary")
_LOUD = ("warning", "error")  # what --quiet keeps


class RunLog:
    """Writes the events of one run to a stream.

    Parameters
    ----------
    format : {"text", "json"}
        One readable line per event, or one JSON object per line.
    quiet : bool
        Drop everything but warnings and errors.
    stream : file-like
        Where lines go; default ``sys.stderr`` (looked up at each write, so a stream
        swapped in later, e.g. by a test runner, is honoured).
    clock : callable, optional
        Returns the current time as an aware ``datetime``; for tests.
    also : tuple of str
        Kinds of event written even when ``quiet`` (the CLI shows a person at a terminal
        the ``start`` line, which states the columns, and nothing else of a text log).
    """

    def __init__(
        self,
        format: str = "text",
        quiet: bool = False,
        stream: IO[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        also: tuple[str, ...] = (),
    ):
        if format not in FORMATS:
            raise UsageError(f"--log-format: expected one of {', '.join(FORMATS)}; got {format!r}")
        self.format = format
        self.quiet = quiet
        self._also = also
        self._stream = stream
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()  # events may come from reader threads too

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def event(self, kind: str, detail: dict[str, Any] | None = None, **fields: Any) -> None:
        """Log one event of ``kind`` (one of :data:`KINDS`) with its fields.

        Field values may be numbers (NumPy scalars included), strings, lists, dicts or
        None; a non-finite float is written as ``null`` in JSON, since NaN is not JSON.
        ``detail`` holds fields for the JSON form only (lists of records a person reads
        better as the event's message).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown log event {kind!r}; expected one of {', '.join(KINDS)}")
        if self.quiet and kind not in _LOUD and kind not in self._also:
            return
        if self.format == "text" and kind == "progress":
            return
        now = self._clock().astimezone(timezone.utc)
        if self.format == "json":
            fields = {**fields, **(detail or {})}
            record = {"time": _iso(now), "event": kind, **{k: _plain(v) for k, v in fields.items()}}
            line = json.dumps(record, allow_nan=False, default=str)
        else:
            line = _text(now, kind, fields)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def warning(self, message: str, **fields: Any) -> None:
        """Shorthand for ``event("warning", message=message, ...)``."""
        self.event("warning", message=message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        """Shorthand for ``event("error", message=message, ...)``."""
        self.event("error", message=message, **fields)

    @contextmanager
    def forwarding(self, name: str = "streamsgd") -> Iterator[None]:
        """While inside, the library's own warnings (``logging.getLogger(name)``: a sliced file
        that gets one lane, a lost Dask worker) are this log's warning events, in its format,
        instead of Python's bare last-resort line on stderr."""
        handler = _Forward(self)
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)


class _Forward(logging.Handler):
    """A logging handler that writes WARNING and above as a :class:`RunLog`'s warning events."""

    def __init__(self, log: RunLog):
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.warning(record.getMessage())


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _plain(value: Any) -> Any:
    """JSON-able form: NumPy to Python, non-finite floats to None, containers recursively."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _text(now: datetime, kind: str, fields: dict[str, Any]) -> str:
    fields = dict(fields)
    head = f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')} {kind}"
    message = fields.pop("message", None)
    parts = [head + (f": {message}" if message is not None else "")]
    parts += [f"{k}={_short(v)}" for k, v in fields.items()]
    # one event, one line, whatever a message contains
    return "  ".join(parts).replace("\n", " ")


def _short(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"  # nan and inf stay visible here
    value = _plain(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    if isinstance(value, str):
        return json.dumps(value) if (not value or any(c.isspace() for c in value)) else value
    if value is None:
        return "-"
    return json.dumps(value, default=str)


__all__ = ["RunLog", "KINDS", "FORMATS"]
