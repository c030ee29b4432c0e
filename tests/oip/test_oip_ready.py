"""OIP readiness follows the server's lifecycle: ``GET /v2/health/ready`` and gRPC
``ServerReady`` answer not-ready until the server has restored its state (the
models of its store serve), ready afterwards.

The first test drives ``InferenceService(ready=...)`` behind real HTTP and gRPC
listeners; the second restarts a real server whose stored model's replica cannot
start until the test lets it, and asks while the restore waits for it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from clipper_core._proto import oip_service_pb2 as pb
from clipper_core._proto import oip_service_pb2_grpc as pb_grpc
from clipper_core.admission import ClientLimiter, QueryGate
from clipper_core.auth import ApiKeys
from clipper_core.connection import ClipperConnection
from clipper_core.dataplane import DataPlane
from clipper_core.deployers import deploy_python_closure
from clipper_core.http import HttpServer, Router
from clipper_core.oip import InferenceService
from clipper_core.oip import http as oip_http
from clipper_core.oip.grpc_service import GrpcInferenceServer
from clipper_core.server import BackgroundServer, ClipperServer
from tests.oip import oip_models


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _http_ready(port: int) -> tuple[int, object]:
    # urllib blocks: off the loop that serves the request.
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/v2/health/ready")


async def _grpc_ready(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.ServerReady(pb.ServerReadyRequest(), timeout=30)
        return bool(reply.ready)


@pytest.mark.parametrize("transport", ["h2", "aio"])
def test_service_readiness_follows_the_flag_it_is_given(transport: str) -> None:
    ready = False

    async def scenario() -> None:
        nonlocal ready
        gate = QueryGate(ClientLimiter(), ApiKeys(), 64)
        service = InferenceService(
            DataPlane(cache_bytes=0), gate, default_timeout=1.0, ready=lambda: ready
        )
        router = Router()
        oip_http.install(router, service)
        http_server = HttpServer(router, host="127.0.0.1", port=0)
        grpc_server = GrpcInferenceServer(service, host="127.0.0.1", port=0, transport=transport)
        assert grpc_server.transport == transport
        await http_server.start()
        await grpc_server.start()
        try:
            assert await _http_ready(http_server.port) == (503, {"ready": False})
            assert await _grpc_ready(grpc_server.port) is False
            ready = True
            assert await _http_ready(http_server.port) == (200, {"ready": True})
            assert await _grpc_ready(grpc_server.port) is True
        finally:
            await grpc_server.stop(0)
            await http_server.stop(0)

    asyncio.run(scenario())


def test_server_is_not_ready_until_its_models_are_restored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gate = tmp_path / "replicas-may-start"
    # The interpreter of the model containers: waits for the gate file first, so
    # that a replica (and with it the restore) cannot finish before the test says.
    python = tmp_path / "gated-python"
    python.write_text(
        f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.05; done\nexec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    settings = {"state_dir": str(state), "python": str(python), "grpc_port": 0}

    # A first run stores an app and a model (its replica starts: the gate is open).
    gate.touch()
    first = BackgroundServer(query_port=0, management_port=0, **settings)
    first.start(timeout=120)
    try:
        conn = ClipperConnection.for_server(first.server)
        conn.register_application("summer", "doubles", "-1", 10_000_000)
        deploy_python_closure(conn, "summer", 1, "doubles", oip_models.make_sum())
        conn.link_model_to_app("summer", "summer")
    finally:
        first.stop()
    gate.unlink()

    async def restart() -> None:
        server = ClipperServer(query_port=0, management_port=0, **settings)
        starting = asyncio.create_task(server.start())
        try:
            # The gRPC port is bound last, right before the restore begins.
            while server.grpc_port is None:
                assert not starting.done(), starting
                await asyncio.sleep(0.01)
            grpc_port = server.grpc_port
            assert await _http_ready(server.query_port) == (503, {"ready": False})
            assert await _grpc_ready(grpc_port) is False
            assert not starting.done()  # still restoring: the replica waits for the gate
            gate.touch()
            await starting
            assert await _http_ready(server.query_port) == (200, {"ready": True})
            assert await _grpc_ready(grpc_port) is True
            # Restored: the model serves.
            status, body = await asyncio.to_thread(
                _post, f"{server.query_url}/summer/predict", {"input": [1.0, 2.0]}
            )
            assert status == 200 and body["output"] == 3.0 and not body["default"], body
        finally:
            gate.touch()
            await asyncio.gather(starting, return_exceptions=True)
            await server.stop()

    asyncio.run(restart())


def _post(url: str, body: object) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
