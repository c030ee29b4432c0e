"""The Kubernetes manager's calls on the wire and its control loop, against a
stand-in API server (kube_api_stub.py): the official client really speaks HTTP to
it, the manager's watch thread really streams from it.  What a real API server
does with the calls is test_kubernetes_cluster.py's (with ``KUBECONFIG``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_helpers import Runner
from kube_api_stub import KubeApiStub
from test_kubernetes_pods import pod

from clipper_core.config import ServerConfig
from clipper_core.errors import BadInput, ReplicaUnavailable
from clipper_core.managers.base import ReplicaEvent
from clipper_core.managers.k8s_manifests import KubernetesSettings, object_name
from clipper_core.replica_tokens import ReplicaTokens
from clipper_core.store.records import ModelRecord

pytest.importorskip("kubernetes", reason="needs the kubernetes extra")

from clipper_core.managers.kubernetes import KubernetesContainerManager
from clipper_core.managers.kubernetes_api import KubeApi

REC = ModelRecord(
    name="m",
    version="1",
    input_type="doubles",
    labels=[],
    container={"kind": "closure", "path": "/x/model.pkl"},
    memory_limit_mb=64,
)
NAME = object_name("m", "1")
NS = "serving"
APPLY = "application/apply-patch+yaml"


@pytest.fixture
def stub() -> Iterator[KubeApiStub]:
    server = KubeApiStub()
    yield server
    server.close()


@pytest.fixture
def manager(run: Runner, stub: KubeApiStub) -> Iterator[KubernetesContainerManager]:
    made = KubernetesContainerManager(
        KubernetesSettings(namespace=NS),
        api=KubeApi(stub.api_client(), "clipper-core"),
        start_timeout=20,
        stop_timeout=20,
    )
    yield made
    run(made.close(), timeout=30)


def test_scale_applies_the_objects_and_wait_ready_follows_the_watch(
    run: Runner, stub: KubeApiStub, manager: KubernetesContainerManager
) -> None:
    events: list[ReplicaEvent] = []
    manager.subscribe(events.append)
    started_0 = asyncio.Event()
    manager.subscribe(
        lambda e: started_0.set() if (e.kind, e.replica_id) == ("started", "0") else None
    )

    async def scenario() -> None:
        await manager.scale(REC, 2)
        applies = [r for r in stub.requests if r.method == "PATCH"]
        assert [r.path for r in applies] == [
            f"/api/v1/namespaces/{NS}/services/{NAME}",
            f"/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}",
        ]
        for request in applies:
            assert request.content_type == APPLY
            assert request.query == {"fieldManager": "clipper-core", "force": "true"}
        assert applies[1].body["spec"]["replicas"] == 2
        listed = [r for r in stub.requests if r.method == "GET" and r.path.endswith("/pods")]
        selector = "app.kubernetes.io/name=clipper-model,app.kubernetes.io/part-of=clipper"
        assert listed[0].query["labelSelector"] == selector
        assert [s.replica_id for s in manager.list("m", "1")] == ["0", "1"]

        waiting = asyncio.create_task(manager.wait_ready("m", "1", "1", 20))
        stub.push("ADDED", pod(1, "u1"))
        stub.push("MODIFIED", pod(1, "u1", running=True, ready=True, ip="10.1.2.3"))
        assert await waiting == "10.1.2.3:7000"
        assert [(e.kind, e.replica_id) for e in events] == [("started", "1"), ("ready", "1")]
        watch = next(r for r in stub.requests if r.query.get("watch") == "true")
        assert watch.query["resourceVersion"] == "10"

        # A restart deletes the pod; the events follow the watch.
        await manager.restart("m", "1", "1")
        assert stub.requests[-1].method == "DELETE"
        assert stub.requests[-1].path == f"/api/v1/namespaces/{NS}/pods/clipper-m-v1-abc-1"
        stub.push("MODIFIED", pod(1, "u1", running=True, deleting=True))
        stub.push("DELETED", pod(1, "u1", deleting=True))
        stub.push("ADDED", pod(1, "u1b"))
        stub.push("MODIFIED", pod(1, "u1b", running=True, ready=True, ip="10.1.2.4"))
        assert await manager.wait_ready("m", "1", "1", 20) == "10.1.2.4:7000"
        assert [e.kind for e in events[2:]] == ["exited", "restarting", "started", "ready"]

        # A container that dies before it is ready fails wait_ready with its log tail.
        stub.push("ADDED", pod(0, "u0", running=True))
        await started_0.wait()
        waiting = asyncio.create_task(manager.wait_ready("m", "1", "0", 20))
        await asyncio.sleep(0.1)  # it looks at the replica before the crash arrives
        stub.push("MODIFIED", pod(0, "u0", restarts=1, last_exit=(1, "cannot unpickle model.pkl")))
        with pytest.raises(ReplicaUnavailable, match="exited before it was ready") as caught:
            await waiting
        assert "cannot unpickle model.pkl" in str(caught.value)

        # Scale 0 deletes the version's objects once its pods are gone.
        scaling = asyncio.create_task(manager.scale(REC, 0))
        await asyncio.sleep(0.5)
        stub.push("DELETED", pod(0, "u0"))
        stub.push("DELETED", pod(1, "u1b"))
        await scaling
        deletes = [r.path for r in stub.requests if r.method == "DELETE"][1:]
        assert deletes == [
            f"/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}",
            f"/api/v1/namespaces/{NS}/services/{NAME}",
        ]
        assert manager.list() == []
        assert [e.kind for e in events[-2:]] == ["stopped", "stopped"]

    run(scenario(), timeout=90)


def test_a_scale_replaces_the_pod_of_a_failed_replica(
    run: Runner, stub: KubeApiStub, manager: KubernetesContainerManager
) -> None:
    failed = asyncio.Event()
    manager.subscribe(lambda e: failed.set() if e.kind == "failed" else None)

    async def scenario() -> None:
        await manager.scale(REC, 1)
        stub.push("ADDED", pod(0, "u0", waiting="ImagePullBackOff"))
        await failed.wait()
        before = len(stub.requests)
        # The kubelet never gives up on the stuck pod: only a new one can start.
        await manager.scale(REC, 1)
        deletes = [r.path for r in stub.requests[before:] if r.method == "DELETE"]
        assert deletes == [f"/api/v1/namespaces/{NS}/pods/clipper-m-v1-abc-0"]
        assert [s.state for s in manager.list("m", "1")] == ["restarting"]
        waiting = asyncio.create_task(manager.wait_ready("m", "1", "0", 20))
        stub.push("DELETED", pod(0, "u0", deleting=True))
        stub.push("ADDED", pod(0, "u0b"))
        stub.push("MODIFIED", pod(0, "u0b", running=True, ready=True, ip="10.1.2.5"))
        assert await waiting == "10.1.2.5:7000"

    run(scenario(), timeout=60)


def test_a_version_with_its_own_token_gets_a_secret(run: Runner, stub: KubeApiStub) -> None:
    manager = KubernetesContainerManager(
        KubernetesSettings(namespace=NS),
        api=KubeApi(stub.api_client(), "clipper-core"),
        token_for=lambda record: f"secret-of-{record.key}",
    )

    async def scenario() -> None:
        await manager.scale(REC, 1)
        secret = stub.objects[f"/api/v1/namespaces/{NS}/secrets/{NAME}-token"]
        assert secret["stringData"] == {"token": "secret-of-m:1"}
        await manager.close()

    run(scenario(), timeout=60)


def test_the_watch_lists_again_when_it_ends(
    run: Runner, stub: KubeApiStub, manager: KubernetesContainerManager
) -> None:
    async def scenario() -> None:
        await manager.scale(REC, 1)
        stub.pods = [pod(0, "u0", running=True, ready=True, ip="10.9.9.9")]
        stub.end_watch()
        assert await manager.wait_ready("m", "1", "0", 20) == "10.9.9.9:7000"

    run(scenario(), timeout=60)


def test_scale_refuses_bad_input_before_any_call(
    run: Runner, stub: KubeApiStub, manager: KubernetesContainerManager
) -> None:
    async def scenario() -> None:
        with pytest.raises(BadInput, match=">= 0"):
            await manager.scale(REC, -1)
        bad = ModelRecord(
            name="m", version="2", input_type="doubles", labels=[], container={"kind": "?"}
        )
        with pytest.raises(BadInput, match="no container to start"):
            await manager.scale(bad, 1)
        image = ModelRecord(
            name="m",
            version="3",
            input_type="doubles",
            labels=[],
            container={"kind": "closure", "path": "/x.pkl", "image": " "},
        )
        with pytest.raises(BadInput, match="needs an image"):
            await manager.scale(image, 1)
        external = ModelRecord(
            name="m", version="4", input_type="doubles", labels=[], container={"kind": "external"}
        )
        await manager.scale(external, 2)
        assert stub.requests == [] and manager.list() == []

    run(scenario(), timeout=30)


def test_an_unreachable_cluster_fails_scale_within_the_start_timeout(run: Runner) -> None:
    manager = KubernetesContainerManager(
        KubernetesSettings(),
        api=KubeApi(KubeApiStub.api_client_for("http://127.0.0.1:9"), "clipper-core"),
        start_timeout=2,
    )

    async def scenario() -> None:
        with pytest.raises(ReplicaUnavailable, match="cannot list the model pods"):
            await manager.scale(REC, 1)
        await manager.close()

    run(scenario(), timeout=60)


def test_the_server_config_chooses_the_manager(stub: KubeApiStub) -> None:
    cfg = ServerConfig(container_manager="kubernetes", kubernetes_namespace="models")
    cfg.kubernetes_image = "registry.local/model:2"
    cfg.kubernetes_part_of = "green"
    cfg.kubernetes_container_port = 9000
    cfg.kubernetes_startup_seconds = 900
    manager = KubernetesContainerManager.from_config(
        cfg, api=KubeApi(stub.api_client(), "clipper-core")
    )
    assert manager.settings.namespace == "models"
    assert manager.settings.image == "registry.local/model:2"
    assert manager.settings.part_of == "green"
    assert (manager.settings.container_port, manager.settings.startup_seconds) == (9000, 900)
    assert manager.settings.bundle_secret == KubernetesSettings.bundle_secret
    assert manager.start_timeout == cfg.replica_start_timeout


def test_the_server_builds_the_manager_from_its_config_and_kubeconfig(
    run: Runner, stub: KubeApiStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ClipperServer(container_manager="kubernetes")`` reads ``$KUBECONFIG``
    (here: one naming the stand-in API server) and talks to that cluster."""
    from clipper_core.server import ClipperServer

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stub", "cluster": {"server": stub.url}}],
                "users": [{"name": "me", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me"}}],
                "current-context": "stub",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server = ClipperServer(
        state_dir=str(tmp_path / "state"), container_manager="kubernetes", kubernetes_namespace=NS
    )
    manager = server.manager
    assert isinstance(manager, KubernetesContainerManager)

    async def scenario() -> None:
        await manager.scale(REC, 1)
        await manager.close()

    run(scenario(), timeout=60)
    assert stub.requests[-1].path == f"/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}"
    assert stub.requests[-1].authorization == "Bearer t0ken"
    # The pods' Secret holds the version's bundle token, not the call token the
    # frontend sends to replicas (whoever answers at a replica address sees that).
    tokens = ReplicaTokens.load_or_create(tmp_path / "state" / "replica_secret")
    secret = stub.objects[f"/api/v1/namespaces/{NS}/secrets/{NAME}-token"]
    assert secret["stringData"]["token"] != tokens.token("m", "1")
    assert secret["stringData"] == {"token": tokens.bundle_token("m", "1")}
    with pytest.raises(BadInput, match="unknown container manager 'nomad'"):
        ClipperServer(state_dir=str(tmp_path / "state"), container_manager="nomad")
