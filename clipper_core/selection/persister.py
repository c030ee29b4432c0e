"""Writing selection policy states to the state store: ``StatePersister``.

Learned policy state is high-rate runtime state, not desired state: it is written
through the narrow :class:`KvStore` face of a store (group commits off the event
loop thread), never through the control plane.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from clipper_core.dataplane.futures import consume_exception
from clipper_core.errors import ClipperError

log = logging.getLogger("clipper_core.selection")

__all__ = ["MIN_COMMIT_INTERVAL", "KvStore", "StatePersister"]


class KvStore(Protocol):
    """The part of a state store that policy states use (``StateStore`` is one)."""

    def put_kv_many(
        self,
        items: Iterable[tuple[str, str, Any]],
        *,
        delete_namespaces: Iterable[str] = (),
    ) -> None:
        """In one transaction: delete whole namespaces, then store the items."""
        ...

    def list_kv(self, namespace: str) -> dict[str, Any]:
        """Every key of ``namespace`` and its value."""
        ...

    def delete_kv(self, namespace: str, key: str | None = None) -> int:
        """Delete one key of ``namespace`` (every key when None); how many went."""
        ...


#: Least seconds between two commits: under a stream of feedback, at most 100
#: transactions a second, whatever the rate of ``/update``.
MIN_COMMIT_INTERVAL = 0.01


class StatePersister:
    """Writes policy states to the store's kv table, one transaction at a time.

    Writes requested while one is running are merged (the latest state of a key
    wins) and committed together next, on a worker thread, so a burst of feedback
    costs few fsyncs and the event loop never waits on the disk.  Commits are at
    least ``min_interval`` seconds apart: a write after a quiet spell is committed
    at once, but under a stream of feedback each commit (about 250 us of CPU and
    an fsync) serves every write of its interval, so the cost of storing states
    does not grow with the rate of ``/update`` and leaves the CPU to ``/predict``.
    ``put`` and ``drop`` return once their change is committed.

    Args:
        store: Where the states go.
        min_interval: Least seconds between two commits.
    """

    def __init__(self, store: KvStore, min_interval: float = MIN_COMMIT_INTERVAL) -> None:
        self._store = store
        self.min_interval = min_interval
        self._last_commit = -float("inf")
        self._puts: dict[tuple[str, str], Any] = {}
        self._drops: set[str] = set()
        self._deletes: set[tuple[str, str]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    def put(self, namespace: str, key: str, value: Any) -> asyncio.Future[None]:
        """Store ``value`` under (namespace, key); a future done once committed."""
        self._puts[(namespace, key)] = value
        self._deletes.discard((namespace, key))
        return self._enqueue()

    def delete(self, namespace: str, key: str) -> asyncio.Future[None]:
        """Delete one key (a pending write to it is discarded first)."""
        self._puts.pop((namespace, key), None)
        self._deletes.add((namespace, key))
        return self._enqueue()

    def drop(self, namespace: str) -> asyncio.Future[None]:
        """Delete a whole namespace (pending writes to it are discarded first)."""
        for slot in [s for s in self._puts if s[0] == namespace]:
            del self._puts[slot]
        self._drops.add(namespace)
        return self._enqueue()

    def _enqueue(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        # Nobody may await it (a cancelled request): never report it as unretrieved.
        fut.add_done_callback(consume_exception)
        self._waiters.append(fut)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="selection state writer")
        return fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._puts or self._drops or self._deletes:
            wait = self._last_commit + self.min_interval - loop.time()
            if wait > 0:  # gather the writes of the interval into this commit
                await asyncio.sleep(wait)
            puts, drops, deletes, waiters = self._puts, self._drops, self._deletes, self._waiters
            self._puts, self._drops, self._deletes, self._waiters = {}, set(), set(), []
            items = [(ns, key, value) for (ns, key), value in puts.items()]
            try:
                await asyncio.to_thread(self._commit, items, sorted(drops), sorted(deletes))
            except Exception as exc:
                log.error("writing selection policy state failed: %s", exc)
                error = ClipperError(f"the policy state could not be saved: {exc}")
                for w in waiters:
                    if not w.done():
                        w.set_exception(error)
            else:
                self.commits += 1
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
            finally:
                self._last_commit = loop.time()

    def _commit(
        self,
        items: list[tuple[str, str, Any]],
        drops: list[str],
        deletes: list[tuple[str, str]],
    ) -> None:
        self._store.put_kv_many(items, delete_namespaces=drops)
        for namespace, key in deletes:  # users pushed out: rare, one at a time
            self._store.delete_kv(namespace, key)

    async def flush(self) -> None:
        """Wait until every requested write is committed."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
