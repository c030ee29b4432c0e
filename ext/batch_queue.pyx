"""The bounded queue of pending predictions of one model version, in C.

``clipper_core/_pure/batch_queue.py`` is the specification: its docstrings describe
the ordering, delayed batching, dead entries and the claim protocol of concurrent
takers, and this module behaves the same way.

Speed: ``put()`` costs one clock read (``clock_gettime``, no Python call), one
future and one free-listed entry; ``take_nowait()`` one ``future.done()`` per entry
and a clock read only if an entry has a deadline.  Futures are made by calling
``asyncio.Future`` (the C type) with a cached ``{"loop": loop}`` when the loop's
``create_future`` is the stock one (asyncio's or uvloop's, which do exactly that);
any other loop's ``create_future`` is called as is.

Every method runs with the GIL held and on the event loop's thread; nothing here
releases the GIL or takes a lock.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject_Call
from cpython.pystate cimport PyThreadState_GetDict
from cpython.ref cimport PyObject
from libc.math cimport INFINITY
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from clipper_core._ext.slo_controller cimport SloController

import asyncio
import operator
import os
import sys

from clipper_core.errors import DeadlineExceeded, QueueClosed, QueueFull

__all__ = ["BatchQueue", "QueueEntry"]

cdef object _Future = asyncio.Future
cdef object _get_running_loop = asyncio.events._get_running_loop
cdef object _BaseEventLoop = asyncio.BaseEventLoop
cdef tuple _NO_ARGS = ()

# asyncio.get_running_loop() costs a getpid() system call on CPython 3.11 (its
# fork check): about 120 ns, more than the rest of put().  CPython 3.11 keeps the
# running loop in the thread-state dict under this key, in a fresh holder object
# each time a loop starts or stops.  So while the key maps to the object we last
# saw (we keep it alive, so its address cannot be reused), the running loop is the
# one asyncio gave us then.  Anything else (no dict, no key, another object) asks
# asyncio again; so does every call on a version that keeps the loop elsewhere.
cdef str _RUNNING_LOOP_KEY = "__asyncio_running_event_loop__"
cdef tuple _running_loop_cache = (None, None)  # (what the key mapped to, the loop)


cdef object _running_loop():
    global _running_loop_cache
    cdef PyObject *tsd = <PyObject *>PyThreadState_GetDict()  # borrowed, may be NULL
    cdef PyObject *seen = NULL  # borrowed
    if tsd != NULL:
        seen = PyDict_GetItem(<object>tsd, _RUNNING_LOOP_KEY)
        if seen != NULL and <object>seen is _running_loop_cache[0]:
            return _running_loop_cache[1]
    loop = _get_running_loop()
    if seen != NULL:
        # One assignment, so that a finaliser run by the old tuple's release
        # cannot observe a half-updated cache.
        _running_loop_cache = (<object>seen, loop)
    return loop


def _forget_running_loop():
    # A forked child must not reuse its parent's running loop.
    global _running_loop_cache
    _running_loop_cache = (None, None)


os.register_at_fork(after_in_child=_forget_running_loop)


cdef inline double _now() noexcept nogil:
    # time.monotonic(), rounded the same way (ns since boot, then / 1e9), so that
    # enqueued_at compares exactly with what Python code reads.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>(ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9


cdef double _as_double(object value, str name) except? -1.0:
    # Only for Python-level knobs that may arrive as ints; the twin does the same.
    if isinstance(value, (str, bytes, bytearray)) or not (
        hasattr(value, "__float__") or hasattr(value, "__index__")
    ):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


cdef bint _is_stock_factory(object loop) except -1:
    # True when loop.create_future() is exactly asyncio.Future(loop=loop).
    factory = getattr(type(loop), "create_future", None)
    if factory is None:
        return False
    if factory is _BaseEventLoop.create_future:
        return True
    uv = sys.modules.get("uvloop.loop")
    return uv is not None and factory is getattr(uv.Loop, "create_future", None)


cdef int _wake_waiter(object waiter) except -1:
    # A waiter may already be done: woken twice (put, then timer or close).
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
    return 0


def _wake(waiter):
    """Timer callback: resolve a taker's waiter unless it is already done."""
    _wake_waiter(waiter)


@cython.final
@cython.freelist(256)
@cython.auto_pickle(False)
cdef class QueueEntry:
    """One pending prediction, as a dispatcher receives it (see the twin)."""

    def __init__(self, item, future, double deadline, long priority, double enqueued_at):
        self.item = item
        self.future = future
        self.deadline = deadline
        self.priority = priority
        self.enqueued_at = enqueued_at

    def __repr__(self):
        return (
            f"QueueEntry(item={self.item!r}, priority={self.priority}, "
            f"deadline={self.deadline!r}, enqueued_at={self.enqueued_at!r})"
        )


@cython.final
@cython.auto_pickle(False)
cdef class _Ring:

    def __cinit__(self):
        self._buf = [None] * 8
        self._mask = 7
        self._head = 0
        self._count = 0

    cdef int push(self, QueueEntry entry) except -1:
        if self._count > self._mask:
            self._grow()
        self._buf[(self._head + self._count) & self._mask] = entry
        self._count += 1
        return 0

    cdef QueueEntry pop(self):
        # The caller checks _count > 0.  The slot is cleared so that the ring
        # does not keep a taken entry (and its item) alive.
        cdef Py_ssize_t i = self._head
        cdef QueueEntry entry = <QueueEntry>self._buf[i]
        self._buf[i] = None
        self._head = (i + 1) & self._mask
        self._count -= 1
        return entry

    cdef int _grow(self) except -1:
        # Full: unroll oldest-first into a list twice as long.
        cdef Py_ssize_t n = self._mask + 1
        self._buf = self._buf[self._head:] + self._buf[:self._head] + [None] * n
        self._head = 0
        self._mask = 2 * n - 1
        return 0


@cython.final
@cython.auto_pickle(False)
cdef class _Taker:
    pass


@cython.final
@cython.auto_pickle(False)
cdef class BatchQueue:
    """A bounded queue of pending predictions for one model version.

    See ``clipper_core._pure.batch_queue.BatchQueue``, which behaves identically.
    """

    def __cinit__(self, Py_ssize_t capacity, *, str name not None="", loop=None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.name = name
        self._label = name or "<unnamed>"
        self._loop = loop
        self._ring0 = _Ring.__new__(_Ring)
        self._rings = {}
        self._levels = []
        self._idle = []
        self._collecting = []

    def __len__(self):
        return self._len

    def __repr__(self):
        return f"<BatchQueue {self._label} len={self._len}/{self.capacity} closed={self.closed}>"

    def stats(self):
        """Counters and state, for metrics (see the twin)."""
        return {
            "name": self.name,
            "capacity": self.capacity,
            "len": self._len,
            "closed": self.closed,
            "taken": self.taken,
            "expired": self.expired,
            "rejected": self.rejected,
            "cancelled": self.cancelled,
            "takers": len(self._idle) + len(self._collecting),
        }

    # -- producer side ---------------------------------------------------------

    cpdef object put(self, object item, double deadline=INFINITY, object priority=0):
        """Queues ``item``; returns the future its answer will arrive in.  An
        entry of a positive priority (accepted work handed back) is never
        refused for capacity."""
        # priority is taken as an object: a C long parameter would truncate floats.
        cdef long prio = priority if type(priority) is int else operator.index(priority)
        cdef double now
        cdef QueueEntry entry
        cdef _Ring ring
        cdef Py_ssize_t i
        if self.closed:
            raise self._closed_error()
        now = _now()
        if deadline <= now:
            fut = self._new_future()
            self.expired += 1
            fut.set_exception(DeadlineExceeded(
                f"deadline passed before the request entered queue {self._label}"
            ))
            return fut
        if self._len >= self.capacity and prio <= 0:
            self._drop_dead_heads(now)
            if self._len >= self.capacity:
                self.rejected += 1
                raise QueueFull(f"queue {self._label} is full (capacity {self.capacity})")
        fut = self._new_future()
        entry = QueueEntry.__new__(QueueEntry)
        entry.item = item
        entry.future = fut
        entry.deadline = deadline
        entry.priority = prio
        entry.enqueued_at = now
        if prio == 0:
            self._ring0.push(entry)
        else:
            key = prio
            found = self._rings.get(key)
            if found is None:
                ring = _Ring.__new__(_Ring)
                self._rings[key] = ring
                i = len(self._levels)
                while i > 0 and <long>self._levels[i - 1] > prio:
                    i -= 1
                self._levels.insert(i, key)
            else:
                ring = <_Ring>found
            ring.push(entry)
        self._len += 1
        if self._collecting or self._idle:
            self._on_put()
        return fut

    # -- consumer side ---------------------------------------------------------

    cpdef list take_nowait(self, Py_ssize_t max_n):
        """Pops up to ``max_n`` live entries in priority order, now."""
        cdef list batch
        cdef list levels
        cdef double now = -INFINITY  # read the clock only for an entry with a deadline
        cdef Py_ssize_t i
        if self.closed:
            raise self._closed_error()
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        batch = []
        levels = self._levels
        if not levels:
            self._take_from(self._ring0, batch, max_n, &now)
        else:
            for i in range(len(levels) - 1, -1, -1):
                if <long>levels[i] > 0:
                    self._take_from(<_Ring>self._rings[levels[i]], batch, max_n, &now)
            self._take_from(self._ring0, batch, max_n, &now)
            for i in range(len(levels) - 1, -1, -1):
                if <long>levels[i] < 0:
                    self._take_from(<_Ring>self._rings[levels[i]], batch, max_n, &now)
            self._prune_levels()
        self.taken += len(batch)
        return batch

    async def take(self, Py_ssize_t max_n, max_wait, slack=None):
        """Waits for a batch of up to ``max_n`` entries (delayed batching); with
        ``slack``, no later than ``slack`` seconds before a head's deadline."""
        cdef double wait
        cdef double now
        cdef double delay
        cdef double by
        cdef double sl = -1.0 if slack is None else _as_double(slack, "slack")
        cdef _Taker taker
        cdef list batch
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        wait = max_wait if type(max_wait) is float else _as_double(max_wait, "max_wait")
        loop = self._get_loop()
        taker = _Taker.__new__(_Taker)
        taker.max_n = max_n
        try:
            while True:
                if self.closed:
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
                now = _now()
                self._drop_dead_heads(now)
                if self._len == 0:
                    self._unclaim(taker)
                    continue
                if self._len < max_n:
                    delay = self._oldest() + wait - now
                    if sl >= 0.0:
                        by = self._head_deadline() - sl - now
                        if by < delay:
                            delay = by
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
            if not self.closed:
                self._dispatch()

    async def take_for(self, SloController controller not None, max_wait):
        """``take(controller.batch_size, max_wait, controller.slo)``, read once, now:
        a batch waits for more inputs only while its oldest still leaves the
        batch's latency objective before its deadline."""
        # C-level field reads through the cimported type: no Python call.
        return await self.take(controller.batch_size, max_wait, controller.slo)

    cpdef close(self, object exc=None):
        """Fails every pending future and wakes every taker; idempotent."""
        cdef _Ring ring
        cdef QueueEntry entry
        if self.closed:
            return None
        if exc is not None and not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception, not {type(exc).__name__}")
        self.closed = True
        self._close_exc = exc
        rings = [self._ring0]
        rings.extend(self._rings.values())
        self._ring0 = _Ring.__new__(_Ring)
        self._rings = {}
        self._levels = []
        self._len = 0
        for r in rings:
            ring = <_Ring>r
            while ring._count:
                entry = ring.pop()
                fut = entry.future
                if not fut.done():
                    fut.set_exception(exc if exc is not None else self._closed_error())
        for t in self._idle + self._collecting:
            _wake_waiter((<_Taker>t).waiter)
        return None

    # -- internals -------------------------------------------------------------

    cdef object _get_loop(self):
        loop = self._loop
        if loop is None:
            loop = _running_loop()
            if loop is None:
                raise RuntimeError("no running event loop")
        return loop

    cdef object _new_future(self):
        loop = self._get_loop()
        if loop is not self._bound_loop:
            self._bind(loop)
        if self._future_kw is not None:
            # The stock factories run exactly this; calling the C type with a
            # cached kwargs dict skips a Python frame (asyncio) and a dict.
            return PyObject_Call(_Future, _NO_ARGS, self._future_kw)
        return self._create_future()

    cdef int _bind(self, object loop) except -1:
        if _is_stock_factory(loop):
            self._future_kw = {"loop": loop}
            self._create_future = None
        else:
            self._future_kw = None
            self._create_future = loop.create_future
        self._bound_loop = loop
        return 0

    cdef object _closed_error(self):
        err = QueueClosed(f"queue {self._label} closed")
        err.__cause__ = self._close_exc
        return err

    cdef int _expire(self, QueueEntry entry) except -1:
        self.expired += 1
        entry.future.set_exception(
            DeadlineExceeded(f"deadline passed while queued in {self._label}")
        )
        return 0

    cdef int _take_from(self, _Ring ring, list batch, Py_ssize_t max_n,
                        double *now) except -1:
        cdef QueueEntry entry
        while ring._count and len(batch) < max_n:
            entry = ring.pop()
            self._len -= 1
            if entry.future.done():
                self.cancelled += 1
                continue
            if entry.deadline != INFINITY:
                if now[0] == -INFINITY:
                    now[0] = _now()
                if entry.deadline <= now[0]:
                    self._expire(entry)
                    continue
            batch.append(entry)
        return 0

    cdef int _drop_dead_heads(self, double now) except -1:
        self._drop_dead_head(self._ring0, now)
        if self._levels:
            for r in self._rings.values():
                self._drop_dead_head(<_Ring>r, now)
            self._prune_levels()
        return 0

    cdef int _drop_dead_head(self, _Ring ring, double now) except -1:
        cdef QueueEntry entry
        while ring._count:
            entry = <QueueEntry>ring._buf[ring._head]
            if entry.future.done():
                self.cancelled += 1
            elif entry.deadline <= now:
                self._expire(entry)
            else:
                break
            ring.pop()
            self._len -= 1
        return 0

    cdef int _prune_levels(self) except -1:
        cdef Py_ssize_t i = len(self._levels)
        while i > 0:
            i -= 1
            key = self._levels[i]
            if (<_Ring>self._rings[key])._count == 0:
                del self._levels[i]
                del self._rings[key]
        return 0

    cdef double _oldest(self) except? -1.0:
        # Each level is FIFO, so its head is its oldest entry.
        cdef double oldest = INFINITY
        cdef _Ring ring = self._ring0
        cdef QueueEntry head
        if ring._count:
            oldest = (<QueueEntry>ring._buf[ring._head]).enqueued_at
        if self._levels:
            for r in self._rings.values():
                ring = <_Ring>r
                if ring._count:
                    head = <QueueEntry>ring._buf[ring._head]
                    if head.enqueued_at < oldest:
                        oldest = head.enqueued_at
        return oldest

    cdef double _head_deadline(self) except? -1.0:
        # The earliest deadline among the levels' heads (the entries taken next).
        cdef double earliest = INFINITY
        cdef _Ring ring = self._ring0
        cdef QueueEntry head
        if ring._count:
            earliest = (<QueueEntry>ring._buf[ring._head]).deadline
        if self._levels:
            for r in self._rings.values():
                ring = <_Ring>r
                if ring._count:
                    head = <QueueEntry>ring._buf[ring._head]
                    if head.deadline < earliest:
                        earliest = head.deadline
        return earliest

    cdef int _claim(self, _Taker taker) except -1:
        taker.collecting = True
        self._collecting.append(taker)
        self._claimed += taker.max_n
        return 0

    cdef int _unclaim(self, _Taker taker) except -1:
        taker.collecting = False
        self._collecting.remove(taker)
        self._claimed -= taker.max_n
        return 0

    cdef int _on_put(self) except -1:
        cdef _Taker taker
        for t in self._collecting:
            taker = <_Taker>t
            if self._len >= taker.max_n:
                _wake_waiter(taker.waiter)
        self._dispatch()
        return 0

    cdef int _dispatch(self) except -1:
        # Hand unclaimed entries to idle takers; the claim moves at wake-up time
        # so that a burst of puts wakes no more takers than it needs.
        cdef _Taker taker
        while self._idle and self._len > self._claimed:
            taker = <_Taker>self._idle.pop(0)
            self._claim(taker)
            _wake_waiter(taker.waiter)
        return 0
