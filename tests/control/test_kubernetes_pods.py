"""The pod watch as the Kubernetes manager reads it: pods (as the API server sends
them) become replica states and the manager-neutral events, in the order the
other managers emit them."""

from __future__ import annotations

from typing import Any

import pytest

from clipper_core.managers.kubernetes_pods import PodTracker, pod_identity


def pod(
    ordinal: int,
    uid: str,
    *,
    ready: bool = False,
    running: bool = False,
    restarts: int = 0,
    last_exit: tuple[int, str] | None = None,
    waiting: str | None = None,
    deleting: bool = False,
    ip: str = "10.0.0.7",
    index_label: bool = True,
) -> dict[str, Any]:
    """A model pod of m:1 as a watch delivers it."""
    labels = {"app.kubernetes.io/name": "clipper-model"}
    if index_label:
        labels["apps.kubernetes.io/pod-index"] = str(ordinal)
    state: dict[str, Any] = {}
    if running:
        state["running"] = {"startedAt": "2026-01-01T00:00:00Z"}
    if waiting:
        state["waiting"] = {"reason": waiting, "message": f"{waiting} for the image"}
    container: dict[str, Any] = {"name": "model", "restartCount": restarts, "state": state}
    if last_exit is not None:
        code, message = last_exit
        container["lastState"] = {
            "terminated": {"exitCode": code, "reason": "Error", "message": message}
        }
    meta: dict[str, Any] = {
        "name": f"clipper-m-v1-abc-{ordinal}",
        "uid": uid,
        "labels": labels,
        "annotations": {"clipper-core.io/model": "m", "clipper-core.io/version": "1"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    status: dict[str, Any] = {
        "phase": "Running" if running else "Pending",
        "containerStatuses": [container],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if running:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


@pytest.fixture
def tracker() -> PodTracker:
    t = PodTracker(port=7000, max_start_failures=3)
    t.want("m", "1", 2)
    return t


def test_wanted_replicas_are_listed_before_their_pods_exist(tracker: PodTracker) -> None:
    assert [(r.replica_id, r.state) for r in tracker.replicas("m", "1")] == [
        ("0", "starting"),
        ("1", "starting"),
    ]
    assert tracker.replicas("other") == []


def test_a_pod_starts_then_is_ready_at_its_ip(tracker: PodTracker) -> None:
    assert kinds(tracker.apply("ADDED", pod(0, "u0"))) == ["started"]
    assert kinds(tracker.apply("MODIFIED", pod(0, "u0", running=True))) == []
    events = tracker.apply("MODIFIED", pod(0, "u0", running=True, ready=True))
    assert kinds(events) == ["ready"]
    assert events[0].address == "10.0.0.7:7000" and events[0].replica_id == "0"
    status = tracker.replicas("m", "1")[0].status()
    assert (status.state, status.address, status.pid, status.restarts) == (
        "running",
        "10.0.0.7:7000",
        None,
        0,
    )
    # The same state again says nothing new.
    assert tracker.apply("MODIFIED", pod(0, "u0", running=True, ready=True)) == []


def test_an_ipv6_pod_address_is_bracketed(tracker: PodTracker) -> None:
    tracker.apply("ADDED", pod(0, "u0"))
    events = tracker.apply("MODIFIED", pod(0, "u0", running=True, ready=True, ip="fd00::7"))
    assert events[0].address == "[fd00::7]:7000"


def test_a_container_crash_is_exited_restarting_started_ready(tracker: PodTracker) -> None:
    tracker.apply("ADDED", pod(0, "u0", running=True, ready=True))
    crashed = tracker.apply(
        "MODIFIED", pod(0, "u0", restarts=1, last_exit=(137, "Traceback\nMemoryError"))
    )
    assert kinds(crashed) == ["exited", "restarting"]
    assert crashed[0].exit_code == 137
    assert crashed[0].stderr_tail == "Traceback\nMemoryError"
    assert "exit code 137 (Error)" in crashed[0].detail
    assert tracker.get("m", "1", "0").state == "restarting"  # type: ignore[union-attr]
    back = tracker.apply("MODIFIED", pod(0, "u0", restarts=1, running=True))
    back += tracker.apply("MODIFIED", pod(0, "u0", restarts=1, running=True, ready=True))
    assert kinds(back) == ["started", "ready"]
    assert tracker.get("m", "1", "0").restarts == 1  # type: ignore[union-attr]


def test_a_deleted_pod_that_is_still_wanted_is_a_restart(tracker: PodTracker) -> None:
    tracker.apply("ADDED", pod(1, "u1", running=True, ready=True))
    replica = tracker.get("m", "1", "1")
    assert replica is not None
    exits = replica.exits
    events = tracker.apply("MODIFIED", pod(1, "u1", running=True, deleting=True))
    assert kinds(events) == ["exited", "restarting"]
    assert replica.exits == exits + 1 and replica.address is None
    assert tracker.apply("DELETED", pod(1, "u1", deleting=True)) == []
    events = tracker.apply("ADDED", pod(1, "u1b"))
    events += tracker.apply("MODIFIED", pod(1, "u1b", running=True, ready=True))
    assert kinds(events) == ["started", "ready"]
    assert replica.restarts == 1 and replica.state == "running"


def test_a_pod_beyond_the_wanted_count_is_stopped(tracker: PodTracker) -> None:
    tracker.apply("ADDED", pod(0, "u0", running=True, ready=True))
    tracker.apply("ADDED", pod(1, "u1", running=True, ready=True))
    tracker.want("m", "1", 1)
    events = tracker.apply("MODIFIED", pod(1, "u1", running=True, deleting=True))
    assert kinds(events) == ["stopped"] and events[0].replica_id == "1"
    assert [r.replica_id for r in tracker.replicas()] == ["0"]
    assert tracker.apply("DELETED", pod(1, "u1")) == []


def test_an_image_that_cannot_be_pulled_fails_the_replica(tracker: PodTracker) -> None:
    tracker.apply("ADDED", pod(0, "u0"))
    events = tracker.apply("MODIFIED", pod(0, "u0", waiting="ImagePullBackOff"))
    assert kinds(events) == ["failed"]
    assert "ImagePullBackOff" in events[0].detail
    assert tracker.get("m", "1", "0").state == "failed"  # type: ignore[union-attr]
    # The next scale gives it another chance, and names it so its pod is replaced.
    assert [r.replica_id for r in tracker.want("m", "1", 2)] == ["0"]
    assert tracker.get("m", "1", "0").state == "starting"  # type: ignore[union-attr]
    assert tracker.want("m", "1", 2) == []


def test_a_container_that_never_gets_ready_fails_after_max_start_failures(
    tracker: PodTracker,
) -> None:
    tracker.apply("ADDED", pod(0, "u0", running=True))
    seen: list[str] = []
    for n in (1, 2, 3):
        seen += kinds(
            tracker.apply("MODIFIED", pod(0, "u0", restarts=n, last_exit=(1, "cannot unpickle")))
        )
        seen += kinds(tracker.apply("MODIFIED", pod(0, "u0", restarts=n, running=True)))
    assert seen == [
        "exited", "restarting", "started",
        "exited", "restarting", "started",
        "exited", "failed",
    ]  # fmt: skip
    replica = tracker.get("m", "1", "0")
    assert replica is not None and replica.state == "failed"
    assert "cannot unpickle" in replica.detail


def test_a_relist_treats_vanished_pods_as_deleted(tracker: PodTracker) -> None:
    tracker.apply("ADDED", pod(0, "u0", running=True, ready=True))
    tracker.apply("ADDED", pod(1, "u1", running=True, ready=True))
    tracker.want("m", "1", 1)
    events = tracker.resync([pod(0, "u0", running=True, ready=True)])
    assert kinds(events) == ["stopped"] and events[0].replica_id == "1"


def test_pod_identity_reads_annotations_and_the_ordinal() -> None:
    assert pod_identity(pod(3, "u")) == ("m", "1", "3")
    assert pod_identity(pod(12, "u", index_label=False)) == ("m", "1", "12")
    stranger = pod(0, "u")
    del stranger["metadata"]["annotations"]
    assert pod_identity(stranger) is None
