"""The HTTP server's error answers over real sockets on 127.0.0.1: protocol
errors (413, 400, 431) and routing and handler errors (404, 405, the mapped
ClipperError statuses, 500)."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from echo_app import make_router
from rawhttp import Client, build, run, serving

from clipper_core.errors import BadInput, QueueFull
from clipper_core.http import Request, Response, Router, json_response

# -- protocol errors ---------------------------------------------------------------


def _error(resp_body: bytes) -> tuple[str, str]:
    data = orjson.loads(resp_body)
    return data["error"], data["cause"]


def test_content_length_over_limit_is_413_before_the_body(
    loop: asyncio.AbstractEventLoop,
) -> None:
    called = False

    async def handler(request: Request, params: dict[str, str]) -> Response:
        nonlocal called
        called = True
        return Response()

    async def body() -> None:
        router = Router()
        router.add("POST", "/up", handler)
        async with serving(router, max_body_size=1000) as server:
            client = await Client.connect(server.port)
            # Only the header: the answer must not wait for the body.
            await client.send(build("POST", "/up", headers={"Content-Length": "1001"}))
            resp = await client.read_response()
            assert resp.status == 413
            assert resp.headers["connection"] == "close"
            error, cause = _error(resp.body)
            assert error == "payload_too_large"
            assert "1001" in cause and "1000" in cause
            assert await client.read_eof() == b""
            await client.close()
            # At the limit is fine.
            client = await Client.connect(server.port)
            assert (await client.request("POST", "/up", b"x" * 1000)).status == 200
            await client.close()
        assert called

    run(loop, body())


def test_chunked_body_over_limit_is_413(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router(), max_body_size=1000) as server:
            client = await Client.connect(server.port)
            await client.send(build("POST", "/echo", headers={"Transfer-Encoding": "chunked"}))
            await client.send(b"%x\r\n%s\r\n" % (600, b"a" * 600))
            await client.send(b"%x\r\n%s\r\n" % (600, b"b" * 600))
            resp = await client.read_response()
            assert resp.status == 413
            assert _error(resp.body)[0] == "payload_too_large"
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_413_after_pipelined_requests_comes_last(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router(), max_body_size=10) as server:
            client = await Client.connect(server.port)
            await client.send(
                build("POST", "/a/predict", b"ok")
                + build("POST", "/echo", headers={"Content-Length": "11"})
            )
            assert (await client.read_response()).status == 200
            assert (await client.read_response()).status == 413
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELLO WORLD\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_request_is_400_then_close(
    loop: asyncio.AbstractEventLoop, garbage: bytes
) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(garbage)
            resp = await client.read_response()
            assert resp.status == 400
            assert resp.headers["connection"] == "close"
            error, cause = _error(resp.body)
            assert error == "bad_request"
            assert cause.startswith("malformed HTTP request")
            assert await client.read_eof() == b""
            await client.close()
            # The server keeps serving other connections.
            client = await Client.connect(server.port)
            assert (await client.request("GET", "/echo")).status == 200
            await client.close()

    run(loop, body())


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_an_http11_request_needs_a_host_header(
    loop: asyncio.AbstractEventLoop, version: str
) -> None:
    # RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400 (it was
    # served); HTTP/1.0 has no such rule.
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(f"GET /echo HTTP/{version}\r\n\r\n".encode())
            resp = await client.read_response()
            if version == "1.0":
                assert resp.status == 200
            else:
                assert resp.status == 400
                assert resp.headers["connection"] == "close"
                assert _error(resp.body) == ("bad_request", "HTTP/1.1 request has no Host header")
                assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_a_transfer_coding_other_than_chunked_is_501(loop: asyncio.AbstractEventLoop) -> None:
    # llhttp undoes "chunked" only: a gzip transfer coding reached the handler
    # still compressed and was answered as malformed JSON.
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            )
            resp = await client.read_response()
            assert resp.status == 501
            error, cause = _error(resp.body)
            assert error == "not_implemented" and "'gzip, chunked' is not supported" in cause
            await client.close()
            client = await Client.connect(server.port)  # chunked alone still works
            await client.send(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            )
            resp = await client.read_response()
            assert resp.status == 200, resp
            await client.close()

    run(loop, body())


def test_header_section_too_large_is_431(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router(), max_header_size=4096) as server:
            client = await Client.connect(server.port)
            await client.send(build("GET", "/echo", headers={"X-Big": "v" * 5000}))
            resp = await client.read_response()
            assert resp.status == 431
            assert _error(resp.body)[0] == "headers_too_large"
            assert await client.read_eof() == b""
            await client.close()
            # Many small headers add up too.
            client = await Client.connect(server.port)
            many = {f"X-H{i}": "v" * 40 for i in range(200)}
            await client.send(build("GET", "/echo", headers=many))
            assert (await client.read_response()).status == 431
            await client.close()

    run(loop, body())


def test_header_trickled_byte_chunks_is_431(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router(), max_header_size=4096) as server:
            client = await Client.connect(server.port)
            # One endless header value, fed in small pieces: the parser would buffer
            # it without end unless the raw bytes are counted.
            await client.send(b"GET /echo HTTP/1.1\r\nX-Slow: ")
            resp_task = asyncio.ensure_future(client.read_response())
            for _ in range(100):
                if resp_task.done():
                    break
                try:
                    await client.send(b"v" * 512)
                except (ConnectionError, OSError):
                    break
                await asyncio.sleep(0.005)
            resp = await asyncio.wait_for(resp_task, 5)
            assert resp.status == 431
            await client.close()

    run(loop, body())


def test_long_url_counts_toward_the_header_limit(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router(), max_header_size=1024) as server:
            client = await Client.connect(server.port)
            await client.send(build("GET", "/echo?" + "a" * 2000))
            assert (await client.read_response()).status == 431
            await client.close()

    run(loop, body())


# -- routing errors and handler errors ---------------------------------------------


def test_404_and_405_are_json(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            resp = await client.request("GET", "/x")
            assert resp.status == 404
            assert resp.json() == {"error": "not_found", "cause": "no route for GET /x"}
            resp = await client.request("PUT", "/echo")
            assert resp.status == 405
            assert resp.headers["allow"] == "GET, HEAD, POST"
            assert resp.json()["error"] == "method_not_allowed"
            await client.close()

    run(loop, body())


def test_clipper_errors_map_to_their_status(loop: asyncio.AbstractEventLoop) -> None:
    async def bad(request: Request, params: dict[str, str]) -> Response:
        raise BadInput("input must not be empty")

    async def full(request: Request, params: dict[str, str]) -> Response:
        await asyncio.sleep(0)
        raise QueueFull()

    async def body() -> None:
        router = Router()
        router.add("POST", "/bad", bad)
        router.add("POST", "/full", full)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            resp = await client.request("POST", "/bad", b"{}")
            assert resp.status == 400
            assert resp.json() == {"error": "bad_input", "cause": "input must not be empty"}
            resp = await client.request("POST", "/full", b"{}")
            assert resp.status == 503
            assert resp.json() == {"error": "queue_full", "cause": "queue_full"}
            await client.close()

    run(loop, body())


def test_unexpected_exception_is_500_and_serving_goes_on(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(request: Request, params: dict[str, str]) -> Response:
        return json_response({"x": 1 // int(request.query["d"])})

    def sync_boom(request: Request, params: dict[str, str]) -> Response:
        raise KeyError("nope")

    async def not_a_response(request: Request, params: dict[str, str]) -> Response:
        return {"oops": 1}  # type: ignore[return-value]

    async def body() -> None:
        router = Router()
        router.add("GET", "/div", boom)
        router.add("GET", "/sync", sync_boom)
        router.add("GET", "/dict", not_a_response)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            resp = await client.request("GET", "/div?d=0")
            assert resp.status == 500
            assert resp.json() == {
                "error": "internal",
                "cause": "ZeroDivisionError: integer division or modulo by zero",
            }
            resp = await client.request("GET", "/sync")
            assert resp.status == 500
            assert resp.json()["cause"] == "KeyError: 'nope'"
            resp = await client.request("GET", "/dict")
            assert resp.status == 500
            assert "TypeError" in resp.json()["cause"]
            # Same connection, still serving.
            assert (await client.request("GET", "/div?d=1")).json() == {"x": 1}
            await client.close()

    with caplog.at_level(logging.ERROR, logger="clipper_core.http"):
        run(loop, body())
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_bad_response_header_is_500(loop: asyncio.AbstractEventLoop) -> None:
    async def inject(request: Request, params: dict[str, str]) -> Response:
        return Response(200, b"", headers={"X-Bad": "a\r\nSet-Cookie: evil=1"})

    async def body() -> None:
        router = Router()
        router.add("GET", "/inject", inject)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            resp = await client.request("GET", "/inject")
            assert resp.status == 500
            assert "set-cookie" not in resp.headers
            assert (await client.request("GET", "/inject")).status == 500
            await client.close()

    logging.getLogger("clipper_core.http").disabled = True
    try:
        run(loop, body())
    finally:
        logging.getLogger("clipper_core.http").disabled = False
