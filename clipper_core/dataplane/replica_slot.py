"""A connected replica of a model version, as its dispatcher sees it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from clipper_core.dataplane.batch_latency import OwnLatency
from clipper_core.replica_client import ReplicaClient
from clipper_core.structures import QueueEntry

__all__ = ["ReplicaSlot"]


@dataclass
class ReplicaSlot:
    """A connected replica and its dispatcher task."""

    replica_id: str
    address: str
    client: ReplicaClient
    task: asyncio.Task[None] | None = None
    batches: int = 0
    failures: int = 0
    in_flight: list[QueueEntry] = field(default_factory=list)
    #: Set while the dispatcher waits for the replica to answer health checks again.
    recovering: bool = False
    #: When the batch in flight was sent (``time.monotonic()``).
    batch_started: float = 0.0
    #: Turns this replica's round trips into batch latencies (see batch_latency).
    own_latency: OwnLatency = field(default_factory=OwnLatency)
    #: The last time this replica showed it was alive: connected, or answered a
    #: call (``time.monotonic()``); crash isolation weighs its losses by it.
    alive_at: float = field(default_factory=time.monotonic)
    #: Whether no local supervisor watches its process (a replica registered by
    #: hand, or one that another frontend starts): idle, it is probed
    #: (:mod:`~clipper_core.dataplane.replica_watch`).
    watched: bool = False
    #: The probe task of a watched replica.
    watch: asyncio.Task[None] | None = None
    #: Set while it does not answer its probes (health and Metadata).
    down: bool = False
    #: The last probe it answered (``time.monotonic()``).
    checked_at: float = 0.0

    @property
    def up(self) -> bool:
        """Whether it counts as serving (admission, readiness, ``clipper_replica_up``):
        its dispatcher runs and it answers."""
        task = self.task
        return task is not None and not task.done() and not self.recovering and not self.down

    async def recover(self) -> None:
        """Wait until the replica serves its model again (it reports SERVING and
        its Metadata names the model: not another's container restarted at its
        address), probing at most once a second."""
        delay = 0.05
        self.recovering = True  # admission control does not count it meanwhile
        try:
            while True:
                await asyncio.sleep(delay)
                if await self.client.serving():
                    # Back (restarted at its address): isolation tells its next loss apart.
                    self.alive_at = time.monotonic()
                    self.down = False
                    return
                self.down = True
                delay = min(delay * 2, 1.0)
        finally:
            self.recovering = False

    async def stop(self) -> None:
        """Stop the probes and the dispatcher (its batch in flight is handed back),
        and close the client."""
        await _cancel(self.watch)  # first: it would start a paused dispatcher again
        await _cancel(self.task)
        await self.client.close()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        # wait(), not await: a CancelledError here must be our caller's own.
        await asyncio.wait([task])
