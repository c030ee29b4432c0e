"""The HTTP/2 gRPC port against hostile or buggy clients: hand-made frames on raw
sockets.  Each bound of ``H2Limits`` holds, every protocol error is a GOAWAY and a
close (or a stream's RST_STREAM / gRPC status), and nothing ever reaches the
loop's exception handler (``LoopThread.close`` asserts it)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import CallContext, encode_literal
from clipper_core.oip.hpack import HpackDecoder
from tests.oip.test_h2_grpc import LoopThread, loop_threads

pytestmark = pytest.mark.timeout(60)

Frame = tuple[int, int, int, bytes]


async def _echo(raw: bytes, ctx: CallContext) -> bytes:
    return raw[::-1]


class _Stubborn:
    """A handler that outlives its cancellation for a while (as inference can)."""

    def __init__(self) -> None:
        self.running = 0

    async def __call__(self, raw: bytes, ctx: CallContext) -> bytes:
        self.running += 1
        try:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(0.5)
                raise
        finally:
            self.running -= 1
        return b""


def request_block(path: str = "/t.S/Echo", **extra: str) -> bytes:
    fields = {
        ":method": "POST",
        ":scheme": "http",
        ":path": path,
        "content-type": "application/grpc",
        "te": "trailers",
    }
    fields.update(
        {(":" + k if k == "method" else k.replace("_", "-")): v for k, v in extra.items()}
    )
    return b"".join(encode_literal(k.encode(), v.encode()) for k, v in fields.items() if v)


def message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


class Raw:
    """A client that writes whatever frames it is told to."""

    def __init__(self, port: int, settings: bytes = b"", rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.decoder = HpackDecoder()
        self.server_settings: dict[int, int] = {}
        self.sock.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, settings))

    def send(self, kind: int, flags: int, sid: int, payload: bytes = b"") -> None:
        self.sock.sendall(h2.frame(kind, flags, sid, payload))

    def call(self, sid: int, body: bytes, path: str = "/t.S/Echo", **extra: str) -> None:
        self.send(h2.HEADERS, h2.END_HEADERS, sid, request_block(path, **extra))
        self.send(h2.DATA, h2.END_STREAM, sid, message(body))

    def read(self, until: Callable[[Frame], bool]) -> list[Frame]:
        """Frames up to the first ``until`` accepts, or to the close."""
        frames: list[Frame] = []
        while True:
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                f = (
                    self.buf[3],
                    self.buf[4],
                    int.from_bytes(self.buf[5:9], "big"),
                    self.buf[9 : 9 + n],
                )
                self.buf = self.buf[9 + n :]
                frames.append(f)
                if f[0] == h2.SETTINGS and not f[1] & h2.ACK:
                    for i in range(0, len(f[3]), 6):
                        key, value = struct.unpack_from(">HI", f[3], i)
                        self.server_settings[key] = value
                if until(f):
                    return frames
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return frames
            self.buf += chunk

    def goaway(self) -> int:
        """The error code of the GOAWAY the server sends; asserts the close after it."""
        frames = self.read(lambda f: f[0] == h2.GOAWAY)
        assert frames and frames[-1][0] == h2.GOAWAY, frames
        code = int.from_bytes(frames[-1][3][4:8], "big")
        if code != h2.NO_ERROR:
            self.read(lambda f: False)  # to the close
        return code

    def status(self, sid: int) -> tuple[int, str]:
        """The grpc-status and grpc-message of a stream's trailers."""
        frames = self.read(
            lambda f: f[2] == sid and f[0] == h2.HEADERS and bool(f[1] & h2.END_STREAM)
        )
        meta: dict[str, str] = {}
        for kind, _, s, payload in frames:
            if kind == h2.HEADERS:
                fields = dict(self.decoder.decode(payload))
                if s == sid:
                    meta.update(fields)
        return int(meta["grpc-status"]), meta.get("grpc-message", "")

    def rst(self, sid: int) -> int:
        frames = self.read(lambda f: f[0] == h2.RST_STREAM and f[2] == sid)
        assert frames[-1][0] == h2.RST_STREAM, frames
        return int.from_bytes(frames[-1][3], "big")

    def alive(self) -> bool:
        self.send(h2.PING, 0, 0, b"12345678")
        frames = self.read(lambda f: f[0] == h2.PING and bool(f[1] & h2.ACK))
        return bool(frames) and frames[-1][0] == h2.PING

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stubborn() -> _Stubborn:
    return _Stubborn()


@pytest.fixture
def make(stubborn: _Stubborn) -> Iterator[Callable[..., LoopThread]]:
    yield from loop_threads({"/t.S/Echo": _echo, "/t.S/Stubborn": stubborn})


def test_a_frame_over_the_limit_is_refused_before_its_bytes(make: Any) -> None:
    c = Raw(make().server.port)
    c.sock.sendall(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")  # announces 16 MiB, sends none
    assert c.goaway() == h2.FRAME_SIZE_ERROR


def test_continuation_flood_is_cut(make: Any) -> None:
    c = Raw(make(max_header_block=32 << 10).server.port)
    c.send(h2.HEADERS, 0, 1, request_block())
    # Just past the limit: more frames could meet a closed socket (a reset, with
    # the GOAWAY still unread) and fail the send instead of the server's answer.
    for _ in range(3):
        c.send(h2.CONTINUATION, 0, 1, b"\x00" * 16000)
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


def test_a_header_block_that_decodes_to_megabytes_is_resource_exhausted(make: Any) -> None:
    c = Raw(make().server.port)
    # One 4000-byte entry in the dynamic table, then named 3000 times, one byte each.
    block = request_block() + b"\x40\x01x" + b"\x7f\xa1\x1e" + b"v" * 4000 + b"\xbe" * 3000
    c.send(h2.HEADERS, h2.END_HEADERS, 1, block)
    c.send(h2.DATA, h2.END_STREAM, 1, message(b"ab"))
    code, why = c.status(1)
    assert code == 8 and "header list" in why  # RESOURCE_EXHAUSTED
    assert c.server_settings[h2.S_MAX_HEADER_LIST] == 16 << 10
    c.call(3, b"ok")  # the HPACK table stayed in step: the connection goes on
    assert c.status(3) == (0, "")


def test_a_table_size_update_over_the_announced_is_a_compression_error(make: Any) -> None:
    c = Raw(make().server.port)
    c.send(h2.HEADERS, h2.END_HEADERS, 1, b"\x3f\xe1\x3f" + request_block())  # 8192
    assert c.goaway() == h2.COMPRESSION_ERROR


def test_max_concurrent_streams_are_announced_and_enforced(make: Any) -> None:
    c = Raw(make(max_streams=2).server.port)
    for sid in (1, 3, 5):
        c.call(sid, b"", path="/t.S/Stubborn")
    assert c.rst(5) == h2.REFUSED_STREAM
    assert c.server_settings[h2.S_MAX_CONCURRENT] == 2


def test_a_reset_stream_counts_until_its_handler_ends(make: Any, stubborn: _Stubborn) -> None:
    c = Raw(make(max_streams=1).server.port)
    c.call(1, b"", path="/t.S/Stubborn")
    assert c.alive()
    c.send(h2.RST_STREAM, 0, 1, h2.CANCEL.to_bytes(4, "big"))
    c.call(3, b"x")  # the first handler still runs: refused
    assert c.rst(3) == h2.REFUSED_STREAM


def test_rapid_reset_is_cut(make: Any) -> None:
    c = Raw(make(max_wasted_per_second=50).server.port)
    with contextlib.suppress(OSError):  # the server may close while we send
        for sid in range(1, 400, 2):
            c.call(sid, b"", path="/t.S/Stubborn")
            c.send(h2.RST_STREAM, 0, sid, h2.CANCEL.to_bytes(4, "big"))
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("kind", [h2.PING, h2.SETTINGS])
def test_ping_and_settings_floods_are_cut(make: Any, kind: int) -> None:
    c = Raw(make(max_wasted_per_second=100).server.port)
    payload = b"12345678" if kind == h2.PING else b""
    c.sock.sendall(h2.frame(kind, 0, 0, payload) * 1000)
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


def test_a_client_that_does_not_read_is_not_read(make: Any) -> None:
    lt = make(max_wasted_per_second=1 << 30)
    c = Raw(lt.server.port, rcvbuf=4096)
    ping = h2.frame(h2.PING, 0, 0, b"12345678")
    c.sock.settimeout(0.5)
    sent = 0
    with pytest.raises(TimeoutError):  # the server stops reading: our send blocks
        while sent < 400 << 20:
            c.sock.sendall(ping * 4096)
            sent += len(ping) * 4096

    async def buffered() -> list[int]:
        return [
            conn.transport.get_write_buffer_size()
            for conn in lt.server.connections
            if conn.transport
        ]

    assert max(lt.run(buffered())) < 1 << 20  # bounded, while it sent far more


def test_a_client_that_does_not_read_is_cut_and_its_connection_ends(make: Any) -> None:
    """Cut for not reading, its connection is closed with answers still buffered:
    close() would wait for them to drain for ever, so it is reset after the stall
    timeout and leaves the server's connections."""
    lt = make(max_wasted_per_second=1 << 30, stall_timeout=0.5)
    c = Raw(lt.server.port, rcvbuf=4096)
    ping = h2.frame(h2.PING, 0, 0, b"12345678")
    c.sock.settimeout(0.5)
    with contextlib.suppress(TimeoutError, ConnectionError):
        for _ in range(100_000):  # until the server stops reading and our send blocks
            c.sock.sendall(ping * 4096)

    async def open_connections() -> int:
        for _ in range(200):
            if not lt.server.connections:
                break
            await asyncio.sleep(0.05)
        return len(lt.server.connections)

    try:
        assert lt.run(open_connections()) == 0
    finally:
        c.close()


def test_per_connection_buffered_data_is_bounded(make: Any) -> None:
    """Requests not yet whole that fill max_buffered cannot end: the largest fails
    (see test_h2_flow for the window that enforces it above 65,535 bytes)."""
    c = Raw(make(max_message=1000, max_buffered=2000).server.port)
    for sid, n in ((1, 700), (3, 805), (5, 496)):  # 2001 bytes in all
        c.send(h2.HEADERS, h2.END_HEADERS, sid, request_block())
        c.send(h2.DATA, 0, sid, b"\x00\x00\x00\x03\x84" + b"x" * (n - 5))
    code, why = c.status(3)
    assert code == 8 and "too much request data" in why
    c.send(h2.DATA, 0, 1, b"y" * 500)  # over max_message on its own
    assert c.status(1)[0] == 8
    assert c.alive()


def test_replies_wait_for_the_window_and_a_client_that_never_opens_it_is_cut(
    make: Any,
) -> None:
    port = make(stall_timeout=0.5).server.port
    c = Raw(port, settings=struct.pack(">HI", h2.S_INITIAL_WINDOW, 0))
    c.call(1, b"abc")
    frames = c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1)
    assert not [f for f in frames if f[0] == h2.DATA]
    c.send(h2.WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big"))
    assert c.status(1) == (0, "")
    c.call(3, b"abc")  # now nothing opens its window
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


def test_window_overflow_is_a_flow_control_error(make: Any) -> None:
    lt = make()
    c = Raw(lt.server.port, settings=struct.pack(">HI", h2.S_INITIAL_WINDOW, 0))
    # The request's headers only: stream 1 stays open, so no reply can finish it
    # between the two updates (a closed stream's WINDOW_UPDATE is ignored, RFC 9113).
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block("/t.S/Echo"))
    c.send(h2.WINDOW_UPDATE, 0, 1, (0x7FFFFFFF).to_bytes(4, "big"))
    c.send(h2.WINDOW_UPDATE, 0, 1, (1).to_bytes(4, "big"))
    assert c.rst(1) == h2.FLOW_CONTROL_ERROR
    c.send(h2.WINDOW_UPDATE, 0, 0, (0x7FFFFFFF).to_bytes(4, "big"))
    assert c.goaway() == h2.FLOW_CONTROL_ERROR


def test_idle_handshake_and_trickling_connections_time_out(make: Any) -> None:
    lt = make(idle_timeout=0.3, handshake_timeout=0.3, min_rate=1000, rate_window=0.5)
    assert Raw(lt.server.port).goaway() == h2.NO_ERROR
    with socket.create_connection(("127.0.0.1", lt.server.port), timeout=10) as s:
        s.sendall(h2.PREFACE[:10])
        while s.recv(4096):
            pass  # closed without the rest of the preface
    c = Raw(lt.server.port)
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block())
    with contextlib.suppress(OSError):
        for byte in message(b"x" * 100)[:40]:  # one byte of DATA a frame, slowly
            c.send(h2.DATA, 0, 1, bytes((byte,)))
            time.sleep(0.1)
    assert c.goaway() == h2.ENHANCE_YOUR_CALM  # closed, not waiting for the rest


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(h2.HEADERS, h2.END_HEADERS, 2, b"")], h2.PROTOCOL_ERROR),  # even id
        ([(h2.DATA, h2.PADDED, 1, b"")], h2.PROTOCOL_ERROR),  # idle stream
        ([(h2.PING, 0, 0, b"1234")], h2.FRAME_SIZE_ERROR),
        ([(h2.WINDOW_UPDATE, 0, 0, b"\x00")], h2.FRAME_SIZE_ERROR),
        ([(h2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")], h2.PROTOCOL_ERROR),
        ([(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.S_MAX_FRAME, 10))], h2.PROTOCOL_ERROR),
        (
            [(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.S_INITIAL_WINDOW, 1 << 31))],
            h2.FLOW_CONTROL_ERROR,
        ),
        ([(h2.RST_STREAM, 0, 9, b"\x00\x00\x00\x08")], h2.PROTOCOL_ERROR),
        ([(h2.PUSH_PROMISE, 0, 1, b"")], h2.PROTOCOL_ERROR),
        ([(h2.CONTINUATION, 0, 1, b"")], h2.PROTOCOL_ERROR),
        ([(h2.HEADERS, h2.END_HEADERS | h2.PADDED, 1, b"")], h2.FRAME_SIZE_ERROR),
        ([(h2.HEADERS, h2.END_HEADERS | h2.PRIORITY_FLAG, 1, b"ab")], h2.FRAME_SIZE_ERROR),
        ([(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\x00")], h2.COMPRESSION_ERROR),
        (
            [(h2.HEADERS, h2.END_HEADERS, 3, request_block()), (h2.HEADERS, 4, 1, request_block())],
            h2.STREAM_CLOSED,
        ),
    ],
)
def test_protocol_errors_are_a_goaway(make: Any, frames: list[Frame], code: int) -> None:
    c = Raw(make().server.port)
    for f in frames:
        c.send(*f)
    assert c.goaway() == code


def test_stream_state_errors(make: Any) -> None:
    c = Raw(make().server.port)
    c.call(1, b"", path="/t.S/Stubborn")
    c.send(h2.DATA, h2.END_STREAM, 1, b"more")  # after END_STREAM
    assert c.rst(1) == h2.STREAM_CLOSED
    c.send(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, request_block())  # a second request
    assert c.goaway() == h2.STREAM_CLOSED


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"method": "GET"}, 12),  # UNIMPLEMENTED
        ({"content_type": "text/plain"}, 13),  # INTERNAL
        ({"path": ""}, 12),
        ({"grpc_timeout": "soon"}, 13),
        ({"grpc_timeout": "123456789S"}, 13),  # gRPC allows 8 digits
        ({"grpc_timeout": "1" * 310 + "S"}, 13),  # overflowed a float: was a GOAWAY
    ],
)
def test_bad_request_headers_get_a_status(make: Any, headers: dict[str, str], code: int) -> None:
    c = Raw(make().server.port)
    path = headers.pop("path", "/t.S/Echo")
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block(path, **headers))
    c.send(h2.DATA, h2.END_STREAM, 1, message(b"x"))
    assert c.status(1)[0] == code
    assert c.alive()


@pytest.mark.parametrize("name", [b"", b"X-Key", b"a b", b"a:b", b"\xe9"])
def test_a_malformed_header_name_resets_only_its_stream(make: Any, name: bytes) -> None:
    """RFC 9113 8.2: a request with such a name is malformed, a stream error (an
    empty name was an IndexError that took the connection down)."""
    c = Raw(make().server.port)
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block() + encode_literal(name, b"v"))
    c.send(h2.DATA, h2.END_STREAM, 1, message(b"x"))
    frames = c.read(lambda f: f[2] == 1 and (f[0] == h2.RST_STREAM or bool(f[1] & h2.END_STREAM)))
    assert frames[-1][0] == h2.RST_STREAM, frames
    assert int.from_bytes(frames[-1][3], "big") == h2.PROTOCOL_ERROR
    c.call(3, b"ok")
    assert c.status(3) == (0, "")


def test_random_bytes_never_reach_the_loop(make: Any) -> None:
    lt = make()
    rng = random.Random(7)
    for _ in range(150):
        c = Raw(lt.server.port)
        c.call(1, b"ok")
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        if rng.random() < 0.5:  # a plausible frame header with random contents
            junk = h2.frame(rng.randrange(10), rng.randrange(256), rng.randrange(8), junk)
        c.sock.sendall(junk)
        c.sock.shutdown(socket.SHUT_WR)
        c.read(lambda f: False)
        c.close()
    c = Raw(lt.server.port)
    c.call(1, b"ok")
    assert c.status(1) == (0, "")
