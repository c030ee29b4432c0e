"""What each replica credential opens, against real frontends: a server that
answers at a replica's address with a certificate the frontend trusts receives
the call token, and that token opens no bundle.  Real frontends, a real TLS gRPC
server, real TCP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import pytest

from tests.containers.sample_models import SumModel
from tests.containers.tls_certs import CertificateAuthority
from tests.server.conftest import start_server
from tests.server.test_remote_replicas import _deploy_remote, _request


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
