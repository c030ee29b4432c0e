"""``FeedFollower``: hands every change of the store to this frontend's
reconcilers, whichever frontend (or CLI) wrote it.

A frontend reconciles its own writes inline (read-your-writes, design §5.4, 4);
the feed brings every write again, its own included, which is harmless because
reconciling is level-triggered.  On :class:`ResyncNeeded` (a gap: the change log
was trimmed past what this frontend saw, the store was flushed or replaced) it
reconciles everything and follows on from the store's revision read *before*
that, so nothing committed meanwhile is missed.  When the store cannot be
reached it tries again from the last revision it saw: a stream keeps what a
disconnected subscriber missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from clipper_core.logs import log_event
from clipper_core.store.base import ChangeFeed, DesiredStateReader, ResyncNeeded, StateEvent

__all__ = ["FeedFollower"]

log = logging.getLogger("clipper_core.control")


class FeedFollower:
    """Follows a change feed until cancelled (or the store closes).

    Args:
        feed: The store's change feed.
        reader: The store (its revision is read before a resync).
        on_event: Reconciles one event (awaited, in order).
        on_resync: Reconciles everything.
        retry: Seconds between attempts while the store cannot be reached.
    """

    def __init__(
        self,
        feed: ChangeFeed,
        reader: DesiredStateReader,
        *,
        on_event: Callable[[StateEvent], Awaitable[None]],
        on_resync: Callable[[], Awaitable[None]],
        retry: float = 1.0,
    ) -> None:
        self._feed = feed
        self._reader = reader
        self._on_event = on_event
        self._on_resync = on_resync
        self._retry = retry
        #: The revision of the last event reconciled (or of the last resync).
        self.revision = 0

    async def run(self, since: int) -> None:
        """Reconcile every change after revision ``since``, then each as it comes."""
        self.revision = since
        while True:
            try:
                async for event in self._feed.subscribe(self.revision):
                    await self._on_event(event)
                    self.revision = event.revision
                return  # the store was closed
            except ResyncNeeded as exc:
                log_event(
                    log,
                    "state_resync",
                    f"change feed gap after revision {self.revision} ({exc}): reconciling all",
                    level=logging.WARNING,
                    revision=self.revision,
                )
                try:
                    revision = await asyncio.to_thread(self._reader.revision)
                    await self._on_resync()
                    self.revision = revision
                except Exception as inner:
                    log.warning("resync failed: %s; trying again", inner)
                    await asyncio.sleep(self._retry)
            except Exception as exc:
                # The store went away, or reconciling an event failed: take it
                # again from the last revision done (it is reread, so a repeat
                # is harmless).
                log.warning(
                    "following the state store failed after revision %d: %s; retrying",
                    self.revision,
                    exc,
                )
                await asyncio.sleep(self._retry)
