"""``FeedFollower``: hands every change of the store to this frontend's
reconcilers, whichever frontend (or CLI) wrote it.

Every change goes to the data-plane reconciler.  With a shared store, the
replica lease holder's replica reconciler also scales each changed model (in
the background: a start must not hold up the feed), and restores everything
after a resync.

A frontend reconciles its own writes inline (read-your-writes, design §5.4, 4);
the feed brings every write again, its own included, which is harmless because
reconciling is level-triggered.  On :class:`ResyncNeeded` (a gap: the change log
was trimmed past what this frontend saw, the store was flushed or replaced) it
reconciles everything and follows on from the store's revision read *before*
that, so nothing committed meanwhile is missed.  When the store cannot be
reached it tries again from the last revision it saw: a stream keeps what a
disconnected subscriber missed.
"""

from __future__ import annotations

import asyncio
import logging

from clipper_core.control.reconcile import DataPlaneReconciler
from clipper_core.control.replicas import ReplicaReconciler
from clipper_core.control.tasks import BackgroundTasks
from clipper_core.logs import log_event
from clipper_core.store.base import ChangeFeed, DesiredStateReader, ResyncNeeded, StateEvent

__all__ = ["FeedFollower"]

log = logging.getLogger("clipper_core.control")


class FeedFollower:
    """Follows a change feed until cancelled (or the store closes).

    Args:
        feed: The store's change feed.
        reader: The store (its revision is read before a resync).
        apply: This frontend's data-plane reconciler.
        replicas: With a shared store, the replica reconciler (it acts only
            while it holds the lease); None: this process's own writes start the
            replicas (a single frontend).
        tasks: Runs the replica reconciler's work in the background.
        retry: Seconds between attempts while the store cannot be reached.
    """

    def __init__(
        self,
        feed: ChangeFeed,
        reader: DesiredStateReader,
        apply: DataPlaneReconciler,
        *,
        replicas: ReplicaReconciler | None = None,
        tasks: BackgroundTasks | None = None,
        retry: float = 1.0,
    ) -> None:
        self._feed = feed
        self._reader = reader
        self._apply = apply
        self._replicas = replicas
        self._tasks = tasks or BackgroundTasks()
        self._retry = retry
        #: The revision of the last event reconciled (or of the last resync).
        self.revision = 0

    async def _on_event(self, event: StateEvent) -> None:
        await self._apply.reconcile(event)
        replicas = self._replicas
        if replicas is not None and event.kind == "model" and replicas.lease.held():
            self._tasks.spawn(replicas.reconcile_model(event.name), f"scaling {event.name}")

    async def _on_resync(self) -> None:
        await self._apply.sync_all()
        replicas = self._replicas
        if replicas is not None and replicas.lease.held():
            self._tasks.spawn(replicas.ensure_all(), "restoring the replicas")

    async def run(self, since: int) -> None:
        """Reconcile every change after revision ``since``, then each as it comes."""
        self.revision = since
        while True:
            # One write logs several events under one revision (a deleted model
            # and each app linked to it): one that fails must have the revision
            # taken again whole, not from its next event on.
            handling: int | None = None
            try:
                async for event in self._feed.subscribe(self.revision):
                    handling = event.revision
                    await self._on_event(event)
                    self.revision = event.revision
                    handling = None
                return  # the store was closed
            except ResyncNeeded as exc:
                log_event(
                    log,
                    "state_resync",
                    f"change feed gap after revision {self.revision} ({exc}): reconciling all",
                    level=logging.WARNING,
                    revision=self.revision,
                )
                try:
                    revision = await asyncio.to_thread(self._reader.revision)
                    await self._on_resync()
                    self.revision = revision
                except Exception as inner:
                    log.warning("resync failed: %s; trying again", inner)
                    await asyncio.sleep(self._retry)
            except Exception as exc:
                # The store went away, or reconciling an event failed: take it
                # again from the last revision done (it is reread, so a repeat
                # is harmless).
                if handling is not None:
                    self.revision = min(self.revision, handling - 1)
                log.warning(
                    "following the state store failed after revision %d: %s; retrying",
                    self.revision,
                    exc,
                )
                await asyncio.sleep(self._retry)
