"""Frames that cost the HTTP/2 gRPC port work without being a call: each kind is
counted, and a client that sends too many of them is cut (GOAWAY
ENHANCE_YOUR_CALM) instead of keeping a core busy or the server resetting
handlers for it."""

from __future__ import annotations

import asyncio
import contextlib
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
