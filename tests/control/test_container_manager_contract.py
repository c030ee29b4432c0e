"""The ContainerManager contract, checked on every implementation: the local
manager (real ``python -m model_containers`` children), the in-process fake, and
the Kubernetes manager on a cluster that runs pods (skipped without one: see
:data:`K8S_SKIP`).

Each replica is checked over real gRPC: health SERVING, metadata naming the model
version and the replica, and a Predict answered by the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import numpy as np
import pytest
from control_helpers import Runner, assert_dead, is_our_child

from clipper_core.errors import ReplicaUnavailable
from clipper_core.managers import ContainerManager, ReplicaEvent, ReplicaStatus
from clipper_core.managers.fake import FakeContainerManager
from clipper_core.managers.local import LocalProcessManager
from clipper_core.replica_client import decode_outputs, encode_batch
from clipper_core.store.records import ModelRecord
from model_containers._proto import container_pb2 as pb
from model_containers._proto import container_pb2_grpc as pb_grpc
from model_containers._proto import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
START = 60.0  # seconds a container may take to start (two shared cores)

#: The Kubernetes manager runs the contract on a cluster whose pods run and are
#: reachable from here: KUBECONFIG, the model-container image (CLIPPER_K8S_IMAGE)
#: and a bundle URL template (CLIPPER_K8S_BUNDLE_URL) that serves the closures
#: the tests write; the namespace is CLIPPER_K8S_NAMESPACE (default).
K8S_SKIP = (
    "the Kubernetes manager needs a cluster: set KUBECONFIG (none on this machine)"
    if not os.environ.get("KUBECONFIG")
    else "the Kubernetes manager's contract run needs pods that serve: set"
    " CLIPPER_K8S_IMAGE and CLIPPER_K8S_BUNDLE_URL"
    if not (os.environ.get("CLIPPER_K8S_IMAGE") and os.environ.get("CLIPPER_K8S_BUNDLE_URL"))
    else None
)


def kubernetes_manager() -> ContainerManager:
    from clipper_core.managers.k8s_manifests import KubernetesSettings
    from clipper_core.managers.kubernetes import KubernetesContainerManager

    settings = KubernetesSettings(
        namespace=os.environ.get("CLIPPER_K8S_NAMESPACE", "default"),
        image=os.environ["CLIPPER_K8S_IMAGE"],
        bundle_url=os.environ["CLIPPER_K8S_BUNDLE_URL"],
    )
    return KubernetesContainerManager(settings, start_timeout=START)


def make_sum() -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        return [float(sum(x)) for x in inputs]

    return predict


class Events:
    """Collects a manager's events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[ReplicaEvent] = []
        self.pids: set[int] = set()
        self._changed = asyncio.Event()

    def __call__(self, event: ReplicaEvent) -> None:
        self.events.append(event)
        if event.pid is not None:
            self.pids.add(event.pid)
        self._changed.set()

    def kinds(self, replica_id: str | None = None, start: int = 0) -> list[str]:
        return [
            e.kind for e in self.events[start:] if replica_id is None or e.replica_id == replica_id
        ]

    async def wait_for(
        self, kind: str, replica_id: str, *, start: int = 0, within: float = START
    ) -> ReplicaEvent:
        """The first ``kind`` event of ``replica_id`` from index ``start`` on."""
        async with asyncio.timeout(within):
            seen = start
            while True:
                for event in self.events[seen:]:
                    if event.kind == kind and event.replica_id == replica_id:
                        return event
                seen = max(seen, len(self.events))
                self._changed.clear()
                await self._changed.wait()


class Harness:
    """A manager of one kind, its recorded events and the records it serves."""

    def __init__(self, kind: str, manager: ContainerManager, tmp_path: Path) -> None:
        self.kind = kind
        self.manager = manager
        self.events = Events()
        manager.subscribe(self.events)
        self._tmp = tmp_path
        self.records: list[ModelRecord] = []

    def record(self, name: str = "m", version: str = "1", **container: Any) -> ModelRecord:
        if not container:
            path = self._tmp / f"{name}-{version}.pkl"
            path.write_bytes(cloudpickle.dumps(make_sum()))
            container = {"kind": "closure", "path": str(path)}
        container.setdefault("python_path", [str(REPO)])
        rec = ModelRecord(
            name=name, version=version, input_type="doubles", labels=[], container=container
        )
        self.records.append(rec)
        return rec

    async def crash(self, status: ReplicaStatus) -> None:
        """Kill a replica as a crash would."""
        if isinstance(self.manager, FakeContainerManager):
            await self.manager.kill(status.model, status.version, status.replica_id)
        elif self.kind == "kubernetes":  # the pod goes at once, as with its node
            manager: Any = self.manager
            name = manager.tracker.get(status.model, status.version, status.replica_id).pod_name
            await asyncio.to_thread(
                manager.api.delete, "Pod", manager.settings.namespace, name, grace_seconds=0
            )
        else:
            assert status.pid is not None
            os.kill(status.pid, signal.SIGKILL)


@pytest.fixture(
    params=[
        "local",
        "fake",
        pytest.param("kubernetes", marks=pytest.mark.skipif(K8S_SKIP is not None, reason=K8S_SKIP)),
    ]
)
def harness(request: pytest.FixtureRequest, run: Runner, tmp_path: Path) -> Iterator[Harness]:
    manager: ContainerManager
    if request.param == "local":
        manager = LocalProcessManager(python=sys.executable, envs_dir=tmp_path / "envs")
    elif request.param == "kubernetes":
        manager = kubernetes_manager()
    else:
        manager = FakeContainerManager()
    h = Harness(request.param, manager, tmp_path)
    yield h
    if request.param == "kubernetes":  # close leaves them: remove the test's objects
        for rec in h.records:
            run(manager.scale(rec, 0), timeout=120)
    run(manager.close(), timeout=60)
    leaked = [pid for pid in h.events.pids if is_our_child(pid)]
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"children left running after close(): {leaked}"


def probe(address: str) -> tuple[bool, tuple[str, str, str], list[Any]]:
    """Over gRPC: (health SERVING, (name, version, replica id), Predict of [1, 2])."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="clipper.container.v1.ModelContainer"),
            timeout=10,
        )
        stub = pb_grpc.ModelContainerStub(channel)
        meta = stub.Metadata(pb.MetadataRequest(), timeout=10)
        data, offsets = encode_batch([np.array([1.0, 2.0])], "doubles")
        reply = stub.Predict(
            pb.PredictRequest(batch_id=1, input_type=pb.DOUBLES, data=data, offsets=offsets),
            timeout=30,
        )
    serving = health.status == health_pb2.HealthCheckResponse.SERVING
    return serving, (meta.name, meta.version, meta.replica_id), decode_outputs(reply)


def unreachable(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2, wait_for_ready=False
            )
        except grpc.RpcError:
            return True
    return False


async def serves(address: str, name: str, version: str, replica_id: str) -> None:
    serving, who, outputs = await asyncio.to_thread(probe, address)
    assert serving
    assert who == (name, version, replica_id)
    assert outputs == [3.0]


def ids(statuses: list[ReplicaStatus]) -> list[str]:
    return [s.replica_id for s in statuses]


def test_scale_wait_ready_restart_and_scale_down(run: Runner, harness: Harness) -> None:
    manager, events = harness.manager, harness.events
    rec = harness.record()

    async def scenario() -> None:
        await manager.scale(rec, 2)
        statuses = manager.list("m", "1")
        assert ids(statuses) == ["0", "1"]
        assert {s.state for s in statuses} <= {"starting", "running"}
        assert all((s.model, s.version) == ("m", "1") for s in statuses)
        addresses = {rid: await manager.wait_ready("m", "1", rid, START) for rid in ("0", "1")}
        for rid, address in addresses.items():
            await serves(address, "m", "1", rid)
            assert events.kinds(rid)[:2] == ["started", "ready"]
            ready = await events.wait_for("ready", rid)
            assert ready.address == address and (ready.model, ready.version) == ("m", "1")
        statuses = manager.list()
        assert [(s.state, s.address) for s in statuses] == [
            ("running", addresses["0"]),
            ("running", addresses["1"]),
        ]
        assert all(s.restarts == 0 for s in statuses)

        # Idempotent: the same count starts nothing.
        mark = len(events.events)
        await manager.scale(rec, 2)
        assert ids(manager.list("m")) == ["0", "1"] and events.kinds(start=mark) == []

        # A restart goes through exited and comes back ready.
        await manager.restart("m", "1", "0")
        await events.wait_for("ready", "0", start=mark)
        assert events.kinds("0", start=mark) == ["exited", "restarting", "started", "ready"]
        address = await manager.wait_ready("m", "1", "0", START)
        await serves(address, "m", "1", "0")
        assert manager.list("m", "1")[0].restarts == 1

        # Scale down stops the highest id; scale 0 stops the rest.
        mark = len(events.events)
        await manager.scale(rec, 1)
        assert events.kinds(start=mark) == ["stopped"] and events.events[-1].replica_id == "1"
        assert ids(manager.list("m", "1")) == ["0"]
        await manager.scale(rec, 0)
        assert events.kinds(start=mark) == ["stopped", "stopped"]
        assert manager.list() == []
        assert await asyncio.to_thread(unreachable, addresses["1"])

    run(scenario(), timeout=240)


def test_a_crashed_replica_comes_back_ready(run: Runner, harness: Harness) -> None:
    manager, events = harness.manager, harness.events

    async def scenario() -> None:
        await manager.scale(harness.record(), 1)
        await manager.wait_ready("m", "1", "0", START)
        mark = len(events.events)
        await harness.crash(manager.list()[0])
        exited = await events.wait_for("exited", "0", start=mark)
        ready = await events.wait_for("ready", "0", start=mark)
        assert events.kinds("0", start=mark) == ["exited", "restarting", "started", "ready"]
        assert exited.detail and ready.address is not None
        status = manager.list("m", "1")[0]
        assert (status.state, status.address, status.restarts) == ("running", ready.address, 1)
        await serves(ready.address, "m", "1", "0")

    run(scenario(), timeout=180)


def test_a_container_that_cannot_start_fails_wait_ready(
    run: Runner, harness: Harness, tmp_path: Path
) -> None:
    manager, events = harness.manager, harness.events
    rec = harness.record(kind="closure", path=str(tmp_path / "missing.pkl"))

    async def scenario() -> None:
        await manager.scale(rec, 1)
        with pytest.raises(ReplicaUnavailable) as caught:
            await manager.wait_ready("m", "1", "0", START)
        message = str(caught.value)
        assert "replica m:1:0" in message and "cannot unpickle" in message
        if harness.kind == "local":
            assert "exit code 1" in message
        assert "exited" in events.kinds("0")
        # The next scale replaces a failed replica; scale 0 leaves none.
        await manager.scale(rec, 0)
        assert manager.list() == []

    run(scenario(), timeout=180)


def test_close_stops_every_replica(run: Runner, harness: Harness) -> None:
    if harness.kind == "kubernetes":
        pytest.skip("close leaves a cluster's replicas running (test_kubernetes_cluster.py)")
    manager, events = harness.manager, harness.events

    async def scenario() -> None:
        await manager.scale(harness.record("a"), 1)
        await manager.scale(harness.record("b", "7"), 1)
        addresses = [
            await manager.wait_ready("a", "1", "0", START),
            await manager.wait_ready("b", "7", "0", START),
        ]
        assert [(s.model, s.version) for s in manager.list()] == [("a", "1"), ("b", "7")]
        assert ids(manager.list("b")) == ["0"] and manager.list("b", "1") == []
        pids = [s.pid for s in manager.list() if s.pid is not None]
        await manager.close()
        assert manager.list() == []
        assert events.kinds()[-2:] == ["stopped", "stopped"]
        for address in addresses:
            assert await asyncio.to_thread(unreachable, address)
        for pid in pids:
            assert_dead(pid)
        await manager.close()  # twice is fine

    run(scenario(), timeout=180)


def test_external_records_are_left_alone(run: Runner, harness: Harness) -> None:
    manager, events = harness.manager, harness.events

    async def scenario() -> None:
        await manager.scale(harness.record(kind="external"), 2)
        assert manager.list() == [] and events.events == []
        with pytest.raises(ReplicaUnavailable):
            await manager.wait_ready("m", "1", "0", 1.0)
        await manager.restart("m", "1", "0")  # unknown: left alone

    run(scenario())


def test_a_failing_subscriber_does_not_stop_the_others(run: Runner, harness: Harness) -> None:
    manager = harness.manager
    failing: Callable[[ReplicaEvent], None] = lambda event: 1 / 0  # noqa: E731
    manager.subscribe(failing)
    later = Events()
    manager.subscribe(later)

    async def scenario() -> None:
        await manager.scale(harness.record(), 1)
        await manager.wait_ready("m", "1", "0", START)
        await later.wait_for("ready", "0")
        assert harness.events.kinds() == later.kinds() == ["started", "ready"]

    run(scenario(), timeout=120)
