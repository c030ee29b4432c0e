"""A real server process with real model containers, shared by the OIP tests.

The server runs in its own process (``tests/oip/server_process.py``), so the test
process holds only clients: tritonclient's HTTP and gRPC clients, and raw HTTP
for requests that tritonclient cannot send malformed.  Every process started is
reaped by PID at the end, model containers included.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.deployers import deploy_python_closure
from tests.oip import oip_models

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def _descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class OipServer:
    """The running server: its ports, a configuration connection, raw HTTP."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    query_port: int
    management_port: int
    grpc_port: int
    grpc_aio_port: int
    conn: ClipperConnection

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.query_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def grpc_url_of(self, transport: str) -> str:
        """The gRPC port served by ``transport``: "h2" (the default) or "aio"."""
        return f"127.0.0.1:{self.grpc_aio_port if transport == 'aio' else self.grpc_port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request to the query port (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.query_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def model_stats(self, name: str) -> dict[str, Any]:
        status, _, body = self.request("GET", "/metrics", headers={"Accept": "application/json"})
        assert status == 200, body
        for m in json.loads(body)["models"]:
            if m["model"] == name:
                return dict(m)
        raise AssertionError(f"no stats for {name}")


def _read_ports(proc: subprocess.Popen[bytes], log: Path) -> dict[str, int]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sel.select(remaining):
            raise TimeoutError(f"the server did not start:\n{log.read_text()[-3000:]}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
        line += chunk
    sel.close()
    return dict(json.loads(line))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    pids = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # Whatever the server did not stop itself (it should have stopped them all).
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)


@pytest.fixture(scope="package")
def oip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    """One server for the package, with these deployments:

    * ``summer``: a Clipper closure over doubles (row sums); app ``alias`` links it.
    * ``shout``: a Clipper closure over strings.
    * ``echo``: every datatype in, the same out (``Echo``); an *app* also named
      ``echo`` links ``summer``: the model wins.
    * ``mixer``: several inputs/outputs, 150 ms per call, fixed batch size 64.
    * app ``slowapp`` (50 ms objective, default -1) links ``sleepy`` (1 s per call).
    * ``scaler``: takes the request parameters (``Scaler``), cache on.
    * app ``orphan`` has no model.
    """
    tmp = tmp_path_factory.mktemp("oip")
    state = tmp / "state"
    log = tmp / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.oip.server_process", str(state)],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
        )
    try:
        ports = _read_ports(proc, log)
        conn = ClipperConnection(
            LocalContainerManager("127.0.0.1", ports["query"], ports["management"], str(state))
        )
        server = OipServer(
            proc, state, ports["query"], ports["management"], ports["grpc"], ports["grpc_aio"], conn
        )
        cloudpickle.register_pickle_by_value(oip_models)
        try:
            deploy_python_closure(conn, "summer", 1, "doubles", oip_models.make_sum())
            deploy_python_closure(conn, "shout", 1, "strings", oip_models.make_shout())
            conn.deploy_model("echo", 1, "bytes", oip_models.Echo())
            conn.deploy_model(
                "mixer",
                1,
                "floats",
                oip_models.SlowMixer(),
                batch_size=64,
                batch_wait_micros=5000,
            )
            deploy_python_closure(conn, "sleepy", 1, "doubles", oip_models.make_sleepy(1.0))
            conn.deploy_model(
                "scaler", 1, "doubles", oip_models.Scaler(), batch_size=64, batch_wait_micros=20_000
            )
        finally:
            cloudpickle.unregister_pickle_by_value(oip_models)
        conn.register_application("alias", "doubles", "-1", 5_000_000)
        conn.link_model_to_app("alias", "summer")
        conn.register_application("echo", "doubles", "-1", 5_000_000)
        conn.link_model_to_app("echo", "summer")
        conn.register_application("slowapp", "doubles", "-1", 50_000)
        conn.link_model_to_app("slowapp", "sleepy")
        conn.register_application("orphan", "doubles", "7", 5_000_000)
        yield server
    finally:
        _stop(proc)
