"""A real S3-compatible server (moto_server) on 127.0.0.1, started and stopped by the tests.

The server's request log (werkzeug writes one line per request to stderr) is read by a
thread for the server's whole life. Left unread, the pipe fills after a few hundred
requests and the server blocks mid-response: that was the "intermittent hang" of Zarr
on s3:// (any client stalls once enough requests were served). The lines read are kept,
so a test can wait for a request to happen (``wait_for``) instead of sleeping.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')


class S3Server:
    """``moto_server`` on a free loopback port (or ``port``); ``url`` is its endpoint."""

    def __init__(self, port: int | None = None) -> None:
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) as logged
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        # werkzeug announces the address once it listens: wait for that line, not a sleep
        for line in self.proc.stderr:
            if "Running on" in line:
                break
        else:
            raise RuntimeError(f"moto_server exited with {self.proc.wait()} before listening")
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _drain(self, stream) -> None:
        for line in stream:
            match = REQUEST.search(line)
            if match:
                with self._changed:
                    self.requests.append((match["method"], match["path"], int(match["status"])))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, str, int]]], bool], timeout: float = 60) -> None:
        """Block until ``predicate(self.requests)`` holds (checked at every logged request)."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.requests), timeout=timeout):
                raise TimeoutError(f"the S3 server did not see the expected requests in {timeout} s")

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash or a network cut would."""
        if self.proc is not None:
            self.proc.kill()
            self._finish()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self._finish()

    def _finish(self) -> None:
        self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=30)
        self.proc.stderr.close()
        self.proc = None

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.url, "key": "testing", "secret": "testing"}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)


class CountingProxy:
    """A TCP relay on a free loopback port that counts the bytes the server sends back.

    Put between a client and the S3 server (``url`` as the endpoint) to measure what a
    read really fetched, headers included, without touching the client.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.served = 0  # bytes from the server to the clients
        self.connections = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.served += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # each socket is closed by the pump that reads it; the other side learns of the end
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            src.close()

    def reset(self) -> int:
        """Bytes served since the last reset (and start counting afresh)."""
        with self._lock:
            served, self.served = self.served, 0
            return served

    def close(self) -> None:
        self._listener.close()
