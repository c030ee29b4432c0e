"""The frontend's end of a container's local socket (Predict over a Unix socket).

A container on this host also answers Predict on a Unix socket, with the same
messages as gRPC in 13-byte-header frames (``protos/container.proto``, "Local
transport"; the container's end is ``model_containers.local_socket``).  On this
VM a gRPC round trip between two processes costs 0.7-1 ms and this one about a
tenth of that, which is most of a small model's latency.

``LocalChannel`` is an ``asyncio.Protocol``: calls are matched to answers by call
id, so they may overlap; a lost connection fails every open call with
``ConnectionError`` and the channel stays closed (``ReplicaClient`` makes a new
one, or goes back to gRPC).

While a call of one input is out on an idle channel, the event loop polls for
the answer instead of sleeping, for up to ``reply_spin`` seconds (250 µs by
default, where the process may run on two CPUs or more), while this channel's
recent round trips came within it.  A sleeping loop must be woken by the
container's write: on a VM an inter-processor interrupt, paid in the container's
CPU and in the answer's latency (about 10 and 40 µs of a noop query at one query
at a time here); polling costs the frontend about as much CPU as the round trip
lasts.  Batches of several inputs (load) never poll: the loop has other work.
See docs/benchmarks/per-request-cost.md ("The frontend polls for a fast answer").
"""

from __future__ import annotations

import asyncio
import os
import struct
import time

from model_containers import hop_trace

__all__ = [
    "DEFAULT_REPLY_SPIN_US",
    "HEADER",
    "KIND_HELLO",
    "KIND_OK",
    "KIND_PREDICT",
    "LocalChannel",
    "reply_spin_for_host",
]

#: Payload length (uint32), kind (uint8), call id (uint64), little-endian.
HEADER = struct.Struct("<IBQ")
KIND_OK = 0
KIND_PREDICT = 1
KIND_HELLO = 255
_HEADER_SIZE = HEADER.size

#: What a call resolves to: the answer's kind (0, or a gRPC status code) and payload.
Answer = tuple[int, bytes]

#: ``ServerConfig.reply_spin_us``'s default.
DEFAULT_REPLY_SPIN_US = 250

#: Weight of the newest round trip in a channel's moving average.
_ROUND_TRIP_WEIGHT = 0.125


def reply_spin_for_host(microseconds: int = DEFAULT_REPLY_SPIN_US) -> float:
    """The seconds a channel polls for an answer, for ``microseconds`` asked: 0.0
    where this process may run on one CPU only (polling would take it from the
    container it waits on).

    Raises:
        ValueError: ``microseconds`` is negative.
    """
    if microseconds < 0:
        raise ValueError(f"reply_spin_us must be >= 0, not {microseconds}")
    return microseconds * 1e-6 if len(os.sched_getaffinity(0)) > 1 else 0.0


def _expire(fut: asyncio.Future[Answer]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class LocalChannel(asyncio.Protocol):
    """One connection to a container's local socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_spin: float = 0.0) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._calls: dict[int, asyncio.Future[Answer]] = {}
        self._next_id = 0
        self._hello: asyncio.Future[bytes] = loop.create_future()
        self.closed = False
        self._spin = reply_spin
        self._spin_until = 0.0  # non-zero while the loop polls for this channel
        self._busy_since = 0.0  # when the oldest call in flight went out
        #: Moving average of the seconds from sending a call on an idle channel
        #: to its last answer (kept when the channel may poll); the loop polls
        #: only while it is within the spin.
        self.round_trip = 0.0
        #: Calls the loop has polled for.
        self.polled_calls = 0

    @classmethod
    async def connect(
        cls,
        path: str,
        token: str,
        timeout: float,  # noqa: ASYNC109
        *,
        reply_spin: float = 0.0,
    ) -> LocalChannel:
        """Connect to ``path`` and check that the container there sent ``token``;
        the channel polls up to ``reply_spin`` seconds for an answer (0.0: never).

        Raises:
            OSError: No such socket, refused, or another container's token.
            TimeoutError: No greeting within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        _, channel = await asyncio.wait_for(
            loop.create_unix_connection(lambda: cls(loop, reply_spin), path), timeout
        )
        try:
            hello = await asyncio.wait_for(asyncio.shield(channel._hello), timeout)
            if hello != token.encode():
                raise ConnectionRefusedError(
                    f"the local socket {path} belongs to another container process"
                )
        except BaseException:
            channel.close()
            raise
        return channel

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if hop_trace.ENABLED:
            hop_trace.mark("transport_read")
        buf = self._buf
        if not buf and len(data) >= _HEADER_SIZE:
            # The common case: the answer came whole and alone; no buffer copies.
            length, kind, call_id = HEADER.unpack_from(data)
            if len(data) == _HEADER_SIZE + length and kind != KIND_HELLO:
                fut = self._calls.pop(call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((kind, data[_HEADER_SIZE:]))
                if self._spin and not self._calls:
                    self._went_idle()
                return
        buf += data
        while len(buf) >= _HEADER_SIZE:
            length, kind, call_id = HEADER.unpack_from(buf)
            end = _HEADER_SIZE + length
            if len(buf) < end:
                return
            with memoryview(buf) as view:
                payload = bytes(view[_HEADER_SIZE:end])
            del buf[:end]
            if kind == KIND_HELLO:
                if not self._hello.done():
                    self._hello.set_result(payload)
                continue
            fut = self._calls.pop(call_id, None)
            if fut is not None and not fut.done():
                fut.set_result((kind, payload))
            if self._spin and not self._calls:
                self._went_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        error = ConnectionResetError(
            f"the container closed its local socket{f': {exc}' if exc else ''}"
        )
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()  # retrieved: connect() may have stopped waiting
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(error)

    # -- calls --------------------------------------------------------------------

    def call(
        self, kind: int, payload: bytes, *, poll: bool = False
    ) -> tuple[int, asyncio.Future[Answer]]:
        """Send one frame; the future resolves to its answer.  Pair with ``forget``.
        ``poll``: the loop polls for the answer (up to the channel's ``reply_spin``)
        when this call finds the channel idle.

        Raises:
            ConnectionResetError: The channel is closed.
        """
        transport = self._transport
        if transport is None or self.closed:
            raise ConnectionResetError("the local socket is closed")
        self._next_id += 1
        call_id = self._next_id
        fut: asyncio.Future[Answer] = self._loop.create_future()
        idle = not self._calls
        self._calls[call_id] = fut
        transport.writelines((HEADER.pack(len(payload), kind, call_id), payload))
        if hop_trace.ENABLED:
            hop_trace.mark("transport_written")
        if idle and self._spin:  # the round trips matter only to the polling
            now = self._busy_since = time.monotonic()
            if poll and self.round_trip <= self._spin:
                if not self._spin_until:  # else the poll of the last call goes on
                    self._loop.call_soon(self._poll)
                self._spin_until = now + self._spin
                self.polled_calls += 1
        return call_id, fut

    @property
    def polling(self) -> bool:
        """Whether the loop polls for this channel's answers now."""
        return self._spin_until != 0.0

    def _went_idle(self) -> None:
        sample = time.monotonic() - self._busy_since
        self.round_trip += (sample - self.round_trip) * _ROUND_TRIP_WEIGHT

    def _poll(self) -> None:
        # A callback ready to run makes the loop poll its sockets without
        # sleeping; this one stays ready until the answers are in or time is up.
        if self._calls and time.monotonic() < self._spin_until:
            self._loop.call_soon(self._poll)
        else:
            self._spin_until = 0.0

    async def request(
        self,
        kind: int,
        payload: bytes,
        timeout: float | None,  # noqa: ASYNC109 (the call's deadline)
        *,
        poll: bool = False,
    ) -> Answer:
        """:meth:`call`, then its answer, within ``timeout`` seconds (None: no limit).

        Raises:
            ConnectionError: The channel is closed, or closes before the answer.
            TimeoutError: No answer in time (a late one is ignored).
        """
        call_id, fut = self.call(kind, payload, poll=poll)
        # The channel's loop, not get_running_loop(): on Python 3.11 that is a getpid().
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self.forget(call_id)

    def forget(self, call_id: int) -> None:
        """Drop a call that timed out or was cancelled (a late answer is ignored)."""
        self._calls.pop(call_id, None)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
