"""Future helpers of the query path: wait for many with one timer, withdraw,
copy an outcome, and mark an exception nobody waits for as retrieved.

Shared by the direct query path (:mod:`clipper_core.dataplane.application`), the
selection policies' router and the OIP service, so that none of them reaches
into another's private names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["consume_exception", "copy_outcome", "wait_until", "withdraw"]


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

    One waiter and one timer for the whole batch: no task per future.
    """
    pending = [f for f in futures if not f.done()]
    if not pending:
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return
    loop = pending[0].get_loop()  # get_running_loop() is a getpid() on Python 3.11
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(pending)

    def on_done(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not waiter.done():
            waiter.set_result(None)

    def on_timeout() -> None:
        if not waiter.done():
            waiter.set_result(None)

    for f in pending:
        f.add_done_callback(on_done)
    timer = loop.call_later(remaining, on_timeout)
    try:
        await waiter
    finally:
        timer.cancel()
        for f in pending:
            f.remove_done_callback(on_done)


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
