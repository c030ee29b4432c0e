"""The Kubernetes manager against a real cluster (``KUBECONFIG``), each test in a
namespace of its own that it deletes.

What is asserted is what the API server stores and reports: the StatefulSet,
Service and Secret of a model version, its pods, scaling, a restart, and that
``close`` leaves the objects alone; also that the API server refuses each
manifest the manager's own checks refuse.  A bare kube-apiserver with a
kube-controller-manager is enough (the pods are made but never run without a
kubelet); serving through pods is the contract suite's, with
``CLIPPER_K8S_IMAGE`` (test_container_manager_contract.py).
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from control_helpers import Runner

from clipper_core.managers.k8s_manifests import KubernetesSettings, object_name
from clipper_core.store.records import ModelRecord

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="needs a Kubernetes cluster: set KUBECONFIG (a kube-apiserver with a"
    " kube-controller-manager is enough; no cluster on this machine)",
)

kubernetes = pytest.importorskip("kubernetes", reason="needs the kubernetes extra")

from clipper_core.managers.kubernetes import KubernetesContainerManager  # noqa: E402
from clipper_core.managers.kubernetes_api import KubeApi  # noqa: E402

REC = ModelRecord(
    name="Cluster_Model",
    version="1",
    input_type="doubles",
    labels=[],
    container={"kind": "closure", "path": "/state/model.pkl"},
    cpus=[0, 1],
    memory_limit_mb=256,
)
NAME = object_name(REC.name, REC.version)


@pytest.fixture
def namespace() -> Iterator[tuple[Any, str]]:
    """A fresh namespace, deleted afterwards; with an ApiClient for it."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    core = client.CoreV1Api(api_client)
    ns = f"clipper-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        yield api_client, ns
    finally:
        core.delete_namespace(ns)
        api_client.close()


@pytest.fixture
def manager(run: Runner, namespace: tuple[Any, str]) -> Iterator[KubernetesContainerManager]:
    api_client, ns = namespace
    settings = KubernetesSettings(
        namespace=ns, image=os.environ.get("CLIPPER_K8S_IMAGE", KubernetesSettings.image)
    )
    made = KubernetesContainerManager(
        settings,
        api=KubeApi(api_client, "clipper-core-test"),
        token_for=lambda record: f"token-of-{record.version}",
        start_timeout=60,
        stop_timeout=60,
    )
    yield made
    run(made.close(), timeout=30)


def eventually(check: Callable[[], Any], what: str, within: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g} s")
        time.sleep(0.5)


def pods(api: KubeApi, ns: str) -> dict[str, dict[str, Any]]:
    listed, _ = api.list_pods(ns, f"app.kubernetes.io/instance={NAME}")
    return {p["metadata"]["name"]: p for p in listed if not p["metadata"].get("deletionTimestamp")}


def test_scale_restart_and_delete_through_the_api(
    run: Runner, manager: KubernetesContainerManager, namespace: tuple[Any, str]
) -> None:
    api, ns = manager.api, namespace[1]
    run(manager.scale(REC, 2), timeout=120)

    sts = api.get("StatefulSet", ns, NAME)
    assert sts is not None
    spec = sts["spec"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "256Mi"}
    assert container["readinessProbe"]["grpc"]["port"] == 7000
    assert sts["metadata"]["annotations"]["clipper-core.io/model"] == "Cluster_Model"
    service = api.get("Service", ns, NAME)
    assert service is not None and service["spec"]["clusterIP"] == "None"
    secret = api.get("Secret", ns, f"{NAME}-token")
    assert secret is not None and set(secret["data"]) == {"token"}

    # The StatefulSet controller makes pods <name>-0 and <name>-1: replicas "0", "1".
    eventually(lambda: set(pods(api, ns)) == {f"{NAME}-0", f"{NAME}-1"}, "two pods")
    eventually(lambda: [s.replica_id for s in manager.list(REC.name)] == ["0", "1"], "two replicas")

    # Idempotent: the same scale changes nothing.
    generation = api.get("StatefulSet", ns, NAME)["metadata"]["generation"]  # type: ignore[index]
    run(manager.scale(REC, 2), timeout=60)
    assert api.get("StatefulSet", ns, NAME)["metadata"]["generation"] == generation  # type: ignore[index]

    # A restart deletes the pod; the StatefulSet makes it anew under the same name.
    before = pods(api, ns)[f"{NAME}-0"]["metadata"]["uid"]
    run(manager.restart(REC.name, REC.version, "0"), timeout=60)
    eventually(
        lambda: (p := pods(api, ns).get(f"{NAME}-0")) and p["metadata"]["uid"] != before,
        "pod 0 made anew",
    )

    # Scale down removes the highest ordinal; scale 0 deletes the objects.
    run(manager.scale(REC, 1), timeout=120)
    assert api.get("StatefulSet", ns, NAME)["spec"]["replicas"] == 1  # type: ignore[index]
    assert [s.replica_id for s in manager.list(REC.name)] == ["0"]
    eventually(lambda: set(pods(api, ns)) == {f"{NAME}-0"}, "pod 1 gone")
    run(manager.scale(REC, 0), timeout=120)
    assert api.get("StatefulSet", ns, NAME) is None
    assert api.get("Service", ns, NAME) is None
    assert api.get("Secret", ns, f"{NAME}-token") is None
    assert manager.list() == []


def test_close_leaves_the_cluster_objects_alone(
    run: Runner, manager: KubernetesContainerManager, namespace: tuple[Any, str]
) -> None:
    ns = namespace[1]
    run(manager.scale(REC, 1), timeout=120)
    run(manager.close(), timeout=30)
    sts = KubeApi(namespace[0], "reader").get("StatefulSet", ns, NAME)
    assert sts is not None and sts["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    "case",
    ["no image", "selector mismatch", "uppercase name", "underscore name", "64-character name",
     "bad cpu quantity", "port 70000", "negative replicas"],
)  # fmt: skip
def test_the_api_server_refuses_what_the_checks_refuse(
    case: str, manager: KubernetesContainerManager, namespace: tuple[Any, str]
) -> None:
    """Side by side with the manager's checks (a dry run: nothing is stored)."""
    from kubernetes.client.exceptions import ApiException
    from test_kubernetes_checks import CASES, STATEFULSET

    obj = copy.deepcopy(STATEFULSET)
    obj["metadata"]["namespace"] = namespace[1]
    manager.api.apply(copy.deepcopy(obj), dry_run=True)  # the unspoiled one is taken
    CASES[case][0](obj)
    with pytest.raises(ApiException) as caught:
        manager.api.apply(obj, dry_run=True)
    assert caught.value.status in (400, 422), caught.value


def test_wait_ready_of_a_wanted_replica_times_out_without_a_kubelet_answer(
    run: Runner, manager: KubernetesContainerManager
) -> None:
    """Without ``CLIPPER_K8S_IMAGE`` the pods cannot serve: wait_ready is bounded."""
    if os.environ.get("CLIPPER_K8S_IMAGE"):
        pytest.skip("the image may serve: the contract suite covers readiness")
    from clipper_core.errors import ReplicaUnavailable

    async def scenario() -> None:
        await manager.scale(REC, 1)
        with pytest.raises(ReplicaUnavailable, match=r"replica Cluster_Model:1:0"):
            await manager.wait_ready(REC.name, REC.version, "0", 3.0)
        await manager.scale(REC, 0)

    run(asyncio.wait_for(scenario(), 120), timeout=130)
