"""Idle probes of the replicas that no local supervisor watches.

A replica that this server's process manager started is watched by its
supervisor: its exit is an event at once, and the replica's dispatcher goes
with it.  One registered by hand (``register_replica``: a container on another
host or port), or one that another frontend starts, has no such watcher here;
dead, it would count as up (``clipper_replica_up``, admission) until a batch
failed on it, and an idle one never gets a batch.

So a watched replica (``ReplicaSlot.watched``) that has been idle for
:data:`PROBE_INTERVAL` -- no batch sent, answered or probe answered since -- is
probed with what the client checks a container with anyway: gRPC health and
``Metadata`` (``ReplicaClient.serving``; the local socket has no call of its
own to ask).  While it is busy, its batches are the evidence and nothing is
probed.  One that fails its probe is ``down``: not counted, and its dispatcher
is stopped, so that it takes no batch, until the replica serves again; then a
dispatcher starts again by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from clipper_core.dataplane.replica_slot import ReplicaSlot

__all__ = ["PROBE_INTERVAL", "PROBE_TIMEOUT", "start_watch", "watch_replica"]

log = logging.getLogger("clipper_core.dataplane")

#: Seconds a watched replica may be idle before it is probed.
PROBE_INTERVAL = 2.0
#: Seconds a probe may take (each of its two calls).
PROBE_TIMEOUT = 2.0


def start_watch(
    slot: ReplicaSlot, what: str, start_dispatcher: Callable[[], asyncio.Task[None]]
) -> asyncio.Task[None]:
    """The task of :func:`watch_replica` for ``slot`` (its ``watch``)."""
    return asyncio.get_running_loop().create_task(
        watch_replica(slot, what, start_dispatcher), name=f"watch {what}"
    )


async def watch_replica(
    slot: ReplicaSlot, what: str, start_dispatcher: Callable[[], asyncio.Task[None]]
) -> None:
    """Probe ``slot``'s replica whenever it is idle (see the module's docstring)
    until its dispatcher ends; ``what`` names it in the log, and
    ``start_dispatcher`` makes a new dispatcher once a down replica is back."""
    # While down, the replica has no dispatcher: the watch must bring one back.
    while slot.down or (slot.task is not None and not slot.task.done()):
        try:
            await _watch_once(slot, what, start_dispatcher)
        except Exception:  # a bug must not end the watch: a down replica would stay down
            log.exception("probing %s failed; again in %g s", what, PROBE_INTERVAL)
            await asyncio.sleep(PROBE_INTERVAL)


async def _watch_once(
    slot: ReplicaSlot, what: str, start_dispatcher: Callable[[], asyncio.Task[None]]
) -> None:
    if slot.down:
        await _bring_back(slot, what, start_dispatcher)
        return
    now = time.monotonic()
    last = max(slot.alive_at, slot.batch_started, slot.checked_at)
    due = last + PROBE_INTERVAL - now
    if due > 0 or slot.in_flight or slot.recovering:
        # Busy or recovering: the dispatcher's calls and checks are the evidence.
        await asyncio.sleep(due if due > 0 else PROBE_INTERVAL)
        return
    if await slot.client.serving(PROBE_TIMEOUT):
        slot.checked_at = time.monotonic()
        return
    task = slot.task
    if max(slot.batch_started, slot.alive_at) >= now or slot.recovering:
        return  # a batch went out meanwhile: its outcome decides
    if task is None or task.done():
        return
    log.warning("%s does not answer its probe; no batch goes to it until it does", what)
    slot.down = True
    # Idle, its dispatcher waits in the queue's take: cancelled there, it holds
    # no input (entries are taken only once it runs again).
    task.cancel()
    await asyncio.wait([task])
    await _bring_back(slot, what, start_dispatcher)


async def _bring_back(
    slot: ReplicaSlot, what: str, start_dispatcher: Callable[[], asyncio.Task[None]]
) -> None:
    await slot.recover()  # clears ``down`` once it serves again
    slot.checked_at = time.monotonic()
    log.info("%s answers again", what)
    slot.task = start_dispatcher()
