"""The hand-rolled HTTP/2 gRPC server (``clipper_core.oip.h2_grpc``) against real
gRPC clients (grpcio's sync and aio channels) on real sockets, and HPACK against
the RFC's examples."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import uvloop

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import CallContext, parse_timeout
from clipper_core.oip.h2_limits import H2Limits
from clipper_core.oip.h2_server import H2GrpcServer
from clipper_core.oip.hpack import HpackDecoder, HpackError, encode_literal, huffman_decode


async def _echo(raw: bytes, ctx: CallContext) -> bytes:
    return raw[::-1]


async def _meta(raw: bytes, ctx: CallContext) -> bytes:
    # gRPC's C core rounds a timeout up to a coarser value: a deadline is there.
    remaining = ctx.time_remaining()
    has_deadline = remaining is not None and 0 < remaining <= 10
    meta = dict(ctx.invocation_metadata())
    return f"{meta.get('x-api-key')}|{has_deadline}|{ctx.peer()[:5]}".encode()


async def _abort(raw: bytes, ctx: CallContext) -> bytes:
    await ctx.abort(grpc.StatusCode.NOT_FOUND, "no model 'é' (100%)")


async def _unknown(raw: bytes, ctx: CallContext) -> bytes:
    # As the OIP servicer answers a model it does not know: its name in the message.
    await ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {raw.decode()!r}")


async def _boom(raw: bytes, ctx: CallContext) -> bytes:
    raise RuntimeError("bug")


class _Slow:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    async def __call__(self, raw: bytes, ctx: CallContext) -> bytes:
        try:
            await asyncio.sleep(float(raw.decode()))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done"


class LoopThread:
    """A uvloop running the server in a thread; the test's clients stay sync."""

    def __init__(
        self,
        handlers: dict[str, Any],
        limits: H2Limits | None = None,
        max_message: int = 8 << 20,
        **server: Any,
    ) -> None:
        self.loop = uvloop.new_event_loop()
        # Whatever reaches the loop's exception handler is a bug: close() fails on it.
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = H2GrpcServer(
            handlers, port=0, max_message_bytes=max_message, limits=limits, **server
        )
        self.run(self.server.start())

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        assert self.errors == []


def loop_threads(
    handlers: dict[str, Any], max_message: int = 1 << 20
) -> Iterator[Callable[..., LoopThread]]:
    """The body of a ``make`` fixture: ``start(max_message=..., **limits)`` serves
    ``handlers`` on a new :class:`LoopThread`; every one is closed afterwards."""
    made: list[LoopThread] = []

    def start(max_message: int = max_message, **limits: Any) -> LoopThread:
        lt = LoopThread(handlers, H2Limits(**limits), max_message=max_message)
        made.append(lt)
        return lt

    yield start
    for lt in made:
        lt.close()


@pytest.fixture
def slow() -> _Slow:
    return _Slow()


@pytest.fixture
def server(slow: _Slow) -> Iterator[LoopThread]:
    lt = LoopThread(
        {
            "/t.S/Echo": _echo,
            "/t.S/Meta": _meta,
            "/t.S/Abort": _abort,
            "/t.S/Unknown": _unknown,
            "/t.S/Boom": _boom,
            "/t.S/Slow": slow,
        }
    )
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture
def channel(server: LoopThread) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{server.server.port}")
    try:
        yield ch
    finally:
        ch.close()


def test_unary_echo_and_metadata(channel: grpc.Channel) -> None:
    assert channel.unary_unary("/t.S/Echo")(b"hello", timeout=5) == b"olleh"
    reply = channel.unary_unary("/t.S/Meta")(b"", timeout=5, metadata=[("x-api-key", "k1")])
    assert reply == b"k1|True|ipv4:"


def test_messages_larger_than_a_frame_and_the_default_window(channel: grpc.Channel) -> None:
    big = bytes(range(256)) * 14_000  # 3.6 MB: many frames, past every initial window
    assert channel.unary_unary("/t.S/Echo")(big, timeout=30) == big[::-1]


def test_too_large_a_request_is_resource_exhausted(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Echo")(b"x" * (9 << 20), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert channel.unary_unary("/t.S/Echo")(b"ab", timeout=5) == b"ba"  # connection lives


def test_statuses(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Abort")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no model 'é' (100%)"
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Nope")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Boom")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN


def test_a_long_status_message_is_cut(channel: grpc.Channel, slow: _Slow) -> None:
    """A 20,000-character name made trailers over grpcio's 16 KiB frame size: it
    failed the call RESOURCE_EXHAUSTED and the connection, with a call beside it."""
    beside = channel.unary_unary("/t.S/Slow").future(b"0.5", timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Unknown")(b"m" * 20_000, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = err.value.details()
    assert details.startswith("unknown model 'mmm") and details.endswith("...")
    assert len(details) == h2.MAX_STATUS_MESSAGE + 3
    assert beside.result() == b"done"


def test_compressed_requests_are_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Echo")(b"x" * 1000, timeout=5, compression=grpc.Compression.Gzip)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_client_deadline_cancels_the_handler(channel: grpc.Channel, slow: _Slow) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/t.S/Slow")(b"5", timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert slow.cancelled.wait(5)  # the client's RST_STREAM reached the task
    assert channel.unary_unary("/t.S/Echo")(b"ok", timeout=5) == b"ko"


def test_many_concurrent_calls_on_one_connection(server: LoopThread) -> None:
    async def go() -> list[bytes]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.server.port}") as ch:
            echo = ch.unary_unary("/t.S/Echo")
            return list(await asyncio.gather(*(echo(str(i).encode()) for i in range(500))))

    replies = asyncio.run(go())
    assert replies == [str(i).encode()[::-1] for i in range(500)]


def test_stop_lets_calls_in_flight_finish(server: LoopThread) -> None:
    ch = grpc.insecure_channel(f"127.0.0.1:{server.server.port}")
    future = ch.unary_unary("/t.S/Slow").future(b"0.3", timeout=10)
    assert ch.unary_unary("/t.S/Echo")(b"x", timeout=5) == b"x"
    server.run(server.server.stop(5))
    assert future.result() == b"done"
    ch.close()


def test_not_http2_is_closed() -> None:
    lt = LoopThread({"/t.S/Echo": _echo})
    try:
        with socket.create_connection(("127.0.0.1", lt.server.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        # Our SETTINGS, then a GOAWAY with PROTOCOL_ERROR, then the close.
        assert h2.frame(h2.GOAWAY, 0, 0)[3:4] in data
    finally:
        lt.close()


def test_timeouts_parse() -> None:
    assert parse_timeout("100m") == pytest.approx(0.1)
    assert parse_timeout("2S") == 2.0
    assert parse_timeout("5u") == pytest.approx(5e-6)
    assert parse_timeout("99999999H") == 99999999 * 3600.0  # gRPC's largest
    # gRPC allows 8 digits; 310 overflowed the float (an OverflowError, not a ValueError).
    for bad in ("", "m", "10x", "-1m", "123456789S", "1" * 310 + "S", " 1S", "\u00b2S"):
        with pytest.raises(ValueError):
            parse_timeout(bad)


# -- HPACK: RFC 7541 appendix C ---------------------------------------------------------


def test_hpack_rfc_requests_with_huffman() -> None:
    dec = HpackDecoder()
    assert dec.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")) == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]
    assert dec.decode(bytes.fromhex("828684be5886a8eb10649cbf")) == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ]
    third = bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")
    assert dec.decode(third) == [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ]
    assert dec.size == 164  # the RFC's table size after C.4.3


def test_hpack_literals_eviction_and_errors() -> None:
    dec = HpackDecoder(max_table_size=64)
    with pytest.raises(HpackError):
        HpackDecoder(max_table_size=16).decode(b"\x3f\x11")  # size update to 48 > 16
    assert dec.decode(encode_literal(b"grpc-status", b"13")) == [("grpc-status", "13")]
    assert dec.dynamic == []  # a literal without indexing stays out of the table
    dec.decode(b"\x40\x01a\x01b")  # add (a, b): 34 octets
    dec.decode(b"\x40\x01c\x01d")  # add (c, d): evicts (a, b) in a 64-octet table
    assert dec.dynamic == [("c", "d")]
    with pytest.raises(HpackError):
        dec.decode(b"\xff\x00")  # index past both tables
    with pytest.raises(HpackError):
        huffman_decode(b"\x00")  # padding that is not EOS's prefix


def test_grpc_transport_setting_and_cli_option() -> None:
    from clipper_core.cli import build_parser
    from clipper_core.config import ServerConfig

    assert ServerConfig().grpc_transport == "auto"
    parser = build_parser()
    assert parser.parse_args(["serve", "--grpc-transport", "aio"]).grpc_transport == "aio"
    assert parser.parse_args(["serve"]).grpc_transport == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--grpc-transport", "bogus"])
