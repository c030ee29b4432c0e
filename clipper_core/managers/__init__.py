"""Container managers: what starts, supervises and stops model replicas.

:mod:`~clipper_core.managers.base` declares the interface
(:class:`ContainerManager`, :class:`ReplicaStatus`, :class:`ReplicaEvent`);
:mod:`~clipper_core.managers.local` runs replicas as child processes
(``LocalProcessManager``), and :mod:`~clipper_core.managers.fake` as in-process
servers for tests (``FakeContainerManager``).  Import those from their modules:
this package imports only the interface.
"""

from clipper_core.managers.base import (
    ContainerManager,
    ReplicaEvent,
    ReplicaState,
    ReplicaStatus,
    log_replica_event,
)

__all__ = [
    "ContainerManager",
    "ReplicaEvent",
    "ReplicaState",
    "ReplicaStatus",
    "log_replica_event",
]
