"""What the control plane needs from a container manager, whatever runs the replicas.

A :class:`ContainerManager` is handed a :class:`~clipper_core.store.records.ModelRecord` and
a replica count; it starts, supervises and stops that many replicas, each one a
model container serving gRPC at an address it learns at start.  It never touches
the data plane: it reports what happens through :class:`ReplicaEvent` s and
:meth:`ContainerManager.list`, and whoever subscribed (the replica reconciler)
connects the data plane to the addresses.

Replica ids are the strings ``"0"``, ``"1"``, ...: a restart keeps the id, and a
scale down stops the highest ids first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from clipper_core.logs import log_event, server_log
from clipper_core.store.records import ModelRecord

__all__ = [
    "ContainerManager",
    "EventKind",
    "ReplicaEvent",
    "ReplicaState",
    "ReplicaStatus",
    "log_replica_event",
]

#: ``starting`` (spawned, not yet serving), ``running`` (serving at ``address``),
#: ``restarting`` (it exited; a restart is scheduled), ``stopped`` (on request) or
#: ``failed`` (it kept exiting before it was ready and is left alone).
ReplicaState = Literal["starting", "running", "restarting", "stopped", "failed"]
EventKind = Literal["started", "ready", "exited", "restarting", "stopped", "failed"]


@dataclass(frozen=True)
class ReplicaStatus:
    """The observed state of one replica.

    Attributes:
        model: The model's name.
        version: The model version.
        replica_id: ``"0"``, ``"1"``, ...
        state: See :data:`ReplicaState`.
        address: Where it serves while ``running``; None otherwise.
        pid: Its current (or last) process id where the replica is a local process.
        restarts: How many times it was restarted after an exit.
        detail: How its last process ended (exit code and stderr tail), if one did.
    """

    model: str
    version: str
    replica_id: str
    state: ReplicaState
    address: str | None
    pid: int | None
    restarts: int
    detail: str = ""


@dataclass(frozen=True)
class ReplicaEvent:
    """Something that happened to a replica.

    Attributes:
        kind: ``"started"`` (a process or server was started), ``"ready"`` (it
            serves at ``address``; again after every restart), ``"exited"`` (it
            died without being asked to), ``"restarting"`` (a restart is
            scheduled), ``"stopped"`` (stopped on request) or ``"failed"`` (it kept
            dying before it was ready and will not be restarted).
        model: The model's name.
        version: The model version.
        replica_id: ``"0"``, ``"1"``, ...
        address: The address, for ``"ready"``.
        pid: The replica's process id, where it is a local process.
        detail: The address for ``"ready"``; the exit status and stderr tail for
            ``"exited"`` and ``"failed"``; the delay for ``"restarting"``.
        exit_code: The exit status of the last process (negative: the signal that
            killed it), for ``"exited"``, ``"failed"`` and ``"stopped"``.
        restarts: How many times the replica was restarted so far.
        stderr_tail: The last stderr lines of the process, for ``"exited"`` and
            ``"failed"``.
    """

    kind: EventKind
    model: str
    version: str
    replica_id: str
    address: str | None = None
    pid: int | None = None
    detail: str = ""
    exit_code: int | None = None
    restarts: int = 0
    stderr_tail: str = ""


class ContainerManager(Protocol):
    """Starts and supervises the replicas of model versions.

    Implementations: :class:`clipper_core.managers.local.LocalProcessManager`
    (child processes) and :class:`clipper_core.managers.fake.FakeContainerManager`
    (in-process servers, for tests).
    """

    async def scale(self, model: ModelRecord, n: int) -> None:
        """Start or stop replicas of ``model`` until ``n`` are supervised.

        Idempotent; returns once the replicas are started, without waiting for
        them to be ready (follow with :meth:`wait_ready`).  ``n = 0`` stops every
        replica of the version.  Failed replicas are replaced, new ones take the
        lowest free ids, and a scale down stops the highest ids first.  A record
        whose replicas are registered by hand (container kind ``"external"``) is
        left alone.

        Raises:
            BadInput: ``n`` < 0, or the record describes no container to start.
            ReplicaUnavailable: A replica could not be started (the others stay).
        """
        ...

    # The timeout is part of the contract (and of the error message), so it is a
    # parameter rather than left to the caller's asyncio.timeout().
    async def wait_ready(self, name: str, version: str, replica_id: str, timeout: float) -> str:  # noqa: ASYNC109
        """Wait until a replica serves; its address.

        Raises:
            ReplicaUnavailable: The replica exited before it was ready (the message
                holds the exit code and the stderr tail), is stopped, failed or
                unknown, or ``timeout`` seconds passed.
        """
        ...

    async def restart(self, name: str, version: str, replica_id: str) -> None:
        """Restart a replica now (its model hangs, for example).

        It goes through the usual ``exited``, ``restarting``, ``started`` and
        ``ready`` events; an unknown or stopping replica is left alone.
        """
        ...

    def list(self, name: str | None = None, version: str | None = None) -> list[ReplicaStatus]:
        """The supervised replicas (failed ones included until the next scale),
        optionally of one model or model version, by name, version and id."""
        ...

    def subscribe(self, callback: Callable[[ReplicaEvent], None]) -> None:
        """Call ``callback`` (on the loop, synchronously; it must not block) with
        every event from now on.  Errors it raises are logged."""
        ...

    async def close(self) -> None:
        """Release the manager: a local one stops (and reaps) its replicas."""
        ...


_LEVELS = {
    "started": logging.INFO,
    "ready": logging.INFO,
    "stopped": logging.INFO,
    "restarting": logging.WARNING,
    "exited": logging.WARNING,
    "failed": logging.ERROR,
}


def log_replica_event(event: ReplicaEvent) -> None:
    """Log a replica event as a structured record (``replica_<kind>``): start,
    ready, stop, crash (with its stderr tail)."""
    kind = str(event.kind)
    fields: dict[str, Any] = {
        "model": event.model,
        "version": event.version,
        "replica": event.replica_id,
        "pid": event.pid,
    }
    who = f"replica {event.replica_id} of {event.model}:{event.version}"
    if kind == "ready":
        fields["address"] = event.detail
        message = f"{who} is ready at {event.detail}"
    elif kind in ("exited", "failed"):
        fields["exit_code"] = event.exit_code
        fields["restarts"] = event.restarts
        fields["stderr_tail"] = event.stderr_tail
        summary = event.detail.split(";", 1)[0]
        message = f"{who} {kind}: {summary}"
    elif kind == "restarting":
        fields["restarts"] = event.restarts
        message = f"{who}: {event.detail}"
    else:
        detail = event.detail.split(";", 1)[0]
        message = f"{who} {kind}" + (f" ({detail})" if detail else "")
    log_event(
        server_log,
        f"replica_{kind}",
        message,
        level=_LEVELS.get(kind, logging.INFO),
        **fields,
    )
