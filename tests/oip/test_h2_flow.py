"""Flow control of the HTTP/2 gRPC port as backpressure: the connection's window
is what the server will buffer of requests and opens again as calls take their
bodies, and replies already made wait for the client's windows instead of
failing; real grpcio clients and raw frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from clipper_core.oip import h2_frames as h2
from tests.oip.test_h2_grpc import LoopThread, loop_threads
from tests.oip.test_h2_hostile import Raw, _echo, request_block

pytestmark = pytest.mark.timeout(60)

MAX_MESSAGE = 1 << 20


@pytest.fixture
def make() -> Iterator[Callable[..., LoopThread]]:
    yield from loop_threads({"/t.S/Echo": _echo}, MAX_MESSAGE)


def test_concurrent_large_messages_on_one_channel_wait_for_the_windows(make: Any) -> None:
    """Twelve messages of 0.9 MiB at once: three times what the connection buffers
    (2 MiB, twice max_message) and what the client's windows may hold back of
    replies (max_held 1 MiB).  Each had RESOURCE_EXHAUSTED before."""
    lt = make(max_buffered=1, max_held=1 << 20)
    body = bytes(range(256)) * (900 << 2)
    options = [("grpc.max_receive_message_length", 4 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{lt.server.port}", options=options) as ch:
        echo = ch.unary_unary("/t.S/Echo")
        futures: list[Future[bytes]] = [echo.future(body, timeout=30) for _ in range(12)]
        assert all(f.result() == body[::-1] for f in futures)


def test_the_connection_window_is_what_the_server_buffers(make: Any) -> None:
    lt = make(max_buffered=1)
    c = Raw(lt.server.port)
    frames = c.read(lambda f: f[0] == h2.WINDOW_UPDATE and f[2] == 0)
    window = 65535 + int.from_bytes(frames[-1][3], "big")
    assert window == 2 * MAX_MESSAGE  # H2GrpcServer's floor of max_buffered
    head = b"\x00" + (700_000).to_bytes(4, "big") + b"x" * 9995
    for sid in (1, 3, 5):  # requests not yet whole: nothing gives the window back
        c.send(h2.HEADERS, h2.END_HEADERS, sid, request_block())
        c.send(h2.DATA, 0, sid, head)
    sent = 3 * len(head)
    sid = 1
    while sent + h2.DEFAULT_FRAME < window:  # all but a few bytes of it
        c.send(h2.DATA, 0, sid, b"x" * h2.DEFAULT_FRAME)
        sent += h2.DEFAULT_FRAME
        sid = 1 if sent < 690_000 else 3 if sent < 1_380_000 else 5
    assert c.alive()
    c.send(h2.DATA, 0, 5, b"x" * h2.DEFAULT_FRAME)  # past the window
    assert c.goaway() == h2.FLOW_CONTROL_ERROR
