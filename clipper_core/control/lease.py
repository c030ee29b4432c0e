"""Which frontend owns the replicas: a lease.

Every frontend applies the desired state to its own data plane, but only one
may start containers, or N frontends would start N times the replicas (design
§5.4, 1).  That one holds the lease: it runs the replica reconciler and
publishes the endpoints of the replicas it started; the others learn them from
the store.  A holder that dies stops renewing, its lease expires, and another
frontend takes it and starts the replicas again.

* :class:`AlwaysHeld`: a store no other process writes (SQLite): this process
  owns the replicas.
* ``clipper_core.store.redis_lease.RedisLease``: ``SET NX PX`` plus renewal.
* :class:`LeaseKeeper`: the loop that takes the lease when free and renews it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from clipper_core.logs import log_event

__all__ = ["AlwaysHeld", "Lease", "LeaseKeeper"]

log = logging.getLogger("clipper_core.control")


class Lease(Protocol):
    """A lease on the replicas that at most one process holds at a time."""

    @property
    def owner(self) -> str:
        """This process's name in the lease."""
        ...

    def held(self) -> bool:
        """Whether this process holds the lease now (by its own clock: it stops
        saying so before the lease can expire for the others)."""
        ...

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (or this process does); whether held."""
        ...

    async def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired and taken, or gone)."""
        ...

    async def release(self) -> None:
        """Give the lease up (if held), so that another process takes it at once."""
        ...

    def holder(self) -> str | None:
        """Who holds the lease now (None: nobody); raises when the store
        cannot be reached.  Blocking: call it in a thread."""
        ...


class AlwaysHeld:
    """The lease of a process that shares its store with nobody."""

    owner = "this process"

    def held(self) -> bool:
        return True

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None

    def holder(self) -> str | None:
        return self.owner


class LeaseKeeper:
    """Takes the lease when it is free and renews it while held, every
    ``interval`` seconds, telling when it was gained or lost.

    Args:
        lease: The lease.
        interval: Seconds between tries (a third of the lease's time to live
            renews it twice before it could expire).
        on_acquired: Called (on the loop) when this process got the lease, or
            kept it through a time the store could not be reached.
        on_lost: Called when another process holds it.
    """

    def __init__(
        self,
        lease: Lease,
        *,
        interval: float,
        on_acquired: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self._lease = lease
        self._interval = interval
        self._on_acquired = on_acquired
        self._on_lost = on_lost

    async def run(self, held: bool) -> None:
        """Keep the lease until cancelled; ``held``: whether it is held now.

        A holder that cannot reach the store keeps its replicas: queries need
        no store, and stopping them would leave every frontend without
        replicas until the store came back (no other frontend can take the
        lease meanwhile).  Its lease's clock still runs out, so it changes
        nothing while cut off (the reconcilers ask ``held()``).  Once the
        store answers again it takes the lease back if nobody else did, and
        gives its replicas up only if another process holds it.
        """
        cut_off = False
        # Successful rounds a frontend that was cut off from the store waits
        # before trying to take the lease: a lease's time to live, in which the
        # holder (which retries every round) takes its own lease back.  After
        # an outage of the store its key has expired, and whoever asked first
        # would have won, stopping the holder's replicas for new ones.
        waiting = 0
        lease = self._lease
        while True:
            await asyncio.sleep(self._interval)
            try:
                if not held and waiting:
                    await asyncio.to_thread(lease.holder)  # is the store back?
                    waiting -= 1
                    now = False
                else:
                    # renew() while the clock says held; after that (a slow
                    # store, an outage) acquire(), which takes a lapsed lease back.
                    now = await (lease.renew() if held and lease.held() else lease.acquire())
            except Exception as exc:
                if not cut_off:
                    log_event(
                        log,
                        "store_unreachable",
                        f"lease {'renewal' if held else 'acquisition'} failed ({exc}); "
                        + ("keeping the replicas until the store answers" if held else "retrying"),
                        level=logging.WARNING,
                    )
                cut_off = True
                waiting = 3
                continue
            was_cut_off, cut_off = cut_off, False
            if now and not held:
                log_event(log, "lease_acquired", f"{lease.owner} now owns the replicas")
                self._on_acquired()
            elif now and was_cut_off:
                # Still ours: reconcile what the store says now (level-triggered).
                log_event(log, "lease_kept", f"{lease.owner} kept the replica lease")
                self._on_acquired()
            elif held and not now:
                log_event(
                    log,
                    "lease_lost",
                    f"{lease.owner} lost the replica lease",
                    level=logging.WARNING,
                )
                self._on_lost()
            held = now
            if held:
                waiting = 0  # an old outage's wait does not delay a later takeover
