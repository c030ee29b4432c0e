"""What a client can make the HTTP/2 gRPC port hold beyond its flow-control
windows: replies queued on a socket it does not read, replies it takes a byte at
a time, connections and request bytes over the whole server.  Hand-made frames
on raw sockets; each test failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clipper_core.http.body_budget import BodyBudget
from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import CallContext
from tests.oip.test_h2_grpc import LoopThread, loop_threads
from tests.oip.test_h2_hostile import Raw, message, request_block

pytestmark = pytest.mark.timeout(60)

REPLY = 256 << 10
BIG_WINDOWS = struct.pack(">HI", h2.S_INITIAL_WINDOW, 0x7FFFFFFF)


async def _big(raw: bytes, ctx: CallContext) -> bytes:
    """A reply of REPLY bytes, after ``raw`` seconds (b"" : at once)."""
    await asyncio.sleep(float(raw or b"0"))
    return b"r" * REPLY


@pytest.fixture
def make() -> Iterator[Callable[..., LoopThread]]:
    yield from loop_threads({"/t.S/Big": _big})


def _open_window(c: Raw) -> None:
    c.send(h2.WINDOW_UPDATE, 0, 0, (0x7FFFFFFF - 65535).to_bytes(4, "big"))


def _calls(sids: range, body: bytes = b"") -> bytes:
    return b"".join(
        h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block("/t.S/Big"))
        + h2.frame(h2.DATA, h2.END_STREAM, sid, message(body))
        for sid in sids
    )


def _held(lt: LoopThread) -> int:
    """Reply bytes the server holds for its connections: held back by windows or
    queued on the transports."""

    async def held() -> int:
        return sum(conn._held_bytes() for conn in lt.server.connections)

    return int(lt.run(held()))


def _frames_until_quiet(c: Raw) -> list[tuple[int, int, int, bytes]]:
    """What the server sent, read until a second passes without a byte."""
    c.sock.settimeout(1)
    with contextlib.suppress(TimeoutError):
        while chunk := c.sock.recv(1 << 20):
            c.buf += chunk
    c.sock.settimeout(10)
    c.sock.shutdown(2)  # c.read then parses what is buffered and meets the end
    return c.read(lambda f: False)


def _closed(lt: LoopThread, within: float) -> bool:
    async def wait() -> bool:
        for _ in range(int(within / 0.05)):
            if not lt.server.connections:
                return True
            await asyncio.sleep(0.05)
        return False

    return bool(lt.run(wait(), timeout=within + 10))


def test_a_client_that_does_not_read_is_not_read(make: Any) -> None:
    """A client pipelining calls without reading: its calls were read and run, a
    turn of them at a time (4 here, 128 by default), until their replies passed
    max_held (100 calls of 256 KiB: 47 MiB held for a max_held of 64 MiB; 400 of
    1 MiB: 253 MiB).  Now the connection stops reading while its transport's
    writing is paused: what it holds is the replies of the calls running then
    (the first turn's, here), the rest wait unread and are answered once the
    client reads, none refused."""
    lt = make(max_held=64 << 20, frames_per_turn=8, stall_timeout=30)
    c = Raw(lt.server.port, settings=BIG_WINDOWS, rcvbuf=4096)
    _open_window(c)
    c.sock.sendall(_calls(range(1, 201, 2)))

    async def settled() -> int:  # no call running, nothing more read, for half a second
        seen: list[tuple[int, int]] = []
        for _ in range(400):
            conn = next(iter(lt.server.connections))
            seen.append((conn.last_stream, sum(s.task is not None for s in conn.streams.values())))
            if len(seen) > 10 and len(set(seen[-10:])) == 1 and not seen[-1][1]:
                return conn.last_stream
            await asyncio.sleep(0.05)
        raise AssertionError(seen[-10:])

    # The handlers reply a loop turn after their call is read: a few turns of
    # calls run before the first reply pauses the writes (of 100 calls, 25 MiB).
    assert lt.run(settled()) < 64
    assert _held(lt) <= 8 << 20
    for sid in range(1, 201, 2):
        assert c.status(sid) == (0, "")


def test_a_client_that_does_not_read_is_cut_while_replies_keep_coming(make: Any) -> None:
    """Each reply over one frame moved into the paused transport counted as
    progress: a client that never read, with calls ending a fifth of a second
    apart, kept its connection (and all it was sent) past the stall timeout."""
    lt = make(stall_timeout=0.5)
    c = Raw(lt.server.port, settings=BIG_WINDOWS, rcvbuf=4096)
    _open_window(c)
    for i, sid in enumerate(range(1, 201, 2)):
        c.sock.sendall(_calls(range(sid, sid + 1), str(0.2 * i).encode()))
    with contextlib.suppress(OSError):
        assert _closed(lt, within=10)
    c.close()


NO_WINDOW = struct.pack(">HI", h2.S_INITIAL_WINDOW, 0)


def _stream_update(c: Raw, sid: int, n: int) -> None:
    c.send(h2.WINDOW_UPDATE, 0, sid, n.to_bytes(4, "big"))


def test_a_client_taking_a_byte_now_and_then_is_cut(make: Any) -> None:
    """Each WINDOW_UPDATE that moved a byte counted as progress: a client adding
    one byte to its stream's window every half second held its 256 KiB reply
    for ever (open after 30 s with a 2 s stall timeout).  Now it must take what
    is held or min_rate bytes a second."""
    c = Raw(make(stall_timeout=0.5).server.port, settings=NO_WINDOW)
    c.call(1, b"", path="/t.S/Big")
    c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1)  # its reply is held
    c.sock.settimeout(0.1)
    code = -1
    for _ in range(100):  # 10 s: the fix cuts it within two stall windows
        with contextlib.suppress(OSError):  # closed: the GOAWAY is in our buffer
            _stream_update(c, 1, 1)
        with contextlib.suppress(TimeoutError):
            frames = c.read(lambda f: f[0] == h2.GOAWAY)
            if frames and frames[-1][0] == h2.GOAWAY:
                code = int.from_bytes(frames[-1][3][4:8], "big")
                break
    assert code == h2.ENHANCE_YOUR_CALM


def _ended(buf: bytes, sid: int) -> bool:
    """Whether ``buf`` holds the trailers of stream ``sid``."""
    pos = 0
    while len(buf) - pos >= 9:
        n = int.from_bytes(buf[pos : pos + 3], "big")
        kind, flags, s = buf[pos + 3], buf[pos + 4], int.from_bytes(buf[pos + 5 : pos + 9], "big")
        if len(buf) - pos - 9 >= n and (kind, s) == (h2.HEADERS, sid) and flags & h2.END_STREAM:
            return True
        pos += 9 + n
    return False


def test_a_slow_reader_above_min_rate_gets_its_reply(make: Any) -> None:
    """Held for ten stall timeouts, the reply still comes whole: the client takes
    16 KiB every tenth of a second, 160 times min_rate."""
    c = Raw(make(stall_timeout=0.5).server.port, settings=NO_WINDOW)
    c.call(1, b"", path="/t.S/Big")
    c.sock.settimeout(0.1)
    for _ in range(200):
        for sid in (0, 1):
            _stream_update(c, sid, 16 << 10)
        with contextlib.suppress(TimeoutError):
            c.buf += c.sock.recv(1 << 20)
        if _ended(c.buf, 1):
            break
    c.sock.settimeout(10)
    frames = c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1 and bool(f[1] & h2.END_STREAM))
    assert not [f for f in frames if f[0] == h2.GOAWAY]
    assert sum(len(f[3]) for f in frames if f[0] == h2.DATA) == REPLY + 5
    assert frames[-1][0] == h2.HEADERS and frames[-1][1] & h2.END_STREAM


# -- over the whole server ---------------------------------------------------------------


class _Gate:
    """A handler that answers once the test opens its gate (its request held meanwhile)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def __call__(self, raw: bytes, ctx: CallContext) -> bytes:
        await self.open.wait()
        return b"ok"


def _gate_call(c: Raw, sid: int, fill: bytes) -> None:
    """A call of a 60,000-byte request in frames of 16 KiB (over a stream's first
    window: its whole message is admitted, and reserved, after the first)."""
    c.send(h2.HEADERS, h2.END_HEADERS, sid, request_block("/t.S/Gate"))
    data = message(fill * 60_000)
    for at in range(0, len(data), h2.DEFAULT_FRAME):
        end = h2.END_STREAM if at + h2.DEFAULT_FRAME >= len(data) else 0
        c.send(h2.DATA, end, sid, data[at : at + h2.DEFAULT_FRAME])


def test_connections_past_max_connections_are_refused() -> None:
    """The gRPC port had no bound on connections: each held its own buffers."""
    lt = LoopThread({"/t.S/Big": _big}, max_connections=2)
    try:
        first, second = Raw(lt.server.port), Raw(lt.server.port)
        assert first.alive() and second.alive()
        third = Raw(lt.server.port)
        assert third.goaway() == h2.ENHANCE_YOUR_CALM
        first.close()

        async def one_left() -> None:
            for _ in range(200):
                if len(lt.server.connections) == 1:
                    return
                await asyncio.sleep(0.05)

        lt.run(one_left())
        assert Raw(lt.server.port).alive()
    finally:
        lt.close()


def test_request_bytes_draw_on_the_server_wide_budget() -> None:
    """Buffered requests were bounded per connection only (64 MiB each, and
    requests handed to running handlers not at all).  Now they draw on the HTTP
    query port's BodyBudget, from their first byte to their answer: past it, a
    call is answered UNAVAILABLE, and what is given back serves the next."""
    gate = _Gate()
    budget = BodyBudget(100_000)
    lt = LoopThread({"/t.S/Gate": gate}, body_budget=budget)
    try:
        held, late = Raw(lt.server.port), Raw(lt.server.port)
        _gate_call(held, 1, b"a")  # 60,005 bytes, held until the gate opens
        assert held.alive()
        assert budget.in_use == 60_005
        _gate_call(late, 1, b"b")  # on another connection: its first frame fits, not all
        code, why = late.status(1)
        assert code == 14 and "too much request data" in why  # UNAVAILABLE
        lt.loop.call_soon_threadsafe(gate.open.set)
        assert held.status(1) == (0, "")
        assert budget.in_use == 0
        _gate_call(late, 3, b"c")
        assert late.status(3) == (0, "")
        assert budget.in_use == 0
    finally:
        lt.close()


# -- protocol corners ---------------------------------------------------------------------


def test_a_call_sent_before_the_client_half_closes_is_answered(make: Any) -> None:
    """shutdown(SHUT_WR) after a whole call closed the connection at once (the
    transport's default on EOF), its handler cancelled: no reply came."""
    c = Raw(make().server.port, settings=BIG_WINDOWS)
    _open_window(c)
    c.sock.sendall(_calls(range(1, 2), b"0.2"))  # answered after 0.2 s
    c.send(h2.HEADERS, h2.END_HEADERS, 3, request_block("/t.S/Big"))  # never ends
    c.sock.shutdown(socket.SHUT_WR)
    assert c.status(1) == (0, "")
    assert c.read(lambda f: False) == []  # then the server closes


def test_after_a_half_close_what_can_never_end_is_ended(make: Any) -> None:
    """Half-closed, a client can send no WINDOW_UPDATE nor the rest of a header
    block: a reply held by its window and a block awaiting CONTINUATION kept the
    connection open to the stall or rate timeout.  Now the held reply is reset
    (CANCEL), the block dropped, and the connection closes."""
    c = Raw(make().server.port, settings=NO_WINDOW)
    c.call(1, b"", path="/t.S/Big")
    c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1)  # its reply is held
    c.send(h2.HEADERS, h2.END_STREAM, 3, request_block("/t.S/Big"))  # no END_HEADERS
    c.sock.shutdown(socket.SHUT_WR)
    assert c.rst(1) == h2.CANCEL
    assert c.read(lambda f: False) == []  # then the server closes


@pytest.mark.parametrize("length", [4, 6])
def test_a_priority_frame_not_5_bytes_is_a_frame_size_error(make: Any, length: int) -> None:
    """RFC 9113 6.3: a stream error; it was ignored as a frame that does nothing."""
    c = Raw(make().server.port, settings=BIG_WINDOWS)
    _open_window(c)
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block("/t.S/Big"))
    c.send(h2.PRIORITY, 0, 1, bytes(length))
    assert c.rst(1) == h2.FRAME_SIZE_ERROR
    c.call(3, b"", path="/t.S/Big")  # the connection goes on
    assert c.status(3) == (0, "")
    c.send(h2.PRIORITY, 0, 7, bytes(length))  # an idle stream: nothing to reset
    assert c.goaway() == h2.FRAME_SIZE_ERROR


@pytest.mark.parametrize("length", [5, 4])
def test_a_priority_frame_on_stream_0_is_a_protocol_error(make: Any, length: int) -> None:
    """RFC 9113 6.3: a connection error; it was ignored (5 bytes) or a
    FRAME_SIZE_ERROR (any other length)."""
    c = Raw(make().server.port)
    c.send(h2.PRIORITY, 0, 0, bytes(length))
    assert c.goaway() == h2.PROTOCOL_ERROR
