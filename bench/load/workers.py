"""One worker's run (``run_load``), the worker processes that run them together
(``run_workers``), and the merge of their records."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.load.common import LoadRun, _now
from bench.load.grpc import GrpcLoad
from bench.load.grpc_h2 import H2GrpcLoad
from bench.load.http import HttpClosedLoop, HttpOpenLoop


def _build(spec: dict[str, Any]) -> tuple[LoadRun, Any]:
    run = LoadRun(spec)
    mode = spec["mode"]
    schedule = None
    if mode != "closed":
        schedule = spec["schedule"]
    host, port = spec["host"], spec["port"]
    if spec["protocol"] == "oip-grpc" and spec.get("grpc_client") == "h2":
        if mode != "closed":
            raise ValueError("--grpc-client h2 runs the closed loop only")
        gen: Any = H2GrpcLoad(
            run,
            host,
            port,
            spec["grpc_method"],
            channels=spec.get("grpc_channels") or min(spec["concurrency"], 4),
            concurrency=spec["concurrency"],
        )
    elif spec["protocol"] == "oip-grpc":
        channels = spec.get("grpc_channels") or min(spec["concurrency"], 4)
        gen = GrpcLoad(
            run,
            host,
            port,
            spec["grpc_method"],
            channels=channels,
            concurrency=spec["concurrency"],
            schedule=schedule,
            spin=spec["spin"],
        )
    elif mode == "closed":
        gen = HttpClosedLoop(run, host, port, spec["concurrency"])
    else:
        assert schedule is not None
        gen = HttpOpenLoop(
            run,
            host,
            port,
            schedule,
            initial_connections=spec["initial_connections"],
            max_connections=spec["max_connections"],
            spin=spec["spin"],
        )
    return run, gen


async def run_load(spec: dict[str, Any], start_at: float | None = None) -> dict[str, Any]:
    """Run one worker's share of the load in this process; return its records.

    ``start_at`` (``time.monotonic()`` value) lets several workers start together;
    by default the run starts once the connections are open.
    """
    run, gen = _build(spec)
    await gen.prepare()
    ready = spec.get("_ready")
    if ready is not None:
        start_at = await ready()
    if start_at is None:
        start_at = _now()
    delay = start_at - _now()
    if delay > 0:
        await asyncio.sleep(delay)
    start = _now()
    cpu0 = time.process_time()
    horizon = spec["warmup_s"] + spec["duration_s"]
    try:
        await gen.go(start, horizon)
    finally:
        gen.close()
        if isinstance(gen, GrpcLoad):
            await gen.aclose()
    end = _now()
    out: dict[str, Any] = run.rec.arrays()
    out.update(
        start=start,
        end=end,
        cpu_s=time.process_time() - cpu0,
        sent=run.sent,
        max_backlog=getattr(gen, "max_backlog", 0),
        connections=len(getattr(gen, "all", ())) or len(getattr(gen, "conns", ())),
        pid=os.getpid(),
    )
    return out


def _worker_main(spec: dict[str, Any], pipe: Any) -> None:
    import uvloop

    async def ready() -> float:
        pipe.send(("ready", None))
        loop = asyncio.get_running_loop()
        msg = await loop.run_in_executor(None, pipe.recv)
        return float(msg)

    try:
        spec["_ready"] = ready
        result = uvloop.run(run_load(spec))
        pipe.send(("result", result))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def run_workers(
    specs: list[dict[str, Any]],
    *,
    timeout: float,
    on_start: Callable[[float], None] | None = None,
) -> list[dict[str, Any]]:
    """Run each spec in its own process, start them together, return their records.

    ``on_start(start_at)`` learns the common start time (``time.monotonic()``)."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    pipes = []
    try:
        for spec in specs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(spec, child), daemon=True)
            p.start()
            child.close()
            procs.append(p)
            pipes.append(parent)
        for p, pipe in zip(procs, pipes, strict=True):
            if not pipe.poll(120):
                raise RuntimeError(f"load worker {p.pid} did not get ready")
            kind, payload = pipe.recv()
            if kind == "error":
                raise RuntimeError(f"load worker failed:\n{payload}")
        start_at = _now() + 0.05
        for pipe in pipes:
            pipe.send(start_at)
        if on_start is not None:
            on_start(start_at)
        results = []
        for p, pipe in zip(procs, pipes, strict=True):
            if not pipe.poll(timeout):
                raise RuntimeError(f"load worker {p.pid} did not finish in {timeout:.0f} s")
            kind, payload = pipe.recv()
            if kind == "error":
                raise RuntimeError(f"load worker failed:\n{payload}")
            results.append(payload)
        return results
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One record set from the workers' (their clocks are the same monotonic clock)."""
    keys = ("t0", "t1", "code", "default", "lag")
    out: dict[str, Any] = {k: np.concatenate([r[k] for r in results]) for k in keys}
    order = np.argsort(out["t0"], kind="stable")
    for k in ("t0", "t1", "code", "default"):
        out[k] = out[k][order]
    out["start"] = min(r["start"] for r in results)
    out["end"] = max(r["end"] for r in results)
    out["workers"] = [
        {
            "pid": r["pid"],
            "sent": r["sent"],
            "cpu_s": r["cpu_s"],
            "cpu_util": r["cpu_s"] / max(r["end"] - r["start"], 1e-9),
            "cpu_us_per_req": round(r["cpu_s"] / r["sent"] * 1e6, 1) if r["sent"] else None,
            "connections": r["connections"],
            "max_backlog": r["max_backlog"],
        }
        for r in results
    ]
    return out
