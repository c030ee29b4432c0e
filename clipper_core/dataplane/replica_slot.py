"""A connected replica of a model version, as its dispatcher sees it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from clipper_core.dataplane.batch_latency import OwnLatency
from clipper_core.replica_client import ReplicaClient
from clipper_core.structures import QueueEntry

__all__ = ["QUARANTINE_FIRST", "QUARANTINE_MAX", "ReplicaSlot"]

#: Seconds a replica gets no batch after its first batch timeout (see ``quarantine``).
QUARANTINE_FIRST = 1.0
#: Most seconds it gets none after batch timeouts in a row (the back-off doubles).
QUARANTINE_MAX = 60.0


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
    #: (:mod:`~clipper_core.dataplane.replica_watch`), and hung, quarantined.
    watched: bool = False
    #: The probe task of a watched replica.
    watch: asyncio.Task[None] | None = None
    #: Set while it does not answer its probes (health and Metadata).
    down: bool = False
    #: The last probe it answered (``time.monotonic()``).
    checked_at: float = 0.0
    #: Seconds of its current quarantine after a batch timeout (0: none); cleared
    #: by a batch answered.  Its dispatcher takes no batch before ``quarantined_until``.
    quarantine: float = 0.0
    quarantined_until: float = 0.0

    @property
    def up(self) -> bool:
        """Whether it counts as serving (admission, readiness, ``clipper_replica_up``):
        its dispatcher runs, it answers, and it is neither in a quarantine nor
        running the trial batch after one.  Idle once its quarantine is over, it
        counts again: else a replica that readiness took out of rotation would get
        no batch to clear it with."""
        task = self.task
        return (
            task is not None
            and not task.done()
            and not self.recovering
            and not self.down
            and not (
                self.quarantine and (self.in_flight or time.monotonic() < self.quarantined_until)
            )
        )

    def quarantine_after_timeout(self) -> float:
        """A batch passed its timeout: no batch for the next back-off (doubling
        from ``QUARANTINE_FIRST`` up to ``QUARANTINE_MAX``); its seconds."""
        self.quarantine = min(max(self.quarantine * 2, QUARANTINE_FIRST), QUARANTINE_MAX)
        self.quarantined_until = time.monotonic() + self.quarantine
        return self.quarantine

    async def recover(self) -> None:
        """Wait until the replica serves its model again (it reports SERVING and
        its Metadata names the model: not another's container restarted at its
        address), probing at most once a second, and its quarantine, if any, is over."""
        delay = 0.05
        self.recovering = True  # admission control does not count it meanwhile
        try:
            while True:
                await asyncio.sleep(max(delay, self.quarantined_until - time.monotonic()))
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
        # The watch first: it would start a paused dispatcher again.  Each step
        # runs even if the caller is cancelled meanwhile: a slot already out of
        # its model's replicas must not keep a dispatcher taking batches.
        try:
            await _cancel(self.watch)
        finally:
            try:
                await _cancel(self.task)
            finally:
                await self.client.close()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        # wait(), not await: a CancelledError here must be our caller's own.
        await asyncio.wait([task])
