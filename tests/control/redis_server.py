"""A real ``redis-server`` (Debian's package) for the tests: started on a free
loopback port with a temporary folder and no persistence, stopped by its PID.

Tests that need one call :func:`shared_redis` (one server per test session,
stores kept apart by key prefix) or start their own :class:`RedisServer`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from bench.ports import free_port

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = (
    "redis-server is not installed (Debian package redis-server: apt-get install -y redis-server)"
)


def require_redis() -> str:
    """The redis-server binary, or skip the test saying why."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    return REDIS_SERVER


class RedisServer:
    """One redis-server process on 127.0.0.1, its files in a folder of its own."""

    def __init__(self, folder: Path | None = None) -> None:
        binary = require_redis()
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="redis-")) if folder is None else folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = open(self.folder / "redis.log", "wb")  # closed in stop()
        self._binary = binary
        self._spawn()

    def _spawn(self) -> None:
        binary = self._binary
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_ready()

    def pause(self) -> None:
        """Stop the server (an outage) with its data saved; :meth:`resume`
        starts it again on the same port, with that data."""
        if self.process.poll() is None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
                conn.sendall(b"SAVE\r\n")
                assert conn.recv(16).startswith(b"+OK")
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)

    def resume(self) -> None:
        self._spawn()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL) and remove its folder."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


_shared: RedisServer | None = None


def shared_redis() -> RedisServer:
    """The session's one redis-server (started on first use, stopped at exit)."""
    global _shared
    if _shared is None or _shared.process.poll() is not None:
        _shared = RedisServer()
        atexit.register(_shared.stop)
    return _shared


def fresh_prefix() -> str:
    """A key prefix no other store of the session uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"
