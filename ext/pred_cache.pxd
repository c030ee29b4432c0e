# Declarations of the prediction cache.  Other extensions cimport PredictionCache and
# call get()/reserve()/put()/fail() at C level.
#
# Ownership: ``PredictionCache._entries`` holds the only strong reference to each
# completed entry.  The CLOCK ring (``_hand`` and each entry's ``prev``/``next``) is
# made of borrowed pointers, valid exactly while the entry is in ``_entries``: an
# entry is unlinked from the ring before it leaves the dict.  The ring therefore
# makes no reference cycles, and a dropped cache frees its values at once instead
# of at the next full garbage collection.

cimport cython
from cpython.ref cimport PyObject


@cython.final
cdef class _CacheKey:
    cdef readonly str model
    cdef readonly str version
    cdef readonly bytes data
    cdef Py_hash_t hash


@cython.final
cdef class _CacheEntry:
    cdef _CacheKey key
    cdef object value        # object: the cached answer, any type
    cdef Py_ssize_t nbytes   # bytes charged against max_bytes
    cdef bint referenced     # CLOCK reference bit
    cdef PyObject* prev      # _CacheEntry, borrowed (see above)
    cdef PyObject* next      # _CacheEntry, borrowed (see above)


@cython.final
cdef class _PendingEntry:
    cdef _CacheKey key
    cdef list waiters        # list[asyncio.Future]; waiters[0] is the owner's
    cdef bint store          # False when detached, or reserved while a detached one ran


@cython.final
cdef class PredictionCache:
    cdef dict _entries       # dict[_CacheKey, _CacheEntry]: completed entries
    cdef dict _pending       # dict[_CacheKey, _PendingEntry]: live computations
    cdef dict _detached      # dict[_CacheKey, list[_PendingEntry]]: oldest first
    cdef object _hash_fn     # Callable[[str, str, bytes], int] | None
    cdef PyObject* _hand     # _CacheEntry | NULL, borrowed: the CLOCK hand
    cdef readonly Py_ssize_t max_bytes
    cdef readonly Py_ssize_t nbytes
    cdef readonly Py_ssize_t pending
    cdef readonly Py_ssize_t hits
    cdef readonly Py_ssize_t misses
    cdef readonly Py_ssize_t evictions
    cdef readonly Py_ssize_t coalesced

    cpdef object get(self, str model, str version, bytes key, object default=*)
    cpdef tuple reserve(self, str model, str version, bytes key, object loop=*)
    cpdef put(self, str model, str version, bytes key, object value, object nbytes=*)
    cpdef fail(self, str model, str version, bytes key, object exc)
    cpdef Py_ssize_t invalidate(self, str model, str version) except -1
    cpdef clear(self)

    cdef _CacheKey _make_key(self, str model, str version, bytes key)
    cdef _PendingEntry _take_pending(self, _CacheKey k)
    cdef int _detach(self, _PendingEntry pending) except -1
    cdef int _store(self, _CacheKey k, object value, Py_ssize_t nbytes) except -1
    cdef int _evict(self, Py_ssize_t target) except -1
    cdef int _remove(self, _CacheEntry entry) except -1
    cdef int _link(self, _CacheEntry entry) except -1
    cdef int _unlink(self, _CacheEntry entry) except -1
