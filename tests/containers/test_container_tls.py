"""A container serving frontends on other hosts: TLS on its gRPC port, its model
version's token on every call, optionally a client certificate; the frontend's
side is ``clipper_core.replica_tls.tls_connector``.  Real processes over TCP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from container_harness import REPO, Container, Launcher, container_env, model_class_args, run_async
from tls_certs import CertificateAuthority

from bench.ports import free_port
from clipper_core.errors import ReplicaUnavailable
from clipper_core.replica_tls import by_address, remote_address, tls_connector

TOKEN = "a3f1c9d2e4b5a6978801"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "pki")


def _token_file(tmp_path: Path, token: str = TOKEN) -> Path:
    path = tmp_path / f"token-{token[:6]}"
    path.write_text(token + "\n")
    return path


def _start_tls(
    containers: Launcher, ca: CertificateAuthority, tmp_path: Path, *extra: str
) -> Container:
    cert, key = ca.issue("replica")
    return containers.start(
        *model_class_args("SumModel"),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--token-file",
        str(_token_file(tmp_path)),
        *extra,
    )


def test_a_tls_replica_answers_only_calls_that_carry_its_token(
    containers: Launcher, ca: CertificateAuthority, tmp_path: Path
) -> None:
    container = _start_tls(containers, ca, tmp_path)
    address = remote_address(container.address)
    with_token = tls_connector(ca.cert, token_for=lambda m, v: TOKEN)
    wrong_token = tls_connector(ca.cert, token_for=lambda m, v: "not-" + TOKEN)
    system_roots = tls_connector(token_for=lambda m, v: TOKEN)

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        good = with_token(address, "m", "1", "r0")
        try:
            await good.wait_ready(30)
            seen["outputs"] = await good.predict([np.arange(3.0), np.ones(2)], "doubles", 30)
            meta = await good.metadata()
            seen["local_socket"], seen["transport"] = meta["local_socket"], good.transport
        finally:
            await good.close()
        for label, connector in (("wrong", wrong_token), ("untrusted", system_roots)):
            client = connector(address, "m", "1", "r0")
            try:
                seen[f"{label}_health"] = await client.health(timeout=10)
                try:
                    await client.metadata(timeout=10)
                    seen[label] = "answered"
                except ReplicaUnavailable as exc:
                    seen[label] = str(exc)
            finally:
                await client.close()
        return seen

    seen = run_async(scenario)
    assert seen["outputs"] == [3.0, 2.0]
    # TLS replicas serve through their TLS port only: no local socket.
    assert seen["local_socket"] == ""
    assert seen["transport"] == "grpc"
    assert seen["wrong_health"] is False
    assert "UNAUTHENTICATED" in str(seen["wrong"])
    # A frontend that does not trust the replica's CA never gets past the handshake.
    assert seen["untrusted_health"] is False
    assert "UNAVAILABLE" in str(seen["untrusted"])


def test_the_server_picks_tls_for_grpcs_addresses_only() -> None:
    from clipper_core.replica_client import ReplicaClient, insecure_connector

    remote = tls_connector(token_for=lambda m, v: f"token-of-{m}:{v}")
    connect = by_address(insecure_connector, remote)
    local = connect("127.0.0.1:7000", "m", "1", "0")
    tls = connect(remote_address("10.0.0.5:7000"), "m", "2", "r")
    assert isinstance(local, ReplicaClient) and isinstance(tls, ReplicaClient)
    assert (local.address, local._credentials, local._call_metadata) == (
        "127.0.0.1:7000",
        None,
        None,
    )
    assert tls.address == "10.0.0.5:7000"
    assert tls._credentials is not None
    assert tls._call_metadata == (("authorization", "Bearer token-of-m:2"),)


def test_a_call_without_any_token_is_refused(
    containers: Launcher, ca: CertificateAuthority, tmp_path: Path
) -> None:
    import grpc

    from clipper_core.tls import grpc_channel_credentials
    from model_containers._proto import container_pb2 as pb
    from model_containers._proto import container_pb2_grpc as pb_grpc
    from model_containers._proto import health_pb2, health_pb2_grpc

    container = _start_tls(containers, ca, tmp_path)
    with grpc.secure_channel(container.address, grpc_channel_credentials(ca.cert)) as channel:
        calls = {
            "health": lambda: health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            ),
            "metadata": lambda: pb_grpc.ModelContainerStub(channel).Metadata(
                pb.MetadataRequest(), timeout=10
            ),
            "predict": lambda: pb_grpc.ModelContainerStub(channel).Predict(
                pb.PredictRequest(batch_id=1), timeout=10
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name


def test_with_a_client_ca_the_replica_requires_a_client_certificate(
    containers: Launcher, ca: CertificateAuthority, tmp_path: Path
) -> None:
    clients = CertificateAuthority.create(tmp_path / "clients", "clipper-test-client-ca")
    client_cert, client_key = clients.issue("frontend", client=True)
    container = _start_tls(containers, ca, tmp_path, "--tls-client-ca", str(clients.cert))
    address = remote_address(container.address)
    with_cert = tls_connector(ca.cert, client_cert, client_key, token_for=lambda m, v: TOKEN)
    without_cert = tls_connector(ca.cert, token_for=lambda m, v: TOKEN)

    async def scenario() -> tuple[list[object], bool]:
        good, bad = with_cert(address, "m", "1", "r0"), without_cert(address, "m", "1", "r0")
        try:
            await good.wait_ready(30)
            outputs = await good.predict([np.arange(4.0)], "doubles", 30)
            return outputs, await bad.health(timeout=10)
        finally:
            await good.close()
            await bad.close()

    outputs, refused_healthy = run_async(scenario)
    assert outputs == [6.0]
    assert refused_healthy is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-cert needs --token-file"),
        (["--token-file", "t"], "--token-file needs --tls-cert"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--bundle-url", "http://127.0.0.1:1/admin/bundle/m/1"], "needs --bundle-token-file"),
    ],
)
def test_remote_options_that_do_not_go_together(args: list[str], message: str) -> None:
    source = [] if "--bundle-url" in args else ["--model-class", "sample_models:SumModel"]
    command = [sys.executable, "-m", "model_containers", "--model-name", "m"]
    proc = subprocess.run(
        [*command, "--model-version", "1", *source, *args],
        cwd=REPO,
        env=container_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_a_missing_token_file_stops_the_container(
    containers: Launcher, ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert, key = ca.issue("replica")
    container = containers.start(
        *model_class_args("SumModel"),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--token-file",
        str(tmp_path / "absent"),
        wait_ready=False,
    )
    assert container.wait(60) == 1
    assert "cannot read the token file" in container.stderr()


def test_the_health_port_answers_probes_in_plaintext_and_nothing_else(
    containers: Launcher, ca: CertificateAuthority, tmp_path: Path
) -> None:

    import grpc

    from model_containers._proto import container_pb2 as pb
    from model_containers._proto import container_pb2_grpc as pb_grpc
    from model_containers._proto import health_pb2, health_pb2_grpc

    port = free_port()  # bench/ports.py: no other test process is given it
    _start_tls(containers, ca, tmp_path, "--health-port", str(port))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="clipper.container.v1.ModelContainer"),
            timeout=10,
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ModelContainerStub(channel).Metadata(pb.MetadataRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
