"""Pure-Python twin of ``clipper_core._ext.pred_cache``: the prediction cache.

This module is the executable specification of the extension; the tests run
against both and expect identical behaviour.

The cache maps ``(model, version, input)`` to a model's answer.  Keys are compared
in full, so a hash collision costs a comparison, never a wrong answer (Clipper keyed
by a bare 64-bit hash).  Completed entries live on a CLOCK ring and are evicted
under a byte budget; computations that are still running ("pending" entries) are
kept apart from the ring, so they are never evicted.

Concurrent identical misses share one computation: the first ``reserve()`` of a key
owns it, later ones join it.  Every reserver gets its *own* future, resolved by the
cache when the owner calls ``put()`` or ``fail()``, so a waiter that cancels its
future (for example because its request timed out) affects nobody else.

Like everything on the serving path, a cache belongs to one event loop and is used
from that loop's thread only; it takes no locks.
"""

from __future__ import annotations

import asyncio
import operator
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["ENTRY_OVERHEAD", "PredictionCache"]

#: Bytes charged per entry on top of its input and value when ``put()`` estimates the
#: size: the key, entry and dict-slot objects that hold it.
ENTRY_OVERHEAD: Final = 128

HashFn = Callable[[str, str, bytes], int]


class _CacheKey:
    """``(model, version, data)`` with its hash computed once; equality is full."""

    __slots__ = ("_hash", "data", "model", "version")

    def __init__(self, model: str, version: str, data: bytes, hash_: int) -> None:
        self.model = model
        self.version = version
        self.data = data
        self._hash = hash_

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if type(other) is not _CacheKey:
            return NotImplemented
        return (
            self._hash == other._hash
            and self.data == other.data
            and self.model == other.model
            and self.version == other.version
        )


class _CacheEntry:
    """A completed entry: the value and its place on the CLOCK ring."""

    __slots__ = ("key", "nbytes", "next", "prev", "referenced", "value")

    def __init__(self, key: _CacheKey, value: object, nbytes: int) -> None:
        self.key = key
        self.value = value
        self.nbytes = nbytes
        self.referenced = False
        self.prev: _CacheEntry = self
        self.next: _CacheEntry = self


class _PendingEntry:
    """A computation in flight: the futures of everyone waiting for it."""

    __slots__ = ("key", "store", "waiters")

    def __init__(self, key: _CacheKey, owner: asyncio.Future[object], store: bool) -> None:
        self.key = key
        # waiters[0] is the owner's future; joiners are appended.
        self.waiters: list[asyncio.Future[object]] = [owner]
        # False once detached by invalidate()/clear(), or when it was reserved while an
        # older, detached computation of the same key was still running: its answer
        # may then be paired with the stale computation, so it is not stored.
        self.store = store


def _check_key(model: object, version: object, key: object) -> None:
    if type(model) is not str:
        raise TypeError(f"model must be str, not {type(model).__name__}")
    if type(version) is not str:
        raise TypeError(f"version must be str, not {type(version).__name__}")
    if type(key) is not bytes:
        raise TypeError(f"key must be bytes, not {type(key).__name__}")


def _as_ssize(n: int) -> int:
    # The extension keeps sizes in a C Py_ssize_t.
    n = operator.index(n)
    if not -sys.maxsize - 1 <= n <= sys.maxsize:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return n


def _estimate_nbytes(key: bytes, value: object) -> int:
    if isinstance(value, (bytes, bytearray, str)):
        size = len(value)
    else:
        size = sys.getsizeof(value)
    return len(key) + size + ENTRY_OVERHEAD


class PredictionCache:
    """A byte-bounded cache of model answers with CLOCK eviction and coalescing.

    Args:
        max_bytes: Budget for the completed entries (see ``put()`` for how an entry
            is charged).  Entries larger than the budget are never stored.
        hash_fn: Hash of ``(model, version, input)``; ``None`` uses Python's hash of
            the three parts.  Exists so that tests can force collisions.

    Typical use, where every caller awaits its own future::

        value = cache.get(model, version, x, MISSING)
        if value is MISSING:
            fut, owner = cache.reserve(model, version, x)
            if owner:
                start_computation()  # which calls cache.put() or cache.fail()
            value = await fut

    ``hits`` and ``misses`` are counted by ``get()`` only; ``reserve()`` counts
    ``coalesced`` when it joins a running computation.  Counters are cumulative and
    survive ``clear()``.
    """

    def __init__(self, max_bytes: int, *, hash_fn: HashFn | None = None) -> None:
        max_bytes = _as_ssize(max_bytes)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._max_bytes = max_bytes
        self._hash_fn = hash_fn
        self._entries: dict[_CacheKey, _CacheEntry] = {}
        # Live computations, the ones a reserve() joins.
        self._pending: dict[_CacheKey, _PendingEntry] = {}
        # Computations detached by invalidate()/clear(), oldest first per key: their
        # owners still call put()/fail(), which resolve them before any live one.
        self._detached: dict[_CacheKey, list[_PendingEntry]] = {}
        self._n_pending = 0
        self._hand: _CacheEntry | None = None
        self._nbytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._coalesced = 0

    # -- lookups -------------------------------------------------------------------

    def get(self, model: str, version: str, key: bytes, default: object = None) -> object:
        """Return the completed value for the key, or ``default``.

        A hit sets the entry's reference bit.  A computation still pending is a miss.
        """
        entry = self._entries.get(self._make_key(model, version, key))
        if entry is None:
            self._misses += 1
            return default
        entry.referenced = True
        self._hits += 1
        return entry.value

    def reserve(
        self,
        model: str,
        version: str,
        key: bytes,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> tuple[asyncio.Future[object], bool]:
        """Reserve the computation of a key, or join the one already running.

        Args:
            loop: Loop of the returned future; default: the running loop.

        Returns:
            ``(future, True)`` when the caller owns the computation and must later
            call ``put()`` or ``fail()`` for the key (in a ``finally``: joiners wait
            until it does).  ``(future, False)`` when it joined a running
            computation, or when the value is already cached (the future is then
            done).  Each caller gets its own future: cancelling it affects no one
            else.
        """
        k = self._make_key(model, version, key)
        if loop is None:
            loop = asyncio.get_running_loop()
        fut: asyncio.Future[object] = loop.create_future()
        entry = self._entries.get(k)
        if entry is not None:
            entry.referenced = True
            fut.set_result(entry.value)
            return fut, False
        pending = self._pending.get(k)
        if pending is not None:
            pending.waiters.append(fut)
            self._coalesced += 1
            return fut, False
        self._pending[k] = _PendingEntry(k, fut, k not in self._detached)
        self._n_pending += 1
        return fut, True

    # -- completion ----------------------------------------------------------------

    def put(
        self,
        model: str,
        version: str,
        key: bytes,
        value: object,
        nbytes: int | None = None,
    ) -> None:
        """Store a completed value and resolve the futures waiting for it.

        Without a pending computation the value is simply inserted (replacing any
        cached one).  The entry is charged ``nbytes``, by default ``len(key)`` plus
        the value's size (``len()`` of bytes and str, ``sys.getsizeof()`` otherwise)
        plus ``ENTRY_OVERHEAD``.  CLOCK evicts completed entries until it fits; an
        entry larger than ``max_bytes`` is not stored, but its waiters still get the
        value.
        """
        k = self._make_key(model, version, key)
        if nbytes is None:
            size = _estimate_nbytes(key, value)
        else:
            size = _as_ssize(nbytes)
            if size < 0:
                raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        pending = self._take_pending(k)
        if pending is None or pending.store:
            self._store(k, value, size)
        if pending is not None:
            # State is final before any future is touched.
            for fut in pending.waiters:
                if not fut.done():
                    fut.set_result(value)

    def fail(self, model: str, version: str, key: bytes, exc: BaseException) -> None:
        """Fail the futures waiting for the key's computation; nothing is cached.

        A no-op when no computation is pending.  The owner's own future is marked as
        retrieved (the owner passed the exception in), so an owner that never awaits
        it does not produce an "exception was never retrieved" report.
        """
        k = self._make_key(model, version, key)
        if not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception, not {type(exc).__name__}")
        if type(exc) is StopIteration:
            # A future refuses StopIteration; wrap it as asyncio does for coroutines.
            wrapped = RuntimeError("the computation raised StopIteration")
            wrapped.__cause__ = exc
            exc = wrapped
        pending = self._take_pending(k)
        if pending is None:
            return
        owner = pending.waiters[0]
        for fut in pending.waiters:
            if not fut.done():
                fut.set_exception(exc)
                if fut is owner:
                    fut.exception()

    # -- invalidation --------------------------------------------------------------

    def invalidate(self, model: str, version: str) -> int:
        """Drop the version's completed entries and detach its pending ones.

        A detached computation still resolves its waiters when its owner calls
        ``put()``/``fail()``, but its answer is not stored, and a later
        ``reserve()`` starts a fresh computation instead of joining it.  Scans the
        whole cache: meant for model redeployments, not for the request path.

        Returns:
            The number of completed entries dropped.
        """
        if type(model) is not str:
            raise TypeError(f"model must be str, not {type(model).__name__}")
        if type(version) is not str:
            raise TypeError(f"version must be str, not {type(version).__name__}")
        victims = [
            e for e in self._entries.values() if e.key.model == model and e.key.version == version
        ]
        for entry in victims:
            self._remove(entry)
        detached = [
            p for p in self._pending.values() if p.key.model == model and p.key.version == version
        ]
        for pending in detached:
            del self._pending[pending.key]
            self._detach(pending)
        return len(victims)

    def clear(self) -> None:
        """Drop every completed entry and detach every pending computation.

        Counters are kept (they are cumulative).
        """
        self._hand = None
        self._nbytes = 0
        self._entries = {}
        pending = self._pending
        self._pending = {}
        for p in pending.values():
            self._detach(p)

    # -- counters ------------------------------------------------------------------

    @property
    def hits(self) -> int:
        """``get()`` calls that found a completed value."""
        return self._hits

    @property
    def misses(self) -> int:
        """``get()`` calls that found none (pending computations included)."""
        return self._misses

    @property
    def evictions(self) -> int:
        """Completed entries evicted by CLOCK to stay within ``max_bytes``."""
        return self._evictions

    @property
    def coalesced(self) -> int:
        """``reserve()`` calls that joined a running computation."""
        return self._coalesced

    @property
    def pending(self) -> int:
        """Computations awaiting ``put()``/``fail()``, detached ones included."""
        return self._n_pending

    @property
    def nbytes(self) -> int:
        """Bytes charged for the completed entries; never above ``max_bytes``."""
        return self._nbytes

    @property
    def max_bytes(self) -> int:
        """The byte budget of the completed entries."""
        return self._max_bytes

    def __len__(self) -> int:
        """Number of completed entries."""
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """All counters and sizes, for metrics."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
            "coalesced": self._coalesced,
            "entries": len(self._entries),
            "pending": self._n_pending,
            "nbytes": self._nbytes,
            "max_bytes": self._max_bytes,
        }

    def __repr__(self) -> str:
        return (
            f"<PredictionCache entries={len(self._entries)} pending={self._n_pending} "
            f"nbytes={self._nbytes}/{self._max_bytes}>"
        )

    # -- internals -----------------------------------------------------------------

    def _make_key(self, model: str, version: str, key: bytes) -> _CacheKey:
        _check_key(model, version, key)
        if self._hash_fn is None:
            h = hash((model, version, key))
        else:
            h = hash(self._hash_fn(model, version, key))
        return _CacheKey(model, version, key, h)

    def _take_pending(self, k: _CacheKey) -> _PendingEntry | None:
        """Remove and return the computation that a put()/fail() of ``k`` completes.

        Detached computations started earlier than the live one, so they go first.
        """
        detached = self._detached.get(k)
        if detached is not None:
            pending = detached.pop(0)
            if not detached:
                del self._detached[k]
        else:
            found = self._pending.pop(k, None)
            if found is None:
                return None
            pending = found
        self._n_pending -= 1
        return pending

    def _detach(self, pending: _PendingEntry) -> None:
        pending.store = False
        self._detached.setdefault(pending.key, []).append(pending)

    def _store(self, k: _CacheKey, value: object, nbytes: int) -> None:
        old = self._entries.get(k)
        if old is not None:
            self._remove(old)
        if nbytes > self._max_bytes:
            return
        self._evict(self._max_bytes - nbytes)
        entry = _CacheEntry(k, value, nbytes)
        self._link(entry)
        self._entries[k] = entry
        self._nbytes += nbytes

    def _evict(self, target: int) -> None:
        """Sweep the hand until the completed entries take at most ``target`` bytes.

        A referenced entry loses its bit and is passed over; an unreferenced one is
        evicted.  Ends within two turns of the ring.
        """
        while self._nbytes > target:
            entry = self._hand
            assert entry is not None  # nbytes > 0 means the ring is not empty
            if entry.referenced:
                entry.referenced = False
                self._hand = entry.next
            else:
                self._remove(entry)
                self._evictions += 1

    def _remove(self, entry: _CacheEntry) -> None:
        self._unlink(entry)
        del self._entries[entry.key]
        self._nbytes -= entry.nbytes

    def _link(self, entry: _CacheEntry) -> None:
        """Insert just behind the hand: a new entry is the last one the hand visits."""
        hand = self._hand
        if hand is None:
            entry.prev = entry.next = entry
            self._hand = entry
        else:
            before = hand.prev
            entry.prev = before
            entry.next = hand
            before.next = entry
            hand.prev = entry

    def _unlink(self, entry: _CacheEntry) -> None:
        if entry.next is entry:
            self._hand = None
        else:
            entry.prev.next = entry.next
            entry.next.prev = entry.prev
            if self._hand is entry:
                self._hand = entry.next
        entry.prev = entry.next = entry
