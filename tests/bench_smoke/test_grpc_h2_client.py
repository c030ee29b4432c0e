"""The bench's hand-written HTTP/2 gRPC client (``bench.load.grpc_h2``) against
real servers on real sockets: ours (``H2GrpcServer``) and ``grpc.aio``'s."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
import uvloop

from bench.load.common import ERR_TIMEOUT, GRPC_BASE
from bench.load.grpc_h2 import H2ClientConnection, request_block
from clipper_core.oip.h2_frames import CallContext, GrpcAbort
from clipper_core.oip.h2_server import H2GrpcServer

PATH = "/t.S/Echo"


async def _echo(raw: bytes, ctx: CallContext) -> bytes:
    if raw == b"missing":
        raise GrpcAbort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if raw == b"slow":
        await asyncio.sleep(5)
    return raw[::-1] * (20000 if raw == b"big" else 1)


async def _ours() -> tuple[int, Callable[[], Awaitable[None]]]:
    server = H2GrpcServer({PATH: _echo})
    await server.start()
    return server.port, lambda: server.stop(0)


async def _aio() -> tuple[int, Callable[[], Awaitable[None]]]:
    async def echo(raw: bytes, ctx: object) -> bytes:
        if raw == b"missing":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")  # type: ignore[attr-defined]
        if raw == b"slow":
            await asyncio.sleep(5)
        return raw[::-1] * (20000 if raw == b"big" else 1)

    handler = grpc.method_handlers_generic_handler(
        "t.S", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return port, lambda: server.stop(0)


@pytest.mark.parametrize("start", [_ours, _aio], ids=["ours", "grpc.aio"])
def test_calls_statuses_big_replies_and_timeouts(
    start: Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]],
) -> None:
    async def main() -> None:
        port, stop = await start()
        loop = asyncio.get_running_loop()
        block = request_block(f"127.0.0.1:{port}", PATH, 10)
        _, conn = await loop.create_connection(lambda: H2ClientConnection(block), "127.0.0.1", port)
        try:
            await asyncio.wait_for(conn.ready, 10)
            now = loop.time()
            # Many overlapping calls: more request bytes than the default windows.
            messages = [b"m%05d" % i * 50 for i in range(400)]  # 400 x 300 bytes
            answers = await asyncio.gather(*(conn.call(m, now) for m in messages))
            assert answers == [(0, m[::-1]) for m in messages]
            assert await conn.call(b"missing", now) == (GRPC_BASE - 5, b"")  # NOT_FOUND
            code, data = await conn.call(b"big", now)  # 60 KB: several DATA frames
            assert code == 0 and data == b"gib" * 20000
            slow = conn.call(b"slow", now)
            conn.expire(now + 1)  # its timeout passed
            assert await slow == (ERR_TIMEOUT, b"")
            assert await conn.call(b"ok", now) == (0, b"ko")
        finally:
            if conn.transport is not None:
                conn.transport.close()
            await stop()

    uvloop.run(main())
