"""HTTP/1.1 load: a bare ``asyncio.Protocol`` client with httptools' response
parser and pre-built request bytes, driven closed loop or open loop."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.load.common import (
    ERR_CONNECT,
    ERR_PARSE,
    ERR_RESET,
    ERR_TIMEOUT,
    ERR_UNFINISHED,
    LoadRun,
    _now,
)
from bench.payloads import DEFAULT_MARKERS_JSON


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


class HttpClosedLoop:
    """``concurrency`` clients, one connection each, back to back."""

    def __init__(self, run: LoadRun, host: str, port: int, concurrency: int) -> None:
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


async def _supervise(run: LoadRun, busy: Callable[[], list[HttpConnection]]) -> None:
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


def _expire(run: LoadRun, conns: list[HttpConnection]) -> None:
    now = _now()
    for conn in conns:
        if now - conn.sent_at > run.timeout:
            conn.abort(ERR_TIMEOUT)


class HttpOpenLoop:
    """Requests at scheduled times on a pool of keep-alive connections."""

    def __init__(
        self,
        run: LoadRun,
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
