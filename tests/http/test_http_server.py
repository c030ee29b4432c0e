"""The HTTP server over real sockets on 127.0.0.1, on the stdlib loop and uvloop:
keep-alive, pipelining, bodies (chunked, 100-continue), HEAD, inline handlers.
Errors: test_http_errors.py; connections and shutdown: test_http_connections.py."""

from __future__ import annotations

import asyncio

from echo_app import make_router
from rawhttp import Client, build, chunked, run, serving

from clipper_core.http import Request, Response, Router, json_response
from clipper_core.http import server as server_mod

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
