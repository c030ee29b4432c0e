"""Server-wide limits of the HTTP server, over real sockets on both loops: the
header guard (refusing before the body), the budget for request bodies in
flight, the connection cap and the minimum receive rate."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import pytest
from rawhttp import Client, build, run, serving

from clipper_core.http import Request, Response, Router, error_response, json_response
from clipper_core.http.body_budget import BodyBudget, trim_allocator

RETRY = {"Retry-After": "1"}


def make_router(calls: list[int], gate: asyncio.Event | None = None) -> Router:
    async def predict(request: Request, params: dict[str, str]) -> Response:
        calls.append(len(request.body))
        if gate is not None:
            await gate.wait()
        return json_response({"app": params["app"], "size": len(request.body)})

    router = Router()
    router.add("POST", "/{app}/predict", predict)
    return router


def refuse_busy(request: Request) -> Response | None:
    if request.path == "/busy/predict":
        assert request.body == b""  # the headers only
        return error_response(503, "overloaded", "busy", RETRY)
    return None


def head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


# -- header guard -----------------------------------------------------------------------


def test_header_guard_refuses_before_routing_and_keeps_the_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    calls: list[int] = []

    async def body() -> None:
        async with serving(make_router(calls), header_guard=refuse_busy) as server:
            client = await Client.connect(server.port)
            resp = await client.request("POST", "/busy/predict", b"x" * 1000)
            assert resp.status == 503 and resp.json()["error"] == "overloaded"
            assert resp.headers["retry-after"] == "1"
            assert calls == []  # the handler never ran
            # The body was dropped, the connection stays usable.
            resp = await client.request("POST", "/ok/predict", b"y" * 10)
            assert resp.status == 200 and resp.json() == {"app": "ok", "size": 10}
            await client.close()

    run(loop, body())


def test_a_refused_large_body_is_not_read(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[int] = []

    async def body() -> None:
        async with serving(make_router(calls), header_guard=refuse_busy) as server:
            client = await Client.connect(server.port)
            await client.send(head("/busy/predict", 5_000_000))  # and no body at all
            resp = await client.read_response()
            assert resp.status == 503 and resp.headers["connection"] == "close"
            assert await client.read_eof() == b""
            # Expect: 100-continue is answered with the refusal, not "continue".
            client = await Client.connect(server.port)
            await client.send(
                build(
                    "POST", "/busy/predict", b"", {"Content-Length": "10", "Expect": "100-continue"}
                )
            )
            resp = await client.read_response()
            assert resp.status == 503
            await client.close()
            # A chunked body is dropped up to 64 KiB, then the connection goes.
            client = await Client.connect(server.port)
            chunk = b"%x\r\n%s\r\n" % (50_000, b"c" * 50_000)
            await client.send(
                build("POST", "/busy/predict", headers={"Transfer-Encoding": "chunked"}) + chunk * 2
            )
            resp = await client.read_response()
            assert resp.status == 503 and resp.headers["connection"] == "close"
            await client.close()
        assert calls == []

    run(loop, body())


# -- body budget -------------------------------------------------------------------------


def test_body_budget_refuses_with_503_json_and_is_given_back(
    loop: asyncio.AbstractEventLoop,
) -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def body() -> None:
        async with serving(make_router(calls, gate), max_inflight_body_bytes=1000) as server:
            budget = server.body_budget
            assert budget is not None
            holder = await Client.connect(server.port)
            await holder.send(head("/a/predict", 800) + b"z" * 100)  # 800 reserved
            await _until(lambda: budget.in_use == 800)
            other = await Client.connect(server.port)
            await other.send(head("/a/predict", 300))
            resp = await other.read_response()
            assert resp.status == 503 and resp.json()["error"] == "overloaded"
            assert "budget of 1000 bytes" in resp.json()["cause"]
            assert resp.headers["retry-after"] == "1" and resp.headers["connection"] == "close"
            assert budget.refused == 1
            # Held until answered: the body is complete, its handler waits.
            await holder.send(b"z" * 700)
            await _until(lambda: calls == [800])
            assert budget.in_use == 800
            gate.set()
            assert (await holder.read_response()).status == 200
            await _until(lambda: budget.in_use == 0)
            small = await Client.connect(server.port)
            assert (await small.request("POST", "/a/predict", b"q" * 300)).status == 200
            # A chunked body reserves as it grows.
            chunk = b"%x\r\n%s\r\n" % (600, b"c" * 600)
            await small.send(
                build("POST", "/a/predict", b"", {"Transfer-Encoding": "chunked"}) + chunk * 2
            )
            resp = await small.read_response()
            assert resp.status == 503 and resp.json()["error"] == "overloaded"
            await _until(lambda: budget.in_use == 0)
            # A client that goes away gives its partial body back.
            gone = await Client.connect(server.port)
            await gone.send(head("/a/predict", 900) + b"p" * 10)
            await _until(lambda: budget.in_use == 900)
            await gone.close()
            await _until(lambda: budget.in_use == 0)
            for c in (holder, other, small):
                await c.close()

    run(loop, body())


def test_body_budget_unit() -> None:
    budget = BodyBudget(100)
    assert budget.reserve(60) and not budget.reserve(50) and budget.reserve(40)
    assert (budget.in_use, budget.peak, budget.refused) == (100, 100, 1)
    budget.release(100)
    assert budget.in_use == 0
    with pytest.raises(ValueError):
        BodyBudget(0)
    assert trim_allocator() in (True, False)  # glibc: True; elsewhere a no-op


# -- connection cap -----------------------------------------------------------------------


def test_connection_cap_answers_503_and_closes(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[int] = []

    async def body() -> None:
        async with serving(make_router(calls), max_connections=2) as server:
            a = await Client.connect(server.port)
            b = await Client.connect(server.port)
            assert (await a.request("POST", "/x/predict", b"1")).status == 200
            assert (await b.request("POST", "/x/predict", b"1")).status == 200
            c = await Client.connect(server.port)
            resp = await c.read_response()
            assert resp.status == 503 and resp.json()["error"] == "overloaded"
            assert "connections open" in resp.json()["cause"]
            assert resp.headers["connection"] == "close"
            assert await c.read_eof() == b""
            assert server.connections == 2
            await a.close()
            await _until(lambda: server.connections == 1)
            d = await Client.connect(server.port)
            assert (await d.request("POST", "/x/predict", b"1")).status == 200
            for conn in (b, c, d):
                await conn.close()

    run(loop, body())


def test_a_client_that_stops_reading_is_reset_once_its_connection_is_closed(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """An answer larger than the socket buffers, to a client that never reads it:
    the idle timeout closes the connection, and since close() waits for the write
    buffer to drain, which it never does, the connection is reset after the
    keep-alive timeout more, rather than held (and counted) for ever."""

    async def big(request: Request, params: dict[str, str]) -> Response:
        return Response(200, b"x" * (48 << 20), "application/octet-stream")

    router = Router()
    router.add("GET", "/big", big)

    async def body() -> None:
        async with serving(router, keepalive_timeout=0.5) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
                await asyncio.get_running_loop().sock_sendall(
                    sock, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
                )
                await _until(lambda: server.connections == 1)
                await _until(lambda: server.connections == 0)  # never read a byte
            finally:
                sock.close()

    run(loop, body())


# -- minimum receive rate ------------------------------------------------------------------


def test_a_too_slow_body_is_cut_with_408(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[int] = []

    async def body() -> None:
        async with serving(
            make_router(calls),
            min_body_rate=1000,
            body_rate_window=0.2,
            max_inflight_body_bytes=1 << 20,
        ) as server:
            budget = server.body_budget
            assert budget is not None
            slow = await Client.connect(server.port)
            await slow.send(head("/s/predict", 10_000))
            with contextlib.suppress(ConnectionError):
                for _ in range(12):  # 10 bytes every 50 ms: 200 bytes/s
                    await slow.send(b"t" * 10)
                    await asyncio.sleep(0.05)
            resp = await slow.read_response()
            assert resp.status == 408 and resp.json()["error"] == "request_timeout"
            assert "under the minimum of 1000 bytes/s" in resp.json()["cause"]
            await _until(lambda: budget.in_use == 0)
            assert calls == []
            # A fast client, and an idle keep-alive connection, are left alone.
            fast = await Client.connect(server.port)
            assert (await fast.request("POST", "/s/predict", b"f" * 5000)).status == 200
            await asyncio.sleep(0.5)
            assert (await fast.request("POST", "/s/predict", b"f" * 5)).status == 200
            await slow.close()
            await fast.close()

    run(loop, body())


def test_limits_are_checked() -> None:
    from clipper_core.http import HttpServer

    with pytest.raises(ValueError):
        HttpServer(Router(), max_connections=-1)
    with pytest.raises(ValueError):
        HttpServer(Router(), body_rate_window=0)


async def _until(probe: Callable[[], object]) -> None:
    end = asyncio.get_running_loop().time() + 5.0
    while not probe():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)
