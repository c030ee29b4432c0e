"""Change feeds over a store's change log.

* :class:`LocalChangeFeed`: the writes of this process, pushed by the store right
  after each commit (from whichever thread committed) to every subscriber's loop.
* :class:`SqlitePollingFeed`: the writes of any process sharing the SQLite file,
  found by polling the change log.

Both replay the change log from the subscriber's revision first, so a consumer
that read the whole state at revision ``r`` and subscribes with ``since=r`` sees
every later change.  Both raise :class:`ResyncNeeded` where they cannot.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from clipper_core.store.base import ResyncNeeded, StateEvent

__all__ = ["ChangeLog", "LocalChangeFeed", "SqlitePollingFeed"]

#: How many undelivered events a subscriber may hold before it must resync.
SUBSCRIBER_CAPACITY = 10_000


class ChangeLog(Protocol):
    """What a polling feed reads: a store's change log."""

    def changes_since(self, revision: int) -> list[StateEvent]:
        """The events after ``revision``, in order (ResyncNeeded: no longer known)."""
        ...


class _Subscriber:
    """One ``subscribe`` call's buffer; filled and read on its own event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self.loop = loop
        self.capacity = capacity
        self.buffer: deque[StateEvent] = deque()
        self.overflowed = False
        self.closed = False
        self.wakeup = asyncio.Event()

    def push(self, events: Sequence[StateEvent]) -> None:
        if self.overflowed or self.closed:
            return
        if len(self.buffer) + len(events) > self.capacity:
            # Too far behind: drop what is held, the consumer must reread anyway.
            self.overflowed = True
            self.buffer.clear()
        else:
            self.buffer.extend(events)
        self.wakeup.set()

    def end(self) -> None:
        self.closed = True
        self.wakeup.set()


class LocalChangeFeed:
    """The in-process feed of one store: replay from the change log, then live.

    The store calls :meth:`publish` after each commit, in commit order (it holds
    its write lock while publishing).  Delivery to a subscriber goes through its
    loop's ``call_soon_threadsafe``, so a write committed in a worker thread
    reaches subscribers on any loop.

    Args:
        changes_since: The store's change log reader.
        capacity: Undelivered events a subscriber may hold; past that its iterator
            raises :class:`ResyncNeeded`.
    """

    def __init__(
        self,
        changes_since: Callable[[int], list[StateEvent]],
        *,
        capacity: int = SUBSCRIBER_CAPACITY,
    ) -> None:
        self._changes_since = changes_since
        self._capacity = capacity
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        with self._lock:
            return len(self._subscribers)

    def publish(self, events: Sequence[StateEvent]) -> None:
        """Deliver one committed transaction's events (any thread)."""
        if not events:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        batch = tuple(events)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.push, batch)
            except RuntimeError:  # its loop is closed: nobody will read it
                with self._lock:
                    self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (their iterators finish after what they hold)."""
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.end)
            except RuntimeError:
                pass

    async def subscribe(self, since: int) -> AsyncIterator[StateEvent]:
        """Every event after revision ``since``, then live events as they commit.

        The subscription goes live *before* the replay is read, and live events
        the replay already gave are skipped, so nothing committed around the seam
        is lost or repeated.  The iterator ends when the store closes.

        Raises:
            ResyncNeeded: The change log no longer reaches back to ``since``, or
                this subscriber fell ``capacity`` events behind.
        """
        sub = _Subscriber(asyncio.get_running_loop(), self._capacity)
        with self._lock:
            if self._closed:
                return
            self._subscribers.add(sub)
        try:
            replayed_through = since
            for event in await asyncio.to_thread(self._changes_since, since):
                replayed_through = event.revision
                yield event
            while True:
                if sub.overflowed:
                    raise ResyncNeeded(
                        f"the subscriber fell more than {self._capacity} events behind"
                    )
                if sub.buffer:
                    event = sub.buffer.popleft()
                    # One revision is replayed whole or not at all (one transaction).
                    if event.revision > replayed_through:
                        yield event
                    continue
                if sub.closed:
                    return
                sub.wakeup.clear()
                await sub.wakeup.wait()
        finally:
            with self._lock:
                self._subscribers.discard(sub)


class SqlitePollingFeed:
    """A feed for a process that shares the SQLite file with the writer: it polls
    the change log (in a worker thread) every ``interval`` seconds while idle.

    Args:
        store: The store to poll (this process's own connection to the file).
        interval: Seconds between polls that found nothing.
    """

    def __init__(self, store: ChangeLog, interval: float = 0.2) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self._store = store
        self._interval = interval

    async def subscribe(self, since: int) -> AsyncIterator[StateEvent]:
        """Every event after revision ``since``, then new ones as they are found.

        Raises:
            ResyncNeeded: The change log was trimmed past the last revision seen
                (a poller that fell that far behind), or the store was replaced.
        """
        last = since
        while True:
            events = await asyncio.to_thread(self._store.changes_since, last)
            for event in events:
                yield event
            if events:
                last = events[-1].revision
            else:
                await asyncio.sleep(self._interval)
