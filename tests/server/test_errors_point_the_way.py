"""Errors that point the right way (issue 24), on real servers: a CLI that cannot
talk to a TLS server says why and what to pass (not "not running"), and a
memory limit of 512 MB serves a trivial closure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipper_core.deployers import deploy_python_closure
from tests.containers.tls_certs import self_signed
from tests.server import models
from tests.server.conftest import Running, start_server

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _clipper(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    ports = [
        "--query-port",
        str(running.server.query_port),
        "--management-port",
        str(running.server.management_port),
    ]
    env = {**os.environ, "CLIPPER_STATE_DIR": str(running.state_dir), "PYTHONPATH": str(REPO)}
    env.pop("CLIPPER_TLS_CA", None)
    return subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", *ports, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_a_tls_server_without_its_ca_is_named_as_such(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "certs")
    other_ca, _ = self_signed(tmp_path / "other")
    tls = start_server(tmp_path / "tls-state", tls_cert=str(cert), tls_key=str(key))
    try:
        for command in ("status", "stop"):
            res = _clipper(tls, command)
            assert res.returncode == 1, res.stdout
            assert "not running" not in res.stderr, res.stderr
            assert "in TLS (HTTPS): pass its CA certificate with --tls-ca" in res.stderr
        res = _clipper(tls, "--tls-ca", str(other_ca), "status")
        assert res.returncode == 1 and "not running" not in res.stderr, res.stderr
        assert "its certificate is not signed by the CA given" in res.stderr, res.stderr
        res = _clipper(tls, "--tls-ca", str(cert), "status")
        assert res.returncode == 0, res.stderr
        assert "management https://" in res.stdout
    finally:
        tls.bg.stop()
    plain = start_server(tmp_path / "plain-state")
    try:
        res = _clipper(plain, "--tls-ca", str(cert), "status")
        assert res.returncode == 1 and "does not speak TLS" in res.stderr, res.stderr
    finally:
        plain.bg.stop()
    # And with nothing there at all, it is "not running", as before.
    res = _clipper(plain, "status")
    assert res.returncode == 1 and "not running" in res.stderr and "clipper start" in res.stderr


def test_the_cli_words_bad_hosts_broken_pipes_and_tls_urls(tmp_path: Path) -> None:
    # A malformed --host is a usage error, not a traceback.
    for host in ("bad host", "[::1", "a/b"):
        res = subprocess.run(
            [sys.executable, "-m", "clipper_core.cli", "status", "--host", host],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
        assert res.returncode == 2 and "is not a host name or an IP address" in res.stderr
        assert "Traceback" not in res.stderr, res.stderr
    cert, key = self_signed(tmp_path / "certs")
    tls = start_server(tmp_path / "tls-state", tls_cert=str(cert), tls_key=str(key))
    try:
        source = tmp_path / "model.py"
        source.write_text("def predict(xs):\n    return [1.0 for _ in xs]\n")
        res = _clipper(
            tls,
            "--tls-ca",
            str(cert),
            "deploy",
            "one",
            f"{source}:predict",
            "--input-type",
            "doubles",
            "--app",
            "a",
        )
        assert res.returncode == 0, res.stderr
        # The URL printed is the one that answers: https on a TLS server.
        assert f"POST https://127.0.0.1:{tls.server.query_port}/a/predict" in res.stdout
        # A reader that leaves early (`clipper apps --json | head -1`): no traceback.
        env = {**os.environ, "CLIPPER_STATE_DIR": str(tls.state_dir), "PYTHONPATH": str(REPO)}
        read, write = os.pipe()
        os.close(read)
        with subprocess.Popen(
            [sys.executable, "-m", "clipper_core.cli", "--query-port", str(tls.server.query_port),
             "--management-port", str(tls.server.management_port), "--tls-ca", str(cert),
             "apps", "--json"],
            stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        ) as proc:  # fmt: skip
            os.close(write)
            _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "Traceback" not in err, err
    finally:
        tls.bg.stop()


def test_clipper_stop_names_a_tls_mismatch_too(tmp_path: Path) -> None:
    """``clipper stop`` (which pings first) says what ``status`` says: a CA that does
    not sign the server's certificate, or --tls-ca to a plain server, is named as
    such, not "not running"."""
    cert, key = self_signed(tmp_path / "certs")
    other_ca, _ = self_signed(tmp_path / "other")
    tls = start_server(tmp_path / "tls-state", tls_cert=str(cert), tls_key=str(key))
    try:
        res = _clipper(tls, "--tls-ca", str(other_ca), "stop")
        assert res.returncode == 1 and "not running" not in res.stderr, res.stderr
        assert "its certificate is not signed by the CA given" in res.stderr, res.stderr
    finally:
        tls.bg.stop()
    plain = start_server(tmp_path / "plain-state")
    try:
        res = _clipper(plain, "--tls-ca", str(cert), "stop")
        assert res.returncode == 1 and "does not speak TLS" in res.stderr, res.stderr
    finally:
        plain.bg.stop()


def test_a_trivial_closure_serves_under_a_512_mb_memory_limit(running: Running) -> None:
    conn = running.conn
    conn.register_application("small", "doubles", "-1", 20_000_000)
    deploy_python_closure(
        conn, "small", 1, "doubles", models.make_constant("fits"), memory_limit_mb=512
    )
    conn.link_model_to_app("small", "small")
    status, reply = running.client.predict("small", {"input": [1.0]})
    assert status == 200 and reply["output"] == "fits" and reply["default"] is False, reply
    assert conn.get_model_info("small", 1)["memory_limit_mb"] == 512  # type: ignore[index]


def test_a_server_that_does_not_answer_in_time_or_at_all_is_a_clipper_error(
    tmp_path: Path,
) -> None:
    # A listening socket that never answers: the call times out (a raw
    # TimeoutError before); a port with nothing on it: the metrics call says the
    # server is not running (a raw URLError before).
    import socket

    from clipper_core import ClipperConnection, ClipperException, LocalContainerManager
    from clipper_core.errors import ClipperError

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        cm = LocalContainerManager(
            "127.0.0.1",
            closed.getsockname()[1],
            silent.getsockname()[1],
            str(tmp_path / "state"),
            admin_token="a-token-for-this-test-only",
        )
        conn = ClipperConnection(cm, timeout=0.5)
        with pytest.raises(ClipperError, match=r"get_all_models: no answer within 0.5 s"):
            conn.get_all_models()
        with pytest.raises(ClipperException, match=r"not running|refused"):
            conn.get_metrics()
    finally:
        silent.close()
        closed.close()
