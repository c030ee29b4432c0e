"""``ReplicaReconciler``: drives the container manager from the store.

It runs where the containers are owned: the one frontend of a single-host
server, or the lease holder of many frontends sharing a store (see
:mod:`clipper_core.control.lease`).  It asks the manager for each model
version's ``num_replicas``, turns the manager's events into endpoints
(``publish`` when a replica serves, ``withdraw`` when it is gone), and lets a
deploy wait until the replicas it started serve, or fail with why they did not.
On a frontend without the lease it starts nothing: a deploy there waits until
the holder's replicas serve on this frontend too.

Where endpoints go: on a single host, straight to the local
:class:`~clipper_core.control.reconcile.DataPlaneReconciler`; with a shared
store, into the store as endpoint records (:class:`StoreEndpointSink`), which
every frontend's data-plane reconciler follows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from clipper_core.control.lease import AlwaysHeld, Lease
from clipper_core.control.tasks import BackgroundTasks
from clipper_core.errors import NotFound
from clipper_core.logs import log_event
from clipper_core.managers.base import ContainerManager, ReplicaEvent, log_replica_event
from clipper_core.store.base import DesiredStateReader, StateStore
from clipper_core.store.records import EndpointRecord, ModelRecord

log = logging.getLogger("clipper_core.control")


class EndpointSink(Protocol):
    """Where the addresses of serving replicas go: on a single host, the local
    :class:`~clipper_core.control.reconcile.DataPlaneReconciler`."""

    def publish(self, name: str, version: str, replica_id: str, address: str) -> None: ...

    def withdraw(self, name: str, version: str, replica_id: str) -> None: ...

    async def connected(self, name: str, version: str, replica_id: str, address: str) -> None: ...

    async def prune(self, name: str, version: str, n: int) -> None: ...

    async def serving(self, name: str, version: str, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until replicas ``0 .. n-1`` (and no other started ones) serve here."""
        ...


class StoreEndpointSink:
    """The endpoints of a lease holder's replicas, published as endpoint records
    in the shared store (every frontend's data plane follows them), and applied
    to this frontend's data plane at once where waiting for the feed would
    delay: a withdrawn replica, a deploy waiting for its replicas.

    Store writes run in a thread, one after the other in the order the events
    came (a replica that restarts is deleted, then put, never the reverse), and
    only while the lease is held: a frontend that lost it leaves the records to
    its successor.

    Args:
        store: The shared store.
        local: This frontend's data-plane reconciler.
        lease: The replica lease.
    """

    def __init__(self, store: StateStore, local: EndpointSink, lease: Lease) -> None:
        self._store = store
        self._local = local
        self._lease = lease
        self._last: asyncio.Task[None] | None = None

    def _queue(self, write: Callable[[], Any], what: str) -> asyncio.Task[None]:
        previous = self._last

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            if not self._lease.held():
                return
            try:
                await asyncio.to_thread(write)
            except NotFound:
                log.debug("%s: its model version is gone", what)
            except Exception as exc:
                log.warning("%s failed: %s", what, exc)

        self._last = task = asyncio.get_running_loop().create_task(run(), name=what)
        return task

    def _put(self, name: str, version: str, replica_id: str, address: str) -> asyncio.Task[None]:
        record = EndpointRecord(name, version, replica_id, address)
        return self._queue(
            lambda: self._store.put_endpoint(record),
            f"publishing replica {replica_id} of {record.key}",
        )

    def publish(self, name: str, version: str, replica_id: str, address: str) -> None:
        """A replica serves: record it (every data plane connects from the record)."""
        self._put(name, version, replica_id, address)

    def withdraw(self, name: str, version: str, replica_id: str) -> None:
        """A replica is gone: stop dispatching to it here now, and drop its record."""
        self._local.withdraw(name, version, replica_id)
        self._queue(
            lambda: self._store.delete_endpoint(name, version, replica_id),
            f"withdrawing replica {replica_id} of {name}:{version}",
        )

    async def connected(self, name: str, version: str, replica_id: str, address: str) -> None:
        """Record the replica, then wait until this frontend is connected to it."""
        await asyncio.shield(self._put(name, version, replica_id, address))
        await self._local.connected(name, version, replica_id, address)

    async def prune(self, name: str, version: str, n: int) -> None:
        """Drop the records (and local dispatchers) of replicas ``n`` and above."""

        def delete() -> None:
            for e in self._store.list_endpoints(name, version):
                if e.replica_id.isdigit() and int(e.replica_id) >= n:
                    self._store.delete_endpoint(name, version, e.replica_id)

        await asyncio.shield(self._queue(delete, f"pruning {name}:{version} to {n} replica(s)"))
        await self._local.prune(name, version, n)

    async def serving(self, name: str, version: str, n: int, timeout: float) -> None:  # noqa: ASYNC109
        await self._local.serving(name, version, n, timeout)

    async def drain(self) -> None:
        """Wait for the store writes queued so far."""
        if self._last is not None:
            await asyncio.wait([self._last])


class ReplicaReconciler:
    """Keeps each model version's replicas at its ``num_replicas``.

    Args:
        manager: Starts and stops the replicas.
        reader: The store (read from worker threads).
        endpoints: Told which replicas serve where.
        tasks: Runs restarts in the background.
        start_timeout: Seconds a replica may take to become ready.
        lease: Whether this process owns the replicas (default: always).
    """

    def __init__(
        self,
        manager: ContainerManager,
        reader: DesiredStateReader,
        endpoints: EndpointSink,
        tasks: BackgroundTasks,
        *,
        start_timeout: float,
        lease: Lease | None = None,
    ) -> None:
        self.manager = manager
        self._reader = reader
        self._endpoints = endpoints
        self._tasks = tasks
        self._start_timeout = start_timeout
        self.lease: Lease = lease or AlwaysHeld()
        # The record each version was last scaled with: a version deleted by
        # another frontend is stopped with it.
        self._records: dict[tuple[str, str], ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        manager.subscribe(self.on_event)

    async def ensure(self, name: str, version: str) -> None:
        """Bring ``name:version`` to its recorded replica count and return once
        every replica serves.

        Without the lease, start nothing: wait (twice the start timeout) until
        the holder's replicas serve on this frontend.

        Raises:
            ReplicaUnavailable: A replica exited before it was ready (its exit
                status and stderr tail in the message), or did not become ready
                within the start timeout.
        """
        rec = await asyncio.to_thread(self._reader.get_model, name, version)
        if rec is None or rec.registered_by_hand:
            return
        if not self.lease.held():
            await self._endpoints.serving(name, version, rec.num_replicas, 2 * self._start_timeout)
            return
        await self.scale(rec, rec.num_replicas)

    async def scale(self, rec: ModelRecord, n: int) -> None:
        """Run ``n`` replicas of ``rec`` and wait until each serves."""
        self._records[(rec.name, rec.version)] = rec
        # Replicas beyond n lose their dispatchers before their processes are
        # stopped: their in-flight batches go back to the queue as removed, not
        # lost (a stopping container refuses calls, which looked like a crash and
        # pinned good inputs as poison).  A version being deleted keeps the other
        # order, so that its last batches are answered.
        await self._endpoints.prune(rec.name, rec.version, n)
        await self.manager.scale(rec, n)
        await self.wait_converged(rec.name, rec.version, n)

    async def wait_converged(self, name: str, version: str, n: int) -> None:
        """Wait until replicas ``0 .. n-1`` of ``name:version`` are connected."""
        for i in range(n):
            rid = str(i)
            address = await self.manager.wait_ready(name, version, rid, self._start_timeout)
            await self._endpoints.connected(name, version, rid, address)

    async def stop(self, rec: ModelRecord) -> None:
        """Stop every replica of ``rec`` (its record is about to be deleted)."""
        if not rec.registered_by_hand and self.lease.held():
            self._records.pop((rec.name, rec.version), None)
            await self.manager.scale(rec, 0)
        await self._endpoints.prune(rec.name, rec.version, 0)

    async def reconcile_model(self, name: str) -> None:
        """The lease holder's answer to a change of model ``name`` made anywhere:
        scale each version to its recorded count and stop the versions that are
        gone, without waiting for readiness (the replicas' ``ready`` events
        publish them).  Level-triggered: the records are reread."""
        if not self.lease.held():
            return
        async with self._locks.setdefault(name, asyncio.Lock()):
            records = await asyncio.to_thread(self._reader.list_models, name)
            wanted = {r.version: r for r in records if not r.registered_by_hand}
            for key in [k for k in self._records if k[0] == name and k[1] not in wanted]:
                await self.manager.scale(self._records.pop(key), 0)
                await self._endpoints.prune(name, key[1], 0)
            for rec in wanted.values():
                self._records[(name, rec.version)] = rec
                await self._endpoints.prune(name, rec.version, rec.num_replicas)  # see scale()
                await self.manager.scale(rec, rec.num_replicas)

    async def release_all(self) -> None:
        """Stop every replica this process started (it lost the lease: the new
        holder starts its own)."""
        records, self._records = list(self._records.values()), {}
        for rec in records:
            await self.manager.scale(rec, 0)

    async def ensure_all(self) -> None:
        """Start the replicas of every model in the store (the restore on start,
        a resync after a gap in the change feed, a lease taken over), and stop
        those this process runs of versions the store no longer has (deleted
        while its events were missed); a model that fails is logged and the
        others go on."""
        models = await asyncio.to_thread(self._reader.list_models)
        stored = {(m.name, m.version) for m in models}
        gone = sorted({name for name, version in self._records if (name, version) not in stored})
        for name in gone:
            try:
                await self.reconcile_model(name)
            except Exception as exc:
                log.error("stopping the replicas of deleted versions of %s failed: %s", name, exc)
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

    def supervises(self, name: str, version: str, replica_id: str) -> bool:
        """Whether the manager runs this replica (and so restarts it when it
        exits or hangs): not one registered by hand, nor another frontend's."""
        return any(s.replica_id == replica_id for s in self.manager.list(name, version))

    def recycle(self, name: str, version: str, replica_id: str) -> None:
        """A replica's batch passed its batch timeout: restart its process.

        The manager stops it and starts a new one; the usual events then replace
        its dispatcher.  A replica registered by hand cannot be restarted from
        here: its dispatcher waits until it answers health checks again."""
        if not self.supervises(name, version, replica_id):
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
