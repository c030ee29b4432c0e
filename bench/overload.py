"""Open-loop overload: does admission control keep admitted requests within the SLO,
and does memory stay flat, when clients offer twice what the model can serve?

    .venv/bin/python -m bench.overload                    # 60 s at 2x capacity
    .venv/bin/python -m bench.overload --no-admission     # the same, queueing all
    .venv/bin/python -m bench.overload --duration 20 --factor 3 --json out.json

What it does, all on loopback:

1. starts ``clipper serve`` (a real process, ports picked by the kernel) and
   deploys a model of known cost: ``base + per_item * n`` seconds per batch of
   ``n``, fixed batch size, one replica, cache off (inputs are unique anyway);
2. measures the capacity C with a short closed-loop run (answers/s, non-default);
3. offers Poisson arrivals at ``factor * C`` for ``duration`` seconds from an
   asyncio client over keep-alive connections, never waiting for answers before
   sending (open loop); every request has a 10 s timeout and the number of
   requests and connections is bounded;
4. samples the server's and the container's resident memory once a second.

It prints (and with ``--json`` writes) the offered and achieved rates; how many
requests were admitted (200) or refused (503/429, with Retry-After); the latency
percentiles of the admitted ones and how many of them got the default output
(answered at the SLO, not by the model); and the memory samples with their
least-squares slope.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT = 10.0


def make_model(base: float, per_item: float) -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        time.sleep(base + per_item * len(inputs))
        return [float(x[0]) for x in inputs]

    return predict


# -- the server process ---------------------------------------------------------------


class Server:
    def __init__(self, state_dir: Path, extra: list[str]) -> None:
        self.ready = state_dir / "ready.json"
        self.log = open(state_dir / "serve.log", "ab")
        env = {**os.environ, "CLIPPER_GRPC_PORT": "0"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clipper_core.cli",
                "serve",
                "--query-port",
                "0",
                "--management-port",
                "0",
                "--state-dir",
                str(state_dir),
                "--ready-file",
                str(self.ready),
                "--log-level",
                "error",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        end = time.monotonic() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the server did not start; see {state_dir / 'serve.log'}")
            time.sleep(0.05)
        info = json.loads(self.ready.read_text())
        self.pid = self.proc.pid
        self.query_port = int(info["query_port"])
        self.management_port = int(info["management_port"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    sxy = sum((t - mx) * (m - my) for t, m in samples)
    return 60.0 * sxy / sxx if sxx else 0.0


# -- the client -------------------------------------------------------------------------


@dataclass
class Results:
    statuses: Counter[int] = field(default_factory=Counter)
    admitted_latency: list[float] = field(default_factory=list)
    defaults: int = 0
    retry_after_missing: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    skipped: int = 0  # arrivals not sent: the client's own bound was reached


class Pool:
    """Keep-alive connections, one request at a time each; new ones on demand."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.limit = limit
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if self.idle:
            return self.idle.pop()
        if self.open >= self.limit:
            return None
        self.open += 1
        try:
            return await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.open -= 1
            raise

    def release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], ok: bool) -> None:
        if ok:
            self.idle.append(conn)
        else:
            self.open -= 1
            conn[1].close()


async def request(
    pool: Pool, app: str, value: float, res: Results | None
) -> tuple[int, dict[str, Any] | None]:
    body = orjson.dumps({"input": [value]})
    data = (
        f"POST /{app}/predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    conn = await pool.acquire()
    if conn is None:
        if res is not None:
            res.skipped += 1
        return -1, None
    reader, writer = conn
    ok = False
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value_ = line.partition(":")
            headers[name.strip().lower()] = value_.strip()
        payload = await asyncio.wait_for(
            reader.readexactly(int(headers.get("content-length", "0"))), REQUEST_TIMEOUT
        )
        ok = headers.get("connection", "").lower() != "close"
        if res is not None and status in (429, 503) and "retry-after" not in headers:
            res.retry_after_missing += 1
        return status, orjson.loads(payload) if payload else None
    finally:
        pool.release(conn, ok)


async def measure_capacity(port: int, app: str, seconds: float, concurrency: int) -> float:
    pool = Pool(port, concurrency)
    done = 0
    end = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < end:
            status, body = await request(pool, app, k * 1e6 + i, None)
            i += 1
            if status == 200 and body is not None and not body.get("default"):
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.monotonic() - started)


async def open_loop(
    port: int,
    app: str,
    rate: float,
    duration: float,
    max_in_flight: int,
    server_pids: list[int],
) -> tuple[Results, list[dict[str, Any]], float]:
    res = Results()
    pool = Pool(port, max_in_flight)
    in_flight: set[asyncio.Task[None]] = set()
    memory: list[dict[str, Any]] = []
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(i: int) -> None:
        started = loop.time()
        try:
            status, body = await request(pool, app, float(i), res)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            res.errors[type(exc).__name__] += 1
            return
        if status < 0:
            return
        res.statuses[status] += 1
        if status == 200:
            res.admitted_latency.append(loop.time() - started)
            if body is not None and body.get("default"):
                res.defaults += 1

    async def sample_memory() -> None:
        while True:
            entry: dict[str, Any] = {"t": round(loop.time() - t0, 2)}
            for name, pid in zip(("server", "container"), server_pids, strict=False):
                entry[name] = rss_mib(pid)
            entry["in_flight"] = len(in_flight)
            memory.append(entry)
            await asyncio.sleep(1.0)

    sampler = loop.create_task(sample_memory())
    next_at = t0
    i = 0
    max_requests = int(rate * duration * 1.5) + 10
    while i < max_requests:
        next_at += rng.expovariate(rate)
        if next_at - t0 >= duration:
            break
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            res.skipped += 1
        else:
            task = loop.create_task(one(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            res.sent += 1
        i += 1
    offered_for = loop.time() - t0
    if in_flight:
        await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT + 5)
    sampler.cancel()
    for _, writer in pool.idle:
        writer.close()
    return res, memory, offered_for


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


def deploy_behind_app(
    server: Server,
    state: Path,
    app: str,
    model: Any,
    *,
    slo_ms: float,
    batch_size: int,
    replicas: int = 1,
) -> Any:
    """Connect to ``server``, register ``app`` with an SLO and serve it with
    ``model`` (a closure; model name = app name, cache off); the connection."""
    from clipper_core.connection import ClipperConnection, LocalContainerManager

    conn = ClipperConnection(
        LocalContainerManager("127.0.0.1", server.query_port, server.management_port, str(state))
    )
    conn.register_application(app, "doubles", "-1", int(slo_ms * 1000))
    conn.deploy_pickled(
        app,
        1,
        "doubles",
        model,
        num_replicas=replicas,
        batch_size=batch_size,
        cache_enabled=False,
    )
    conn.link_model_to_app(app, app)
    return conn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="the app's objective")
    parser.add_argument("--base-ms", type=float, default=10.0, help="model cost per batch")
    parser.add_argument("--per-item-ms", type=float, default=2.0, help="model cost per input")
    parser.add_argument("--batch-size", type=int, default=8, help="fixed batch size")
    parser.add_argument("--max-in-flight", type=int, default=1024, help="client bound")
    parser.add_argument("--no-admission", action="store_true", help="server: no admission")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    state = Path(tempfile.mkdtemp(prefix="clipper-overload-"))
    server = Server(state, ["--no-admission"] if args.no_admission else [])
    try:
        conn = deploy_behind_app(
            server,
            state,
            "ovl",
            make_model(args.base_ms / 1000, args.per_item_ms / 1000),
            slo_ms=args.slo_ms,
            batch_size=args.batch_size,
        )
        container = next(r["pid"] for r in conn.get_state()["replicas"])
        nominal = args.batch_size / ((args.base_ms + args.per_item_ms * args.batch_size) / 1000)
        # Three batches' worth of clients: one batch at the model, a full one waiting
        # behind it (so the model never idles between batches) and one being
        # answered; any fewer and the measured capacity falls short of what the
        # model serves under open-loop overload, and the factor overstates.
        capacity = asyncio.run(
            measure_capacity(server.query_port, "ovl", 5.0, concurrency=args.batch_size * 3)
        )
        rate = args.factor * capacity
        print(
            f"capacity: {capacity:.0f} answers/s measured ({nominal:.0f}/s nominal);"
            f" offering {rate:.0f}/s open-loop for {args.duration:g} s"
            f" (admission {'off' if args.no_admission else 'on'})",
            flush=True,
        )
        res, memory, offered_for = asyncio.run(
            open_loop(
                server.query_port,
                "ovl",
                rate,
                args.duration,
                args.max_in_flight,
                [server.pid, container],
            )
        )
        state_after = conn.get_state()
    finally:
        server.stop()

    lat = res.admitted_latency
    admitted = res.statuses.get(200, 0)
    refused = res.statuses.get(503, 0) + res.statuses.get(429, 0)
    srv_mem = [(m["t"], m["server"]) for m in memory if m.get("server") is not None]
    steady = [s for s in srv_mem if s[0] >= 5.0] or srv_mem
    summary: dict[str, Any] = {
        "capacity_per_s": round(capacity, 1),
        "nominal_capacity_per_s": round(nominal, 1),
        "offered_per_s": round(res.sent / offered_for, 1) if offered_for else None,
        "sent": res.sent,
        "client_skipped": res.skipped,
        "statuses": dict(res.statuses),
        "client_errors": dict(res.errors),
        "admitted": admitted,
        "admitted_per_s": round(admitted / offered_for, 1) if offered_for else None,
        # What was offered over what the model actually served: the real factor.
        "offered_over_admitted": round(res.sent / admitted, 2) if admitted else None,
        "refused": refused,
        "refusals_without_retry_after": res.retry_after_missing,
        "admitted_default_outputs": res.defaults,
        "admitted_answered_by_model_share": round((admitted - res.defaults) / admitted, 4)
        if admitted
        else None,
        "slo_ms": args.slo_ms,
        "latency_ms": {
            q: None if (v := percentile(lat, p)) is None else round(v * 1000, 1)
            for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9), ("max", 100))
        },
        "server_rss_mib": {
            "first": round(steady[0][1], 1) if steady else None,
            "last": round(steady[-1][1], 1) if steady else None,
            "max": round(max(m for _, m in steady), 1) if steady else None,
            "slope_mib_per_min": round(slope_per_minute(steady), 2),
        },
        "container_rss_mib_last": memory[-1].get("container") if memory else None,
        "queue_after": [m.get("queue") for m in state_after.get("models", [])],
        "rejected_overload_counter": [
            m.get("rejected_overload") for m in state_after.get("models", [])
        ],
        "memory_samples": memory,
        "admission": not args.no_admission,
        "duration_s": args.duration,
        "factor": args.factor,
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    }
    printable = {k: v for k, v in summary.items() if k != "memory_samples"}
    print(json.dumps(printable, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
