"""The management API against what a web page can make a browser send.

A page the developer opens can POST ``text/plain``, form-encoded or multipart
bodies to 127.0.0.1 without a CORS preflight, and with DNS rebinding it talks to
us under its own host name.  These tests replay those requests, on a server that
has no token at all (the worst case: the operator opted out), and show that
nothing gets deployed; and that a server started without a token makes one,
private to its owner, that the Python API and the CLI pick up.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from clipper_core.config import ServerConfig
from clipper_core.errors import BadInput
from clipper_core.http import Request
from clipper_core.http.same_origin import SameOriginPolicy
from clipper_core.server import BackgroundServer
from tests.reliability.conftest import REPO
from tests.server import models
from tests.server.conftest import Running, start_server


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    """A server whose operator opted out of the token: only the same-origin rules
    stand between a web page and the management API."""
    monkeypatch.delenv("CLIPPER_ADMIN_TOKEN", raising=False)
    r = start_server(tmp_path / "state", insecure_no_admin_token=True)
    try:
        yield r
    finally:
        r.bg.stop()


def _post(
    r: Running, path: str, body: bytes, headers: dict[str, str], port: int | None = None
) -> tuple[int, dict[str, Any]]:
    port = r.server.management_port if port is None else port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # skip_host: the Host header is one of the things under test.
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": f"127.0.0.1:{port}", **headers}
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _closure_model(r: Running) -> dict[str, Any]:
    import base64

    payload = base64.b64encode(cloudpickle.dumps(models.make_constant("pwned"))).decode()
    return {
        "model_name": "evil",
        "model_version": "1",
        "input_type": "doubles",
        "container": {"kind": "closure", "filename": "f.pkl"},
        "payload_b64": payload,
    }


def test_cross_site_requests_deploy_nothing(open_server: Running) -> None:
    r = open_server
    port = r.server.management_port
    app = json.dumps({"name": "evil", "input_type": "doubles"}).encode()
    model = json.dumps(_closure_model(r)).encode()
    form = b"name=evil&input_type=doubles"
    attempts: list[tuple[str, bytes, dict[str, str], int, str]] = [
        # A <form> or fetch(no-cors) with a simple content type: no preflight.
        ("/admin/add_app", app, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("/admin/add_model", model, {"Content-Type": "text/plain;charset=UTF-8"}, 415, ""),
        (
            "/admin/add_app",
            form,
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (
            "/admin/add_app",
            b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n",
            {"Content-Type": "multipart/form-data; boundary=b"},
            415,
            "",
        ),
        ("/admin/add_app", app, {}, 415, "unsupported_media_type"),
        # JSON is possible only after a preflight; refused by origin anyway.
        (
            "/admin/add_model",
            model,
            {"Content-Type": "application/json", "Origin": "http://evil.example"},
            403,
            "cross_origin",
        ),
        ("/admin/add_app", app, {"Content-Type": "application/json", "Origin": "null"}, 403, ""),
        (
            "/admin/add_app",
            app,
            {"Content-Type": "application/json", "Origin": f"http://localhost:{port + 1}"},
            403,
            "cross_origin",
        ),
        (
            "/admin/add_app",
            app,
            {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
            403,
            "cross_origin",
        ),
        # DNS rebinding: the page's own name, resolving to 127.0.0.1.
        (
            "/admin/add_model",
            model,
            {"Content-Type": "application/json", "Host": f"evil.example:{port}"},
            403,
            "forbidden_host",
        ),
        (
            "/admin/add_app",
            app,
            {"Content-Type": "application/json", "Host": f"127.0.0.1.evil.example:{port}"},
            403,
            "forbidden_host",
        ),
        ("/admin/add_app", app, {"Content-Type": "application/json", "Host": ""}, 403, ""),
    ]
    for path, body, headers, status, kind in attempts:
        got, reply = _post(r, path, body, headers)
        assert got == status, (path, headers, reply)
        assert reply["cause"], reply
        if kind:
            assert reply["error"] == kind, (headers, reply)
    # Linking and querying what a page might have deployed: nothing is there.
    link = json.dumps({"app_name": "evil", "model_names": ["evil"]}).encode()
    assert _post(r, "/admin/add_model_links", link, {"Content-Type": "text/plain"})[0] == 415
    assert r.conn.get_all_apps() == []
    assert r.conn.get_all_models() == []
    assert not (r.state_dir / "models" / "evil").exists()

    # What a program (or the page's own origin) sends still works.
    same = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"}
    assert _post(r, "/admin/add_app", app, same)[0] == 200
    localhost = {"Content-Type": "application/json; charset=utf-8", "Host": f"localhost:{port}"}
    assert _post(r, "/admin/get_all_applications", b"{}", localhost) == (200, ["evil"])


def test_a_page_cannot_send_feedback_to_the_query_port(open_server: Running) -> None:
    # A page could make the browser POST a label to /<app>/update (a text/plain
    # body needs no preflight) and steer what an app's selection policy learns.
    r = open_server
    r.conn.deploy_pickled("one", 1, "doubles", models.make_constant(1.0))
    r.conn.register_application("ab", "doubles", "-1", 5_000_000, policy="exp3")
    r.conn.link_model_to_app("ab", "one")
    port = r.server.query_port
    label = json.dumps({"uid": 0, "input": [1.0], "label": 1.0}).encode()
    forged = [
        {"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ]
    for headers in forged:
        got, reply = _post(r, "/ab/update", label, headers, port)
        assert got == 403 and reply["error"] == "cross_origin", (headers, reply)
    # Programs (curl and urllib send a form type by default), and a page of the
    # server's own origin, still send feedback.
    for headers in (
        {"Content-Type": "application/json"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Sec-Fetch-Site": "same-origin"},
    ):
        got, reply = _post(r, "/ab/update", label, headers, port)
        assert got == 200, (headers, reply)
    # Predictions are not state-changing: a form-typed curl still gets one.
    got, reply = _post(r, "/ab/predict", b'{"input": [1.0]}', {"Content-Type": "text/plain"}, port)
    assert got == 200 and reply["output"] == 1.0, reply


def test_opting_out_of_the_token_is_loud(
    open_server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    assert open_server.server.config.admin_token is None
    assert not (open_server.state_dir / "admin_token").exists()
    caplog.set_level(logging.WARNING)
    bg = BackgroundServer(
        query_port=0,
        management_port=0,
        grpc_port=None,
        state_dir=str(open_server.state_dir.parent / "other"),
        insecure_no_admin_token=True,
    )
    bg.start()
    bg.stop()
    assert any("INSECURE" in rec.getMessage() for rec in caplog.records)


def test_a_start_without_token_generates_a_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIPPER_ADMIN_TOKEN", raising=False)
    state = tmp_path / "state"
    r = start_server(state)
    try:
        token_file = state / "admin_token"
        token = r.server.config.admin_token
        assert token and len(token) >= 32
        # Never a leading '-': `clipper --admin-token TOKEN` would read it as an option.
        assert not token.startswith("-")
        assert token_file.read_text().strip() == token
        assert _mode(token_file) == 0o600
        assert _mode(state) == 0o700
        # Without the token: 401, even with a JSON body and our own Host.
        app = json.dumps({"name": "a", "input_type": "doubles"}).encode()
        status, reply = _post(r, "/admin/add_app", app, {"Content-Type": "application/json"})
        assert status == 401 and reply["error"] == "unauthorized"
        # The Python API reads the token from the state folder.
        from clipper_core.deployers import deploy_python_closure

        deploy_python_closure(r.conn, "m", 1, "doubles", models.make_constant("ok"))
        payloads = [p for p in (state / "models" / "m" / "1").iterdir() if p.is_file()]
        assert payloads and all(_mode(p) == 0o600 for p in payloads)
        assert _mode(state / "models") == 0o700
        # So does the CLI.
        res = subprocess.run(
            [
                sys.executable, "-m", "clipper_core.cli",
                "--query-port", str(r.server.query_port),
                "--management-port", str(r.server.management_port),
                "--state-dir", str(state),
                "models", "--json",
            ],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "CLIPPER_ADMIN_TOKEN"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert [m["model_name"] for m in json.loads(res.stdout)] == ["m"]
    finally:
        r.bg.stop()
    # A restart keeps the token.
    r = start_server(state)
    try:
        assert r.server.config.admin_token == token
    finally:
        r.bg.stop()


def test_an_empty_token_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bg = BackgroundServer(
        query_port=0, management_port=0, grpc_port=None, state_dir=str(tmp_path), admin_token=""
    )
    with pytest.raises(BadInput, match="empty"):
        bg.start()
    monkeypatch.setenv("CLIPPER_ADMIN_TOKEN", "  ")
    assert ServerConfig().admin_token == ""
    res = subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", "serve", "--query-port", "0",
         "--management-port", "0", "--grpc-port", "-1", "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert res.returncode != 0 and "empty" in res.stdout + res.stderr


def test_a_configured_host_name_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIPPER_ADMIN_TOKEN", raising=False)
    r = start_server(tmp_path / "s", allowed_hosts=["clipper.internal"])
    try:
        port = r.server.management_port
        headers = {**r.admin_headers(), "Content-Type": "application/json"}
        ok = _post(r, "/admin/get_all_applications", b"{}", {**headers, "Host": "clipper.internal"})
        assert ok == (200, [])
        bad = _post(r, "/admin/get_all_applications", b"{}", {**headers, "Host": f"other:{port}"})
        assert bad[0] == 403 and "clipper.internal" in bad[1]["cause"]
    finally:
        r.bg.stop()


def _request(method: str, headers: dict[str, str]) -> Request:
    return Request(method, "/admin/x", {}, headers, b"")


def test_same_origin_policy_names() -> None:
    loop = SameOriginPolicy("127.0.0.1", lambda: 1338, "http")
    for host in ("127.0.0.1:1338", "localhost", "LOCALHOST.:1338", "[::1]:1338"):
        assert loop.refusal(_request("GET", {"host": host})) is None, host
    for host in ("10.0.0.1:1338", "127.0.0.2", "evil.example", "[::1", "a:b:c"):
        resp = loop.refusal(_request("GET", {"host": host}))
        assert resp is not None and resp.status == 403, host
    # Bound to every address: address literals are fine (DNS cannot rebind them).
    anywhere = SameOriginPolicy("0.0.0.0", lambda: 1338, "http")
    assert anywhere.refusal(_request("GET", {"host": "192.0.2.7:1338"})) is None
    assert anywhere.refusal(_request("GET", {"host": "evil.example:1338"})) is not None
    # A name: only that name (and configured ones).
    named = SameOriginPolicy("clipper.example", lambda: 443, "https", ["alias.example"])
    assert named.refusal(_request("GET", {"host": "alias.example"})) is None
    assert named.refusal(_request("GET", {"host": "localhost"})) is not None
    origin = {"host": "clipper.example", "origin": "https://clipper.example"}
    assert named.refusal(_request("GET", origin)) is None
    origin["origin"] = "http://clipper.example"  # another scheme is another origin
    assert named.refusal(_request("GET", origin)) is not None
