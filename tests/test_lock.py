"""RunLock with real processes: a live holder refuses a second run, naming itself; a holder
that exits or is SIGKILLed frees the lock; a stale lock of a dead pid is taken over."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pytest

from streamsgd.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, LockHeldError, StreamSGDError, UsageError
from streamsgd.run.lock import RunLock

ROOT = str(pathlib.Path(__file__).resolve().parents[1])

# Takes the lock, says so, then waits for a line on stdin: "release" releases and exits
# normally; "exit" leaves without releasing (os._exit, as a crash would); a SIGKILL needs no
# cooperation. With "child" it first starts a process that inherits the locked descriptor.
HOLDER = """
import os, subprocess, sys
from streamsgd.run.lock import RunLock
lock = RunLock(sys.argv[1], argv=["streamsgd", "fit", "cron-job"])
lock.acquire()
child = None
if sys.argv[2:] == ["child"]:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                             pass_fds=[lock._fd])  # shares our stdin: exits on the test's next line
print("locked", os.getpid(), child.pid if child else 0, flush=True)
command = sys.stdin.readline().strip()
if command == "release":
    lock.release()
    print("released", flush=True)
else:
    os._exit(0)
"""


def spawn(path, *extra) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # blocks until the holder has the lock (or died)
    assert line.startswith("locked"), f"holder failed: {line!r}, exit {proc.wait(timeout=60)}"
    _, pid, child = line.split()
    assert int(pid) == proc.pid
    return proc, int(child)


def finish(proc: subprocess.Popen, command: str) -> str:
    out, _ = proc.communicate(command + "\n", timeout=60)
    return out


@pytest.fixture
def output(tmp_path):
    return str(tmp_path / "model.npz")


def test_exit_codes_are_distinct_and_stable():
    assert LockHeldError.exit_code == 7
    assert issubclass(LockHeldError, StreamSGDError) and issubclass(LockHeldError, OSError)
    assert (EXIT_INTERRUPTED, EXIT_TERMINATED) == (130, 143)
    codes = [c.exit_code for c in StreamSGDError.__subclasses__()]
    assert len(codes) == len(set(codes)), codes


def test_second_process_is_refused_naming_the_first(output):
    proc, _ = spawn(output)
    try:
        with pytest.raises(LockHeldError) as info:
            RunLock(output).acquire()
        message = str(info.value)
        assert "\n" not in message
        assert re.search(rf"pid {proc.pid} on {re.escape(socket.gethostname())}, started \d{{4}}-\d\d-\d\dT", message)
        assert "model.npz" in message and "wait for it" in message
        record = RunLock(output).holder()
        assert record["pid"] == proc.pid and record["argv"] == ["streamsgd", "fit", "cron-job"]
    finally:
        assert finish(proc, "release") == "released\n"
    assert proc.returncode == 0
    assert not os.path.exists(output + ".lock")  # released: the lock file is gone
    with RunLock(output) as lock:
        assert lock.held and lock.took_over is None


def test_lock_freed_when_holder_is_killed(output):
    proc, _ = spawn(output)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.exists(output + ".lock")  # left behind, still naming the dead pid
    with RunLock(output) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == proc.pid
        assert RunLock(output).holder()["pid"] == os.getpid()
    assert not os.path.exists(output + ".lock")


def test_lock_freed_when_holder_exits_without_releasing(output):
    proc, _ = spawn(output)
    finish(proc, "exit")
    assert proc.returncode == 0
    with RunLock(output) as lock:
        assert lock.took_over["pid"] == proc.pid


def test_stale_lock_file_of_a_dead_pid_is_taken_over(output):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    pathlib.Path(output + ".lock").write_text(json.dumps(
        {"pid": gone.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00", "argv": []}))
    with RunLock(output) as lock:
        assert lock.took_over["pid"] == gone.pid
        assert json.loads(pathlib.Path(output + ".lock").read_text())["pid"] == os.getpid()


def test_flock_kept_by_an_orphan_of_a_dead_run_is_taken_over(output):
    """The holder died, but a process it started still has the locked file open: its flock
    outlives the holder, and only the dead pid in the file shows the lock is stale."""
    proc, child = spawn(output, "child")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    try:
        fd = os.open(output + ".lock", os.O_RDONLY)
        try:  # the orphan really does still hold the flock
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with RunLock(output) as lock:
            assert lock.took_over["pid"] == proc.pid
            with pytest.raises(LockHeldError, match=rf"pid {os.getpid()} "):
                RunLock(output).acquire()
    finally:
        # the child reads a line from the holder's stdin pipe, whose write end we still hold
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.stdout.close()
        _wait_gone(child)  # reparented to init, not our child: cannot waitpid it


def test_live_holder_on_another_host_is_not_taken_over(output, tmp_path):
    """A pid on another host cannot be checked: trust its flock."""
    path = output + ".lock"
    pathlib.Path(path).write_text(json.dumps(
        {"pid": 999999, "host": "elsewhere.example", "started": "2024-05-01T12:00:00+00:00", "argv": []}))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockHeldError, match=r"pid 999999 on elsewhere\.example, started 2024-05-01T12:00:00"):
            RunLock(output).acquire()
    finally:
        os.close(fd)


def test_same_process_twice_is_refused_and_release_is_idempotent(output):
    first = RunLock(output)
    first.acquire()
    with pytest.raises(LockHeldError, match=rf"pid {os.getpid()} "):
        RunLock(output).acquire()
    first.release()
    first.release()
    assert not first.held
    with RunLock(output):
        pass


def test_checkpoint_directory_lock_sits_beside_it(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    with RunLock(str(directory) + "/") as lock:
        assert lock.lock_path == str(tmp_path / "ckpt.lock")
        assert os.path.exists(lock.lock_path)


def test_missing_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"no/such.*does not exist; create it first"):
        RunLock(str(tmp_path / "no" / "such" / "model.npz")).acquire()


def _wait_gone(pid: int) -> None:
    """Wait for a process that is not our child to exit: a pidfd turns readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        import select

        select.select([fd], [], [], 60)  # readable when the process exits
    finally:
        os.close(fd)
