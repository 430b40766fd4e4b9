"""Running training metrics and their JSON-lines record."""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any, TextIO


def peak_rss_bytes() -> int:
    """This process's own peak resident set size so far.

    Linux's ``VmHWM`` rather than ``getrusage``: a child started by a big process inherits
    the parent's ``ru_maxrss`` across exec and would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class MetricsLog:
    """Appends one JSON object per line; each write is flushed so a killed run keeps its log."""

    def __init__(self, path: str | None):
        self._file: TextIO | None = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Meter:
    """Loss and row counts over the current logging interval and epoch."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.reset_interval()
        self.reset_epoch()

    def reset_interval(self) -> None:
        self.interval_loss = 0.0
        self.interval_rows = 0
        self.interval_start = time.perf_counter()

    def reset_epoch(self) -> None:
        self.epoch_loss = 0.0
        self.epoch_rows = 0

    def add(self, loss_sum: float, rows: int) -> None:
        self.interval_loss += loss_sum
        self.interval_rows += rows
        self.epoch_loss += loss_sum
        self.epoch_rows += rows

    def interval_record(self) -> dict[str, Any]:
        now = time.perf_counter()
        rows = max(self.interval_rows, 1)
        return {
            "loss": self.interval_loss / rows,
            "rows_per_second": self.interval_rows / max(now - self.interval_start, 1e-9),
            "seconds": now - self.start,
        }
