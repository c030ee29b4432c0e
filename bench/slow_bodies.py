"""The slow-body storm: does one memory budget hold the server's memory, and is
it given back afterwards?

    .venv/bin/python -m bench.slow_bodies                       # 3 rounds, defaults
    .venv/bin/python -m bench.slow_bodies --server-arg=--max-inflight-body-bytes=0 \\
        --server-arg=--min-body-rate=0                          # the old behaviour

Each round opens ``--connections`` connections (40) that each announce a body of
``--body-mib`` MiB (9), send all of it but the last KiB at once, then trickle one
byte a second, as a client stalling its upload would.  A round lasts
``--round-seconds`` (25, over the minimum-rate window of 10 s), then the client
closes what is left.  The server's RSS is sampled every 0.5 s: the baseline
before, the peak of each round, and the value 3 s after each round.  Also
counted: how the connections ended (refused 503 at once, cut with 408, still
open at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.overload import Server, rss_mib


async def _one(port: int, body_bytes: int, outcome: dict[str, int], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /slow/predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_bytes}\r\n\r\n"
    ).encode()
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        writer.write(head)
        chunk = b" " * (1 << 16)
        sent = 0
        while sent < body_bytes - 1024 and not answer.done():
            n = min(len(chunk), body_bytes - 1024 - sent)
            writer.write(chunk[:n])
            await writer.drain()
            sent += n
        while not answer.done() and not stop.is_set():
            writer.write(b" ")
            await asyncio.wait([answer], timeout=1.0)
        if answer.done() and not answer.exception():
            data = answer.result()
            status = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
        else:
            status = "open"
    except (ConnectionError, OSError):
        status = "reset"
    finally:
        answer.cancel()
        writer.close()
    outcome[status] = outcome.get(status, 0) + 1


async def storm_round(port: int, connections: int, body: int, seconds: float) -> dict[str, int]:
    outcome: dict[str, int] = {}
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(_one(port, body, outcome, stop)) for _ in range(connections)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--body-mib", type=float, default=9.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=25.0)
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    state = Path(tempfile.mkdtemp(prefix="clipper-slow-bodies-"))
    server = Server(state, list(args.server_arg))
    samples: list[tuple[float, float]] = []
    results: dict[str, Any] = {"server_args": args.server_arg, "rounds": []}
    try:

        def sample() -> float:
            value = rss_mib(server.pid) or 0.0
            samples.append((time.monotonic(), value))
            return value

        time.sleep(2.0)
        results["baseline_rss_mib"] = round(sample(), 1)
        body = int(args.body_mib * 1024 * 1024)

        async def run_all() -> None:
            for _ in range(args.rounds):
                t0 = time.monotonic()
                sampler = asyncio.ensure_future(_sample_every(sample, 0.5))
                outcome = await storm_round(
                    server.query_port, args.connections, body, args.round_seconds
                )
                sampler.cancel()
                await asyncio.sleep(3.0)
                after = sample()
                peak = max(v for t, v in samples if t >= t0)
                results["rounds"].append(
                    {
                        "outcome": outcome,
                        "peak_rss_mib": round(peak, 1),
                        "rss_after_mib": round(after, 1),
                    }
                )
                print(json.dumps(results["rounds"][-1]), flush=True)

        uvloop.run(run_all())
        base = results["baseline_rss_mib"]
        last = results["rounds"][-1]["rss_after_mib"]
        results["after_over_baseline"] = round(last / base, 3) if base else None
    finally:
        server.stop()
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


async def _sample_every(sample: Any, seconds: float) -> None:
    while True:
        sample()
        await asyncio.sleep(seconds)


if __name__ == "__main__":
    sys.exit(main())
