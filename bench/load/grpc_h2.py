"""A cheap gRPC load generator: unary calls written as HTTP/2 frames by hand.

``grpc.aio``'s client costs 70-250 µs of CPU per call on this VM (more against
a ``grpc.aio`` server than against ours), which on two cores is a large share
of what the servers under test could use.  This client sends the same calls
(HEADERS with a constant header block, then one DATA frame with the
pre-serialized message) from an ``asyncio.Protocol`` per connection, answers the
server's SETTINGS and PINGs, keeps the connection windows open, decodes reply
headers with :mod:`clipper_core.oip.hpack` and reads ``grpc-status`` from the
trailers: 25-30 µs a call against ours on this VM.  Closed loop only
(``--grpc-client h2``); no CONTINUATION frames (neither server under test sends
them for these replies) and no TLS.
"""

from __future__ import annotations

import asyncio
import struct

from bench.load.common import ERR_PARSE, ERR_RESET, ERR_TIMEOUT, GRPC_BASE, LoadRun, _now
from bench.payloads import DEFAULT_MARKER_GRPC
from clipper_core.oip import h2_frames as h2
from clipper_core.oip.hpack import HpackDecoder, encode_int, encode_literal

__all__ = ["H2ClientConnection", "H2GrpcLoad", "request_block"]

#: The window this client gives the server (streams and connection).
_WINDOW = (1 << 31) - 1
_CONN_TOP_UP = 1 << 30


def request_block(authority: str, path: str, timeout_s: float) -> bytes:
    """The constant header block of every call (no Huffman, nothing indexed)."""

    def indexed_name(index: int, value: bytes) -> bytes:
        return encode_int(index, 4) + encode_int(len(value), 7) + value

    return b"".join(
        (
            b"\x83\x86",  # :method POST, :scheme http
            indexed_name(4, path.encode()),  # :path
            indexed_name(1, authority.encode()),  # :authority
            indexed_name(31, b"application/grpc"),  # content-type
            encode_literal(b"te", b"trailers"),
            encode_literal(b"grpc-timeout", f"{max(1, int(timeout_s * 1000))}m".encode()),
        )
    )


class _Call:
    __slots__ = ("data", "future", "t0")

    def __init__(self, future: asyncio.Future[tuple[int, bytes]], t0: float) -> None:
        self.future = future
        self.t0 = t0
        self.data = bytearray()


class H2ClientConnection(asyncio.Protocol):
    """One connection: calls out, frames in."""

    def __init__(self, block: bytes) -> None:
        self.block = block
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.decoder = HpackDecoder()
        self.calls: dict[int, _Call] = {}
        self.next_id = 1
        self.send_window = 65535  # the server's connection window for our DATA
        self.waiting: list[tuple[bytes, int]] = []  # (frames, DATA bytes) held back by it
        self.received = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HIHI", h2.S_ENABLE_PUSH, 0, h2.S_INITIAL_WINDOW, _WINDOW)
        increment = (_CONN_TOP_UP).to_bytes(4, "big")
        self.transport.write(  # type: ignore[union-attr]
            h2.PREFACE
            + h2.frame(h2.SETTINGS, 0, 0, settings)
            + h2.frame(h2.WINDOW_UPDATE, 0, 0, increment)
        )

    def call(self, message: bytes, t0: float) -> asyncio.Future[tuple[int, bytes]]:
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            fut.set_result((ERR_RESET, b""))
            return fut
        sid = self.next_id
        self.next_id += 2
        self.calls[sid] = _Call(fut, t0)
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        out = h2.frame(h2.HEADERS, h2.END_HEADERS, sid, self.block) + h2.frame(
            h2.DATA, h2.END_STREAM, sid, body
        )
        if self.waiting or len(body) > self.send_window:
            self.waiting.append((out, len(body)))
        else:
            self.send_window -= len(body)
            self.transport.write(out)
        return fut

    def expire(self, before: float) -> None:
        """Fail the calls sent before ``before`` (their timeout passed)."""
        for sid in [s for s, c in self.calls.items() if c.t0 < before]:
            call = self.calls.pop(sid)
            if not call.future.done():
                call.future.set_result((ERR_TIMEOUT, b""))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        out: list[bytes] = []
        while end - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if end - pos - 9 < length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._frame(kind, flags, sid, payload, out)
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        if kind == h2.DATA:
            self.received += len(payload)
            call = self.calls.get(sid)
            if call is not None:
                call.data += h2.unpad(flags, payload)
            if self.received >= _CONN_TOP_UP // 2:
                out.append(h2.frame(h2.WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
                self.received = 0
        elif kind == h2.HEADERS:
            block = h2.unpad(flags, payload)
            if flags & h2.PRIORITY_FLAG:
                block = block[5:]
            headers = self.decoder.decode(block)  # always: the table must stay in step
            if flags & h2.END_STREAM:
                status = next((int(v) for k, v in headers if k == "grpc-status"), -1)
                self._end(sid, status)
        elif kind == h2.SETTINGS and not flags & h2.ACK:
            if not self.ready.done():
                self.ready.set_result(None)
            out.append(h2.frame(h2.SETTINGS, h2.ACK, 0))
        elif kind == h2.PING and not flags & h2.ACK:
            out.append(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.WINDOW_UPDATE and sid == 0:
            self.send_window += int.from_bytes(payload, "big") & 0x7FFFFFFF
            while self.waiting and self.waiting[0][1] <= self.send_window:
                frames, n = self.waiting.pop(0)
                self.send_window -= n
                if self.transport is not None:
                    self.transport.write(frames)
        elif kind == h2.RST_STREAM:
            self._end(sid, ERR_RESET)
        elif kind == h2.GOAWAY:
            self.closed = True

    def _end(self, sid: int, status: int) -> None:
        call = self.calls.pop(sid, None)
        if call is None or call.future.done():
            return
        if status == 0:
            call.future.set_result((0, bytes(call.data[5:])))
        elif status < 0:
            call.future.set_result((ERR_PARSE if status == -1 else status, b""))
        else:
            call.future.set_result((GRPC_BASE - status, b""))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before SETTINGS"))
        for call in self.calls.values():
            if not call.future.done():
                call.future.set_result((ERR_RESET, b""))
        self.calls.clear()


class H2GrpcLoad:
    """Closed loop over hand-written HTTP/2 connections (same interface as
    :class:`bench.load.grpc.GrpcLoad`)."""

    def __init__(
        self, run: LoadRun, host: str, port: int, method: str, *, channels: int, concurrency: int
    ) -> None:
        self.run = run
        self.host = host
        self.port = port
        self.block = request_block(f"{host}:{port}", method, run.timeout)
        self.n_channels = max(1, channels)
        self.concurrency = concurrency
        self.conns: list[H2ClientConnection] = []
        self.sweeper: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n_channels):
            _, conn = await loop.create_connection(
                lambda: H2ClientConnection(self.block), self.host, self.port
            )
            await asyncio.wait_for(conn.ready, 30)
            self.conns.append(conn)

    async def _client(self, i: int) -> None:
        run = self.run
        conn = self.conns[i % len(self.conns)]
        while run.sent < run.max_requests and _now() < run.stop_at:
            run.sent += 1
            run.in_flight += 1
            t0 = _now()
            code, data = await conn.call(run.next_payload(), t0)
            if code == 0:
                run.rec.add(t0, _now(), 200, DEFAULT_MARKER_GRPC in data)
            else:
                run.rec.add(t0, _now(), code, False)
            run.note_done()
            if conn.closed:
                return

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.run.timeout / 4))
            for conn in self.conns:
                conn.expire(_now() - self.run.timeout)

    async def go(self, start: float, horizon: float) -> None:
        run = self.run
        run.stop_at = start + horizon
        run.idle_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.sweeper = loop.create_task(self._sweep())
        clients = [loop.create_task(self._client(i)) for i in range(self.concurrency)]
        _, pending = await asyncio.wait(clients, timeout=horizon + run.timeout + 1)
        for t in pending:
            t.cancel()
        self.sweeper.cancel()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()

    async def aclose(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
