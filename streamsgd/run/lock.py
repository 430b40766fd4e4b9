"""One run per output: a lock file beside the model file or checkpoint directory.

Two cron runs that overlap (the second starts while the first is still training) must not
both write ``model.npz`` or the same checkpoints. :class:`RunLock` guards an output path
with a lock file ``<path>.lock`` that carries two things:

- an OS lock (``fcntl.flock``) on the open file. The kernel drops it when the holder dies
  for any reason, SIGKILL included, so a dead run never blocks the next one;
- JSON naming the holder: ``{"pid", "host", "started", "argv"}``, so the refusal says who
  holds the lock and since when.

If the flock is held but the file names a pid on this host that no longer exists (the run
died and a process it started still has the file open), the lock is stale: the file is
replaced by a fresh one and taken over. The lock file is removed on release.

This is a local-filesystem lock (it relies on ``flock``); for outputs on an object store,
guard a local path instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from typing import Any, Sequence

from ..errors import LockHeldError, UsageError


class RunLock:
    """Exclusive right to write ``path`` (a model file or a checkpoint directory).

    Parameters
    ----------
    path : str
        The output to guard; the lock file is ``<path>.lock`` beside it.
    argv : sequence of str, optional
        The command line recorded in the lock file; default ``sys.argv``.

    Attributes
    ----------
    lock_path : str
        The lock file.
    took_over : dict or None
        After :meth:`acquire`, the record of a dead holder whose lock was taken over (for
        the caller to log), else None.

    Examples
    --------
    >>> with RunLock("model.npz"):          # doctest: +SKIP
    ...     train_and_save("model.npz")
    """

    def __init__(self, path: str, argv: Sequence[str] | None = None):
        self.path = str(path)
        self.lock_path = self.path.rstrip("/" + os.sep) + ".lock"
        self.argv = list(sys.argv if argv is None else argv)
        self.took_over: dict[str, Any] | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockHeldError` naming the live holder.

        Never waits: a second run is refused at once, so a cron job that overlaps the
        previous one fails fast with a clear message instead of piling up.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_path}: this RunLock is already held")
        self.took_over = None
        # a few rounds at most: each retry means the file was replaced under us meanwhile
        for _ in range(20):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                if not _is_dead_here(holder):
                    os.close(fd)
                    raise LockHeldError(self._held_message(holder)) from None
                # flock held by a leftover of a dead run: replace the file, if it is still
                # the one we read (another contender may have replaced it already)
                if _same_file(fd, self.lock_path):
                    self.took_over = holder
                    try:
                        os.unlink(self.lock_path)
                    except FileNotFoundError:
                        pass
                os.close(fd)
                continue
            if not _same_file(fd, self.lock_path):
                os.close(fd)  # locked a file its holder unlinked on release: try the new one
                continue
            previous = _read(fd)
            if previous and previous.get("pid") != os.getpid() and self.took_over is None:
                self.took_over = previous  # a holder that died without releasing
            self._write(fd)
            self._fd = fd
            return
        raise LockHeldError(
            f"{self.lock_path}: the lock file keeps changing under this run; another run is "
            "starting on the same outputs, try again when it has started or choose another output"
        )

    def release(self) -> None:
        """Give the lock up and remove the lock file; does nothing if not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # unlink while still holding the flock, so no one can lock the doomed file
            # and think it current (they re-check the path after locking)
            if _same_file(fd, self.lock_path):
                os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # closing drops the flock

    def holder(self) -> dict[str, Any] | None:
        """The record in the lock file now (any holder's), or None if absent or unreadable."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return _read(fd)
        finally:
            os.close(fd)

    def _open(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise UsageError(
                f"{self.path}: the directory {os.path.dirname(os.path.abspath(self.lock_path))} "
                "does not exist; create it first"
            ) from None
        except OSError as exc:
            raise UsageError(
                f"{self.path}: cannot create the lock file {self.lock_path} ({exc.strerror}); "
                "check the directory's permissions"
            ) from None

    def _write(self, fd: int) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": self.argv,
        }
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            who = "another run (it has not written its details yet)"
        else:
            who = (f"another run (pid {holder.get('pid')} on {holder.get('host')}, "
                   f"started {holder.get('started')})")
        return (
            f"{self.path}: {who} is writing these outputs; wait for it to finish or stop it, "
            f"or choose another output (lock file {self.lock_path})"
        )


def _read(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data.decode())
    except (OSError, ValueError):
        return None  # empty (being written) or damaged: holder unknown
    return record if isinstance(record, dict) else None


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _is_dead_here(holder: dict[str, Any] | None) -> bool:
    """Whether ``holder`` names a process on this host that no longer exists."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


__all__ = ["RunLock"]
