"""Future helpers of the query path: wait for many with one timer, resolve an
input's future (waking its waiter in the same loop turn), withdraw, copy an
outcome, and mark an exception nobody waits for as retrieved.

Shared by the direct query path (:mod:`clipper_core.dataplane.application`), the
selection policies' router and the OIP service, so that none of them reaches
into another's private names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["consume_exception", "copy_outcome", "resolve", "wait_until", "withdraw"]


class _Wait:
    """One :func:`wait_until` call: how many of its futures are still pending, and
    the future its caller awaits."""

    __slots__ = ("left", "waiter")

    def __init__(self, waiter: asyncio.Future[None], left: int) -> None:
        self.waiter = waiter
        self.left = left

    def count(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.waiter.done():
            self.waiter.set_result(None)

    def direct_done(self, fut: asyncio.Future[Any]) -> None:
        """Done callback of a future registered in ``_WAITS``: counts it, unless
        :func:`resolve` already did."""
        if _WAITS.get(fut) is self:
            del _WAITS[fut]
            self.count()

    def plain_done(self, fut: asyncio.Future[Any]) -> None:
        """Done callback of a future another wait registered first."""
        self.count()

    def expire(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)


#: The wait of each pending future that a :func:`wait_until` waits on (the first
#: one, when several wait on a shared future).  :func:`resolve` counts a future
#: for its wait at once: a done callback runs a loop turn after ``set_result``,
#: and the waiter's own wake-up one more.  Touched only from the future's loop.
_WAITS: dict[asyncio.Future[Any], _Wait] = {}


def resolve(fut: asyncio.Future[Any], value: Any) -> None:
    """``fut.set_result(value)`` for a pending ``fut``, and wake the
    :func:`wait_until` waiting on it in this loop turn rather than the next."""
    fut.set_result(value)
    wait = _WAITS.pop(fut, None)
    if wait is not None:
        wait.count()


def consume_exception(fut: asyncio.Future[Any]) -> None:
    """Mark the exception of a done ``fut`` as retrieved (a done callback).

    Nobody may be waiting any more (the latency objective passed, the client
    left): asyncio must not report the exception as never retrieved.
    """
    if not fut.cancelled():
        fut.exception()


def copy_outcome(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    """Give ``dst`` the result, exception or cancellation of the done ``src``.

    A ``dst`` already done (its requester left, or it was answered) keeps its
    outcome, and an exception of ``src`` is then marked as retrieved.
    """
    if dst.done():
        consume_exception(src)
        return
    if src.cancelled():
        dst.cancel()
        return
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


async def wait_until(futures: Sequence[asyncio.Future[Any]], deadline: float) -> None:
    """Wait until every future is done or the monotonic ``deadline`` passes.

    One waiter and one timer for the whole batch: no task per future.  A future
    resolved with :func:`resolve` wakes the waiter without a loop turn between.
    """
    pending = [f for f in futures if not f.done()]
    if not pending:
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return
    loop = pending[0].get_loop()  # get_running_loop() is a getpid() on Python 3.11
    waiter: asyncio.Future[None] = loop.create_future()
    wait = _Wait(waiter, len(pending))
    waits = _WAITS
    callbacks = []
    for f in pending:
        callback = wait.direct_done if waits.setdefault(f, wait) is wait else wait.plain_done
        f.add_done_callback(callback)
        callbacks.append(callback)
    timer = loop.call_later(remaining, wait.expire)
    try:
        await waiter
    finally:
        timer.cancel()
        for f, callback in zip(pending, callbacks, strict=True):
            f.remove_done_callback(callback)
            if waits.get(f) is wait:
                del waits[f]


def withdraw(futures: Sequence[asyncio.Future[Any]]) -> int:
    """Cancel the futures still pending; returns how many were cancelled.

    A queued input whose every requester cancelled is skipped by the dispatchers
    (``ModelVersion.submit``).  The exceptions of those already done are marked
    as retrieved.
    """
    n = 0
    for f in futures:
        if f.cancel():
            n += 1
        else:
            f.add_done_callback(consume_exception)
    return n
