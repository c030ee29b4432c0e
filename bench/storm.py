"""Overload storms: is useful work kept up far past capacity, are refusals fast,
and is the server back to normal at once when the storm ends?

    .venv/bin/python -m bench.storm                      # every scenario, 10 s each
    .venv/bin/python -m bench.storm --scenario open10x --duration 20 --json out.json

Scenarios (all on loopback, against a real ``clipper serve`` and model process):

``open10x``
    Poisson arrivals at 10x the measured capacity, open loop (never waiting for
    answers before sending), for ``--duration`` seconds.
``closed1000``
    1,000 closed-loop clients, each on its own connection, that resend the moment
    they are answered -- a 503 included -- for ``--duration`` seconds.
``below``
    Open loop at 0.9x the capacity (``--below-factor``): what share of requests
    is refused when the server is not overloaded.

The model costs ``base + per_item * n`` seconds per batch of ``n`` with an
adaptive batch size (AIMD) under a 100 ms app SLO; cache off.  Capacity C is
measured first: answers by the model per second with 64 closed-loop clients.
After each storm, 0.5x C is offered for 3 s; "recovery" is how long after the
storm's end requests were still refused or answered late.

Reported per scenario: goodput (answers by the model within the 100 ms SLO per
second, from the storm's second second to its end) and its share of C, and the
model's answers per second of any latency beside it; the 503s' latency
percentiles (as the client saw them, so they include the client's own lag on a
shared machine: ``client_loop_lag_ms`` says how large it was, and
``client_cpu_s_per_s`` whether the client saturated its core); the admitted
requests' latency; the controller's batch size during the storm (sampled from
``GET /metrics``); recovery; the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

from bench.overload import Server, make_model, percentile
from bench.serverproc import cpu_seconds
from bench.storm_client import Tally, closed_loop, open_loop

SLO_MS = 100.0
TAIL_SECONDS = 3.0
TAIL_FACTOR = 0.5


class BatchSampler:
    """The controller's batch size (and queue) from ``GET /metrics`` every 0.25 s."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    state = json.loads(resp.read())
                m = state["models"][0]
                queue = m.get("queue", {})
                self.samples.append(
                    (time.monotonic(), int(m["batch_size"]), int(queue.get("len", 0)))
                )
            except Exception:
                pass
            self._stop.wait(0.25)

    def __enter__(self) -> BatchSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, start: float, end: float) -> list[int]:
        return [b for t, b, _ in self.samples if start <= t <= end]

    def queue_between(self, start: float, end: float) -> list[int]:
        return [q for t, _, q in self.samples if start <= t <= end]


def _ms(values: list[float], q: float) -> float | None:
    v = percentile(values, q)
    return None if v is None else round(v * 1000, 2)


def summarize(
    tally: Tally,
    t0: float,
    duration: float,
    capacity: float,
) -> dict[str, Any]:
    storm_end = t0 + duration
    storm = [r for r in tally.records if r[0] < storm_end]
    tail = [r for r in tally.records if r[0] >= storm_end]
    answers = [
        r for r in storm if r[2] == 200 and not r[3] and t0 + 1.0 <= r[0] + r[1] <= storm_end
    ]
    # Goodput: the model's answers within the SLO (an answer past it is useless
    # to its client); the model's answers of any latency are reported beside it.
    good = [r for r in answers if r[1] * 1000 <= SLO_MS]
    goodput = len(good) / max(duration - 1.0, 1e-9)
    refused = [r for r in storm if r[2] in (429, 503)]
    admitted = [r for r in storm if r[2] == 200]
    # Admitted but useless: answered past the SLO, or with the app's default.
    late_admitted = sum(1 for r in admitted if r[3] or r[1] * 1000 > SLO_MS)
    late = [r for r in tail if r[2] != 200 or r[3] or r[1] * 1000 > SLO_MS]
    recovery = max((r[0] - storm_end for r in late), default=0.0)
    statuses: dict[int, int] = {}
    for r in tally.records:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    return {
        "sent_during_storm": len(storm),
        "offered_per_s": round(len(storm) / duration, 1),
        "statuses": statuses,
        "client_errors": tally.errors,
        "client_skipped": tally.skipped,
        "client_pipelined": tally.pipelined,
        "refusals_without_retry_after": tally.retry_after_missing,
        "goodput_per_s": round(goodput, 1),
        "goodput_share_of_capacity": round(goodput / capacity, 3) if capacity else None,
        "answers_per_s": round(len(answers) / max(duration - 1.0, 1e-9), 1),
        "refused_share": round(len(refused) / len(storm), 5) if storm else None,
        "refusal_latency_ms": {
            "p50": _ms([r[1] for r in refused], 50),
            "p99": _ms([r[1] for r in refused], 99),
            "max": _ms([r[1] for r in refused], 100),
        },
        "admitted_latency_ms": {
            "p50": _ms([r[1] for r in admitted], 50),
            "p99": _ms([r[1] for r in admitted], 99),
        },
        "admitted_default_outputs": sum(1 for r in admitted if r[3]),
        "admitted_late_share": round(late_admitted / len(storm), 5) if storm else None,
        "refused_or_late_share": (
            round((len(refused) + late_admitted) / len(storm), 5) if storm else None
        ),
        "tail_requests": len(tail),
        "tail_not_normal": len(late),
        "recovery_s": round(recovery, 3),
    }


async def _with_tail(
    storm: Any, port: int, app: str, duration: float, capacity: float, tally: Tally
) -> None:
    async def tail() -> None:
        await asyncio.sleep(duration)
        await open_loop(
            port, app, TAIL_FACTOR * capacity, TAIL_SECONDS, connections=32, tally=tally, seed=11
        )

    await asyncio.gather(storm, tail())


def run_scenario(
    name: str,
    port: int,
    app: str,
    duration: float,
    capacity: float,
    server_pid: int,
    sampler: BatchSampler,
    below_factor: float = 0.9,
) -> dict[str, Any]:
    tally = Tally()
    cpu0 = cpu_seconds(server_pid) or 0.0
    lags: list[float] = []

    async def watch_lag() -> None:
        # The client's own loop lag: how late a 1 ms sleep wakes.  A client
        # descheduled or saturated on a shared machine delays every answer it
        # records; this says by how much.
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    async def go() -> float:
        watcher = asyncio.get_running_loop().create_task(watch_lag())
        t0 = time.perf_counter()  # the clients' clock (bench.storm_client)
        if name == "open10x":
            storm = open_loop(port, app, 10 * capacity, duration, connections=256, tally=tally)
            await _with_tail(storm, port, app, duration, capacity, tally)
        elif name == "closed1000":
            storm = closed_loop(port, app, 1000, duration, tally=tally)
            await _with_tail(storm, port, app, duration, capacity, tally)
        elif name == "below":
            rate = below_factor * capacity
            await open_loop(port, app, rate, duration, connections=64, tally=tally)
        else:
            raise SystemExit(f"unknown scenario {name!r}")
        watcher.cancel()
        return t0

    wall0 = time.monotonic()
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = uvloop.run(go())
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    out = summarize(tally, t0, duration, capacity)
    out["client_cpu_s_per_s"] = round(
        (client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime)
        / max(time.monotonic() - wall0, 1e-9),
        2,
    )
    out["server_cpu_s_per_s"] = round(
        ((cpu_seconds(server_pid) or 0.0) - cpu0) / max(time.monotonic() - wall0, 1e-9), 2
    )
    out["client_loop_lag_ms"] = {"p99": _ms(lags, 99), "max": _ms(lags, 100)}
    sizes = sampler.between(wall0 + 1.0, wall0 + duration)
    out["batch_size_during_storm"] = {
        "min": min(sizes, default=None),
        "median": sorted(sizes)[len(sizes) // 2] if sizes else None,
        "max": max(sizes, default=None),
    }
    queued = sampler.queue_between(wall0 + 1.0, wall0 + duration)
    out["queue_len_during_storm"] = {
        "median": sorted(queued)[len(queued) // 2] if queued else None,
        "max": max(queued, default=None),
    }
    return out


def measure_capacity(port: int, app: str, seconds: float = 5.0) -> float:
    tally = Tally()

    async def go() -> float:
        await closed_loop(port, app, 16, 1.0, tally=Tally())  # warm the controller up
        t0 = time.perf_counter()
        await closed_loop(port, app, 64, seconds, tally=tally)
        return t0

    t0 = uvloop.run(go())
    good = [r for r in tally.records if r[2] == 200 and not r[3] and r[0] + r[1] <= t0 + seconds]
    return len(good) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["open10x", "closed1000", "below"],
        help="run only these (repeatable); default: all three",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of storm")
    parser.add_argument("--base-ms", type=float, default=10.0, help="model cost per batch")
    parser.add_argument("--per-item-ms", type=float, default=2.0, help="model cost per input")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for clipper serve (repeatable)",
    )
    parser.add_argument(
        "--capacity",
        type=float,
        help="answers/s to take as C instead of measuring it (with --no-admission the"
        " 64 closed-loop clients get mostly late default outputs: C is measured with"
        " admission on)",
    )
    parser.add_argument(
        "--below-factor",
        type=float,
        default=0.9,
        help="the load of scenario below, as a share of C (default 0.9)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if not 0 < args.below_factor <= 1:
        parser.error("--below-factor must be in (0, 1]")
    scenarios = args.scenario or ["below", "open10x", "closed1000"]

    from clipper_core.connection import ClipperConnection, LocalContainerManager

    state = Path(tempfile.mkdtemp(prefix="clipper-storm-"))
    server = Server(state, list(args.server_arg))
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "model_ms": f"{args.base_ms:g} + {args.per_item_ms:g} * n (adaptive batch)",
        "slo_ms": SLO_MS,
        "duration_s": args.duration,
        "below_factor": args.below_factor,
    }
    try:
        conn = ClipperConnection(
            LocalContainerManager(
                "127.0.0.1", server.query_port, server.management_port, str(state)
            )
        )
        conn.register_application("storm", "doubles", "-1", int(SLO_MS * 1000))
        conn.deploy_pickled(
            "storm",
            1,
            "doubles",
            make_model(args.base_ms / 1000, args.per_item_ms / 1000),
            cache_enabled=False,
        )
        conn.link_model_to_app("storm", "storm")
        with BatchSampler(server.query_port) as sampler:
            if args.capacity:
                uvloop.run(closed_loop(server.query_port, "storm", 16, 1.0, tally=Tally()))
                capacity = args.capacity
            else:
                capacity = measure_capacity(server.query_port, "storm")
            results["capacity_per_s"] = round(capacity, 1)
            print(f"capacity: {capacity:.0f} answers/s", flush=True)
            for name in scenarios:
                time.sleep(2.0)  # let the previous storm's tail settle
                res = run_scenario(
                    name,
                    server.query_port,
                    "storm",
                    args.duration,
                    capacity,
                    server.pid,
                    sampler,
                    args.below_factor,
                )
                results[name] = res
                print(name, json.dumps(res), flush=True)
    finally:
        server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
