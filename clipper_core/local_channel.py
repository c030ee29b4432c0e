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
"""

from __future__ import annotations

import asyncio
import struct

from model_containers import hop_trace

__all__ = ["HEADER", "KIND_HELLO", "KIND_OK", "KIND_PREDICT", "LocalChannel"]

#: Payload length (uint32), kind (uint8), call id (uint64), little-endian.
HEADER = struct.Struct("<IBQ")
KIND_OK = 0
KIND_PREDICT = 1
KIND_HELLO = 255
_HEADER_SIZE = HEADER.size

#: What a call resolves to: the answer's kind (0, or a gRPC status code) and payload.
Answer = tuple[int, bytes]


class LocalChannel(asyncio.Protocol):
    """One connection to a container's local socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._calls: dict[int, asyncio.Future[Answer]] = {}
        self._next_id = 0
        self._hello: asyncio.Future[bytes] = loop.create_future()
        self.closed = False

    @classmethod
    async def connect(cls, path: str, token: str, timeout: float) -> LocalChannel:  # noqa: ASYNC109
        """Connect to ``path`` and check that the container there sent ``token``.

        Raises:
            OSError: No such socket, refused, or another container's token.
            TimeoutError: No greeting within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        _, channel = await asyncio.wait_for(
            loop.create_unix_connection(lambda: cls(loop), path), timeout
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

    def call(self, kind: int, payload: bytes) -> tuple[int, asyncio.Future[Answer]]:
        """Send one frame; the future resolves to its answer.  Pair with ``forget``.

        Raises:
            ConnectionResetError: The channel is closed.
        """
        transport = self._transport
        if transport is None or self.closed:
            raise ConnectionResetError("the local socket is closed")
        self._next_id += 1
        call_id = self._next_id
        fut: asyncio.Future[Answer] = self._loop.create_future()
        self._calls[call_id] = fut
        transport.writelines((HEADER.pack(len(payload), kind, call_id), payload))
        if hop_trace.ENABLED:
            hop_trace.mark("transport_written")
        return call_id, fut

    def forget(self, call_id: int) -> None:
        """Drop a call that timed out or was cancelled (a late answer is ignored)."""
        self._calls.pop(call_id, None)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
