# Declarations of the batch queue.  Other extensions cimport BatchQueue and call
# put()/take_nowait() at C level, and read QueueEntry fields without Python calls.
#
# Ownership: every queued QueueEntry is referenced by exactly one slot of one
# _Ring (a strong reference held by the ring's list); popping an entry clears its
# slot.  A BatchQueue references its takers only while they wait or collect; a
# taker is the state of a take() coroutine, which the coroutine owns.

cimport cython

from clipper_core._ext.slo_controller cimport SloController


@cython.final
cdef class QueueEntry:
    cdef readonly object item         # object: the caller's input, opaque here
    cdef readonly object future       # asyncio.Future: the answer, resolved by a dispatcher
    cdef readonly double deadline     # absolute time.monotonic() seconds; inf = none
    cdef readonly long priority       # higher is served first
    cdef readonly double enqueued_at  # time.monotonic() seconds at put()


@cython.final
cdef class _Ring:
    # A FIFO of QueueEntry: a ring buffer over a list whose length is a power of two.
    cdef list _buf              # list[QueueEntry | None]
    cdef Py_ssize_t _head       # index of the oldest entry
    cdef Py_ssize_t _count      # entries held
    cdef Py_ssize_t _mask       # len(_buf) - 1

    cdef int push(self, QueueEntry entry) except -1
    cdef QueueEntry pop(self)
    cdef int _grow(self) except -1


@cython.final
cdef class _Taker:
    # The state of one take() call.
    cdef Py_ssize_t max_n
    cdef bint collecting        # True while it holds a claim of max_n entries
    cdef object waiter          # asyncio.Future[None] | None: set while it sleeps


@cython.final
cdef class BatchQueue:
    cdef readonly Py_ssize_t capacity
    cdef readonly str name
    cdef readonly bint closed
    cdef readonly Py_ssize_t taken
    cdef readonly Py_ssize_t expired
    cdef readonly Py_ssize_t rejected
    cdef readonly Py_ssize_t cancelled
    cdef Py_ssize_t _len
    cdef Py_ssize_t _claimed    # sum of max_n over _collecting
    cdef str _label             # name, or "<unnamed>", for messages
    cdef _Ring _ring0           # priority 0
    cdef dict _rings            # dict[int, _Ring]: the other priorities
    cdef list _levels           # list[int]: keys of _rings, ascending
    cdef list _idle             # list[_Taker]: takers waiting for entries, FIFO
    cdef list _collecting       # list[_Taker]: takers holding a claim
    cdef object _loop           # asyncio.AbstractEventLoop | None: given at construction
    cdef object _bound_loop     # asyncio.AbstractEventLoop | None: the loop of the two below
    # {"loop": _bound_loop} when that loop's create_future() is the stock one, which
    # only calls asyncio.Future(loop=loop): then put() calls the C type directly.
    cdef dict _future_kw        # dict[str, object] | None
    cdef object _create_future  # Callable[[], asyncio.Future] | None: other loops' factory
    cdef object _close_exc      # BaseException | None: given to close()

    cpdef object put(self, object item, double deadline=*, object priority=*)
    cpdef list take_nowait(self, Py_ssize_t max_n)
    cpdef close(self, object exc=*)

    cdef object _get_loop(self)
    cdef object _new_future(self)
    cdef int _bind(self, object loop) except -1
    cdef object _closed_error(self)
    cdef int _expire(self, QueueEntry entry) except -1
    cdef int _take_from(self, _Ring ring, list batch, Py_ssize_t max_n,
                        double *now) except -1
    cdef int _drop_dead_heads(self, double now) except -1
    cdef int _drop_dead_head(self, _Ring ring, double now) except -1
    cdef int _prune_levels(self) except -1
    cdef double _oldest(self) except? -1.0
    cdef double _head_deadline(self) except? -1.0
    cdef int _claim(self, _Taker taker) except -1
    cdef int _unclaim(self, _Taker taker) except -1
    cdef int _on_put(self) except -1
    cdef int _dispatch(self) except -1
