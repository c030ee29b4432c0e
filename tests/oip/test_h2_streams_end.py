"""Every stream of the HTTP/2 gRPC port ends, however its call ends: reset before
its handler ran, reset by the server, cancelled by a real grpcio client.  A stream
that stayed would count against ``max_streams`` for ever and keep its connection
from the idle timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from clipper_core.oip import h2_frames as h2
from tests.oip.test_h2_grpc import LoopThread, loop_threads
from tests.oip.test_h2_hostile import Raw, _echo, message, request_block

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make() -> Iterator[Callable[..., LoopThread]]:
    yield from loop_threads({"/t.S/Echo": _echo})


def open_streams(lt: LoopThread) -> list[int]:
    """The streams each connection still counts, once the loop has settled (5 s at most)."""

    async def settle() -> list[int]:
        for _ in range(100):
            counts = [len(conn.streams) for conn in lt.server.connections]
            if not any(counts):
                break
            await asyncio.sleep(0.05)
        return counts

    return list(lt.run(settle()))


def test_a_stream_reset_before_its_handler_starts_ends(make: Any) -> None:
    """The request and its RST_STREAM in one read: the handler's task is cancelled
    before its first step, so nothing in its coroutine runs."""
    lt = make(max_streams=2, idle_timeout=2.0)
    c = Raw(lt.server.port)
    cancel = h2.CANCEL.to_bytes(4, "big")
    for sid in (1, 3):
        c.sock.sendall(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block())
            + h2.frame(h2.DATA, h2.END_STREAM, sid, message(b"hi"))
            + h2.frame(h2.RST_STREAM, 0, sid, cancel)
        )
    assert open_streams(lt) == [0]
    c.call(5, b"ok")  # was refused: both slots were held by the reset streams
    assert c.status(5) == (0, "")
    assert c.goaway() == h2.NO_ERROR  # and the idle timeout applies again


def test_calls_a_grpcio_client_cancels_at_once_leave_no_stream(make: Any) -> None:
    lt = make(max_streams=8)
    with grpc.insecure_channel(f"127.0.0.1:{lt.server.port}") as ch:
        echo = ch.unary_unary("/t.S/Echo")
        assert echo(b"warm", timeout=10) == b"mraw"
        for _ in range(200):
            echo.future(b"x" * 10, timeout=10).cancel()
        assert open_streams(lt) == [0]
        assert echo(b"abc", timeout=10) == b"cba"
