"""Remote replicas: a container started by hand, as on another host, that fetches
its model from the frontend's management API (no shared disk), serves over TLS
with its model version's token, and registers; frontends without the token or
the CA are refused, as are bundle fetches without the token or with a wrong
digest.  Real frontends, real container processes, real TCP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from clipper_core.model_bundle import TAR, pack_directory
from tests.containers.container_harness import Container, Launcher
from tests.containers.sample_models import SumModel
from tests.containers.tls_certs import CertificateAuthority
from tests.server.conftest import Running, start_server

SERVE_TIMEOUT_S = 60.0


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "pki")


def _request(
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _admin(r: Running, op: str, body: Any, context: ssl.SSLContext | None = None) -> Any:
    status, _, data = _request(
        f"{r.server.management_url}/admin/{op}",
        body,
        token=r.server.config.admin_token,
        context=context,
    )
    assert status == 200, (op, status, data)
    return json.loads(data)


@dataclass(frozen=True)
class Remote:
    """What ``get_replica_token`` answers for a version."""

    token: str  # the call token: the frontend sends it, the replica checks it
    bundle_token: str  # the replica's host fetches the bundle with it
    bundle_path: str


def _deploy_remote(
    r: Running,
    name: str,
    payload: bytes,
    *,
    folder: bool = False,
    context: ssl.SSLContext | None = None,
) -> Remote:
    """Deploy version 1 of ``name`` for replicas started by hand, link it to an
    app of the same name, and return its tokens and bundle path."""
    container = {"kind": "external", "filename": "model.tar" if folder else "closure.pkl"}
    if folder:
        container["archive"] = TAR
    _admin(
        r,
        "add_model",
        {
            "model_name": name,
            "model_version": "1",
            "input_type": "doubles",
            "container": container,
            "payload_b64": base64.b64encode(payload).decode(),
        },
        context,
    )
    _admin(
        r,
        "add_app",
        {
            "name": name,
            "input_type": "doubles",
            "default_output": "none",
            "latency_slo_micros": 10**7,
        },
        context,
    )
    _admin(r, "add_model_links", {"app_name": name, "model_names": [name]}, context)
    reply = _admin(r, "get_replica_token", {"model_name": name, "model_version": "1"}, context)
    # .get: the tests of the split say what a frontend of one token does wrong.
    return Remote(reply["token"], reply.get("bundle_token", ""), reply["bundle_path"])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _predict_when_served(
    r: Running, app: str, x: list[float], context: ssl.SSLContext | None = None
) -> Any:
    """The first non-default answer (the replica registers in the background)."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        status, _, data = _request(
            f"{r.server.query_url}/{app}/predict", {"input": x}, context=context
        )
        reply = json.loads(data)
        if status == 200 and not reply.get("default"):
            return reply["output"]
        if time.monotonic() > deadline:
            pytest.fail(f"{app} is not served by its remote replica: {status} {reply}")
        time.sleep(0.2)


def _tls_args(ca: CertificateAuthority, token_file: Path) -> list[str]:
    cert, key = ca.issue("replica")
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file)]


def test_a_remote_replica_fetches_its_bundle_registers_over_tls_and_serves(
    tmp_path: Path, launcher: Launcher, ca: CertificateAuthority
) -> None:
    frontend_cert, frontend_key = ca.issue("frontend")
    r = start_server(
        tmp_path / "state",
        tls_cert=str(frontend_cert),
        tls_key=str(frontend_key),
        replica_tls_ca=str(ca.cert),
    )
    trust = ssl.create_default_context(cafile=str(ca.cert))
    try:
        model_folder = tmp_path / "folder-model"
        model_folder.mkdir()
        (model_folder / "weight.txt").write_text("2")
        remote = _deploy_remote(
            r, "folder", pack_directory(model_folder), folder=True, context=trust
        )
        path = remote.bundle_path
        assert path.startswith("/admin/bundle/folder/1?sha256=")
        token_file = _write(tmp_path / "replica.token", remote.token)
        bundle_token_file = _write(tmp_path / "bundle.token", remote.bundle_token)
        replica_tmp = tmp_path / "replica-tmp"  # the replica's own disk
        replica_tmp.mkdir()
        container = launcher.start(
            "--model-name", "folder", "--model-version", "1",
            "--model-class", "sample_models:FolderModel",
            "--bundle-url", r.server.management_url + path,
            "--bundle-token-file", str(bundle_token_file),
            "--frontend-ca", str(ca.cert),
            *_tls_args(ca, token_file),
            "--register-url", r.server.management_url,
            f"--register-token={r.server.config.admin_token}",
            "--replica-id", "remote-0",
            env={"TMPDIR": str(replica_tmp)},
        )  # fmt: skip
        output = _predict_when_served(r, "folder", [1.0, 2.0], trust)
        result, loaded_from = output.split(" ", 1)
        assert result == "6"
        # Loaded from a private folder of the replica's, not the frontend's files.
        assert Path(loaded_from).parent.parent == replica_tmp
        assert Path(loaded_from).parent.name.startswith("clipper-bundle-")
        assert not loaded_from.startswith(str(tmp_path / "state"))
        mv = r.server.dataplane.models["folder"].versions["1"]
        assert mv.replicas["remote-0"].address == f"grpcs://{container.address}"
        assert mv.replicas["remote-0"].client.transport == "grpc"
        container.proc.terminate()
        assert container.wait(30) == 0
        assert not Path(loaded_from).parent.exists()  # the bundle goes with the replica
    finally:
        r.bg.stop()


def test_frontends_without_the_token_or_the_ca_are_refused(
    tmp_path: Path, launcher: Launcher, ca: CertificateAuthority
) -> None:
    payload = cloudpickle.dumps(SumModel())
    owner = start_server(tmp_path / "owner", replica_tls_ca=str(ca.cert))
    others: list[Running] = []
    try:
        remote = _deploy_remote(owner, "sum", payload)
        token = remote.token
        token_file = _write(tmp_path / "replica.token", token)
        container = launcher.start(
            "--model-name", "sum", "--model-version", "1", "--input-type", "doubles",
            "--bundle-url", owner.server.management_url + remote.bundle_path,
            "--bundle-token-file", str(_write(tmp_path / "bundle.token", remote.bundle_token)),
            *_tls_args(ca, token_file),
        )  # fmt: skip
        register = {
            "model_name": "sum",
            "model_version": "1",
            "address": container.address,
            "replica_id": "remote-0",
            "tls": True,
        }
        _admin(owner, "register_replica", register)
        assert _predict_when_served(owner, "sum", [1.0, 2.0, 3.5]) == 6.5

        # Another secret (so another token), and the same secret without the CA.
        other_secret = start_server(
            tmp_path / "other", replica_tls_ca=str(ca.cert), replica_start_timeout=3.0
        )
        others.append(other_secret)
        no_ca = start_server(
            tmp_path / "no-ca",
            replica_secret_file=str(tmp_path / "owner" / "replica_secret"),
            replica_start_timeout=3.0,
        )
        others.append(no_ca)
        for frontend in others:
            _deploy_remote(frontend, "sum", payload)
            status, _, data = _request(
                f"{frontend.server.management_url}/admin/register_replica",
                register,
                token=frontend.server.config.admin_token,
            )
            assert status >= 400, data
            assert "not SERVING" in data.decode() or "no connection" in data.decode()
        # The same token is what the owner's frontend and the replica share.
        assert (
            _admin(no_ca, "get_replica_token", {"model_name": "sum", "model_version": "1"})["token"]
            == token
        )
        # The replica kept serving its own frontend.
        assert _predict_when_served(owner, "sum", [4.0]) == 4.0
    finally:
        for frontend in [owner, *others]:
            frontend.bg.stop()


def _fails_to_start(launcher: Launcher, *args: str) -> Container:
    container = launcher.start(*args, wait_ready=False)
    assert container.wait(60) == 1, container.stderr()
    return container


def test_the_bundle_route_and_fetch_need_the_replica_token_and_the_digest(
    tmp_path: Path, launcher: Launcher
) -> None:
    payload = cloudpickle.dumps(SumModel())
    r = start_server(tmp_path / "state")
    try:
        remote = _deploy_remote(r, "sum", payload)
        token = remote.bundle_token
        url = r.server.management_url + remote.bundle_path
        digest = hashlib.sha256(payload).hexdigest()
        assert remote.bundle_path == f"/admin/bundle/sum/1?sha256={digest}"
        # Neither the management token nor the call token opens bundles, and a
        # bundle token opens its own version's only.
        assert _request(url)[0] == 401
        assert _request(url, token=r.server.config.admin_token)[0] == 401
        assert _request(url, token=remote.token)[0] == 401
        status, headers, body = _request(url, token=token)
        assert status == 200 and body == payload
        assert headers["X-Clipper-Bundle-SHA256"] == digest
        assert headers["X-Clipper-Bundle-Kind"] == "closure"
        other = _admin(r, "get_replica_token", {"model_name": "sum", "model_version": "1"})
        assert other["bundle_token"] == token
        assert _request(url.replace("/sum/1", "/sum/2"), token=token)[0] == 401
        # Nor does a bundle token administer anything.
        assert (
            _request(f"{r.server.management_url}/admin/get_all_models", {}, token=token)[0] == 401
        )

        source = ["--model-name", "sum", "--model-version", "1", "--input-type", "doubles"]
        wrong = _write(tmp_path / "wrong.token", "0" * 64)
        refused = _fails_to_start(
            launcher, *source, "--bundle-url", url, "--bundle-token-file", str(wrong)
        )
        assert "refused the bundle token (HTTP 401)" in refused.stderr()
        right = _write(tmp_path / "right.token", token)
        pinned_elsewhere = url.replace(digest, "ab" * 32)
        mismatch = _fails_to_start(
            launcher, *source, "--bundle-url", pinned_elsewhere, "--bundle-token-file", str(right)
        )
        assert f"its SHA-256 is {digest}, expected {'ab' * 32}" in mismatch.stderr()
        # Over plain http only a digest in the URL proves the bytes: an unpinned
        # URL is refused before any request (the frontend's header could be forged).
        unpinned = _fails_to_start(
            launcher, *source, "--bundle-url", url.split("?")[0], "--bundle-token-file", str(right)
        )
        assert "must be pinned in the URL" in unpinned.stderr()
        # With the right token and digest the replica serves (plaintext here: the
        # frontend is on this host).
        served = launcher.start(*source, "--bundle-url", url, "--bundle-token-file", str(right))
        _admin(
            r,
            "register_replica",
            {"model_name": "sum", "model_version": "1", "address": served.address},
        )
        assert _predict_when_served(r, "sum", [2.0, 2.0]) == 4.0
    finally:
        r.bg.stop()
