"""The bound on socket reads per event-loop turn (``http.turn_budget``), over real
sockets on both loops: a burst of requests on many connections is spread over
turns, other work of the loop runs between them, and every request is still
answered, in order, on its own connection."""

from __future__ import annotations

import asyncio
import itertools

from rawhttp import Client, build, run, serving

from clipper_core.http import Request, Response, Router, json_response

CONNECTIONS = 48
PER_TURN = 4


def counting_router(calls: list[str]) -> Router:
    def predict(request: Request, params: dict[str, str]) -> Response:
        calls.append(params["app"])  # a plain handler: answered inline, in the read
        return json_response({"app": params["app"], "body": request.body.decode()})

    router = Router()
    router.add("POST", "/{app}/predict", predict)
    return router


async def ticker(calls: list[str], seen: list[int], stop: asyncio.Event) -> None:
    # One step per loop turn: how many requests were handled between two steps.
    while not stop.is_set():
        seen.append(len(calls))
        await asyncio.sleep(0)


def test_a_burst_is_spread_over_turns_and_other_work_runs_between(
    loop: asyncio.AbstractEventLoop,
) -> None:
    calls: list[str] = []
    seen: list[int] = []

    async def body() -> None:
        async with serving(counting_router(calls), reads_per_turn=PER_TURN) as server:
            clients = [await Client.connect(server.port) for _ in range(CONNECTIONS)]
            stop = asyncio.Event()
            ticks = asyncio.ensure_future(ticker(calls, seen, stop))
            for i, client in enumerate(clients):  # all at once: one burst of reads
                client.writer.write(build("POST", f"/c{i}/predict", b"x%d" % i))
            answers = [await c.read_response() for c in clients]
            stop.set()
            await ticks
            for i, resp in enumerate(answers):
                assert resp.status == 200 and resp.json() == {"app": f"c{i}", "body": f"x{i}"}
            assert server.turns is not None and server.turns.deferred > 0
            assert not server.turns.waiting
            # The connections stay usable.
            resp = await clients[0].request("POST", "/again/predict", b"y")
            assert resp.status == 200 and resp.json()["app"] == "again"
            for c in clients:
                await c.close()

    run(loop, body())
    assert sorted(calls[:CONNECTIONS]) == sorted(f"c{i}" for i in range(CONNECTIONS))
    steps = [b - a for a, b in itertools.pairwise(seen)]
    # At most a turn's reads from the line plus a turn's fresh ones between two steps.
    assert max(steps) <= 2 * PER_TURN, steps


def test_pipelined_requests_and_clients_gone_while_waiting(
    loop: asyncio.AbstractEventLoop,
) -> None:
    calls: list[str] = []

    async def body() -> None:
        async with serving(counting_router(calls), reads_per_turn=1) as server:
            clients = [await Client.connect(server.port) for _ in range(16)]
            for i, client in enumerate(clients):
                client.writer.write(
                    b"".join(build("POST", f"/c{i}/predict", b"%d" % k) for k in range(2))
                )
            await asyncio.sleep(0)  # the server reads; most connections wait in line
            for i, client in enumerate(clients):  # more while waiting: kept, not lost
                client.writer.write(build("POST", f"/c{i}/predict", b"2"))
            # Half of them go away before their turn comes.
            for client in clients[::2]:
                client.writer.transport.abort()
            for i, client in list(enumerate(clients))[1::2]:
                bodies = [(await client.read_response()).json()["body"] for _ in range(3)]
                assert bodies == ["0", "1", "2"], i  # in order, on its own connection
                await client.close()
            assert server.turns is not None
            assert server.turns.deferred > 0

    run(loop, body())


def test_reads_per_turn_zero_means_no_bound(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[str] = []

    async def body() -> None:
        async with serving(counting_router(calls), reads_per_turn=0) as server:
            assert server.turns is None
            client = await Client.connect(server.port)
            resp = await client.request("POST", "/a/predict", b"z")
            assert resp.status == 200
            await client.close()

    run(loop, body())


def test_stopping_answers_the_requests_waiting_in_line(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[str] = []

    async def body() -> None:
        async with serving(counting_router(calls), reads_per_turn=1) as server:
            clients = [await Client.connect(server.port) for _ in range(16)]
            for i, client in enumerate(clients):
                client.writer.write(build("POST", f"/c{i}/predict", b"%d" % i))
            await asyncio.sleep(0)  # the server reads; most connections wait in line
            stopping = asyncio.ensure_future(server.stop(grace=2.0))
            for i, client in enumerate(clients):
                resp = await client.read_response()
                assert resp.status == 200 and resp.json()["body"] == str(i)
                assert await client.read_eof() == b""  # then the server closes
            await stopping

    run(loop, body())
    assert len(calls) == 16


def test_the_server_configuration_and_the_command_line_set_the_bound() -> None:
    import subprocess
    import sys
    import urllib.request

    from clipper_core.config import ServerConfig
    from clipper_core.http.turn_budget import DEFAULT_READS_PER_TURN
    from clipper_core.server import BackgroundServer

    assert ServerConfig().reads_per_turn == DEFAULT_READS_PER_TURN
    for per_turn in (1, 0):
        with BackgroundServer(query_port=0, management_port=0, reads_per_turn=per_turn) as bg:
            listeners = bg.server.listeners
            assert listeners is not None
            turns = listeners.query.turns
            assert (turns.per_turn if turns is not None else 0) == per_turn
            url = f"http://127.0.0.1:{bg.server.query_port}/health"
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200
    # The command line refuses a negative bound before starting anything.
    proc = subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", "serve", "--reads-per-turn", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--reads-per-turn" in proc.stderr, proc.stderr
