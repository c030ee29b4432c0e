"""How the data plane reaches a replica: the ``ReplicaConnector`` that
``ModelVersion`` uses, and a ``ReplicaClient`` over TLS with per-call metadata."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from container_harness import Launcher, model_class_args, run_async
from sample_models import SumModel
from tls_certs import self_signed

from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.replica_client import ReplicaClient, insecure_connector
from clipper_core.tls import grpc_channel_credentials, grpc_server_credentials
from model_containers._proto import container_pb2_grpc as pb_grpc
from model_containers.health import SERVING, HealthServicer
from model_containers.server import SERVICE_NAME, ContainerInfo, ModelContainerServicer

TOKEN = ("authorization", "Bearer model-m-token")


def test_model_version_connects_replicas_through_its_connector(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))
    calls: list[tuple[str, str, str, str]] = []
    made: list[ReplicaClient] = []

    def recording(address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
        calls.append((address, model, version, replica_id))
        client = insecure_connector(address, model, version, replica_id)
        made.append(client)
        return client

    async def scenario() -> tuple[Any, ReplicaClient, str]:
        mv = ModelVersion(
            "m", "1", "doubles", queue_capacity=16, max_batch_size=4, connector=recording
        )
        try:
            await mv.add_replica("r0", container.address, ready_timeout=30)
            output = await mv.submit(np.arange(4.0), b"k", time.monotonic() + 30)
            client = mv.replicas["r0"].client
            return output, client, client.transport
        finally:
            await mv.close()

    output, client, transport = run_async(scenario)
    assert output == 6.0
    assert calls == [(container.address, "m", "1", "r0")]
    assert made == [client]
    # The default connector keeps today's fast path: Predict over the local socket.
    assert transport == "local"


def test_insecure_connector_builds_todays_client() -> None:
    client = insecure_connector("127.0.0.1:1", "m", "1", "r0")
    assert (client.address, client.model_name, client.model_version, client.replica_id) == (
        "127.0.0.1:1",
        "m",
        "1",
        "r0",
    )
    assert repr(client) == "ReplicaClient(m:1 replica r0 at 127.0.0.1:1)"


class _MetadataRecorder(grpc.ServerInterceptor):  # type: ignore[misc]
    """Records each call's method and the metadata it arrived with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        metadata = {k: v for k, v in handler_call_details.invocation_metadata or ()}
        self.calls.append((handler_call_details.method, metadata))
        return continuation(handler_call_details)


@pytest.fixture
def tls_container(tmp_path: Path) -> Iterator[tuple[str, Path, _MetadataRecorder]]:
    """The container's real servicer (SumModel) behind a TLS-only gRPC server."""
    cert, key = self_signed(tmp_path)
    recorder = _MetadataRecorder()
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor, interceptors=[recorder])
    servicer = ModelContainerServicer(ContainerInfo("m", "1", "doubles"))
    servicer.set_model(SumModel())
    pb_grpc.add_ModelContainerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = HealthServicer()
    health_servicer.set_status(SERVICE_NAME, SERVING)
    health_servicer.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(cert, key))
    server.start()
    try:
        yield f"127.0.0.1:{port}", cert, recorder
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


def test_replica_client_over_tls_sends_its_call_metadata(
    tls_container: tuple[str, Path, _MetadataRecorder],
) -> None:
    address, cert, recorder = tls_container

    async def scenario() -> tuple[list[Any], bool]:
        async with (
            ReplicaClient(
                address,
                model_name="m",
                model_version="1",
                credentials=grpc_channel_credentials(cert),
                call_metadata=[TOKEN],
            ) as client,
            ReplicaClient(address) as plaintext,
        ):
            await client.wait_ready(30)
            outputs = await client.predict([np.arange(3.0), np.ones(2)], "doubles", timeout=30)
            # A plaintext client cannot talk to the TLS port.
            return outputs, await plaintext.health(timeout=10)

    outputs, plaintext_healthy = run_async(scenario)
    assert outputs == [3.0, 2.0]
    assert not plaintext_healthy
    methods = {method for method, _ in recorder.calls}
    assert {
        "/grpc.health.v1.Health/Check",
        f"/{SERVICE_NAME}/Metadata",
        f"/{SERVICE_NAME}/Predict",
    } <= methods
    # Every call that arrived over TLS carried the token.
    assert all(meta.get(TOKEN[0]) == TOKEN[1] for _, meta in recorder.calls)


def test_a_batch_over_the_message_limit_goes_as_several_calls(containers: Launcher) -> None:
    # Ten 8 MB inputs make an 80 MB batch, over the 64 MiB a container takes in
    # one message: it goes as calls of at most BATCH_BYTES each, in order, to the
    # same replica (every input failed with the message-size error before).
    container = containers.start(*model_class_args("SumModel"))
    n, size = 10, 1_000_000

    async def scenario() -> tuple[list[Any], int]:
        mv = ModelVersion(
            "m",
            "1",
            "doubles",
            queue_capacity=64,
            max_batch_size=64,
            batch_size=n,
            controller="fixed",
            batch_wait=2.0,  # the whole batch is taken at once
        )
        try:
            await mv.add_replica("r0", container.address, ready_timeout=30)
            deadline = time.monotonic() + 60
            futures = [mv.submit(np.full(size, float(i)), b"", deadline) for i in range(n)]
            outputs = [await f for f in futures]
            return outputs, mv.replicas["r0"].batches
        finally:
            await mv.close()

    outputs, calls = run_async(scenario)
    assert outputs == [float(i * size) for i in range(n)]
    assert calls == 2  # 6 x 8 MB = 48 MiB at most per call, then the other 4
