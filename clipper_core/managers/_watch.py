"""Following one replica process until it exits, and terminating it on request
(the supervisor's watch over each process it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from clipper_core.managers._child import _Child
from clipper_core.managers.replica import ReplicaHandle

logger = logging.getLogger("clipper_core.process_manager")

# After a process exits, how long its pipes may still be read for the last lines
# (a grandchild holding them open must not stall the supervisor).
_DRAIN_TIMEOUT = 0.5
# How long to wait for the exit of a process sent SIGKILL before giving up on it.
_KILL_TIMEOUT = 10.0


async def watch(handle: ReplicaHandle, child: _Child) -> int | None:
    """Follow one process until it exits (terminating it if a stop is
    requested), then drain its pipes briefly.  Returns its exit status."""
    stop = asyncio.create_task(handle._stop_requested.wait())
    try:
        either: set[asyncio.Future[Any]] = {child.exited, stop}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not child.exited.done():
            await terminate(handle, child)
        # The last lines may still be in the pipes; a helper the container
        # spawned may hold them open for ever, hence the bound.
        await asyncio.wait({child.pipes_closed}, timeout=_DRAIN_TIMEOUT)
    finally:
        stop.cancel()
        await asyncio.gather(stop, return_exceptions=True)
        # Releases the pipes (and kills the process if, being cancelled, we got
        # here before it exited).
        child.close()
        if handle._child is child:
            handle._child = None
    return child.returncode


async def terminate(handle: ReplicaHandle, child: _Child) -> None:
    """SIGTERM to the process group, SIGKILL after the handle's grace."""
    child.signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(child.exited), handle._grace)
        return
    logger.warning(
        "replica %s (pid %s) ignored SIGTERM for %g s; sending SIGKILL",
        handle.key,
        child.pid,
        handle._grace,
    )
    child.signal(signal.SIGKILL)
    try:
        await asyncio.wait_for(asyncio.shield(child.exited), _KILL_TIMEOUT)
    except TimeoutError:
        logger.error("replica %s (pid %s) survived SIGKILL", handle.key, child.pid)
