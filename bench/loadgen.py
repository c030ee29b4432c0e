"""Load generators on uvloop: closed loop and open loop, over HTTP/1.1 or gRPC.

Each generator runs in a worker process of its own (``run_workers``), apart from
the server and from the orchestrator that polls the server's metrics.

* **closed loop**: ``concurrency`` clients, each with one keep-alive connection,
  send the next request as soon as the previous answer arrives.  Latency is
  measured from the send.
* **open loop**: requests are *scheduled* ahead of time (Poisson arrivals at
  ``rate``, or Poisson bursts of ``burst_size`` simultaneous requests) and sent on
  any idle keep-alive connection of a pool, which grows up to
  ``max_connections``.  Latency is measured from the **scheduled** time, so a slow
  server (or a late generator) cannot hide its queueing delay (no coordinated
  omission); how late the sends were is reported separately as ``lag``.

The HTTP client is a bare ``asyncio.Protocol`` with httptools' response parser and
pre-built request bytes: per request it writes one buffer, parses one response and
appends four numbers.  The gRPC client sends pre-serialized bytes with identity
serializers on ``grpc.aio`` channels.

Every run is bounded in time (``duration_s`` after ``warmup_s``) and optionally in
count (``max_requests``); every request has a timeout.  Loopback only.

Result codes: an HTTP status (200 is success; gRPC OK is also recorded as 200), or
a negative code for a failure without a status (see ``ERROR_KINDS``; a gRPC status
``s`` is ``-100 - s``).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import socket
import time
import traceback
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.payloads import DEFAULT_MARKER_GRPC, DEFAULT_MARKERS_JSON

ERR_CONNECT = -1
ERR_RESET = -2
ERR_TIMEOUT = -3
ERR_PARSE = -4
ERR_UNFINISHED = -5
ERROR_KINDS = {
    ERR_CONNECT: "connect",
    ERR_RESET: "connection_closed",
    ERR_TIMEOUT: "timeout",
    ERR_PARSE: "bad_response",
    ERR_UNFINISHED: "unfinished",
}
GRPC_BASE = -100


_now = time.monotonic


def error_kind(code: int) -> str:
    """A readable name for a result code that is not 200."""
    if code > 0:
        return f"http_{code}"
    if code <= GRPC_BASE:
        import grpc

        value = GRPC_BASE - code
        for sc in grpc.StatusCode:
            if sc.value[0] == value:
                return f"grpc_{sc.name}"
        return f"grpc_{value}"
    return ERROR_KINDS.get(code, f"error_{code}")


# -- schedules ---------------------------------------------------------------------


def arrival_times(
    mode: str, rate: float, horizon: float, *, burst_size: int = 1, seed: int = 0
) -> np.ndarray[Any, Any]:
    """Send times (seconds from the start) over ``[0, horizon)``.

    ``open``: a Poisson process of the given rate.  ``burst``: Poisson arrivals of
    bursts at ``rate / burst_size``, each ``burst_size`` requests at one instant
    (the same mean rate, far burstier).
    """
    rng = np.random.default_rng(seed)
    if mode == "burst":
        times = arrival_times("open", rate / burst_size, horizon, seed=seed)
        return np.repeat(times, burst_size)
    if mode != "open":
        raise ValueError(f"no schedule for mode {mode!r}")
    expected = rate * horizon
    n = int(expected + 6 * math.sqrt(expected) + 16)
    gaps = rng.exponential(1.0 / rate, n)
    times = np.cumsum(gaps) - gaps[0]
    while times[-1] < horizon:  # pragma: no cover - 6 sigma
        more = np.cumsum(rng.exponential(1.0 / rate, n)) + times[-1]
        times = np.concatenate([times, more])
    return times[times < horizon]


def payload_order(
    distribution: str, distinct: int, count: int, *, zipf_s: float = 1.1, seed: int = 0
) -> np.ndarray[Any, Any]:
    """Which payload each request sends: round robin, or Zipf(s) over the payloads
    (the most popular payload is a random one, not always the first)."""
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        return (np.arange(count) + int(rng.integers(distinct))) % distinct
    if distribution == "zipf":
        ranks = np.arange(1, distinct + 1, dtype=np.float64)
        p = ranks**-zipf_s
        p /= p.sum()
        perm = rng.permutation(distinct)
        return perm[rng.choice(distinct, size=count, p=p)]
    raise ValueError(f"unknown distribution {distribution!r}")


# -- recording ---------------------------------------------------------------------


class Recorder:
    """Per-request figures, appended as they complete (array appends: cheap)."""

    __slots__ = ("code", "default", "lag", "t0", "t1")

    def __init__(self) -> None:
        self.t0 = array("d")  # latency origin: the send (closed) or the schedule (open)
        self.t1 = array("d")  # completion
        self.code = array("i")
        self.default = array("b")
        self.lag = array("d")  # open loop: actual send - scheduled send

    def add(self, t0: float, t1: float, code: int, default: bool) -> None:
        self.t0.append(t0)
        self.t1.append(t1)
        self.code.append(code)
        self.default.append(default)

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        return {
            "t0": np.frombuffer(self.t0, dtype=np.float64).copy(),
            "t1": np.frombuffer(self.t1, dtype=np.float64).copy(),
            "code": np.frombuffer(self.code, dtype=np.int32).copy(),
            "default": np.frombuffer(self.default, dtype=np.int8).astype(bool),
            "lag": np.frombuffer(self.lag, dtype=np.float64).copy(),
        }


# -- HTTP/1.1 ----------------------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, on_lost: Callable[[HttpConnection], None] | None = None) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self._parser_error = httptools.HttpParserError
        self._body: list[bytes] = []
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.callback: Callable[[HttpConnection, int, bool], None] | None = None
        self.t0 = 0.0  # the in-flight request's latency origin
        self.sent_at = 0.0
        self.closed = False
        self.last_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def send(
        self, data: bytes, t0: float, callback: Callable[[HttpConnection, int, bool], None]
    ) -> None:
        self.callback = callback
        self.t0 = t0
        self.sent_at = _now()
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._parser_error:
            self.abort(ERR_PARSE)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._body = []
        self.last_body = body
        default = DEFAULT_MARKERS_JSON[0] in body or DEFAULT_MARKERS_JSON[1] in body
        status = self._parser.get_status_code()
        if not self._parser.should_keep_alive():
            # "Connection: close": the callback must reconnect, not reuse this one.
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        cb = self.callback
        self.callback = None
        if cb is not None:
            cb(self, status, default)

    def abort(self, code: int) -> None:
        """Fail the in-flight request with ``code`` and drop the connection."""
        cb = self.callback
        self.callback = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if cb is not None:
            cb(self, code, False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        cb = self.callback
        self.callback = None
        if cb is not None:
            cb(self, ERR_RESET, False)
        if self._on_lost is not None:
            self._on_lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def http_connect(
    host: str, port: int, on_lost: Callable[[HttpConnection], None] | None = None
) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: HttpConnection(on_lost), host, port)
    return proto


async def http_exchange(
    conn: HttpConnection, data: bytes, wait_s: float = 10.0
) -> tuple[int, bytes]:
    """Send one request on ``conn`` and wait for the answer (setup and probes only)."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def done(c: HttpConnection, code: int, default: bool) -> None:
        if not fut.done():
            fut.set_result(code)

    conn.send(data, _now(), done)
    code = await asyncio.wait_for(fut, wait_s)
    return code, conn.last_body


class _Run:
    """State shared by the clients of one worker's run."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rec = Recorder()
        self.payloads: list[bytes] = spec["payloads"]
        self.order: np.ndarray[Any, Any] = spec["order"]
        self.order_list: list[int] = self.order.tolist()
        self.next_index = 0
        self.max_requests: int = spec.get("max_requests", 0) or 1 << 62
        self.sent = 0
        self.timeout: float = spec["timeout_s"]
        self.stop_at = math.inf
        self.in_flight = 0
        self.idle_event: asyncio.Event | None = None

    def next_payload(self) -> bytes:
        i = self.next_index
        self.next_index = i + 1
        order = self.order_list
        return self.payloads[order[i % len(order)]]

    def note_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.idle_event is not None:
            self.idle_event.set()


class HttpClosedLoop:
    """``concurrency`` clients, one connection each, back to back."""

    def __init__(self, run: _Run, host: str, port: int, concurrency: int) -> None:
        self.run = run
        self.host = host
        self.port = port
        self.concurrency = concurrency
        self.conns: list[HttpConnection] = []
        self.stopping = False

    async def prepare(self) -> None:
        self.conns = [await http_connect(self.host, self.port) for _ in range(self.concurrency)]

    def _send(self, conn: HttpConnection) -> None:
        run = self.run
        if self.stopping or run.sent >= run.max_requests or _now() >= run.stop_at:
            return
        run.sent += 1
        run.in_flight += 1
        conn.send(run.next_payload(), _now(), self._done)

    def _done(self, conn: HttpConnection, code: int, default: bool) -> None:
        run = self.run
        run.rec.add(conn.t0, _now(), code, default)
        run.note_done()
        if conn.closed:
            if not self.stopping:
                asyncio.get_running_loop().create_task(self._reconnect(conn))
            return
        self._send(conn)

    async def _reconnect(self, old: HttpConnection) -> None:
        while not self.stopping and _now() < self.run.stop_at:
            try:
                conn = await http_connect(self.host, self.port)
            except OSError:
                self.run.rec.add(_now(), _now(), ERR_CONNECT, False)
                await asyncio.sleep(0.01)
                continue
            self.conns[self.conns.index(old)] = conn
            self._send(conn)
            return

    async def go(self, start: float, horizon: float) -> None:
        run = self.run
        run.stop_at = start + horizon
        run.idle_event = asyncio.Event()
        for conn in self.conns:
            self._send(conn)
        await _supervise(run, self.conns_in_flight)
        self.stopping = True

    def conns_in_flight(self) -> list[HttpConnection]:
        return [c for c in self.conns if c.callback is not None]

    def close(self) -> None:
        self.stopping = True
        for c in self.conns:
            c.close()


async def _supervise(run: _Run, busy: Callable[[], list[HttpConnection]]) -> None:
    """Until the run ends: time out stuck requests; then wait for the stragglers."""
    while _now() < run.stop_at and run.sent < run.max_requests:
        await asyncio.sleep(0.05)
        _expire(run, busy())
    end = _now() + run.timeout + 0.5
    assert run.idle_event is not None
    while run.in_flight > 0 and _now() < end:
        run.idle_event.clear()
        try:
            await asyncio.wait_for(run.idle_event.wait(), 0.05)
        except TimeoutError:
            pass
        _expire(run, busy())
    for conn in busy():
        conn.abort(ERR_UNFINISHED)


def _expire(run: _Run, conns: list[HttpConnection]) -> None:
    now = _now()
    for conn in conns:
        if now - conn.sent_at > run.timeout:
            conn.abort(ERR_TIMEOUT)


class HttpOpenLoop:
    """Requests at scheduled times on a pool of keep-alive connections."""

    def __init__(
        self,
        run: _Run,
        host: str,
        port: int,
        schedule: np.ndarray[Any, Any],
        *,
        initial_connections: int,
        max_connections: int,
        spin: bool,
    ) -> None:
        self.run = run
        self.host = host
        self.port = port
        self.schedule = schedule
        self.initial = max(1, min(initial_connections, max_connections))
        self.max_connections = max_connections
        self.spin = spin
        self.idle: list[HttpConnection] = []
        self.all: set[HttpConnection] = set()
        self.opening = 0
        self.backlog: deque[float] = deque()  # scheduled times waiting for a connection
        self.stopping = False
        self.max_backlog = 0

    async def prepare(self) -> None:
        conns = await asyncio.gather(
            *(http_connect(self.host, self.port, self._lost) for _ in range(self.initial))
        )
        self.idle = list(conns)
        self.all = set(conns)

    def _lost(self, conn: HttpConnection) -> None:
        self.all.discard(conn)

    def _fire(self, t_sched: float) -> None:
        run = self.run
        run.sent += 1
        run.in_flight += 1
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:  # the server closed it while idle
                continue
            run.rec.lag.append(_now() - t_sched)
            conn.send(run.next_payload(), t_sched, self._done)
            return
        self.backlog.append(t_sched)
        if len(self.backlog) > self.max_backlog:
            self.max_backlog = len(self.backlog)
        if len(self.all) + self.opening < self.max_connections:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            conn = await http_connect(self.host, self.port, self._lost)
        except OSError:
            if self.backlog:
                t_sched = self.backlog.popleft()
                self.run.rec.add(t_sched, _now(), ERR_CONNECT, False)
                self.run.note_done()
            return
        finally:
            self.opening -= 1
        self.all.add(conn)
        self._release(conn)

    def _release(self, conn: HttpConnection) -> None:
        if self.backlog:
            t_sched = self.backlog.popleft()
            self.run.rec.lag.append(_now() - t_sched)
            conn.send(self.run.next_payload(), t_sched, self._done)
        else:
            self.idle.append(conn)

    def _done(self, conn: HttpConnection, code: int, default: bool) -> None:
        run = self.run
        run.rec.add(conn.t0, _now(), code, default)
        run.note_done()
        if conn.closed:
            self.all.discard(conn)
            if self.backlog and not self.stopping:
                self.opening += 1
                asyncio.get_running_loop().create_task(self._open())
            return
        self._release(conn)

    async def go(self, start: float, horizon: float) -> None:
        run = self.run
        run.stop_at = start + horizon
        run.idle_event = asyncio.Event()
        sched = (self.schedule + start).tolist()
        limit = min(len(sched), run.max_requests)
        supervisor = asyncio.get_running_loop().create_task(
            _supervise(run, lambda: [c for c in self.all if c.callback is not None])
        )
        i = 0
        now = _now
        while i < limit:
            t = now()
            while i < limit and sched[i] <= t:
                self._fire(sched[i])
                i += 1
            if i >= limit:
                break
            delay = sched[i] - now()
            if delay <= 0:
                continue
            if self.spin:
                # uvloop's timers tick in milliseconds: sleep the coarse part, then
                # yield to the loop (which still serves I/O) until the send is due.
                await asyncio.sleep(delay - 0.0015 if delay > 0.002 else 0)
            else:
                await asyncio.sleep(delay)
        run.stop_at = min(run.stop_at, now())
        await supervisor
        # Whatever still waits for a connection never got one.
        while self.backlog:
            t_sched = self.backlog.popleft()
            run.rec.add(t_sched, now(), ERR_UNFINISHED, False)
        self.stopping = True

    def close(self) -> None:
        self.stopping = True
        for c in list(self.all):
            c.close()


# -- gRPC --------------------------------------------------------------------------


class GrpcLoad:
    """Closed or open loop over ``grpc.aio`` channels, raw bytes in and out."""

    def __init__(
        self,
        run: _Run,
        host: str,
        port: int,
        method: str,
        *,
        channels: int,
        concurrency: int,
        schedule: np.ndarray[Any, Any] | None,
        spin: bool,
    ) -> None:
        self.run = run
        self.target = f"{host}:{port}"
        self.method_name = method
        self.n_channels = max(1, channels)
        self.concurrency = concurrency
        self.schedule = schedule
        self.spin = spin
        self.channels: list[Any] = []
        self.methods: list[Any] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def prepare(self) -> None:
        import grpc

        for _ in range(self.n_channels):
            ch = grpc.aio.insecure_channel(
                self.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            await asyncio.wait_for(ch.channel_ready(), 30)
            self.channels.append(ch)
            self.methods.append(ch.unary_unary(self.method_name))

    async def _one(self, method: Any, t0: float) -> None:
        import grpc

        run = self.run
        try:
            resp = await method(run.next_payload(), timeout=run.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                run.rec.add(t0, _now(), ERR_TIMEOUT, False)
            else:
                run.rec.add(t0, _now(), GRPC_BASE - code.value[0], False)
        else:
            run.rec.add(t0, _now(), 200, DEFAULT_MARKER_GRPC in resp)
        finally:
            run.note_done()

    async def _client(self, i: int) -> None:
        run = self.run
        method = self.methods[i % len(self.methods)]
        while run.sent < run.max_requests and _now() < run.stop_at:
            run.sent += 1
            run.in_flight += 1
            await self._one(method, _now())

    async def go(self, start: float, horizon: float) -> None:
        run = self.run
        run.stop_at = start + horizon
        run.idle_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        if self.schedule is None:
            clients = [loop.create_task(self._client(i)) for i in range(self.concurrency)]
            _, pending = await asyncio.wait(clients, timeout=horizon + run.timeout + 1)
            for t in pending:
                t.cancel()
            return
        sched = (self.schedule + start).tolist()
        limit = min(len(sched), run.max_requests)
        i = 0
        k = 0
        while i < limit:
            t = _now()
            while i < limit and sched[i] <= t:
                run.sent += 1
                run.in_flight += 1
                run.rec.lag.append(_now() - sched[i])
                task = loop.create_task(self._one(self.methods[k % len(self.methods)], sched[i]))
                k += 1
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                i += 1
            if i >= limit:
                break
            delay = sched[i] - _now()
            if delay <= 0:
                continue
            if self.spin:
                await asyncio.sleep(delay - 0.0015 if delay > 0.002 else 0)
            else:
                await asyncio.sleep(delay)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=run.timeout + 1)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()

    async def aclose(self) -> None:
        for ch in self.channels:
            await ch.close()


# -- one worker --------------------------------------------------------------------


def _build(spec: dict[str, Any]) -> tuple[_Run, Any]:
    run = _Run(spec)
    mode = spec["mode"]
    schedule = None
    if mode != "closed":
        schedule = spec["schedule"]
    host, port = spec["host"], spec["port"]
    if spec["protocol"] == "oip-grpc":
        channels = spec.get("grpc_channels") or min(spec["concurrency"], 4)
        gen: Any = GrpcLoad(
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
