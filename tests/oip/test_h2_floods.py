"""Frames that cost the HTTP/2 gRPC port work without being a call: each kind is
counted, and a client that sends too many of them is cut (GOAWAY
ENHANCE_YOUR_CALM) instead of keeping a core busy or the server resetting
handlers for it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import CallContext
from clipper_core.oip.h2_limits import H2Limits
from tests.oip.test_h2_grpc import LoopThread
from tests.oip.test_h2_hostile import Raw, _echo, message, request_block

pytestmark = pytest.mark.timeout(60)


async def _sleep(raw: bytes, ctx: CallContext) -> bytes:
    await asyncio.sleep(30)
    return b""


@pytest.fixture
def make() -> Iterator[Callable[..., LoopThread]]:
    made: list[LoopThread] = []

    def start(**limits: Any) -> LoopThread:
        handlers = {"/t.S/Echo": _echo, "/t.S/Sleep": _sleep}
        lt = LoopThread(handlers, H2Limits(**limits), max_message=1 << 20)
        made.append(lt)
        return lt

    yield start
    for lt in made:
        lt.close()


def cut_code(c: Raw) -> int | None:
    """After a PING: the GOAWAY's code if the server cut the connection, None if
    it answered the PING."""
    with contextlib.suppress(OSError):
        c.send(h2.PING, 0, 0, b"12345678")
    frames = c.read(lambda f: f[0] == h2.GOAWAY or (f[0] == h2.PING and bool(f[1] & h2.ACK)))
    if frames and frames[-1][0] == h2.GOAWAY:
        return int.from_bytes(frames[-1][3][4:8], "big")
    return None


def _window_update_of_0(sid: int) -> bytes:
    return h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block("/t.S/Sleep")) + h2.frame(
        h2.WINDOW_UPDATE, 0, sid, b"\x00\x00\x00\x00"
    )


def _data_after_the_end(sid: int) -> bytes:
    return (
        h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block("/t.S/Sleep"))
        + h2.frame(h2.DATA, h2.END_STREAM, sid, message(b""))
        + h2.frame(h2.DATA, 0, sid, b"more")
    )


@pytest.mark.parametrize("provoke", [_window_update_of_0, _data_after_the_end])
def test_resets_the_client_provokes_are_counted(make: Any, provoke: Any) -> None:
    """MadeYouReset (CVE-2025-8671): each stream error is our RST_STREAM and, once
    its request is whole, a handler started and cancelled."""
    c = Raw(make(max_wasted_per_second=50).server.port)
    with contextlib.suppress(OSError):
        c.sock.sendall(b"".join(provoke(sid) for sid in range(1, 400, 2)))
    assert cut_code(c) == h2.ENHANCE_YOUR_CALM


def _open_stream(c: Raw) -> None:
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block("/t.S/Sleep"))


def _open_header_block(c: Raw) -> None:
    c.send(h2.HEADERS, h2.END_STREAM, 1, request_block())


def _closed_stream(c: Raw) -> None:
    c.call(1, b"x")
    assert c.status(1) == (0, "")


@pytest.mark.parametrize(
    ("setup", "nothing"),
    [
        (None, h2.frame(h2.PRIORITY, 0, 3, b"\x00\x00\x00\x00\x10")),
        (None, h2.frame(0x42, 0, 0, b"")),  # an unknown type
        (None, h2.frame(h2.SETTINGS, h2.ACK, 0)),
        (None, h2.frame(h2.PING, h2.ACK, 0, b"12345678")),
        (None, h2.frame(h2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01")),  # nothing held
        (_open_stream, h2.frame(h2.DATA, 0, 1)),
        (_open_stream, h2.frame(h2.DATA, h2.PADDED, 1, b"\x00")),
        (_open_header_block, h2.frame(h2.CONTINUATION, 0, 1)),
        (_closed_stream, h2.frame(h2.WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x01")),
    ],
    ids=[
        "priority",
        "unknown",
        "settings-ack",
        "ping-ack",
        "window-update-nothing-held",
        "empty-data",
        "padding-only-data",
        "empty-continuation",
        "window-update-closed-stream",
    ],
)
def test_floods_of_frames_that_do_nothing_are_cut(make: Any, setup: Any, nothing: bytes) -> None:
    c = Raw(make(max_empty_frames_per_second=100).server.port)
    if setup is not None:
        setup(c)
    with contextlib.suppress(OSError):
        c.sock.sendall(nothing * 300)
    assert cut_code(c) == h2.ENHANCE_YOUR_CALM


def test_a_connection_handles_a_bounded_number_of_frames_per_loop_turn(make: Any) -> None:
    """A call and then thousands of PINGs in one write: the call's handler runs (and
    its reply is queued) before the PINGs' answers are all queued, instead of the
    loop turn handling every frame read first."""
    c = Raw(make(max_wasted_per_second=1 << 30).server.port)
    c.sock.sendall(
        h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_block())
        + h2.frame(h2.DATA, h2.END_STREAM, 1, message(b"hi"))
        + h2.frame(h2.PING, 0, 0, b"12345678") * 2000
    )
    c.send(h2.PING, 0, 0, b"last-one")
    frames = c.read(lambda f: f[0] == h2.PING and f[3] == b"last-one")
    acks = [i for i, f in enumerate(frames) if f[0] == h2.PING]
    reply = [i for i, f in enumerate(frames) if f[0] == h2.DATA and f[2] == 1]
    assert len(acks) == 2001 and reply
    assert reply[0] < acks[-2]  # before the last PING of the write was answered


def test_a_header_block_that_never_ends_is_cut(make: Any) -> None:
    """HEADERS with END_STREAM but not END_HEADERS, then silence: the request is
    not whole while its header block is open, so the trickle check applies."""
    c = Raw(make(min_rate=1000, rate_window=0.5).server.port)
    c.sock.settimeout(5)
    c.send(h2.HEADERS, h2.END_STREAM, 1, request_block())
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


def test_a_header_block_must_end_in_time(make: Any) -> None:
    """CONTINUATIONs that keep up the byte rate but never end the block."""
    c = Raw(make(min_rate=1, rate_window=0.5, header_timeout=0.5).server.port)
    c.send(h2.HEADERS, 0, 1, request_block())
    with contextlib.suppress(OSError):
        for _ in range(100):  # 10 s at most
            c.send(h2.CONTINUATION, 0, 1, b"\x00" * 8)
            time.sleep(0.1)
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


def test_small_continuations_count_their_frame_headers(make: Any) -> None:
    c = Raw(make(max_header_block=1000).server.port)
    c.send(h2.HEADERS, 0, 1, request_block())
    with contextlib.suppress(OSError):
        # 200 bytes of block, 2000 on the wire
        c.sock.sendall(h2.frame(h2.CONTINUATION, 0, 1, b"\x00") * 200)
    assert cut_code(c) == h2.ENHANCE_YOUR_CALM
