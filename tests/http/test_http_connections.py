"""The HTTP server's connections over real sockets on 127.0.0.1: HTTP/1.0 and
keep-alive, idle time-outs, half-close and upgrade; a client that leaves cancels
its handler; stopping drains, then cancels."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from echo_app import echo, make_router
from rawhttp import Client, build, run, serving

from clipper_core.http import Request, Response, Router, json_response

# -- connection management ---------------------------------------------------------


def test_http10_without_keep_alive_closes(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            resp = await client.request("GET", "/echo", version="1.0")
            assert resp.status == 200
            assert resp.headers["connection"] == "close"
            assert resp.json()["version"] == "1.0"
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_http10_with_keep_alive_stays_open(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            for _ in range(2):
                resp = await client.request(
                    "GET", "/echo", headers={"Connection": "keep-alive"}, version="1.0"
                )
                assert resp.status == 200
                assert resp.headers["connection"] == "keep-alive"
            await client.close()

    run(loop, body())


def test_connection_close_ignores_requests_after_it(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(
                build("GET", "/echo", headers={"Connection": "close"}) + build("GET", "/echo")
            )
            resp = await client.read_response()
            assert resp.headers["connection"] == "close"
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_idle_keep_alive_connection_times_out(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router(), keepalive_timeout=0.2) as server:
            client = await Client.connect(server.port)
            assert (await client.request("GET", "/echo")).status == 200
            start = time.monotonic()
            assert await client.read_eof() == b""
            assert time.monotonic() - start < 2.0
            await client.close()

    run(loop, body())


def test_client_half_close_counts_as_gone(loop: asyncio.AbstractEventLoop) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(request: Request, params: dict[str, str]) -> Response:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    async def body() -> None:
        router = Router()
        router.add("GET", "/forever", forever)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            await client.send(build("GET", "/forever"))
            await asyncio.wait_for(started.wait(), 5)
            client.writer.write_eof()
            await asyncio.wait_for(cancelled.wait(), 5)
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_upgrade_request_is_answered_then_closed(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(
                build("GET", "/echo", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
                + b"\x81\x05hello"
            )
            resp = await client.read_response()
            assert resp.status == 200
            assert resp.headers["connection"] == "close"
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


# -- cancellation and shutdown -----------------------------------------------------


def test_client_disconnect_cancels_the_handler(loop: asyncio.AbstractEventLoop) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(request: Request, params: dict[str, str]) -> Response:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    async def body() -> None:
        router = Router()
        router.add("POST", "/forever", forever)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            await client.send(build("POST", "/forever", b"{}"))
            await asyncio.wait_for(started.wait(), 5)
            await client.close()
            await asyncio.wait_for(cancelled.wait(), 5)
            # Let the connection's teardown run fully.
            for _ in range(20):
                if server.connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.connections == 0

    run(loop, body())


def test_disconnect_with_finished_failed_handlers_queued(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Handlers that failed while waiting behind a slow one, then the client leaves:
    nothing may be reported as a never-retrieved exception."""
    gate = asyncio.Event()
    failed = 0

    async def slow(request: Request, params: dict[str, str]) -> Response:
        await asyncio.sleep(3600)
        return Response()

    async def fail(request: Request, params: dict[str, str]) -> Response:
        nonlocal failed
        failed += 1
        if failed == 3:
            gate.set()
        raise RuntimeError("late failure")

    async def body() -> None:
        router = Router()
        router.add("GET", "/slow", slow)
        router.add("GET", "/fail", fail)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            await client.send(build("GET", "/slow") + build("GET", "/fail") * 3)
            await asyncio.wait_for(gate.wait(), 5)
            await asyncio.sleep(0.01)
            await client.close()
            for _ in range(50):
                if server.connections == 0:
                    break
                await asyncio.sleep(0.01)

    logging.getLogger("clipper_core.http").disabled = True
    try:
        run(loop, body())
    finally:
        logging.getLogger("clipper_core.http").disabled = False


def test_handler_cancelled_from_inside_is_503(loop: asyncio.AbstractEventLoop) -> None:
    async def victim(request: Request, params: dict[str, str]) -> Response:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.cancel)
        await fut  # raises CancelledError: the work it waited on was cancelled
        return Response()

    async def body() -> None:
        router = Router()
        router.add("GET", "/victim", victim)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            resp = await client.request("GET", "/victim")
            assert resp.status == 503
            assert resp.json()["error"] == "cancelled"
            assert (await client.request("GET", "/victim")).status == 503
            await client.close()

    run(loop, body())


def test_stop_drains_in_flight_requests(loop: asyncio.AbstractEventLoop) -> None:
    started = asyncio.Event()

    async def slow(request: Request, params: dict[str, str]) -> Response:
        started.set()
        await asyncio.sleep(0.2)
        return json_response({"done": True})

    async def body() -> None:
        router = Router()
        router.add("GET", "/slow", slow)
        router.add("GET", "/fast", echo)
        async with serving(router) as server:
            busy = await Client.connect(server.port)
            idle = await Client.connect(server.port)
            assert (await idle.request("GET", "/fast")).status == 200
            await busy.send(build("GET", "/slow"))
            await asyncio.wait_for(started.wait(), 5)
            start = time.monotonic()
            await server.stop(grace=5.0)
            elapsed = time.monotonic() - start
            assert 0.1 < elapsed < 2.0
            resp = await busy.read_response()
            assert resp.status == 200
            assert resp.json() == {"done": True}
            assert resp.headers["connection"] == "close"
            assert await busy.read_eof() == b""
            assert await idle.read_eof() == b""
            await busy.close()
            await idle.close()
            # No longer accepting.
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 5)

    run(loop, body())


def test_stop_after_grace_cancels_stuck_handlers(loop: asyncio.AbstractEventLoop) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(request: Request, params: dict[str, str]) -> Response:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    async def body() -> None:
        router = Router()
        router.add("GET", "/stuck", stuck)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            await client.send(build("GET", "/stuck"))
            await asyncio.wait_for(started.wait(), 5)
            start = time.monotonic()
            await server.stop(grace=0.2)
            assert time.monotonic() - start < 2.0
            assert cancelled.is_set()
            assert server.connections == 0
            # Not dropped silently: the cancelled request is answered 503, then the
            # connection is closed.
            resp = await client.read_response()
            assert resp.status == 503 and resp.json()["error"] == "cancelled"
            assert resp.headers.get("connection") == "close"
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_access_log(loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serving(make_router(), access_log=True) as server:
            client = await Client.connect(server.port)
            assert (await client.request("GET", "/echo")).status == 200
            await client.close()

    with caplog.at_level(logging.INFO, logger="clipper_core.http.access"):
        run(loop, body())
    assert any('"GET /echo HTTP/1.1" 200' in r.getMessage() for r in caplog.records)


def test_port_before_start_raises() -> None:
    from clipper_core.http import HttpServer

    with pytest.raises(RuntimeError):
        _ = HttpServer(Router()).port
