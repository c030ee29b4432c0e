"""The change feed of the Redis state store: ``XREAD`` on its change stream.

Every committed write is one stream entry with id ``<revision>-0``, and every
revision has one, so a subscriber that saw revision ``r`` reads from ``r-0`` and
must get ``r + 1`` next: anything else is a gap (the stream was trimmed past it,
or the store was flushed or replaced), reported as :class:`ResyncNeeded`.  A
stream, not pub/sub: pub/sub drops what is published while a subscriber is
disconnected; the stream replays it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis

from clipper_core.store.base import ResyncNeeded, StateEvent

__all__ = ["RedisChangeFeed", "events_of"]

T = TypeVar("T")

#: How long one XREAD waits for new entries (ms) before checking that the
#: subscription is still wanted and the store was not replaced.
BLOCK_MS = 250


class RedisChangeFeed:
    """Every write committed to one Redis store, by any process.

    Each subscription has its own connection (an ``XREAD BLOCK`` holds one).

    Args:
        url: The Redis URL.
        revision_key: The store's revision counter.
        changes_key: The store's change stream.
        capacity: How many revisions a subscriber may be behind the store (once
            past its replay) before it must resync rather than catch up.
        socket_timeout: Seconds a reply may take (an ``XREAD`` answers within
            ``BLOCK_MS``).  Without it a Redis that vanished silently (a host
            gone, a failover to another address) left the wait for ever: no
            error, so no resubscription, and the frontend stopped following.
    """

    def __init__(
        self,
        url: str,
        revision_key: str,
        changes_key: str,
        capacity: int,
        *,
        socket_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._socket_timeout = socket_timeout
        self._revision_key = revision_key
        self._changes_key = changes_key
        self._capacity = capacity
        self._lock = threading.Lock()
        self._subscribers = 0
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        with self._lock:
            return self._subscribers

    def close(self) -> None:
        """End every subscription (within one XREAD wait); later ones end at once."""
        self._closed = True

    async def subscribe(self, since: int) -> AsyncIterator[StateEvent]:
        """Every event after revision ``since``, then live events as they commit.
        The iterator ends when the store is closed.

        Raises:
            ResyncNeeded: The stream no longer reaches back to ``since``, the
                store went back past it (flushed or replaced), or this subscriber
                fell more than ``capacity`` events behind.
            redis.RedisError: The server went away (resubscribe from the last
                revision seen: nothing is lost).
        """
        if self._closed:
            return
        client = aioredis.Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            socket_keepalive=True,
            health_check_interval=30,
        )
        with self._lock:
            self._subscribers += 1
        try:
            caught_up = await self._revision(client)
            if since > caught_up:
                raise ResyncNeeded(f"revision {since} is ahead of the store's {caught_up}")
            last = since
            while not self._closed:
                reply = await _cancellable(
                    client.xread(
                        {self._changes_key: f"{last}-0"}, count=self._capacity + 1, block=BLOCK_MS
                    )
                )
                if not reply:
                    if await self._revision(client) < last:
                        raise ResyncNeeded(f"the store went back before revision {last}")
                    continue
                # RESP2's reply: [[stream, [(id, fields), ...]]].
                entries = cast("list[tuple[str, dict[str, str]]]", cast("Any", reply)[0][1])
                if last >= caught_up and len(entries) > self._capacity:
                    raise ResyncNeeded(
                        f"the subscriber fell more than {self._capacity} revisions behind"
                    )
                for entry_id, fields in entries:
                    revision = int(entry_id.split("-", 1)[0])
                    if revision != last + 1:
                        raise ResyncNeeded(
                            f"changes after revision {last} are gone (the next is {revision})"
                        )
                    for event in events_of(entry_id, fields):
                        yield event
                    last = revision
        finally:
            with self._lock:
                self._subscribers -= 1
            await client.aclose()

    async def _revision(self, client: aioredis.Redis) -> int:
        return int(cast("str | None", await _cancellable(client.get(self._revision_key))) or 0)


async def _cancellable(call: Awaitable[T]) -> T:
    """Await a redis-py call so that cancelling the caller always works: the
    client can swallow a cancellation that lands while it connects, and then
    goes on blocking.  The call runs as a task of its own, which is cancelled
    too and which the client's close ends at the latest."""
    task = asyncio.ensure_future(call)
    # Its outcome, once nobody awaits it, is the close's ConnectionError: not news.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise


def events_of(entry_id: str, fields: dict[str, str]) -> list[StateEvent]:
    """The events of one change-stream entry (id ``<revision>-0``)."""
    revision = int(entry_id.split("-", 1)[0])
    return [StateEvent(revision, kind, name) for kind, name in json.loads(fields["events"])]
