"""One memory budget for the request bodies a server holds, across connections.

A per-request body limit bounds one request; forty connections each holding a
9 MiB body still take 360 MiB.  :class:`BodyBudget` is shared by every
connection of a server: a request reserves its declared ``Content-Length``
when its headers arrive (a chunked body reserves as it grows) and gives it back
once it is answered.  A request that does not fit is refused with 503 before
its body is read.

Freed bodies go back to the C allocator, which does not always give the pages
back to the system (glibc keeps freed heap memory for reuse, and its dynamic
mmap threshold moves large buffers onto the heap after the first one is freed):
after a burst of large bodies the process would keep its peak size.  So when
the budget falls back to empty after holding at least :data:`TRIM_AFTER_BYTES`,
it asks the allocator to return its free memory (``malloc_trim``, glibc only;
at most once per :data:`TRIM_INTERVAL` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["TRIM_AFTER_BYTES", "TRIM_INTERVAL", "BodyBudget", "trim_allocator"]

log = logging.getLogger("clipper_core.http")

#: Bytes released since the last trim that make an empty budget trim the heap.
TRIM_AFTER_BYTES = 8 * 1024 * 1024
#: Seconds between two trims, at least.
TRIM_INTERVAL = 1.0
#: Seconds after the budget empties before the trim (the last answers' buffers
#: are still referenced when the budget is given back).
TRIM_DELAY = 0.2


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to do
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def trim_allocator() -> bool:
    """Return the C heap's free memory to the system; False where unsupported."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class BodyBudget:
    """The bytes of request bodies a server may hold at once, over all connections.

    Args:
        limit: The budget in bytes (> 0).
    """

    __slots__ = ("_last_trim", "_released", "_trim_handle", "in_use", "limit", "peak", "refused")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the body budget must be > 0 bytes")
        self.limit = limit
        #: Bytes reserved now.
        self.in_use = 0
        #: The most bytes reserved at once.
        self.peak = 0
        #: Requests refused because they did not fit.
        self.refused = 0
        self._released = 0
        self._last_trim = 0.0
        self._trim_handle: asyncio.TimerHandle | None = None

    def reserve(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (and nothing reserved) when they do not fit."""
        if self.in_use + n > self.limit:
            self.refused += 1
            return False
        self.in_use += n
        if self.in_use > self.peak:
            self.peak = self.in_use
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` reserved bytes."""
        if n <= 0:
            return
        self.in_use = max(0, self.in_use - n)
        self._released += n
        if self.in_use == 0 and self._released >= TRIM_AFTER_BYTES and self._trim_handle is None:
            with contextlib.suppress(RuntimeError):  # no running loop: no trim
                loop = asyncio.get_running_loop()
                wait = max(TRIM_DELAY, self._last_trim + TRIM_INTERVAL - time.monotonic())
                self._trim_handle = loop.call_later(wait, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        if self.in_use:
            return  # a new burst: trim when it is over
        self._released = 0
        self._last_trim = time.monotonic()
        started = time.perf_counter()
        if trim_allocator():
            log.debug("returned free heap memory in %.1f ms", (time.perf_counter() - started) * 1e3)

    def close(self) -> None:
        """Cancel a pending trim (the server stops)."""
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None
