"""Compatibility shim: the process manager moved to :mod:`clipper_core.managers`.

``LocalProcessManager`` here is the spec-level process supervisor
(:class:`clipper_core.managers.supervisor.ProcessSupervisor`) that ``server.py``
drives today: ``scale(name, version, n, make_spec)``, ``wait_ready(handle,
timeout)``, ``restart(handle)``, ``stop_all()``, ``list()`` returning handles,
``on_event=`` with handle-carrying events.  The record-level manager the control
plane is moving to is :class:`clipper_core.managers.local.LocalProcessManager`.
Delete this module once ``server.py`` and the tests import from
:mod:`clipper_core.managers`.
"""

from __future__ import annotations

from clipper_core.managers import base
from clipper_core.managers._child import _Child
from clipper_core.managers.base import ContainerManager, EventKind, ReplicaState, ReplicaStatus
from clipper_core.managers.replica import (
    PARENT_PID_ENV,
    READY_PREFIX,
    THREAD_POOL_VARS,
    ProcessEvent,
    ReplicaHandle,
    ReplicaSpec,
    thread_pool_env,
    to_replica_event,
)
from clipper_core.managers.supervisor import ProcessSupervisor

__all__ = [
    "PARENT_PID_ENV",
    "READY_PREFIX",
    "THREAD_POOL_VARS",
    "ContainerManager",
    "EventKind",
    "LocalProcessManager",
    "ReplicaEvent",
    "ReplicaHandle",
    "ReplicaSpec",
    "ReplicaState",
    "ReplicaStatus",
    "_Child",
    "log_replica_event",
    "thread_pool_env",
]

#: The old names of the process-level manager and its events.
LocalProcessManager = ProcessSupervisor
ReplicaEvent = ProcessEvent


def log_replica_event(event: ProcessEvent | base.ReplicaEvent) -> None:
    """Log a supervisor event (as ``server.py`` passes them) or a neutral one."""
    if isinstance(event, ProcessEvent):
        event = to_replica_event(event)
    base.log_replica_event(event)
