"""Metadata, health, registration with the frontend, graceful stop."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from container_harness import Launcher, model_class_args, run_async

from bench.ports import free_port
from clipper_core.replica_client import ReplicaClient


def test_metadata_and_health(containers: Launcher, tmp_path: Any) -> None:
    container = containers.start(
        *model_class_args("DescribedModel", name="tagger", version="7"),
        "--replica-id", "r-3", "--model-path", str(tmp_path),
    )  # fmt: skip

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            assert await client.health() is True
            meta = await client.metadata()
            assert meta.pop("local_socket").endswith("/predict.sock")
            assert len(meta.pop("instance_token")) == 32
            assert meta == {
                "name": "tagger",
                "version": "7",
                "input_type": "strings",
                "output_type": "label",
                "platform": "python_model",
                "replica_id": "r-3",
                "pid": container.pid,
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [
                    {"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1, 3]},
                ],
            }
            # load() ran once, after model_path was set.
            assert await client.predict(["x"], "strings") == [
                {"loads": 1, "model_path": str(tmp_path), "text": "x"}
            ]

    run_async(scenario)


def test_standard_grpc_health_service(containers: Launcher) -> None:
    """Any gRPC health client works: overall ("") and per-service status."""
    import grpc

    from model_containers._proto import health_pb2, health_pb2_grpc

    container = containers.start(*model_class_args("SumModel"))
    with grpc.insecure_channel(container.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "clipper.container.v1.ModelContainer"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_lets_the_batch_in_flight_finish_and_exits_0(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SlowModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            batch = asyncio.ensure_future(client.predict([np.array([0.7])], "doubles", timeout=30))
            await asyncio.sleep(0.3)  # the model is sleeping now
            os.kill(container.pid, signal.SIGTERM)
            assert await batch == ["done"]

    run_async(scenario)
    assert container.wait(15) == 0
    assert "SIGTERM received" in container.stderr()


def test_sigterm_when_idle_exits_0(containers: Launcher) -> None:
    container = containers.start(*model_class_args("EchoModel", input_type="bytes"))
    os.kill(container.pid, signal.SIGTERM)
    assert container.wait(15) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc and tgkill")
def test_sigterm_taken_by_another_thread_still_stops_it(containers: Launcher) -> None:
    """A signal sent to a process may be taken by any thread that does not block it
    (the kernel picks another when the main thread is busy): the main thread, which
    waits for it, must still wake.  Here a gRPC or accept thread takes it, always."""
    container = containers.start(*model_class_args("EchoModel", input_type="bytes"))
    others = [int(t) for t in os.listdir(f"/proc/{container.pid}/task") if int(t) != container.pid]
    assert others, "the container runs threads besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(container.pid, others[0], signal.SIGTERM) == 0, ctypes.get_errno()
    assert container.wait(15) == 0
    assert "SIGTERM received" in container.stderr()


# --- registration ---------------------------------------------------------------


class _Frontend(BaseHTTPRequestHandler):
    """Answers POSTs with the server's configured status and records them."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server: Any = self.server
        server.received.put(
            {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
        )
        status, text = server.answer
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fake_frontend(
    answer: tuple[int, str] = (200, "{}"), port: int = 0
) -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """An HTTP server on 127.0.0.1 that records registration requests."""
    server: Any = HTTPServer(("127.0.0.1", port), _Frontend)
    server.received = queue.Queue()
    server.answer = answer
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_registration_posts_the_replica(containers: Launcher) -> None:
    with fake_frontend() as (url, received):
        container = containers.start(
            *model_class_args("EchoModel", name="echo", version="3", input_type="doubles"),
            "--register-url", url + "/", "--replica-id", "hand-started",
            "--register-token", "s3cret",
        )  # fmt: skip
        request = received.get(timeout=30)
    assert request["path"] == "/admin/register_replica"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["body"] == {
        "model_name": "echo",
        "model_version": "3",
        "input_type": "doubles",
        "address": container.address,
        "replica_id": "hand-started",
        "pid": container.pid,
    }
    # Registered containers keep serving.
    time.sleep(0.2)
    assert container.proc.poll() is None


def test_registration_reads_its_token_from_a_file(containers: Launcher, tmp_path: Path) -> None:
    # A token on the command line is in every user's `ps`: a file keeps it private.
    token_file = tmp_path / "admin.token"
    token_file.write_text("from-a-file\n")
    with fake_frontend() as (url, received):
        containers.start(
            *model_class_args("EchoModel", name="echo", version="4", input_type="doubles"),
            "--register-url", url, "--register-token-file", str(token_file),
        )  # fmt: skip
        request = received.get(timeout=30)
    assert request["headers"]["Authorization"] == "Bearer from-a-file"
    gone = containers.start(
        *model_class_args("EchoModel", name="echo", version="5", input_type="doubles"),
        "--register-url", url, "--register-token-file", str(tmp_path / "missing"),
        wait_ready=False,
    )  # fmt: skip
    assert gone.wait() == 1 and "cannot read the registration token file" in gone.stderr()


def test_registration_rejected_is_fatal(containers: Launcher) -> None:
    with fake_frontend(answer=(400, "unknown model echo:3")) as (url, received):
        container = containers.start(
            *model_class_args("EchoModel", name="echo", version="3", input_type="doubles"),
            "--register-url", url,
        )  # fmt: skip
        received.get(timeout=30)
        assert container.wait(30) == 1
    stderr = container.stderr()
    assert "HTTP 400" in stderr and "unknown model echo:3" in stderr


def test_registration_retries_until_the_frontend_is_up(containers: Launcher) -> None:
    port = free_port()  # bench/ports.py: no other test process is given it
    container = containers.start(
        *model_class_args("EchoModel", input_type="strings"),
        "--register-url", f"http://127.0.0.1:{port}",
    )  # fmt: skip
    time.sleep(0.8)  # a few refused attempts
    assert container.proc.poll() is None
    with fake_frontend(port=port) as (_url, received):
        request = received.get(timeout=30)
    assert request["body"]["address"] == container.address
    assert "retrying" in container.stderr()


def test_registration_gives_up_after_its_timeout(containers: Launcher) -> None:
    port = free_port()  # bench/ports.py: no other test process is given it
    container = containers.start(
        *model_class_args("EchoModel", input_type="strings"),
        "--register-url", f"http://127.0.0.1:{port}", "--register-timeout", "0.5",
    )  # fmt: skip
    assert container.wait(30) == 1
    assert "could not register" in container.stderr()
