"""What a new user meets in the first hour, through the real ``clipper`` command:
each mistake gets one line that says what is wrong and what to do, never a
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.ports import free_port
from tests.server.conftest import Running

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def clipper(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for name in ("CLIPPER_TLS_CA", "CLIPPER_ADMIN_TOKEN", "CLIPPER_GRPC_PORT"):
        if name not in env:
            environ.pop(name, None)
    argv = [sys.executable, "-m", "clipper_core.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env=environ, cwd=cwd)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """The error ``res`` printed, checked to be a single ``clipper: error:`` line."""
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("clipper: error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("which", ["query", "management", "grpc"])
def test_serve_on_a_port_in_use_names_the_port(taken_port: int, which: str, tmp_path: Path) -> None:
    ports = {"query": free_port(), "management": free_port(), "grpc": free_port()}
    ports[which] = taken_port
    res = clipper(
        "--state-dir",
        str(tmp_path / "state"),
        "--query-port",
        str(ports["query"]),
        "--management-port",
        str(ports["management"]),
        "serve",
        "--grpc-port",
        str(ports["grpc"]),
    )
    assert one_line_error(res) == (
        f"clipper: error: cannot listen on 127.0.0.1:{taken_port} ({which} port):"
        " address already in use"
    )


def test_start_on_a_port_in_use_shows_only_this_runs_error(taken_port: int, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    # An earlier run's failure stays in server.log; it is not this run's news.
    (state / "server.log").write_text("Traceback (most recent call last):\nEarlierError: x\n")
    res = clipper(
        "--state-dir",
        str(state),
        "--query-port",
        str(taken_port),
        "--management-port",
        str(free_port()),
        "start",
        "--grpc-port",
        str(free_port()),
    )
    line = one_line_error(res)
    assert line.startswith(
        f"clipper: error: cannot listen on 127.0.0.1:{taken_port} (query port):"
        " address already in use"
    ), line
    assert "EarlierError" not in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (None, "no module named 'nomodule'"),
        ("x = (\n", "syntax error: '(' was never closed"),
        ("import nosuchdependency\n", "failed: No module named 'nosuchdependency'"),
        ("raise RuntimeError('boom at import')\n", "failed: RuntimeError: boom at import"),
    ],
)
def test_deploy_of_code_that_does_not_import_says_why(
    code: str | None, said: str, tmp_path: Path
) -> None:
    source = "nomodule:thing"
    if code is not None:
        (tmp_path / "model.py").write_text(code + "def predict(xs):\n    return xs\n")
        source = "model.py:predict"
    # No server needed: the code is loaded before anything is sent.
    res = clipper(
        "--management-port",
        str(free_port()),
        "deploy",
        "y",
        source,
        "--input-type",
        "doubles",
        cwd=tmp_path,
    )
    line = one_line_error(res)
    assert said in line, line
    assert (source.split(":")[0] if code is None else "model.py") in line, line


def test_deploy_of_a_class_that_needs_arguments_says_why(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(
        "class Scaler:\n    def __init__(self, factor):\n        self.factor = factor\n"
    )
    res = clipper(
        "--management-port",
        str(free_port()),
        "deploy",
        "y",
        "model.py:Scaler",
        "--input-type",
        "doubles",
        cwd=tmp_path,
    )
    line = one_line_error(res)
    assert "model.py:Scaler: making an instance of Scaler failed: TypeError" in line, line
    assert "takes no arguments" in line, line


def test_a_missing_tls_ca_file_is_named(tmp_path: Path) -> None:
    res = clipper("--management-port", str(free_port()), "--tls-ca", "nonexist.pem", "status")
    line = one_line_error(res)
    assert "cannot load the CA file nonexist.pem" in line and "--tls-ca" in line, line


def test_a_refused_token_says_where_it_came_from(running: Running, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ports = ["--query-port", str(running.server.query_port)]
    ports += ["--management-port", str(running.server.management_port)]
    # A relative --state-dir from another folder: no token there.
    line = one_line_error(clipper(*ports, "--state-dir", "state", "status", cwd=elsewhere))
    assert "(401)" in line, line
    assert f"no token was sent: none found in {elsewhere / 'state' / 'admin_token'}" in line
    assert "pass the server's --state-dir" in line, line
    # A folder with another server's token.
    (elsewhere / "other").mkdir()
    (elsewhere / "other" / "admin_token").write_text("not-this-servers-token")
    line = one_line_error(clipper(*ports, "--state-dir", "other", "status", cwd=elsewhere))
    assert f"the token sent was read from {elsewhere / 'other' / 'admin_token'}" in line, line
    # The variable wins over the server's own folder, and is named.
    res = clipper(
        *ports,
        "--state-dir",
        str(running.state_dir),
        "status",
        CLIPPER_ADMIN_TOKEN="not-this-servers-token",
    )
    assert "the token sent came from $CLIPPER_ADMIN_TOKEN" in one_line_error(res)


def test_listings_say_none_and_a_repeated_deploy_says_unchanged(
    running: Running, tmp_path: Path
) -> None:
    server = ["--query-port", str(running.server.query_port)]
    server += ["--management-port", str(running.server.management_port)]
    server += ["--state-dir", str(running.state_dir)]
    for command, said in (("models", "no models"), ("apps", "no applications")):
        res = clipper(*server, command)
        assert res.returncode == 0 and res.stdout.strip() == said, (res.stdout, res.stderr)
    (tmp_path / "scaler.py").write_text("def scale(xs):\n    return [2 * x for x in xs]\n")
    deploy = [*server, "deploy", "scale", "scaler.py:scale", "--input-type", "doubles"]
    first = clipper(*deploy, "--app", "scaler", cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.startswith("deployed scale:1"), first.stderr
    again = clipper(*deploy, "--app", "scaler", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("unchanged"), again.stdout
    assert "linked to app scaler" in again.stdout
