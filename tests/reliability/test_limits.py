"""The input limits, set on ``clipper serve``'s command line: body size (413),
request line + headers (431), JSON nesting (400), each with a JSON error and the
server still serving; and nonsense limits refused at start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.reliability.conftest import ServeProcess, http
from tests.server import models as server_models


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_limits_from_the_command_line(tmp_path: Path) -> None:
    srv = ServeProcess(
        tmp_path / "state",
        "--max-body-size",
        "2048",
        "--max-header-size",
        "4096",
        "--max-json-depth",
        "4",
    )
    try:
        conn = srv.connection()
        conn.register_application("lim", "doubles", "-1", 2_000_000)
        conn.deploy_pickled("limsum", 1, "doubles", server_models.make_sum())
        conn.link_model_to_app("lim", "limsum")
        url = f"{srv.query_url}/lim/predict"

        status, _, body = http("POST", url, {"input": [1.0, 2.0]})
        assert status == 200 and body["output"] == 3.0
        # Depth 4 passes the nesting check (and is then refused as a wrong type).
        status, _, body = http("POST", url, {"input": [[[1.0]]]})
        assert status == 400 and "nests" not in body["cause"], body
        status, _, body = http("POST", url, {"input": [[[[1.0]]]]})
        assert status == 400 and "limit of 4 levels" in body["cause"], body
        status, _, body = http("POST", url, {"input": [1.0] * 500})  # over 2 KiB
        assert status == 413 and "error" in body, body
        head = (
            f"POST /lim/predict HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 5000}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        ).encode()
        answer = _raw(srv.query_port, head)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"error"' in answer
        # Still serving.
        status, _, body = http("POST", url, {"input": [4.0]})
        assert status == 200 and body["output"] == 4.0
    finally:
        srv.reap()


def test_nonsense_limits_are_refused_at_start() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", "serve", "--max-json-depth", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--max-json-depth: must be at least 1, got 0" in proc.stderr
