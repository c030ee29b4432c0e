"""Access control: the management token (every call, 401 JSON without it), the
CLI and ClipperConnection sending it, per-app API keys on the query port (401 /
403), no management route on the query port, and TLS on both HTTP ports, on the
OIP gRPC port (and the gRPC helpers) with a self-signed certificate made here;
a pipeline's API keys as an application's."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.deployers import create_endpoint
from clipper_core.errors import ClipperError
from clipper_core.tls import (
    client_ssl_context,
    grpc_channel_credentials,
    grpc_server_credentials,
)
from tests.containers.tls_certs import self_signed
from tests.reliability.conftest import REPO, http
from tests.server import models as server_models
from tests.server.conftest import Running, start_server

TOKEN = "admin-token-for-tests-0123456789"


@pytest.fixture
def servers() -> Iterator[list[Running]]:
    started: list[Running] = []
    try:
        yield started
    finally:
        for r in started:
            r.bg.stop()


def _conn(r: Running, **kw: object) -> ClipperConnection:
    cm = LocalContainerManager(
        "127.0.0.1",
        r.server.query_port,
        r.server.management_port,
        str(r.state_dir),
        **kw,  # type: ignore[arg-type]
    )
    return ClipperConnection(cm, timeout=60)


def test_management_calls_need_the_token(
    servers: list[Running], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIPPER_ADMIN_TOKEN", raising=False)
    r = start_server(tmp_path / "s", admin_token=TOKEN)
    servers.append(r)
    base = r.server.management_url
    for method, path, body in [
        ("POST", "/admin/get_all_applications", {}),
        ("POST", "/admin/add_app", {"name": "x", "input_type": "doubles"}),
        ("POST", "/admin/add_model", {"model_name": "m", "model_version": "1"}),
        ("POST", "/admin/shutdown", {}),
        ("GET", "/admin/ping", None),
        ("GET", "/no/such/route", None),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, resp_headers, reply = http(method, base + path, body, headers=headers)
            assert status == 401, (path, headers, reply)
            assert reply["error"] == "unauthorized" and reply["cause"]
            assert resp_headers["www-authenticate"].startswith("Bearer")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert http("GET", base + "/admin/ping", headers=good)[0] == 200
    # The routes let through before the token take no body: one was read whole,
    # up to the port's 1 GiB, from anybody who could connect.
    for path in ("/dashboard", "/dashboard/dashboard.js", "/admin/bundle/m/1"):
        status, _, reply = http("GET", base + path, {"pad": "x" * 1000})
        assert status == 413 and reply["error"] == "payload_too_large", (path, reply)
    assert http("GET", base + "/dashboard")[0] == 200

    with pytest.raises(ClipperError, match="401"):
        _conn(r).get_all_apps()
    conn = _conn(r, admin_token=TOKEN)
    conn.register_application("guarded", "doubles", "-1", 100_000)
    assert conn.get_all_apps() == ["guarded"]
    assert _conn(r).ping()  # a 401 still says that a server answers

    # The CLI sends the token from the environment (or --admin-token).
    env = {**os.environ, "CLIPPER_STATE_DIR": str(r.state_dir)}
    ports = [
        "--query-port",
        str(r.server.query_port),
        "--management-port",
        str(r.server.management_port),
    ]
    cmd = [sys.executable, "-m", "clipper_core.cli", *ports, "apps", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert res.returncode == 1 and "401" in res.stderr, res
    env["CLIPPER_ADMIN_TOKEN"] = TOKEN
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert [a["name"] for a in json.loads(res.stdout)] == ["guarded"]


def test_replicas_do_not_inherit_the_management_token(
    servers: list[Running], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server given its token in the environment; the model reports what it sees.
    monkeypatch.setenv("CLIPPER_ADMIN_TOKEN", TOKEN)
    r = start_server(tmp_path / "s")
    servers.append(r)

    def sees_token(xs: list[object]) -> list[float]:
        import os

        return [float("CLIPPER_ADMIN_TOKEN" in os.environ) for _ in xs]

    create_endpoint(_conn(r, admin_token=TOKEN), "peek", "doubles", sees_token)
    status, _, reply = http("POST", r.bg.query_url + "/peek/predict", {"input": [1.0]})
    assert status == 200 and reply["output"] == 0.0, reply


def test_query_port_serves_no_management_route(servers: list[Running], tmp_path: Path) -> None:
    r = start_server(tmp_path / "s")
    servers.append(r)
    assert not [p for _, p in r.server._query_http.router.routes() if p.startswith("/admin")]  # type: ignore[union-attr]
    payload = {"model_name": "evil", "model_version": "1", "input_type": "doubles"}
    for op in ("add_model", "add_app", "set_num_replicas", "shutdown", "ping"):
        status, _, body = http("POST", f"{r.bg.query_url}/admin/{op}", payload)
        assert status in (404, 405), (op, status, body)
    assert r.conn.get_all_models() == []


def test_app_api_keys(servers: list[Running], tmp_path: Path) -> None:
    r = start_server(tmp_path / "s")
    servers.append(r)
    conn = r.conn
    status, _, body = http(
        "POST",
        f"{r.server.management_url}/admin/add_app",
        {
            "name": "keyed",
            "input_type": "doubles",
            "default_output": "0",
            "api_keys": ["keyed-app-key-000001"],
        },
        headers=r.admin_headers(),
    )
    assert status == 200, body
    conn.register_application("second", "doubles", "0", 100_000)
    conn.set_app_api_keys("second", ["second-app-key-00001", "second-app-key-00002"])
    conn.register_application("open", "doubles", "0", 100_000)
    with pytest.raises(ClipperError, match="at least 16"):
        conn.set_app_api_keys("open", ["short"])
    url = f"{r.bg.query_url}/keyed/predict"
    body = {"input": [1.0]}
    assert http("POST", url, body)[0] == 401
    status, headers, reply = http("POST", url, body, headers={"X-Api-Key": "guess-guess-guess"})
    assert status == 401 and reply["error"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, reply = http("POST", url, body, headers={"X-Api-Key": "second-app-key-00002"})
    assert status == 403 and reply["error"] == "forbidden"
    assert http("POST", url, body, headers={"X-Api-Key": "keyed-app-key-000001"})[0] == 200
    auth = {"Authorization": "Bearer keyed-app-key-000001"}
    assert http("POST", url, body, headers=auth)[0] == 200
    assert http("POST", f"{r.bg.query_url}/open/predict", body)[0] == 200
    # Lifting the requirement, and deleting the app, drop the keys.
    conn.set_app_api_keys("second", [])
    assert http("POST", f"{r.bg.query_url}/second/predict", body)[0] == 200
    # Only digests are stored: no key in the state file, none in the app's info.
    raw = (r.state_dir / "state.sqlite3").read_bytes()
    wal = r.state_dir / "state.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"keyed-app-key-000001" not in raw
    assert "keyed-app-key" not in json.dumps(conn.get_app_info("keyed"))


def test_the_client_limit_is_checked_before_the_api_key_on_every_route(
    servers: list[Running], tmp_path: Path
) -> None:
    # One request per 100 s per client: the first is let through (and then fails
    # the key check), every later one is over the limit.
    r = start_server(tmp_path / "s", client_rate_limit=0.01)
    servers.append(r)
    key = "keyed-app-key-000001"
    r.conn.register_application("keyed", "doubles", "-1", 1_000_000)
    r.conn.set_app_api_keys("keyed", [key])
    base = f"{r.bg.query_url}/keyed"
    query = {"input": [1.0]}
    feedback = {"uid": 1, "input": [1.0], "label": 1.0}
    status, _, body = http("POST", f"{base}/predict", query)
    assert status == 401 and body["error"] == "unauthorized", body
    # The same client (its address: it sends no valid key) is now over its limit:
    # 429, not 401, on the query route and on the feedback route alike.
    for route, payload in (("predict", query), ("update", feedback)):
        status, headers, body = http("POST", f"{base}/{route}", payload)
        assert status == 429 and body["error"] == "rate_limited", (route, body)
        assert int(headers["retry-after"]) >= 1
    # A valid key is a client of its own, and passes the key check (to the
    # feedback's own answer: no model is linked, so none can be scored).
    status, _, body = http("POST", f"{base}/update", feedback, headers={"X-Api-Key": key})
    assert status == 503 and body["error"] == "no_model", body
    # The app's error counter saw both refusals of /predict (neither was counted).
    errors = r.conn.get_metrics()["apps"]["keyed"]["errors"]
    assert errors == {"unauthorized": 1, "rate_limited": 1}, errors


def test_a_model_queried_by_its_own_name_over_oip_needs_a_key_of_its_apps(
    servers: list[Running], tmp_path: Path
) -> None:
    r = start_server(tmp_path / "s", grpc_port=0)
    servers.append(r)
    conn = r.conn
    conn.deploy_pickled("adder", 1, "doubles", server_models.make_sum())
    conn.register_application("front", "doubles", "-1", 5_000_000)
    conn.link_model_to_app("front", "adder")
    url = f"{r.bg.query_url}/v2/models/adder/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
    # No application requires a key: the model answers anyone.
    status, _, reply = http("POST", url, body)
    assert status == 200 and reply["outputs"][0]["data"] == [3.0], reply
    key = "front-app-key-000001"
    conn.set_app_api_keys("front", [key])
    conn.register_application("other", "doubles", "-1", 5_000_000)
    conn.set_app_api_keys("other", ["other-app-key-000001"])
    # OIP words its errors in one "error" string.
    status, _, reply = http("POST", url, body)
    assert status == 401 and "application 'front' requires an API key" in reply["error"], reply
    status, _, reply = http("POST", url, body, headers={"X-Api-Key": "other-app-key-000001"})
    assert status == 403, reply
    assert http("POST", url, body, headers={"X-Api-Key": key})[0] == 200
    # Its description (input and output specs) is behind the same keys, by the
    # model's name and by the app's, over HTTP and gRPC.
    for name in ("adder", "front"):
        meta_url = f"{r.bg.query_url}/v2/models/{name}"
        assert http("GET", meta_url)[0] == 401
        status, _, meta = http("GET", meta_url, headers={"X-Api-Key": key})
        assert status == 200 and meta["inputs"], meta
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{r.server.grpc_port}")
    try:
        with pytest.raises(InferenceServerException, match="requires an API key"):
            grpc_client.get_model_metadata("adder")
        described = grpc_client.get_model_metadata("adder", headers={"x-api-key": key})
        assert described.inputs
    finally:
        grpc_client.close()
    # A key on an application the model is not linked to guards nothing of it.
    conn.set_app_api_keys("front", [])
    assert http("POST", url, body)[0] == 200


def test_pipeline_api_keys(servers: list[Running], tmp_path: Path) -> None:
    r = start_server(tmp_path / "s")
    servers.append(r)
    conn = r.conn
    conn.deploy_pickled("adder", 1, "doubles", server_models.make_sum())
    key, other = "chain-pipe-key-000001", "chain-pipe-key-000002"
    stages = [{"name": "add", "model": "adder"}]
    conn.register_pipeline("chain", stages, [], 5_000_000, "-1", api_keys=[key])
    url, body = f"{r.bg.query_url}/chain/predict", {"input": [1.0, 2.0]}
    status, _, reply = http("POST", url, body)
    assert status == 401 and "pipeline 'chain' requires an API key" in reply["cause"], reply
    status, _, reply = http("POST", url, body, headers={"X-Api-Key": key})
    assert status == 200 and reply["output"] == 3.0, reply
    # Over OIP too, by the pipeline's name and by its stage model's own name.
    tensor = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    for name in ("chain", "adder"):
        oip = f"{r.bg.query_url}/v2/models/{name}/infer"
        assert http("POST", oip, tensor)[0] == 401, name
        assert http("POST", oip, tensor, headers={"X-Api-Key": key})[0] == 200, name
    # Replaced, over the management API; a short key is refused (400).
    admin = f"{r.server.management_url}/admin/set_pipeline_api_keys"
    status, _, reply = http(
        "POST", admin, {"name": "chain", "api_keys": ["short"]}, headers=r.admin_headers()
    )
    assert status == 400 and "at least 16" in reply["cause"], reply
    conn.set_pipeline_api_keys("chain", [other])
    assert http("POST", url, body, headers={"X-Api-Key": key})[0] == 401
    assert http("POST", url, body, headers={"X-Api-Key": other})[0] == 200
    with pytest.raises(ClipperError, match="pipeline nope not found"):
        conn.set_pipeline_api_keys("nope", [key])
    # An update of the graph keeps the keys, or replaces them given api_keys (the
    # Python API took no api_keys, though the guide says "same arguments").
    conn.update_pipeline("chain", stages, [], 4_000_000, "-2")
    assert http("POST", url, body)[0] == 401
    conn.update_pipeline("chain", stages, [], 4_000_000, "-2", api_keys=[key])
    assert http("POST", url, body, headers={"X-Api-Key": other})[0] == 401
    conn.update_pipeline("chain", stages, [], 4_000_000, "-2", api_keys=[other])
    # They survive a restart, and are stored as digests only.
    r.bg.stop()
    r = start_server(tmp_path / "s")
    servers.append(r)
    url = f"{r.bg.query_url}/chain/predict"
    assert http("POST", url, body)[0] == 401
    assert http("POST", url, body, headers={"X-Api-Key": other})[0] == 200
    raw = (r.state_dir / "state.sqlite3").read_bytes()
    wal = r.state_dir / "state.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert other.encode() not in raw
    # Lifted by an empty list; gone with the pipeline (an app of that name is open).
    r.conn.set_pipeline_api_keys("chain", [])
    assert http("POST", url, body)[0] == 200
    r.conn.set_pipeline_api_keys("chain", [key])
    r.conn.delete_pipeline("chain")
    r.conn.register_application("chain", "doubles", "-1", 5_000_000)
    r.conn.link_model_to_app("chain", "adder")
    status, _, reply = http("POST", url, body)
    assert status == 200 and reply["output"] == 3.0, reply


def test_tls_on_both_http_ports(servers: list[Running], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    r = start_server(tmp_path / "s", tls_cert=str(cert), tls_key=str(key))
    servers.append(r)
    assert r.server.query_url.startswith("https://")
    conn = ClipperConnection.for_server(r.server)  # https, trusting the certificate
    conn.register_application("secure", "doubles", "-1", 2_000_000)
    conn.deploy_pickled("secure", 1, "doubles", server_models.make_sum())
    conn.link_model_to_app("secure", "secure")
    ctx = client_ssl_context(cert)
    status, _, body = http(
        "POST", f"{r.server.query_url}/secure/predict", {"input": [1.0, 2.0]}, context=ctx
    )
    assert status == 200 and body["output"] == 3.0
    assert conn.inspect_instance()["apps"] == ["secure"]
    # Plain HTTP to the TLS port gets no HTTP answer; a client that does not
    # trust the certificate refuses it.
    with socket.create_connection(("127.0.0.1", r.server.query_port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = s.recv(100)
        except OSError:
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200")
    with pytest.raises(OSError):
        http("GET", f"{r.server.query_url}/health", context=ssl.create_default_context())


def test_grpc_tls_helpers(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from model_containers._proto import health_pb2, health_pb2_grpc
    from model_containers.health import SERVING, HealthServicer

    cert, key = self_signed(tmp_path)
    health = HealthServicer()
    health.set_status("", SERVING)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(cert, key))
    server.start()

    async def body() -> str:
        creds = grpc_channel_credentials(cert)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    try:
        assert asyncio.run(body()) == "SERVING"
    finally:
        server.stop(None).wait()


def test_tls_on_the_oip_grpc_port(servers: list[Running], tmp_path: Path) -> None:
    import grpc
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    cert, key = self_signed(tmp_path)
    r = start_server(tmp_path / "s", tls_cert=str(cert), tls_key=str(key), grpc_port=0)
    servers.append(r)
    port = r.server.grpc_port
    assert port
    target = f"127.0.0.1:{port}"
    conn = ClipperConnection.for_server(r.server)
    conn.deploy_pickled("gsum", 1, "doubles", server_models.make_sum())

    # tritonclient over TLS, trusting the self-signed certificate.
    client = grpcclient.InferenceServerClient(target, ssl=True, root_certificates=str(cert))
    try:
        assert client.is_server_live(client_timeout=30)
        inp = grpcclient.InferInput("input", [2, 2], "FP64")
        inp.set_data_from_numpy(np.array([[1.0, 2.0], [3.0, 4.5]]))
        res = client.infer("gsum", [inp], client_timeout=30)
        np.testing.assert_array_equal(res.as_numpy("output"), [3.0, 7.5])
        assert res.get_response().model_name == "gsum"
    finally:
        client.close()

    # The raw stubs over grpc.secure_channel with the clipper_core.tls helper.
    req = service_pb2.ModelInferRequest(model_name="gsum")
    req.inputs.add(name="input", datatype="FP64", shape=[1, 3])
    req.raw_input_contents.append(np.array([1.0, 2.0, 3.0]).tobytes())
    with grpc.secure_channel(target, grpc_channel_credentials(cert)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=30).live
        reply = stub.ModelInfer(req, timeout=30)
        assert np.frombuffer(reply.raw_output_contents[0], dtype="<f8").tolist() == [6.0]

    # Plaintext gRPC to the TLS port is not answered: the handshake fails.
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, msg in [
            (stub.ServerLive, service_pb2.ServerLiveRequest()),
            (stub.ModelInfer, req),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(msg, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    # At the byte level: an HTTP/2 client preface in plaintext gets no HTTP/2
    # frame back (a server speaking h2c would answer with its SETTINGS frame),
    # only the end of the connection (or a TLS alert record, 0x15).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        reply = b""
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except OSError:
            pass
    assert not reply or reply[0] == 0x15, reply
    # A TLS client that does not trust the certificate refuses the port.
    with grpc.secure_channel(target, grpc.ssl_channel_credentials()) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    untrusting = grpcclient.InferenceServerClient(target, ssl=True)
    try:
        with pytest.raises(InferenceServerException) as err:
            untrusting.is_server_live(client_timeout=10)
        assert err.value.status() == "StatusCode.UNAVAILABLE", err.value
    finally:
        untrusting.close()
    # The server still serves TLS clients.
    with grpc.secure_channel(target, grpc_channel_credentials(cert)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(req, timeout=30)
        assert np.frombuffer(reply.raw_output_contents[0], dtype="<f8").tolist() == [6.0]
