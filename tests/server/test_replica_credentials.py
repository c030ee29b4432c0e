"""What each replica credential opens, against real frontends: a server that
answers at a replica's address with a certificate the frontend trusts receives
the call token, and that token opens no bundle; a replica host registers with its
version's registration token, which opens nothing else; the replicas the local
manager starts refuse calls without their token.  Real frontends, a real
TLS gRPC server, real containers, real TCP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import numpy as np
import pytest

from clipper_core.replica_client import INPUT_TYPES, encode_batch
from model_containers._proto import container_pb2 as pb
from model_containers._proto import container_pb2_grpc as pb_grpc
from model_containers._proto import health_pb2, health_pb2_grpc
from tests.containers.container_harness import Launcher
from tests.containers.sample_models import SumModel
from tests.containers.tls_certs import CertificateAuthority
from tests.server import models
from tests.server.conftest import start_server
from tests.server.test_remote_replicas import (
    _admin,
    _deploy_remote,
    _predict_when_served,
    _request,
    _write,
)


class _Recorder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Records every call's metadata and implements nothing (UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def service(self, details: Any) -> None:
        self.metadata.append(dict(details.invocation_metadata))


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, str, _Recorder]]:
    """A TLS gRPC server with a certificate of the frontend's replica CA."""
    ca = CertificateAuthority.create(tmp_path / "pki")
    cert, key = ca.issue("impostor")
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[recorder])
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    )
    server.start()
    try:
        yield ca, f"127.0.0.1:{port}", recorder
    finally:
        server.stop(0)


def test_the_token_a_frontend_sends_to_a_replica_address_opens_no_bundle(
    tmp_path: Path, impostor: tuple[CertificateAuthority, str, _Recorder]
) -> None:
    ca, address, recorder = impostor
    r = start_server(tmp_path / "state", replica_tls_ca=str(ca.cert), replica_start_timeout=3.0)
    try:
        payload = cloudpickle.dumps(SumModel())
        remote = _deploy_remote(r, "sum", payload)
        # The frontend is sent to the impostor (a replica host's name now answered
        # by another server with a certificate of the same CA).
        status, _, _ = _request(
            f"{r.server.management_url}/admin/register_replica",
            {"model_name": "sum", "model_version": "1", "address": address, "tls": True},
            token=r.server.config.admin_token,
        )
        assert status == 500  # it is no replica
        harvested = {m["authorization"] for m in recorder.metadata if "authorization" in m}
        assert harvested == {f"Bearer {remote.token}"}
        url = r.server.management_url + remote.bundle_path
        for header in harvested:
            assert _request(url, token=header.removeprefix("Bearer "))[0] == 401
        status, _, body = _request(url, token=remote.bundle_token)
        assert status == 200 and body == payload
    finally:
        r.bg.stop()


def test_a_plaintext_address_registered_by_hand_gets_no_local_token(tmp_path: Path) -> None:
    """The local manager's replicas take the version's local token: a plaintext
    address registered by hand (another server at it) must not be sent it."""
    recorder = _Recorder()
    plain = grpc.server(futures.ThreadPoolExecutor(2), handlers=[recorder])
    port = plain.add_insecure_port("127.0.0.1:0")
    plain.start()
    r = start_server(tmp_path / "state", replica_start_timeout=3.0)
    try:
        conn = r.conn
        conn.register_application("sumapp", "doubles", "-1", 1_000_000)
        conn.deploy_pickled("sum", 1, "doubles", models.make_sum())
        status, _, _ = _request(
            f"{r.server.management_url}/admin/register_replica",
            {"model_name": "sum", "model_version": "1", "address": f"127.0.0.1:{port}"},
            token=r.server.config.admin_token,
        )
        assert status == 500  # it is no replica
        assert recorder.metadata  # it was called
        assert all("authorization" not in m for m in recorder.metadata), recorder.metadata
    finally:
        r.bg.stop()
        plain.stop(0)


def test_a_registration_token_registers_its_version_and_nothing_else(
    tmp_path: Path, launcher: Launcher
) -> None:
    r = start_server(tmp_path / "state", replica_start_timeout=5.0)
    try:
        remote = _deploy_remote(r, "sum", cloudpickle.dumps(SumModel()))
        other = _deploy_remote(r, "other", cloudpickle.dumps(SumModel()))
        reply = _admin(r, "get_replica_token", {"model_name": "sum", "model_version": "1"})
        register_token = reply.get("register_token", "")
        # A replica host with the version's tokens and no management token joins.
        files = {
            name: _write(tmp_path / f"{name}.token", value)
            for name, value in [("bundle", remote.bundle_token), ("register", register_token)]
        }
        container = launcher.start(
            "--model-name", "sum", "--model-version", "1", "--input-type", "doubles",
            "--bundle-url", r.server.management_url + remote.bundle_path,
            "--bundle-token-file", str(files["bundle"]),
            "--register-url", r.server.management_url,
            "--register-token-file", str(files["register"]),
            "--replica-id", "host-a",
            env={"CLIPPER_ADMIN_TOKEN": ""},
        )  # fmt: skip
        assert _predict_when_served(r, "sum", [1.0, 2.0]) == 3.0

        def post(op: str, body: Any, token: str | None = register_token) -> int:
            return _request(f"{r.server.management_url}/admin/{op}", body, token=token)[0]

        join = {"model_name": "sum", "model_version": "1", "address": container.address}
        assert post("register_replica", {**join, "replica_id": "host-b"}) == 200
        # Not another version's replicas, nor those the frontend starts itself, nor
        # anything but register_replica; and neither of the other tokens registers.
        assert post("register_replica", {**join, "model_name": "other"}) == 401
        assert post("register_replica", {**join, "replica_id": "0"}) == 401
        assert post("register_replica", {**join, "replica_id": "c"}, remote.token) == 401
        assert post("register_replica", {**join, "replica_id": "c"}, other.bundle_token) == 401
        assert post("register_replica", {**join, "replica_id": "c"}, None) == 401
        deploy = {"model_name": "evil", "model_version": "1", "input_type": "doubles"}
        assert post("add_model", deploy) == 401
        assert post("get_replica_token", {"model_name": "sum", "model_version": "1"}) == 401
        assert (
            _request(r.server.management_url + remote.bundle_path, token=register_token)[0] == 401
        )
        # A body too large for a registration is refused before it is read.
        assert post("register_replica", {**join, "replica_id": "d", "pad": "x" * 8192}) == 401
        assert sorted(r.server.dataplane.models["sum"].versions["1"].replicas) == [
            "host-a",
            "host-b",
        ]
    finally:
        r.bg.stop()


def test_the_local_managers_replicas_refuse_calls_without_their_token(tmp_path: Path) -> None:
    """Another process of this host reaches a local replica's plaintext port; it
    gets nothing without the token, not even the local socket's (Metadata)."""
    r = start_server(tmp_path / "state")
    try:
        r.conn.register_application("sum", "doubles", "-1", 10**7)
        r.conn._add_model(
            "sum",
            1,
            "doubles",
            container={"kind": "closure", "filename": "sum.pkl"},
            payload=cloudpickle.dumps(models.make_sum()),
        )
        r.conn.link_model_to_app("sum", "sum")
        replica = r.server.dataplane.models["sum"].versions["1"].replicas["0"]
        data, offsets = encode_batch([np.array([1.0, 2.0])], "doubles")
        predict = pb.PredictRequest(
            batch_id=1, input_type=INPUT_TYPES["doubles"], data=data, offsets=offsets
        )
        with grpc.insecure_channel(replica.address) as channel:
            stub = pb_grpc.ModelContainerStub(channel)  # type: ignore[no-untyped-call]
            health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
            calls = [
                (stub.Predict, predict),
                (stub.Metadata, pb.MetadataRequest()),
                (health.Check, health_pb2.HealthCheckRequest()),
            ]
            for metadata in [None, [("authorization", "Bearer " + "0" * 64)]]:
                for method, request in calls:
                    with pytest.raises(grpc.RpcError) as refused:
                        method(request, timeout=10, metadata=metadata)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The frontend holds it: it queries the replica over its local socket.
        assert replica.client.transport == "local"
        assert r.client.predict("sum", {"input": [1.0, 2.5]})[1]["output"] == 3.5
    finally:
        r.bg.stop()
