"""Coalescing identical cache misses: one queued input shared by its requesters.

While an input is being computed, a second request for the same cache key waits on
the same answer instead of queueing the input again (``ModelVersion.submit``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from clipper_core.dataplane.cache_entry import compact
from clipper_core.errors import ClipperError, DeadlineExceeded
from clipper_core.structures import ENTRY_OVERHEAD, PredictionCache

__all__ = ["CoalescingModel", "SharedComputation"]


class CoalescingModel(Protocol):
    """What a :class:`SharedComputation` uses of its model version (``ModelVersion``)."""

    name: str
    version: str
    cache: PredictionCache | None
    #: Queued inputs withdrawn because every requester went away.
    cancelled: int
    #: Cache key -> the computation in flight for it.
    _computations: dict[bytes, SharedComputation]

    def requeue(self, value: Any, deadline: float) -> asyncio.Future[Any]:
        """Queue ``value`` again as a fresh input."""
        ...


class SharedComputation:
    """One queued input that several requesters of the same cache key share.

    Each requester holds its own future (the cache's); the queued input is
    withdrawn -- its queue future cancelled, so that no dispatcher sends it to the
    model -- only once *every* requester's future is cancelled.  A requester that
    disconnects therefore never cancels the answer others still wait for.
    """

    __slots__ = ("cache", "deadline", "key", "mv", "queued", "settled", "value", "waiters")

    def __init__(
        self,
        mv: CoalescingModel,
        cache: PredictionCache,
        key: bytes,
        queued: asyncio.Future[Any],
        value: Any,
        deadline: float,
    ) -> None:
        self.mv = mv
        # The cache that reserved the key: the version's may be switched off (or
        # replaced) while the input is computed, and the entry must still settle.
        self.cache = cache
        self.key = key
        self.queued = queued
        self.value = value
        self.deadline = deadline  # the latest deadline of any requester
        self.waiters = 0
        self.settled = False

    def join(self, waiter: asyncio.Future[Any], deadline: float) -> None:
        self.waiters += 1
        if deadline > self.deadline:
            self.deadline = deadline
        waiter.add_done_callback(self._left)

    def _left(self, waiter: asyncio.Future[Any]) -> None:
        if not waiter.cancelled() or self.settled:
            return  # answered (or failed) through the cache, like everyone else
        self.waiters -= 1
        if self.waiters > 0 or self.queued.done():
            return
        # Nobody waits any more.  Settle the cache entry now, so that a new request
        # for the same input starts a fresh computation instead of joining this one.
        mv = self.mv
        self._forget()
        self.queued.cancel()
        mv.cancelled += 1
        gone = DeadlineExceeded("every requester went away")
        self.cache.fail(mv.name, mv.version, self.key, gone)

    def settle(self, queued: asyncio.Future[Any]) -> None:
        """The queued input's outcome: store it in the cache and resolve every waiter."""
        if self.settled or queued is not self.queued:
            return
        if (
            not queued.cancelled()
            and isinstance(queued.exception(), DeadlineExceeded)
            and self.waiters > 0
            and self.deadline > time.monotonic()
        ):
            # It expired on the first requester's deadline, but a requester who
            # joined later may still wait: queue it again on the latest deadline.
            try:
                again = self.mv.requeue(self.value, self.deadline)
            except ClipperError:
                pass
            else:
                self.queued = again
                again.add_done_callback(self.settle)
                return
        self._forget()
        mv, cache = self.mv, self.cache
        if queued.cancelled():
            cache.fail(mv.name, mv.version, self.key, DeadlineExceeded("cancelled"))
            return
        exc = queued.exception()
        if exc is not None:
            cache.fail(mv.name, mv.version, self.key, exc)
        else:
            value, nbytes = compact(queued.result())
            cache.put(mv.name, mv.version, self.key, value, nbytes + len(self.key) + ENTRY_OVERHEAD)

    def _forget(self) -> None:
        self.settled = True
        if self.mv._computations.get(self.key) is self:
            del self.mv._computations[self.key]
