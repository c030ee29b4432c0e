"""Helpers for the reliability tests: a real ``clipper serve`` process (ports
chosen by the kernel, reported through ``--ready-file``), raw sockets, and bounded
polling.  Every process started here is reaped by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clipper_core.connection import ClipperConnection, LocalContainerManager

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout``.

    The bound is a guard against a hang, not a performance assertion."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(every)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


class ServeProcess:
    """``python -m clipper_core.cli serve`` in a child process."""

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file = state_dir / f"ready-{time.monotonic_ns()}.json"
        self.log_path = state_dir / "serve.log"
        self.env = {**os.environ, "CLIPPER_GRPC_PORT": "0", **(env or {})}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clipper_core.cli",
                "serve",
                "--query-port",
                "0",
                "--management-port",
                "0",
                "--state-dir",
                str(state_dir),
                "--ready-file",
                str(self.ready_file),
                "--log-level",
                "warning",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        info = wait_for("the server's ready file", self._ready, timeout=60)
        self.pid: int = self.proc.pid
        self.query_port: int = info["query_port"]
        self.management_port: int = info["management_port"]
        self.query_url = f"http://127.0.0.1:{self.query_port}"

    def _ready(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return dict(json.loads(self.ready_file.read_text()))
        except (OSError, ValueError):
            return None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def connection(self, **kw: Any) -> ClipperConnection:
        cm = LocalContainerManager(
            "127.0.0.1", self.query_port, self.management_port, str(self.state_dir), **kw
        )
        conn = ClipperConnection(cm, timeout=120)
        conn.connected = True
        return conn

    def reap(self) -> None:
        """Stop the server if it still runs (SIGTERM, then SIGKILL), by PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def serve_processes() -> Iterator[list[ServeProcess]]:
    """Register ServeProcess objects here to have them reaped after the test."""
    started: list[ServeProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.reap()


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    context: Any = None,
) -> tuple[int, dict[str, str], Any]:
    """One request with the stdlib; returns status, headers (lower-case) and JSON.

    A body goes as ``application/json`` unless ``headers`` name another type."""
    data = None if body is None else json.dumps(body).encode()
    sent = dict(headers or {})
    if data is not None and not any(k.lower() == "content-type" for k in sent):
        sent["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, _json(raw)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, _json(raw)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def raw_request(port: int, data: bytes) -> socket.socket:
    """Open a connection and send ``data``; the caller reads or closes it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def predict_bytes(app: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST /{app}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{extra}\r\n"
    ).encode() + payload
