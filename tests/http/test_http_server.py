"""The HTTP server over real sockets on 127.0.0.1, on the stdlib loop and uvloop."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from rawhttp import Client, build, chunked, run, serving

from clipper_core.errors import BadInput, QueueFull
from clipper_core.http import Request, Response, Router, json_response
from clipper_core.http import server as server_mod


async def echo(request: Request, params: dict[str, str]) -> Response:
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "params": params,
            "body": request.body.decode("latin-1"),
            "version": request.http_version,
            "keep_alive": request.keep_alive,
            "headers": request.headers,
        }
    )


def make_router() -> Router:
    router = Router()
    router.add("POST", "/{app}/predict", echo)
    router.add("GET", "/echo", echo)
    router.add("POST", "/echo", echo)
    router.add("GET", "/v2/models/{model}/versions/{version}/infer", echo)
    return router


# -- keep-alive, pipelining, bodies ----------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            for i in range(5):
                resp = await client.request("POST", f"/app{i}/predict", b"x" * i)
                assert resp.status == 200
                data = resp.json()
                assert data["params"] == {"app": f"app{i}"}
                assert data["body"] == "x" * i
                assert data["keep_alive"] is True
                assert "connection" not in resp.headers
                assert resp.headers["content-type"] == "application/json"
                assert int(resp.headers["content-length"]) == len(resp.body)
                assert "date" in resp.headers
            assert server.connections == 1
            await client.close()

    run(loop, body())


def test_pipelined_requests_run_concurrently_and_answer_in_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    last_started = asyncio.Event()

    async def slow_first(request: Request, params: dict[str, str]) -> Response:
        n = int(params["n"])
        if n == 0:
            # Finishes only once the last request's handler has started: the
            # handlers of one connection run concurrently.
            await last_started.wait()
        elif n == 4:
            last_started.set()
        else:
            await asyncio.sleep(0.01 * (4 - n))
        return json_response({"n": n})

    async def body() -> None:
        router = Router()
        router.add("GET", "/slow/{n}", slow_first)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            await client.send(b"".join(build("GET", f"/slow/{n}") for n in range(5)))
            got = [(await client.read_response()).json()["n"] for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]
            await client.close()

    run(loop, body())


def test_pipeline_deeper_than_the_read_pause_limit(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        n = server_mod.MAX_PIPELINE * 3
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(b"".join(build("GET", f"/echo?i={i}") for i in range(n)))
            for i in range(n):
                resp = await client.read_response()
                assert resp.json()["query"] == {"i": str(i)}
            await client.close()

    run(loop, body())


def test_pipelined_mix_of_inline_errors_and_tasks_keeps_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            await client.send(
                build("POST", "/a/predict", b"1")
                + build("GET", "/nowhere")
                + build("DELETE", "/echo")
                + build("POST", "/b/predict", b"2")
            )
            statuses = [(await client.read_response()).status for _ in range(4)]
            assert statuses == [200, 404, 405, 200]
            await client.close()

    run(loop, body())


def test_chunked_request_body(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            head = build("POST", "/echo", headers={"Transfer-Encoding": "chunked"})
            payload = chunked(b"hello ", b"chunked ", b"world")
            # Split the message at awkward places to exercise incremental parsing.
            await client.send(head + payload[:5])
            await asyncio.sleep(0.01)
            await client.send(payload[5:17])
            await asyncio.sleep(0.01)
            await client.send(payload[17:])
            resp = await client.read_response()
            assert resp.status == 200
            assert resp.json()["body"] == "hello chunked world"
            # The connection is still usable afterwards.
            assert (await client.request("GET", "/echo")).status == 200
            await client.close()

    run(loop, body())


def test_expect_100_continue(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            data = b'{"input": [1, 2]}'
            await client.send(
                build(
                    "POST",
                    "/app/predict",
                    headers={"Content-Length": str(len(data)), "Expect": "100-continue"},
                )
            )
            interim = await client.read_response()
            assert interim.status == 100
            await client.send(data)
            resp = await client.read_response()
            assert resp.status == 200
            assert resp.json()["body"] == data.decode()
            await client.close()

    run(loop, body())


def test_100_continue_waits_its_turn_behind_earlier_answers(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def slow(request: Request, params: dict[str, str]) -> Response:
        await asyncio.sleep(0.05)
        return json_response("slow")

    async def body() -> None:
        router = make_router()
        router.add("GET", "/slow", slow)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            await client.send(
                build("GET", "/slow")
                + build("POST", "/echo", headers={"Content-Length": "2", "Expect": "100-continue"})
            )
            first = await client.read_response()
            assert first.json() == "slow"
            assert (await client.read_response()).status == 100
            await client.send(b"hi")
            resp = await client.read_response()
            assert resp.json()["body"] == "hi"
            await client.close()

    run(loop, body())


def test_expect_100_continue_over_the_limit_gets_only_413(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def body() -> None:
        async with serving(make_router(), max_body_size=10) as server:
            client = await Client.connect(server.port)
            await client.send(
                build("POST", "/echo", headers={"Content-Length": "11", "Expect": "100-continue"})
            )
            resp = await client.read_response()
            assert resp.status == 413
            assert await client.read_eof() == b""
            await client.close()

    run(loop, body())


def test_query_string_percent_decoding_and_headers(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            resp = await client.request(
                "GET",
                "/v2/models/my%20model/versions/7/infer?a=1&b=x%2Fy&empty=",
                headers={"X-Thing": "one", "x-thing": "two", "X-Other": "Val"},
            )
            data = resp.json()
            assert data["params"] == {"model": "my model", "version": "7"}
            assert data["path"] == "/v2/models/my model/versions/7/infer"
            assert data["query"] == {"a": "1", "b": "x/y", "empty": ""}
            assert data["headers"]["x-thing"] == "one, two"
            assert data["headers"]["x-other"] == "Val"
            assert data["headers"]["host"] == "test"
            await client.close()

    run(loop, body())


def test_head_answers_without_body(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with serving(make_router()) as server:
            client = await Client.connect(server.port)
            resp = await client.request("HEAD", "/echo")
            assert resp.status == 200
            assert int(resp.headers["content-length"]) > 0
            # Nothing but the next response follows the HEAD response's header.
            resp = await client.request("GET", "/echo")
            assert resp.json()["method"] == "GET"
            await client.close()

    run(loop, body())


def test_inline_plain_function_handler(loop: asyncio.AbstractEventLoop) -> None:
    def ping(request: Request, params: dict[str, str]) -> Response:
        return Response(200, "pong", "text/plain", {"X-Served": "inline"})

    async def body() -> None:
        router = Router()
        router.add("GET", "/ping", ping)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            for _ in range(3):
                resp = await client.request("GET", "/ping")
                assert (resp.status, resp.body) == (200, b"pong")
                assert resp.headers["content-type"] == "text/plain"
                assert resp.headers["x-served"] == "inline"
            await client.close()

    run(loop, body())


def test_no_content_response_has_no_length(loop: asyncio.AbstractEventLoop) -> None:
    async def nothing(request: Request, params: dict[str, str]) -> Response:
        return Response(204)

    async def body() -> None:
        router = Router()
        router.add("DELETE", "/x", nothing)
        async with serving(router) as server:
            client = await Client.connect(server.port)
            resp = await client.request("DELETE", "/x")
            assert resp.status == 204
            assert "content-length" not in resp.headers
            assert (await client.request("DELETE", "/x")).status == 204
            await client.close()

    run(loop, body())


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
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
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
