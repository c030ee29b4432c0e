"""The prediction cache: (model, version, input) -> answer, CLOCK under a byte budget.

Keys are compared in full, so a hash collision costs a comparison, never a wrong
answer (Clipper keyed by a bare 64-bit hash).  Completed entries live on a CLOCK
ring and are evicted under ``max_bytes``; computations still running ("pending"
entries) are kept apart from the ring, so they are never evicted.  Concurrent
identical misses share one computation; each reserver gets its own future, resolved
by the cache, so one waiter cancelling affects nobody else.

The pure-Python twin, ``clipper_core._pure.pred_cache``, is the specification;
docstrings of the public methods live there and in ``pred_cache.pyi``.

Every method runs with the GIL held and on the event loop's thread; nothing here
releases the GIL or takes a lock.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject

import asyncio
import sys

__all__ = ["ENTRY_OVERHEAD", "PredictionCache"]

#: Bytes charged per entry on top of its input and value when put() estimates the
#: size: the key, entry and dict-slot objects that hold it.
ENTRY_OVERHEAD = 128

cdef Py_ssize_t _ENTRY_OVERHEAD = ENTRY_OVERHEAD

cdef object _get_running_loop = asyncio.get_running_loop
cdef object _getsizeof = sys.getsizeof

# xxHash64 primes, as CPython's tuple hash uses them.
cdef size_t _PRIME_1 = <size_t>11400714785074694791ULL
cdef size_t _PRIME_2 = <size_t>14029467366897019727ULL
cdef size_t _PRIME_5 = <size_t>2870177450012600261ULL


cdef inline size_t _mix(size_t acc, Py_hash_t h) noexcept:
    acc += <size_t>h * _PRIME_2
    acc = (acc << 31) | (acc >> (8 * sizeof(size_t) - 31))
    return acc * _PRIME_1


@cython.final
@cython.freelist(32)
@cython.no_gc  # fields are an exact str, str and bytes: they cannot form a cycle
cdef class _CacheKey:
    """(model, version, data) with its hash computed once; equality is full."""

    def __hash__(self):
        return self.hash

    def __eq__(self, other):
        if type(other) is not _CacheKey:
            return NotImplemented
        cdef _CacheKey o = <_CacheKey>other
        return (
            self.hash == o.hash
            and self.data == o.data
            and self.model == o.model
            and self.version == o.version
        )


@cython.final
cdef class _CacheEntry:
    """A completed entry: the value and its place on the CLOCK ring."""


@cython.final
cdef class _PendingEntry:
    """A computation in flight: the futures of everyone waiting for it."""


cdef inline int _check_not_none(object model, object version, object key) except -1:
    # The typed arguments already refuse any type but exact str/bytes; None remains.
    if model is None:
        raise TypeError("model must be str, not NoneType")
    if version is None:
        raise TypeError("version must be str, not NoneType")
    if key is None:
        raise TypeError("key must be bytes, not NoneType")
    return 0


@cython.final
cdef class PredictionCache:
    """A byte-bounded cache of model answers with CLOCK eviction and coalescing."""

    def __cinit__(self):
        # Here rather than in __init__, so that no instance ever lacks its dicts.
        self._entries = {}
        self._pending = {}
        self._detached = {}
        self._hand = NULL

    def __init__(self, max_bytes, *, hash_fn=None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._hash_fn = hash_fn

    # -- lookups -------------------------------------------------------------------

    cpdef object get(self, str model, str version, bytes key, object default=None):
        cdef _CacheKey k = self._make_key(model, version, key)
        # Borrowed: nothing runs between the lookup and the last use of `found`.
        cdef PyObject* found = PyDict_GetItem(self._entries, k)
        if found is NULL:
            self.misses += 1
            return default
        cdef _CacheEntry entry = <_CacheEntry>found
        entry.referenced = True
        self.hits += 1
        return entry.value

    cpdef tuple reserve(self, str model, str version, bytes key, object loop=None):
        cdef _CacheKey k = self._make_key(model, version, key)
        if loop is None:
            loop = _get_running_loop()
        fut = loop.create_future()
        cdef PyObject* found = PyDict_GetItem(self._entries, k)
        cdef _CacheEntry entry
        if found is not NULL:
            entry = <_CacheEntry>found
            entry.referenced = True
            fut.set_result(entry.value)
            return fut, False
        found = PyDict_GetItem(self._pending, k)
        cdef _PendingEntry pending
        if found is not NULL:
            (<_PendingEntry>found).waiters.append(fut)
            self.coalesced += 1
            return fut, False
        pending = _PendingEntry.__new__(_PendingEntry)
        pending.key = k
        pending.waiters = [fut]
        pending.store = k not in self._detached
        self._pending[k] = pending
        self.pending += 1
        return fut, True

    # -- completion ----------------------------------------------------------------

    cpdef put(self, str model, str version, bytes key, object value, object nbytes=None):
        cdef _CacheKey k = self._make_key(model, version, key)
        cdef Py_ssize_t size
        if nbytes is None:
            if isinstance(value, (bytes, bytearray, str)):
                size = len(value)
            else:
                size = _getsizeof(value)
            size += len(key) + _ENTRY_OVERHEAD
        else:
            size = nbytes
            if size < 0:
                raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        cdef _PendingEntry pending = self._take_pending(k)
        if pending is None or pending.store:
            self._store(k, value, size)
        if pending is not None:
            # State is final before any future is touched: set_result() only
            # schedules callbacks, but a future's subclass could run code here.
            for fut in pending.waiters:
                if not fut.done():
                    fut.set_result(value)

    cpdef fail(self, str model, str version, bytes key, object exc):
        cdef _CacheKey k = self._make_key(model, version, key)
        if not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception, not {type(exc).__name__}")
        if type(exc) is StopIteration:
            # A future refuses StopIteration; wrap it as asyncio does for coroutines.
            wrapped = RuntimeError("the computation raised StopIteration")
            wrapped.__cause__ = exc
            exc = wrapped
        cdef _PendingEntry pending = self._take_pending(k)
        if pending is None:
            return
        owner = pending.waiters[0]
        for fut in pending.waiters:
            if not fut.done():
                fut.set_exception(exc)
                if fut is owner:
                    # The owner passed the exception in: mark it retrieved, so that
                    # an owner that never awaits its future logs no report.
                    fut.exception()

    # -- invalidation --------------------------------------------------------------

    cpdef Py_ssize_t invalidate(self, str model, str version) except -1:
        if model is None:
            raise TypeError("model must be str, not NoneType")
        if version is None:
            raise TypeError("version must be str, not NoneType")
        cdef _CacheEntry entry
        cdef _PendingEntry pending
        victims = [
            e for e in self._entries.values()
            if (<_CacheEntry>e).key.model == model and (<_CacheEntry>e).key.version == version
        ]
        for entry in victims:
            self._remove(entry)
        detached = [
            p for p in self._pending.values()
            if (<_PendingEntry>p).key.model == model
            and (<_PendingEntry>p).key.version == version
        ]
        for pending in detached:
            del self._pending[pending.key]
            self._detach(pending)
        return len(victims)

    cpdef clear(self):
        # The ring's pointers are dropped before the dict that owns the entries.
        self._hand = NULL
        self.nbytes = 0
        entries = self._entries
        self._entries = {}
        pending = self._pending
        self._pending = {}
        for p in pending.values():
            self._detach(<_PendingEntry>p)
        # Values are released last, when the cache is consistent again.
        entries.clear()

    # -- counters ------------------------------------------------------------------

    def __len__(self):
        return len(self._entries)

    def stats(self):
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "coalesced": self.coalesced,
            "entries": len(self._entries),
            "pending": self.pending,
            "nbytes": self.nbytes,
            "max_bytes": self.max_bytes,
        }

    def __repr__(self):
        return (
            f"<PredictionCache entries={len(self._entries)} pending={self.pending} "
            f"nbytes={self.nbytes}/{self.max_bytes}>"
        )

    # -- internals -----------------------------------------------------------------

    cdef _CacheKey _make_key(self, str model, str version, bytes key):
        _check_not_none(model, version, key)
        cdef _CacheKey k = _CacheKey.__new__(_CacheKey)
        if self._hash_fn is None:
            # str and bytes cache their hashes: three loads and some arithmetic.
            k.hash = <Py_hash_t>_mix(_mix(_mix(
                _PRIME_5,
                hash(model)),
                hash(version)),
                hash(key))
            if k.hash == -1:
                k.hash = -2
        else:
            k.hash = hash(self._hash_fn(model, version, key))
        k.model = model
        k.version = version
        k.data = key
        return k

    cdef _PendingEntry _take_pending(self, _CacheKey k):
        # Detached computations started before the live one, so they go first.
        cdef list detached
        cdef _PendingEntry pending
        found = self._detached.get(k)
        if found is not None:
            detached = <list>found
            pending = detached.pop(0)
            if not detached:
                del self._detached[k]
        else:
            pending = self._pending.pop(k, None)
            if pending is None:
                return None
        self.pending -= 1
        return pending

    cdef int _detach(self, _PendingEntry pending) except -1:
        pending.store = False
        found = self._detached.get(pending.key)
        if found is None:
            self._detached[pending.key] = [pending]
        else:
            (<list>found).append(pending)
        return 0

    cdef int _store(self, _CacheKey k, object value, Py_ssize_t nbytes) except -1:
        cdef PyObject* found = PyDict_GetItem(self._entries, k)
        if found is not NULL:
            self._remove(<_CacheEntry>found)
        if nbytes > self.max_bytes:
            return 0
        self._evict(self.max_bytes - nbytes)
        cdef _CacheEntry entry = _CacheEntry.__new__(_CacheEntry)
        entry.key = k
        entry.value = value
        entry.nbytes = nbytes
        # Into the dict first: from then on the ring may borrow it.
        self._entries[k] = entry
        self._link(entry)
        self.nbytes += nbytes
        return 0

    cdef int _evict(self, Py_ssize_t target) except -1:
        # A referenced entry loses its bit and is passed over; an unreferenced one
        # is evicted.  Ends within two turns of the ring.
        cdef _CacheEntry entry
        while self.nbytes > target and self._hand is not NULL:
            entry = <_CacheEntry>self._hand  # a strong reference while we work
            if entry.referenced:
                entry.referenced = False
                self._hand = entry.next
            else:
                self._remove(entry)
                self.evictions += 1
        return 0

    cdef int _remove(self, _CacheEntry entry) except -1:
        # The caller holds a reference to `entry`, so it outlives the del below.
        self._unlink(entry)
        self.nbytes -= entry.nbytes
        del self._entries[entry.key]
        return 0

    cdef int _link(self, _CacheEntry entry) except -1:
        # Just behind the hand: a new entry is the last one the hand visits.
        cdef _CacheEntry hand, before
        if self._hand is NULL:
            entry.prev = entry.next = <PyObject*>entry
            self._hand = <PyObject*>entry
        else:
            hand = <_CacheEntry>self._hand
            before = <_CacheEntry>hand.prev
            entry.prev = <PyObject*>before
            entry.next = <PyObject*>hand
            before.next = <PyObject*>entry
            hand.prev = <PyObject*>entry
        return 0

    cdef int _unlink(self, _CacheEntry entry) except -1:
        if entry.next == <PyObject*>entry:
            self._hand = NULL
        else:
            (<_CacheEntry>entry.prev).next = entry.next
            (<_CacheEntry>entry.next).prev = entry.prev
            if self._hand == <PyObject*>entry:
                self._hand = entry.next
        entry.prev = entry.next = NULL
        return 0
