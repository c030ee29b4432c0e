"""Model pods as replicas: what a watch of the pods means for each replica (no I/O).

:class:`PodTracker` is fed the pods of a watch (``ADDED``, ``MODIFIED``,
``DELETED``, as the API server sends them: plain dicts) and keeps one
:class:`TrackedReplica` per replica, turning pod changes into the manager-neutral
:class:`~clipper_core.managers.base.ReplicaEvent` s:

- a new pod (a new uid) is ``started``; its Ready condition with a pod IP is
  ``ready`` at ``<pod IP>:<port>``;
- a container restart in place (its ``restartCount`` grew) is ``exited`` then
  ``restarting``, with the exit code and the termination message (the last log
  lines: the pod asks for ``FallbackToLogsOnError``); the running container after
  it is ``started`` again;
- a pod being deleted while its ordinal is still wanted (a restart, a pod lost
  with its node) is ``exited`` then ``restarting``; one beyond the wanted count
  is ``stopped``;
- a replica whose container cannot be created (image errors) or that exits
  ``max_start_failures`` times in a row before it was ever ready is ``failed``.

Replica ids are the pods' StatefulSet ordinals (label ``apps.kubernetes.io/pod-index``,
else the name's ``-<i>`` suffix).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from clipper_core.managers.base import EventKind, ReplicaEvent, ReplicaState, ReplicaStatus
from clipper_core.managers.k8s_manifests import (
    ANNOTATION_MODEL,
    ANNOTATION_VERSION,
    POD_INDEX_LABEL,
)

__all__ = ["PodTracker", "TrackedReplica", "pod_identity"]

#: Waiting reasons after which the kubelet will not get the container running.
_FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
_CONTAINER = "model"


def pod_identity(pod: dict[str, Any]) -> tuple[str, str, str] | None:
    """``(model, version, replica id)`` of a model pod, None for another pod."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    model, version = annotations.get(ANNOTATION_MODEL), annotations.get(ANNOTATION_VERSION)
    if not isinstance(model, str) or not isinstance(version, str):
        return None
    index = (meta.get("labels") or {}).get(POD_INDEX_LABEL)
    if index is None:
        index = str(meta.get("name", "")).rpartition("-")[2]
    return (model, version, str(index)) if str(index).isdigit() else None


@dataclass(eq=False)
class TrackedReplica:
    """What the manager knows of one replica.

    Attributes:
        model: The model's name.
        version: The model version.
        replica_id: The pod's ordinal.
        state: See :data:`~clipper_core.managers.base.ReplicaState`.
        address: ``<pod IP>:<port>`` while ready.
        restarts: Container restarts and pod re-creations so far.
        detail: How the last container ended (exit code, termination message).
        pod_uid: The uid of the current pod (None before it exists).
        pod_name: The current pod's name.
        exits: Incremented on each exit: a waiter can tell that the container it
            watched is gone.
    """

    model: str
    version: str
    replica_id: str
    state: ReplicaState = "starting"
    address: str | None = None
    restarts: int = 0
    detail: str = ""
    pod_uid: str | None = None
    pod_name: str | None = None
    exits: int = 0
    container_restarts: int = 0
    failures: int = 0  # consecutive exits before ready
    running: bool = False
    deleting: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.version, self.replica_id)

    def status(self) -> ReplicaStatus:
        """The manager-neutral status."""
        return ReplicaStatus(
            model=self.model,
            version=self.version,
            replica_id=self.replica_id,
            state=self.state,
            address=self.address,
            pid=None,
            restarts=self.restarts,
            detail=self.detail,
        )

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == _CONTAINER:
            return dict(status)
    return {}


def _pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and bool(status.get("podIP"))


def _describe_termination(terminated: dict[str, Any]) -> tuple[int | None, str]:
    code = terminated.get("exitCode")
    reason = terminated.get("reason") or ""
    message = str(terminated.get("message") or "").strip()
    text = f"exit code {code}" + (f" ({reason})" if reason else "")
    text += f"; stderr tail:\n{message}" if message else "; no termination message"
    return (code if isinstance(code, int) else None), text


class PodTracker:
    """The replicas of every model version, as the pod watch reports them.

    Args:
        port: The container port addresses are made of.
        max_start_failures: Consecutive exits before ready that mark a replica failed.
    """

    def __init__(self, port: int, max_start_failures: int = 5) -> None:
        self._port = port
        self._max_failures = max_start_failures
        self._replicas: dict[tuple[str, str, str], TrackedReplica] = {}
        #: The replica count each version was last scaled to.
        self.wanted: dict[tuple[str, str], int] = {}

    # -- reading ----------------------------------------------------------------

    def get(self, model: str, version: str, replica_id: str) -> TrackedReplica | None:
        """The replica, if tracked."""
        return self._replicas.get((model, version, replica_id))

    def replicas(
        self, model: str | None = None, version: str | None = None
    ) -> list[TrackedReplica]:
        """The tracked replicas, optionally of one model or version, by name,
        version and ordinal."""
        found = [
            r
            for r in self._replicas.values()
            if (model is None or r.model == model) and (version is None or r.version == version)
        ]
        found.sort(key=lambda r: (r.model, r.version, int(r.replica_id)))
        return found

    # -- the desired count --------------------------------------------------------

    def want(self, model: str, version: str, n: int) -> list[TrackedReplica]:
        """Replicas ``0 .. n-1`` of the version are wanted: track the missing ones
        as ``starting`` until their pods appear; give failed ones another chance
        (back to ``starting``).  Returns those failed ones: the caller deletes
        their pods, since a pod stuck in ``ImagePullBackOff`` or
        ``CrashLoopBackOff`` would otherwise stay as it is."""
        self.wanted[(model, version)] = n
        retried: list[TrackedReplica] = []
        for i in range(n):
            replica = self._replicas.get((model, version, str(i)))
            if replica is not None and replica.state == "failed":
                replica.state, replica.failures = "starting", 0
                replica.notify()
                retried.append(replica)
            elif replica is None:
                self._replicas[(model, version, str(i))] = TrackedReplica(model, version, str(i))
        return retried

    def forget(self, replica: TrackedReplica, kind: EventKind = "stopped") -> ReplicaEvent:
        """Stop tracking ``replica``; its last event (``stopped`` by default)."""
        replica.state = "stopped" if kind == "stopped" else replica.state
        replica.address = None
        self._replicas.pop(replica.key, None)
        replica.notify()
        return self._event(kind, replica, replica.detail if kind != "stopped" else "")

    # -- the watch ---------------------------------------------------------------

    def apply(self, kind: str, pod: dict[str, Any]) -> list[ReplicaEvent]:
        """Take one watch event (``ADDED``, ``MODIFIED`` or ``DELETED``); the
        replica events it means, in order."""
        identity = pod_identity(pod)
        if identity is None:
            return []
        replica = self._replicas.get(identity)
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if replica is None or replica.pod_uid != uid or replica.deleting:
                return []
            return self.pod_going(replica)
        events: list[ReplicaEvent] = []
        if replica is None:
            replica = self._replicas[identity] = TrackedReplica(*identity)
        if replica.pod_uid != uid:
            replica.pod_uid, replica.pod_name = uid, meta.get("name")
            replica.deleting, replica.running, replica.address = False, False, None
            replica.container_restarts = 0
            replica.state = "starting"
            events.append(self._event("started", replica, f"pod {replica.pod_name}"))
        events += self._container_changes(replica, pod)
        if events:
            replica.notify()
        return events

    def resync(self, pods: list[dict[str, Any]]) -> list[ReplicaEvent]:
        """After a (re)list: apply every pod, and treat tracked pods that are no
        longer listed as deleted."""
        events: list[ReplicaEvent] = []
        listed = set()
        for pod in pods:
            listed.add((pod.get("metadata") or {}).get("uid"))
            events += self.apply("MODIFIED", pod)
        for replica in list(self._replicas.values()):
            if replica.pod_uid is not None and replica.pod_uid not in listed:
                events += self.pod_going(replica)
        return events

    def pod_going(self, replica: TrackedReplica) -> list[ReplicaEvent]:
        """The replica's pod is being deleted (seen on the watch, or deleted by the
        manager itself): ``exited`` and ``restarting`` while its ordinal is wanted,
        else ``stopped``."""
        wanted = self.wanted.get((replica.model, replica.version), 0)
        if int(replica.replica_id) >= wanted:
            return [self.forget(replica)]
        # Still wanted: the StatefulSet makes a new pod under the same name.
        replica.deleting, replica.address = True, None
        replica.pod_uid = None
        replica.detail = f"pod {replica.pod_name} was deleted"
        replica.exits += 1
        replica.restarts += 1
        replica.state = "restarting"
        replica.notify()
        return [
            self._event("exited", replica, replica.detail),
            self._event("restarting", replica, "the StatefulSet re-creates the pod"),
        ]

    def _container_changes(
        self, replica: TrackedReplica, pod: dict[str, Any]
    ) -> list[ReplicaEvent]:
        events: list[ReplicaEvent] = []
        status = _container_status(pod)
        state = status.get("state") or {}
        count = status.get("restartCount") or 0
        phase = (pod.get("status") or {}).get("phase")
        if count > replica.container_restarts or (phase == "Failed" and replica.state != "failed"):
            terminated = (
                (status.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
            )
            code, replica.detail = _describe_termination(terminated)
            replica.restarts += max(0, count - replica.container_restarts)
            replica.container_restarts = count
            replica.exits += 1
            replica.failures = 0 if replica.state == "running" else replica.failures + 1
            replica.running, replica.address = False, None
            events.append(self._event("exited", replica, replica.detail, exit_code=code))
            if phase == "Failed" or replica.failures >= self._max_failures:
                replica.state = "failed"
                events.append(
                    self._event("failed", replica, f"{replica.failures} exits before ready")
                )
                return events
            replica.state = "restarting"
            events.append(self._event("restarting", replica, "the kubelet restarts it"))
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _FATAL_WAITING and replica.state != "failed":
            replica.state = "failed"
            replica.detail = f"{waiting['reason']}: {waiting.get('message', '')}".strip()
            events.append(self._event("failed", replica, replica.detail))
            return events
        if state.get("running") and not replica.running and replica.state == "restarting":
            replica.running, replica.state = True, "starting"
            events.append(self._event("started", replica, f"pod {replica.pod_name}"))
        elif state.get("running"):
            replica.running = True
        if _pod_ready(pod) and replica.state != "running":
            ip = (pod.get("status") or {})["podIP"]
            host = f"[{ip}]" if ":" in ip else ip
            replica.address = f"{host}:{self._port}"
            replica.state, replica.failures = "running", 0
            events.append(self._event("ready", replica, replica.address))
        elif not _pod_ready(pod) and replica.state == "running":
            replica.state, replica.address = "starting", None  # unready: not serving
        return events

    def _event(
        self, kind: EventKind, replica: TrackedReplica, detail: str, exit_code: int | None = None
    ) -> ReplicaEvent:
        crashed = kind in ("exited", "failed")
        return ReplicaEvent(
            kind=kind,
            model=replica.model,
            version=replica.version,
            replica_id=replica.replica_id,
            address=replica.address,
            detail=detail,
            exit_code=exit_code,
            restarts=replica.restarts,
            stderr_tail=replica.detail.partition("stderr tail:\n")[2] if crashed else "",
        )
