"""``ReplicaReconciler``: drives the container manager from the store.

It runs where the containers are owned (the one frontend of a single-host server;
later the lease holder of many).  It asks the manager for each model version's
``num_replicas``, turns the manager's events into endpoints (``publish`` when a
replica serves, ``withdraw`` when it is gone), and lets a deploy wait until the
replicas it started serve, or fail with why they did not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from clipper_core.control.tasks import BackgroundTasks
from clipper_core.logs import log_event
from clipper_core.managers.base import ContainerManager, ReplicaEvent, log_replica_event
from clipper_core.store.base import DesiredStateReader
from clipper_core.store.records import ModelRecord

log = logging.getLogger("clipper_core.control")


class EndpointSink(Protocol):
    """Where the addresses of serving replicas go: on a single host, the local
    :class:`~clipper_core.control.reconcile.DataPlaneReconciler`."""

    def publish(self, name: str, version: str, replica_id: str, address: str) -> None: ...

    def withdraw(self, name: str, version: str, replica_id: str) -> None: ...

    async def connected(self, name: str, version: str, replica_id: str, address: str) -> None: ...

    async def prune(self, name: str, version: str, n: int) -> None: ...


class ReplicaReconciler:
    """Keeps each model version's replicas at its ``num_replicas``.

    Args:
        manager: Starts and stops the replicas.
        reader: The store (read from worker threads).
        endpoints: Told which replicas serve where.
        tasks: Runs restarts in the background.
        start_timeout: Seconds a replica may take to become ready.
    """

    def __init__(
        self,
        manager: ContainerManager,
        reader: DesiredStateReader,
        endpoints: EndpointSink,
        tasks: BackgroundTasks,
        *,
        start_timeout: float,
    ) -> None:
        self.manager = manager
        self._reader = reader
        self._endpoints = endpoints
        self._tasks = tasks
        self._start_timeout = start_timeout
        manager.subscribe(self.on_event)

    async def ensure(self, name: str, version: str) -> None:
        """Bring ``name:version`` to its recorded replica count and return once
        every replica serves.

        Raises:
            ReplicaUnavailable: A replica exited before it was ready (its exit
                status and stderr tail in the message), or did not become ready
                within the start timeout.
        """
        rec = await asyncio.to_thread(self._reader.get_model, name, version)
        if rec is None or rec.registered_by_hand:
            return
        await self.scale(rec, rec.num_replicas)

    async def scale(self, rec: ModelRecord, n: int) -> None:
        """Run ``n`` replicas of ``rec`` and wait until each serves."""
        await self.manager.scale(rec, n)
        await self.wait_converged(rec.name, rec.version, n)
        # Replicas beyond n were stopped by the manager; drop their dispatchers
        # now rather than when the events arrive.
        await self._endpoints.prune(rec.name, rec.version, n)

    async def wait_converged(self, name: str, version: str, n: int) -> None:
        """Wait until replicas ``0 .. n-1`` of ``name:version`` are connected."""
        for i in range(n):
            rid = str(i)
            address = await self.manager.wait_ready(name, version, rid, self._start_timeout)
            await self._endpoints.connected(name, version, rid, address)

    async def stop(self, rec: ModelRecord) -> None:
        """Stop every replica of ``rec`` (its record is about to be deleted)."""
        if not rec.registered_by_hand:
            await self.manager.scale(rec, 0)
        await self._endpoints.prune(rec.name, rec.version, 0)

    async def ensure_all(self) -> None:
        """Start the replicas of every model in the store (the restore on start);
        a model that fails is logged and the others go on."""
        models = await asyncio.to_thread(self._reader.list_models)
        results = await asyncio.gather(
            *(self.ensure(m.name, m.version) for m in models), return_exceptions=True
        )
        for m, res in zip(models, results, strict=True):
            if isinstance(res, BaseException):
                log.error("restoring model %s:%s failed: %s", m.name, m.version, res)

    def on_event(self, event: ReplicaEvent) -> None:
        """The manager's events become endpoints."""
        log_replica_event(event)
        if event.kind == "ready" and event.address:
            self._endpoints.publish(event.model, event.version, event.replica_id, event.address)
        elif event.kind in ("exited", "stopped", "failed"):
            self._endpoints.withdraw(event.model, event.version, event.replica_id)

    def recycle(self, name: str, version: str, replica_id: str) -> None:
        """A replica's batch passed its batch timeout: restart its process.

        The manager stops it and starts a new one; the usual events then replace
        its dispatcher.  A replica registered by hand cannot be restarted from
        here: its dispatcher waits until it answers health checks again."""
        if not any(s.replica_id == replica_id for s in self.manager.list(name, version)):
            log.warning(
                "replica %s of %s:%s hung and was not started by this server; waiting for it",
                replica_id,
                name,
                version,
            )
            return
        log_event(
            log,
            "replica_recycled",
            f"replica {replica_id} of {name}:{version} hung; restarting it",
            level=logging.WARNING,
            model=name,
            version=version,
            replica=replica_id,
        )
        self._tasks.spawn(
            self.manager.restart(name, version, replica_id), f"restarting {name}:{version}"
        )
