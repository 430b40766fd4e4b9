"""A real S3-compatible server (moto_server) on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


class S3Server:
    """``moto_server`` on a free loopback port; ``url`` is its endpoint."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        # werkzeug announces the address once it listens: wait for that line, not a sleep
        for line in self.proc.stderr:
            if "Running on" in line:
                return
        raise RuntimeError(f"moto_server exited with {self.proc.wait()} before listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc.stderr.close()
            self.proc = None

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.url, "key": "testing", "secret": "testing"}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)
