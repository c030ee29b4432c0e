"""No hidden ports: every listener configurable wherever the others are, 0
ephemeral everywhere, port 0 means a temporary state; and the blocking API
refuses to run on an event loop's thread."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.ports import free_port
from clipper_core.config import DEFAULT_GRPC_PORT, ServerConfig
from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.errors import ClipperError
from clipper_core.server import BackgroundServer, ClipperServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_port_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user's shell has: neither variable (the test suite sets one)."""
    monkeypatch.delenv("CLIPPER_GRPC_PORT", raising=False)
    monkeypatch.delenv("CLIPPER_STATE_DIR", raising=False)


def test_grpc_port_defaults(no_port_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerConfig().resolved_grpc_port() == DEFAULT_GRPC_PORT == 8001
    assert ServerConfig(query_port=0).resolved_grpc_port() == 0
    assert ServerConfig(query_port=0, grpc_port=9123).resolved_grpc_port() == 9123
    assert ServerConfig(grpc_port=None).resolved_grpc_port() is None
    monkeypatch.setenv("CLIPPER_GRPC_PORT", "off")
    assert ServerConfig(query_port=0).resolved_grpc_port() is None
    monkeypatch.setenv("CLIPPER_GRPC_PORT", "7001")
    assert ServerConfig(query_port=0).resolved_grpc_port() == 7001


def test_port_zero_means_ephemeral_grpc_and_a_temporary_state(no_port_env: None) -> None:
    with BackgroundServer(query_port=0, management_port=0) as bg:
        server = bg.server
        state = Path(server.config.state_dir)
        assert state.is_dir() and state.parent == Path(tempfile.gettempdir())
        assert server.grpc_port not in (None, DEFAULT_GRPC_PORT)
        conn = ClipperConnection.for_server(server)
        conn.register_application("a", "doubles", "-1", 100_000)
        assert (state / "state.sqlite3").exists()
    assert not state.exists()  # removed at stop: a second run starts from nothing
    with BackgroundServer(query_port=0, management_port=0) as bg:
        assert ClipperConnection.for_server(bg.server).get_all_apps() == []


def test_a_named_state_folder_stays(no_port_env: None, tmp_path: Path) -> None:
    with BackgroundServer(query_port=0, management_port=0, state_dir=str(tmp_path / "s")) as bg:
        ClipperConnection.for_server(bg.server).register_application("a", "doubles", "-1", 1000)
    with BackgroundServer(query_port=0, management_port=0, state_dir=str(tmp_path / "s")) as bg:
        assert ClipperConnection.for_server(bg.server).get_all_apps() == ["a"]


def test_start_clipper_on_port_zero(no_port_env: None) -> None:
    cm = LocalContainerManager(query_port=0, management_port=0, grpc_port=-1)
    assert cm.temporary_state
    conn = ClipperConnection(cm)
    try:
        said = conn.start_clipper()
        assert said.startswith("started:") and "OIP gRPC none" in said
        assert cm.query_port != 0 and cm.management_port != 0 and cm.grpc_port is None
        conn.register_application("a", "doubles", "-1", 100_000)
        assert conn.get_all_apps() == ["a"]
    finally:
        conn.stop_all()
    assert not Path(cm.state_dir).exists()


def test_a_blocking_call_on_the_servers_loop_raises_naming_the_fix(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with ClipperServer(
            query_port=0, management_port=0, state_dir=str(tmp_path / "s")
        ) as server:
            conn = ClipperConnection.for_server(server)
            with pytest.raises(ClipperError) as info:
                conn.get_all_apps()
            assert "ClipperConnection.get_all_apps blocks" in str(info.value)
            assert "await asyncio.to_thread(conn.get_all_apps" in str(info.value)
            with pytest.raises(ClipperError, match=r"ClipperConnection\.register_application"):
                conn.register_application("a", "doubles", "-1", 1000)
            await asyncio.to_thread(conn.register_application, "a", "doubles", "-1", 1000)
            return list(await asyncio.to_thread(conn.get_all_apps))

    assert asyncio.run(asyncio.wait_for(main(), 120)) == ["a"]


def _clipper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO,
    )


def test_clipper_start_takes_the_options_of_serve(no_port_env: None, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    qp, mp, gp = free_port(), free_port(), free_port()
    ready = tmp_path / "ready.json"
    state = ["--state-dir", str(tmp_path / "state")]
    ports = ["--query-port", str(qp), "--management-port", str(mp)]
    res = _clipper(
        *state,
        *ports,
        "start",
        "--grpc-port",
        str(gp),
        "--max-json-depth",
        "3",
        "--ready-file",
        str(ready),
        env=env,
    )
    try:
        assert res.returncode == 0, res.stderr
        assert f"OIP gRPC port {gp}" in res.stdout
        assert json.loads(ready.read_text())["grpc_port"] == gp
        # The server got --max-json-depth: a deeper body is refused.
        cm = LocalContainerManager(query_port=qp, management_port=mp, state_dir=state[1])
        conn = ClipperConnection(cm)
        conn.register_application("deep", "strings", "-1", 100_000)
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{qp}/deep/predict", b'{"input": [[[["x"]]]]}'
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 400 and "nest" in info.value.read().decode()
        again = _clipper(*state, *ports, "start", env=env)  # already running: fine
        assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    finally:
        _clipper(*state, *ports, "stop", env=env)


def test_demo_ports(no_port_env: None) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "clipper_core.demo", "--once", "--query-port", "0",
         "--management-port", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    found = re.search(r"OIP gRPC port (\d+)", res.stdout)
    assert found is not None and int(found.group(1)) != DEFAULT_GRPC_PORT, res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "clipper_core.demo", "--once", "--query-port", "0",
         "--management-port", "0", "--grpc-port", "-1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0 and "OIP gRPC port none" in res.stdout, res.stderr
