"""Pure-Python twin of ``clipper_core._ext.batch_queue``: the executable spec.

A :class:`BatchQueue` holds the pending predictions of one model version.  The
frontend ``put()``s a request and gets an :class:`asyncio.Future`; the replica
dispatchers ``take()`` batches of :class:`QueueEntry` and resolve their futures.

Ordering: higher ``priority`` first, first in first out within a priority.  Each
priority level is a deque; level 0 (the common case) has its own and costs nothing
extra, the other levels sit in a dict with a small sorted list of the present
levels.

Delayed batching (Clipper): ``take(max_n, max_wait)`` waits for the first entry,
then keeps collecting until it has ``max_n`` entries or ``max_wait`` seconds have
passed since the *arrival* of the oldest waiting entry, whichever comes first.

Dead entries: an entry whose deadline has passed is removed before it can be
batched and its future fails with :class:`~clipper_core.errors.DeadlineExceeded`
(``expired``); an entry whose future is already done (the caller cancelled it) is
dropped (``cancelled``).  Both are found lazily, when a take reaches them, or at
the head of a level when a full queue is about to reject a ``put()``.

Several takers (one per replica) may wait on one queue.  Entries stay in the queue
until a taker cuts its batch with ``take_nowait``, so no entry can be given twice
or lost.  A taker that starts collecting *claims* ``max_n`` entries; an idle taker
is woken only when the queue holds more entries than the collecting takers have
claimed, and a collecting one only when the queue reaches its ``max_n`` (or its
timer fires).  A taker that ends, by returning, by cancellation or by error, gives
up its claim and wakes an idle taker if entries are left unclaimed.

Times are absolute ``time.monotonic()`` seconds; ``math.inf`` means no deadline.
A queue is used from one event loop (the thread that runs it).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import operator
import time
from collections import deque
from typing import Any, Protocol

from clipper_core._pure.queue_entry import QueueEntry
from clipper_core.errors import DeadlineExceeded, QueueClosed, QueueFull

__all__ = ["BatchQueue", "QueueEntry"]

_monotonic = time.monotonic
_INF = math.inf


class _HasBatchSize(Protocol):
    @property
    def batch_size(self) -> int: ...

    @property
    def slo(self) -> float: ...


class _Taker:
    """The state of one ``take()`` call."""

    __slots__ = ("collecting", "max_n", "waiter")

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n
        self.collecting = False  # True while it holds a claim of max_n entries
        self.waiter: asyncio.Future[None] | None = None  # set while it sleeps


def _as_float(value: object, name: str) -> float:
    # What a C double parameter takes: __float__ or __index__, not strings.
    if isinstance(value, (str, bytes, bytearray)) or not (
        hasattr(value, "__float__") or hasattr(value, "__index__")
    ):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class BatchQueue:
    """A bounded queue of pending predictions for one model version.

    Args:
        capacity: The most entries the queue holds (>= 1); ``put()`` beyond it
            raises :class:`~clipper_core.errors.QueueFull` at once.
        name: Names the queue in error messages and :meth:`stats`.
        loop: The event loop whose futures ``put()`` returns; by default the
            loop running at each call.

    Raises:
        ValueError: ``capacity < 1``.
    """

    def __init__(
        self,
        capacity: int,
        *,
        name: str = "",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        capacity = operator.index(capacity)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self._capacity = capacity
        self._name = name
        self._label = name or "<unnamed>"
        self._loop = loop
        self._closed = False
        self._close_exc: BaseException | None = None
        self._len = 0
        self._ring0: deque[QueueEntry] = deque()  # priority 0
        self._rings: dict[int, deque[QueueEntry]] = {}  # the other priorities
        self._levels: list[int] = []  # keys of _rings, ascending
        self._idle: deque[_Taker] = deque()  # takers waiting for entries, FIFO
        self._collecting: list[_Taker] = []  # takers holding a claim
        self._claimed = 0  # sum of max_n over _collecting
        self._taken = 0
        self._expired = 0
        self._rejected = 0
        self._cancelled = 0

    # -- properties ------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The most entries the queue holds."""
        return self._capacity

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def taken(self) -> int:
        """Entries handed out in batches."""
        return self._taken

    @property
    def expired(self) -> int:
        """Futures failed with DeadlineExceeded, at put() or in the queue."""
        return self._expired

    @property
    def rejected(self) -> int:
        """put() calls refused with QueueFull."""
        return self._rejected

    @property
    def cancelled(self) -> int:
        """Entries dropped because their future was already done (cancelled)."""
        return self._cancelled

    def __len__(self) -> int:
        """Entries waiting, including dead ones not yet noticed."""
        return self._len

    def __repr__(self) -> str:
        return f"<BatchQueue {self._label} len={self._len}/{self._capacity} closed={self._closed}>"

    def stats(self) -> dict[str, Any]:
        """Counters and state, for metrics.

        Returns:
            ``name``, ``capacity``, ``len``, ``closed``, ``taken``, ``expired``,
            ``rejected``, ``cancelled`` and ``takers`` (``take()`` calls now
            waiting).
        """
        return {
            "name": self._name,
            "capacity": self._capacity,
            "len": self._len,
            "closed": self._closed,
            "taken": self._taken,
            "expired": self._expired,
            "rejected": self._rejected,
            "cancelled": self._cancelled,
            "takers": len(self._idle) + len(self._collecting),
        }

    # -- producer side ---------------------------------------------------------

    def put(self, item: object, deadline: float = _INF, priority: int = 0) -> asyncio.Future[Any]:
        """Queues ``item`` and returns the future its answer will arrive in.

        Never blocks.  An already passed ``deadline`` (``<= time.monotonic()``)
        is not queued: the future comes back failed with
        :class:`~clipper_core.errors.DeadlineExceeded`.  A full queue first drops
        the dead entries at the head of each priority level, then rejects; an
        entry of a positive priority (work accepted once and handed back: a
        crashed replica's batch, inputs retried alone) is never refused for
        capacity.

        Args:
            item: The input, handed to the dispatcher as is.
            deadline: Absolute ``time.monotonic()`` seconds; ``math.inf`` for none.
            priority: Higher is served first (a 64-bit signed int).

        Raises:
            QueueFull: The queue holds ``capacity`` entries (``rejected`` += 1).
            QueueClosed: :meth:`close` was called.
            RuntimeError: No loop was given and none is running.
        """
        if type(deadline) is not float:
            deadline = _as_float(deadline, "deadline")
        if type(priority) is not int:
            priority = operator.index(priority)
        if self._closed:
            raise self._closed_error()
        now = _monotonic()
        if deadline <= now:
            fut = self._new_future()
            self._expired += 1
            fut.set_exception(
                DeadlineExceeded(f"deadline passed before the request entered queue {self._label}")
            )
            return fut
        if self._len >= self._capacity and priority <= 0:
            self._drop_dead_heads(now)
            if self._len >= self._capacity:
                self._rejected += 1
                raise QueueFull(f"queue {self._label} is full (capacity {self._capacity})")
        fut = self._new_future()
        entry = QueueEntry(item, fut, deadline, priority, now)
        if priority == 0:
            self._ring0.append(entry)
        else:
            ring = self._rings.get(priority)
            if ring is None:
                ring = self._rings[priority] = deque()
                bisect.insort(self._levels, priority)
            ring.append(entry)
        self._len += 1
        if self._collecting or self._idle:
            self._on_put()
        return fut

    # -- consumer side ---------------------------------------------------------

    def take_nowait(self, max_n: int) -> list[QueueEntry]:
        """Pops up to ``max_n`` entries in priority order, now.

        Dead entries met on the way are dropped (and their futures failed if
        they expired); they do not count towards ``max_n``.

        Returns:
            The entries, possibly none; their futures are pending.

        Raises:
            ValueError: ``max_n < 1``.
            QueueClosed: :meth:`close` was called.
        """
        if self._closed:
            raise self._closed_error()
        max_n = operator.index(max_n)
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        batch: list[QueueEntry] = []
        now = -_INF  # read the clock only for an entry with a deadline
        levels = self._levels
        if not levels:
            now = self._take_from(self._ring0, batch, max_n, now)
        else:
            for p in reversed(levels):
                if p > 0:
                    now = self._take_from(self._rings[p], batch, max_n, now)
            now = self._take_from(self._ring0, batch, max_n, now)
            for p in reversed(levels):
                if p < 0:
                    now = self._take_from(self._rings[p], batch, max_n, now)
            self._prune_levels()
        self._taken += len(batch)
        return batch

    async def take(
        self, max_n: int, max_wait: float, slack: float | None = None
    ) -> list[QueueEntry]:
        """Waits for a batch: up to ``max_n`` entries, delayed batching.

        Waits (without limit) for an entry, then keeps collecting until the queue
        holds ``max_n`` entries or ``max_wait`` seconds have passed since the
        arrival of the oldest waiting entry; returns at once if it is already
        that old.  With ``slack`` (seconds), it also stops collecting ``slack``
        before the earliest deadline among the entries it would take first: a
        batch must not wait away the time its model needs.  Never returns an
        empty list.

        Raises:
            ValueError: ``max_n < 1``.
            QueueClosed: The queue is or gets closed.
        """
        max_n = operator.index(max_n)
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        if type(max_wait) is not float:
            max_wait = _as_float(max_wait, "max_wait")
        sl = -1.0 if slack is None else _as_float(slack, "slack")
        loop = self._get_loop()
        taker = _Taker(max_n)
        try:
            while True:
                if self._closed:
                    raise self._closed_error()
                if not taker.collecting:
                    if self._len <= self._claimed:
                        # Every entry is already claimed by a collecting taker.
                        taker.waiter = loop.create_future()
                        self._idle.append(taker)
                        try:
                            await taker.waiter
                        finally:
                            taker.waiter = None
                            if not taker.collecting:
                                self._idle.remove(taker)
                        continue
                    self._claim(taker)
                now = _monotonic()
                self._drop_dead_heads(now)
                if self._len == 0:
                    self._unclaim(taker)
                    continue
                if self._len < max_n:
                    delay = self._oldest() + max_wait - now
                    if sl >= 0.0:
                        delay = min(delay, self._head_deadline() - sl - now)
                    if delay > 0.0:
                        taker.waiter = loop.create_future()
                        timer = loop.call_later(delay, _wake, taker.waiter)
                        try:
                            await taker.waiter
                        finally:
                            timer.cancel()
                            taker.waiter = None
                        continue
                batch = self.take_nowait(max_n)
                if batch:
                    return batch
                self._unclaim(taker)  # another taker emptied the queue
        finally:
            if taker.collecting:
                self._unclaim(taker)
            if not self._closed:
                self._dispatch()

    async def take_for(self, controller: _HasBatchSize, max_wait: float) -> list[QueueEntry]:
        """``take(controller.batch_size, max_wait, controller.slo)``, read once,
        now: a batch waits for more inputs only while its oldest still leaves the
        batch's latency objective before its deadline.

        Args:
            controller: An :class:`~clipper_core.structures.SloController`.
            max_wait: As in :meth:`take`.
        """
        return await self.take(controller.batch_size, max_wait, controller.slo)

    def close(self, exc: BaseException | None = None) -> None:
        """Fails every pending future and wakes every taker; idempotent.

        Args:
            exc: The exception the queued futures fail with; by default a new
                ``QueueClosed("queue <name> closed")`` each.  Takers always raise
                :class:`~clipper_core.errors.QueueClosed` (caused by ``exc``).
        """
        if self._closed:
            return
        if exc is not None and not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception, not {type(exc).__name__}")
        self._closed = True
        self._close_exc = exc
        rings = [self._ring0, *self._rings.values()]
        self._ring0 = deque()
        self._rings = {}
        self._levels = []
        self._len = 0
        for ring in rings:
            for entry in ring:
                fut = entry.future
                if not fut.done():
                    fut.set_exception(exc if exc is not None else self._closed_error())
        for taker in [*self._idle, *self._collecting]:
            _wake(taker.waiter)

    # -- internals -------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return loop if loop is not None else asyncio.get_running_loop()

    def _new_future(self) -> asyncio.Future[Any]:
        return self._get_loop().create_future()

    def _closed_error(self) -> QueueClosed:
        err = QueueClosed(f"queue {self._label} closed")
        err.__cause__ = self._close_exc
        return err

    def _expire(self, entry: QueueEntry) -> None:
        self._expired += 1
        entry.future.set_exception(
            DeadlineExceeded(f"deadline passed while queued in {self._label}")
        )

    def _take_from(
        self, ring: deque[QueueEntry], batch: list[QueueEntry], max_n: int, now: float
    ) -> float:
        while ring and len(batch) < max_n:
            entry = ring.popleft()
            self._len -= 1
            if entry.future.done():
                self._cancelled += 1
                continue
            if entry.deadline != _INF:
                if now == -_INF:
                    now = _monotonic()
                if entry.deadline <= now:
                    self._expire(entry)
                    continue
            batch.append(entry)
        return now

    def _drop_dead_heads(self, now: float) -> None:
        for ring in [self._ring0, *self._rings.values()]:
            while ring:
                entry = ring[0]
                if entry.future.done():
                    self._cancelled += 1
                elif entry.deadline <= now:
                    self._expire(entry)
                else:
                    break
                ring.popleft()
                self._len -= 1
        self._prune_levels()

    def _prune_levels(self) -> None:
        if any(not self._rings[p] for p in self._levels):
            self._levels = [p for p in self._levels if self._rings[p]]
            self._rings = {p: self._rings[p] for p in self._levels}

    def _oldest(self) -> float:
        # Each level is FIFO, so its head is its oldest entry.
        oldest = _INF
        for ring in [self._ring0, *self._rings.values()]:
            if ring and ring[0].enqueued_at < oldest:
                oldest = ring[0].enqueued_at
        return oldest

    def _head_deadline(self) -> float:
        # The earliest deadline among the levels' heads (the entries taken next).
        earliest = _INF
        for ring in [self._ring0, *self._rings.values()]:
            if ring and ring[0].deadline < earliest:
                earliest = ring[0].deadline
        return earliest

    def _claim(self, taker: _Taker) -> None:
        taker.collecting = True
        self._collecting.append(taker)
        self._claimed += taker.max_n

    def _unclaim(self, taker: _Taker) -> None:
        taker.collecting = False
        self._collecting.remove(taker)
        self._claimed -= taker.max_n

    def _on_put(self) -> None:
        n = self._len
        for taker in self._collecting:
            if n >= taker.max_n:
                _wake(taker.waiter)
        self._dispatch()

    def _dispatch(self) -> None:
        # Hand unclaimed entries to idle takers; the claim moves at wake-up time so
        # that a burst of puts wakes no more takers than it needs.
        while self._idle and self._len > self._claimed:
            taker = self._idle.popleft()
            self._claim(taker)
            _wake(taker.waiter)
