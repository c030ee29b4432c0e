"""Poison inputs under load: does normal traffic keep its answers while a client
sends an input that makes the model process exit, every two seconds?

    .venv/bin/python -m bench.poison                       # 60 s, the same poison input
    .venv/bin/python -m bench.poison --poison distinct     # a new poison input each time
    .venv/bin/python -m bench.poison --replicas 2 --json out.json
    .venv/bin/python -m bench.poison --poison distinct --standby off   # cold restarts only

What it does, all on loopback:

1. starts ``clipper serve`` (a real process) and deploys a model of known cost
   (``base + per_item * n`` seconds per batch of ``n``) that calls ``os._exit(1)``
   on any batch holding a negative input, and answers ``2 * x`` otherwise; fixed
   batch size, cache off;
2. measures its capacity C with a short closed-loop run;
3. offers normal inputs (``x >= 0``) as Poisson arrivals at ``load * C`` for
   ``duration`` seconds (open loop), and one poison input every ``poison_every``
   seconds: the same one each time (``--poison same``: the server should remember
   it) or a new one each time (``--poison distinct``: each must be isolated anew).

It prints (and with ``--json`` writes) the share of normal requests answered
correctly (200, not the default output, ``output == 2 * x``: the acceptance figure
is >= 95% with the same poison every 2 s), what the others got, what the poison
requests got, and the replica restarts and the server's isolation counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.overload import (
    REQUEST_TIMEOUT,
    Pool,
    Server,
    deploy_behind_app,
    measure_capacity,
    percentile,
    request,
)

REPO = Path(__file__).resolve().parent.parent


def make_model(base: float, per_item: float) -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        if any(float(x[0]) < 0 for x in inputs):
            os._exit(1)
        time.sleep(base + per_item * len(inputs))
        return [2.0 * float(x[0]) for x in inputs]

    return predict


def _outcome(status: int, body: dict[str, Any] | None, expected: float | None) -> str:
    if status != 200 or body is None:
        kind = body.get("error") if isinstance(body, dict) else None
        return f"{status} {kind}" if kind else str(status)
    if body.get("default"):
        why = str(body.get("default_explanation", ""))
        return "default: " + ("crash" if "went away" in why else why.split("(")[0].strip())
    if expected is not None and body.get("output") != expected:
        return "wrong output"
    return "correct"


async def run_load(
    port: int, app: str, rate: float, duration: float, poison_every: float, distinct: bool
) -> dict[str, Any]:
    normal: Counter[str] = Counter()
    poison: Counter[str] = Counter()
    latency: list[float] = []
    pool = Pool(port, 512)
    poison_pool = Pool(port, 64)
    loop = asyncio.get_running_loop()
    rng = random.Random(11)
    tasks: set[asyncio.Task[None]] = set()
    t0 = loop.time()

    async def one(x: float) -> None:
        started = loop.time()
        try:
            status, body = await request(pool, app, x, None)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            normal[type(exc).__name__] += 1
            return
        if status < 0:
            normal["client bound"] += 1
            return
        kind = _outcome(status, body, 2.0 * x)
        normal[kind] += 1
        if kind == "correct":
            latency.append(loop.time() - started)

    async def poisoner() -> None:
        k = 0
        while loop.time() - t0 < duration:
            value = -1.0 - k if distinct else -1.0
            k += 1
            task = loop.create_task(send_poison(value))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(poison_every)

    async def send_poison(value: float) -> None:
        try:
            status, body = await request(poison_pool, app, value, None)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            poison[type(exc).__name__] += 1
            return
        poison[_outcome(status, body, None)] += 1

    poisoning = loop.create_task(poisoner())
    next_at, i = t0, 0
    while True:
        next_at += rng.expovariate(rate)
        if next_at - t0 >= duration:
            break
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(float(i)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await poisoning
    if tasks:
        await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT + 5)
    for p in (pool, poison_pool):
        for _, writer in p.idle:
            writer.close()
    sent = sum(normal.values())
    return {
        "normal_sent": sent,
        "normal_correct": normal["correct"],
        "normal_correct_share": round(normal["correct"] / sent, 4) if sent else None,
        "normal_outcomes": dict(normal.most_common()),
        "normal_correct_latency_ms": {
            q: None if (v := percentile(latency, p)) is None else round(v * 1000, 1)
            for q, p in (("p50", 50), ("p99", 99), ("max", 100))
        },
        "poison_sent": sum(poison.values()),
        "poison_outcomes": dict(poison.most_common()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--poison-every", type=float, default=2.0, help="seconds between")
    parser.add_argument("--poison", choices=("same", "distinct"), default="same")
    parser.add_argument("--load", type=float, default=0.5, help="normal load / capacity")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--slo-ms", type=float, default=100.0, help="the app's objective")
    parser.add_argument("--base-ms", type=float, default=5.0, help="model cost per batch")
    parser.add_argument("--per-item-ms", type=float, default=1.0, help="model cost per input")
    parser.add_argument("--batch-size", type=int, default=8, help="fixed batch size")
    parser.add_argument(
        "--standby",
        choices=("after-crash", "always", "off"),
        default="after-crash",
        help="server: when to keep a warm standby process (off: cold restarts only)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    state = Path(tempfile.mkdtemp(prefix="clipper-poison-"))
    server = Server(state, ["--standby", args.standby])
    try:
        conn = deploy_behind_app(
            server,
            state,
            "psn",
            make_model(args.base_ms / 1000, args.per_item_ms / 1000),
            slo_ms=args.slo_ms,
            batch_size=args.batch_size,
            replicas=args.replicas,
        )
        capacity = asyncio.run(
            measure_capacity(server.query_port, "psn", 5.0, concurrency=args.batch_size * 3)
        )
        rate = args.load * capacity
        print(
            f"capacity: {capacity:.0f} answers/s; offering {rate:.0f}/s of normal inputs and"
            f" one {args.poison} poison input every {args.poison_every:g} s for"
            f" {args.duration:g} s ({args.replicas} replica(s))",
            flush=True,
        )
        result = asyncio.run(
            run_load(
                server.query_port,
                "psn",
                rate,
                args.duration,
                args.poison_every,
                args.poison == "distinct",
            )
        )
        state_after = conn.get_state()
    finally:
        server.stop()

    model = next((m for m in state_after.get("models", []) if m.get("model") == "psn"), {})
    summary: dict[str, Any] = {
        "capacity_per_s": round(capacity, 1),
        "normal_rate_per_s": round(rate, 1),
        **result,
        "replica_restarts": sum(r.get("restarts", 0) for r in state_after.get("replicas", [])),
        "isolated_inputs": model.get("isolated_inputs"),
        "poison_refused": model.get("poison_refused"),
        "poison": args.poison,
        "poison_every_s": args.poison_every,
        "replicas": args.replicas,
        "standby": args.standby,
        "slo_ms": args.slo_ms,
        "duration_s": args.duration,
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
