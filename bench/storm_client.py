"""A lean HTTP/1.1 load client for overload storms (``bench.storm``).

A task per request (as ``bench.overload`` has) costs more CPU than the server's
refusal it measures, and on a 2-core machine the client would then be what
collapses.  Here every connection is one ``asyncio.Protocol`` that pipelines its
requests and parses the answers with ``bytes.find``; an open-loop source hands
arrivals to the connections round-robin, and a closed-loop client sends its next
request the moment an answer (of any status) arrives.

Each answer is recorded as ``(sent_at, latency, status, default)`` with
``time.perf_counter()`` (uvloop's ``loop.time()`` has millisecond resolution and
is read once per loop turn: too coarse for a refusal that takes a millisecond);
``default`` is whether a 200 carried the app's default output.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: One answer: (sent at, seconds to answer, HTTP status, default output).
Record = tuple[float, float, int, bool]


@dataclass
class Tally:
    """What the clients saw."""

    records: list[Record] = field(default_factory=list)
    errors: int = 0
    skipped: int = 0  # open-loop arrivals not sent: every connection had a full pipeline
    pipelined: int = 0  # open-loop arrivals sent behind another request (no idle connection)
    retry_after_missing: int = 0


def request_bytes(app: str, value: float) -> bytes:
    body = b'{"input":[%r]}' % value
    return (
        b"POST /%s/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (app.encode(), len(body), body)
    )


class Connection(asyncio.Protocol):
    """One keep-alive connection; answers come back in request order."""

    def __init__(
        self,
        tally: Tally,
        make: Callable[[], bytes],
        loop: asyncio.AbstractEventLoop,
        on_answer: Callable[[Connection], None] | None = None,
    ) -> None:
        self.tally = tally
        self.make = make
        self.loop = loop
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.sent: deque[float] = deque()
        self.buf = b""
        self.closed = asyncio.Event()
        self.recording = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.sent.append(time.perf_counter())
        self.transport.write(self.make())

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        now = time.perf_counter()
        answered = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            i = buf.find(b"Content-Length: ", 0, end)
            length = int(buf[i + 16 : buf.find(b"\r\n", i)]) if i >= 0 else 0
            total = end + 4 + length
            if len(buf) < total:
                break
            status = int(buf[9:12])
            if not self.sent:
                break  # an answer to nothing: the server refused the connection
            sent_at = self.sent.popleft()
            if self.recording:
                default = status == 200 and b'"default":true' in buf[end + 4 : total]
                self.tally.records.append((sent_at, now - sent_at, status, default))
                if status in (429, 503) and buf.find(b"Retry-After:", 0, end) < 0:
                    self.tally.retry_after_missing += 1
            buf = buf[total:]
            answered += 1
        self.buf = buf
        if self.on_answer is not None:
            for _ in range(answered):
                self.on_answer(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent and self.recording:
            self.tally.errors += len(self.sent)
        self.sent.clear()
        self.transport = None
        self.closed.set()


async def connect(
    port: int,
    tally: Tally,
    make: Callable[[], bytes],
    on_answer: Callable[[Connection], None] | None = None,
) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: Connection(tally, make, loop, on_answer), "127.0.0.1", port
    )
    return conn


def _values() -> Callable[[], float]:
    counter = itertools.count()
    return lambda: float(next(counter))


async def open_loop(
    port: int,
    app: str,
    rate: float,
    duration: float,
    *,
    connections: int = 256,
    depth: int = 32,
    tally: Tally | None = None,
    seed: int = 7,
) -> Tally:
    """Poisson arrivals at ``rate``/s for ``duration`` s, never waiting for answers;
    waits for the answers after.

    An arrival goes to a connection with nothing in flight when there is one, as
    a pool of HTTP/1.1 connections does; only when every connection is busy is
    it pipelined (up to ``depth`` per connection).  HTTP/1.1 answers in request
    order, so a request pipelined behind an admitted one waits for that answer
    (tens of ms): that would measure the wire's head-of-line blocking, not the
    server's refusal.  ``Tally.pipelined`` counts the arrivals that were."""
    tally = tally or Tally()
    value = _values()
    idle: deque[Connection] = deque()

    def freed(conn: Connection) -> None:
        if not conn.sent:
            idle.append(conn)

    conns: list[Connection] = []
    for _ in range(connections):
        conns.append(await connect(port, tally, lambda: request_bytes(app, value()), freed))
    idle.extend(conns)
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    t0 = loop.time()
    next_at = t0 + rng.expovariate(rate)
    k = 0
    while next_at - t0 < duration:
        now = loop.time()
        while next_at <= now:
            next_at += rng.expovariate(rate)
            while idle:
                conn = idle.popleft()
                if conn.transport is not None and not conn.sent:
                    conn.send()
                    break
            else:
                for _ in range(len(conns)):
                    conn = conns[k % len(conns)]
                    k += 1
                    if conn.transport is not None and len(conn.sent) < depth:
                        conn.send()
                        tally.pipelined += 1
                        break
                else:
                    tally.skipped += 1
        await asyncio.sleep(max(0.0, min(next_at - loop.time(), 0.002)))
    end = loop.time() + 15.0
    while any(c.sent for c in conns) and loop.time() < end:  # noqa: ASYNC110 (polling answers)
        await asyncio.sleep(0.01)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return tally


async def closed_loop(
    port: int, app: str, clients: int, duration: float, *, tally: Tally | None = None
) -> Tally:
    """``clients`` connections, each resending the moment it is answered (a 503
    included), for ``duration`` seconds; a connection the server closes is
    reopened at once.  Answers owed at the end are waited for."""
    tally = tally or Tally()
    value = _values()
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    live: set[Connection] = set()

    def again(conn: Connection) -> None:
        if loop.time() < end and not conn.sent:
            conn.send()

    def make() -> bytes:
        return request_bytes(app, value())

    async def client() -> None:
        while loop.time() < end:
            try:
                conn = await connect(port, tally, make, again)
            except OSError:
                tally.errors += 1
                await asyncio.sleep(0.01)
                continue
            live.add(conn)
            conn.send()
            await conn.closed.wait()
            live.discard(conn)

    tasks = [loop.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(duration)
    drain_end = loop.time() + 15.0
    while any(c.sent for c in live) and loop.time() < drain_end:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    for c in list(live):
        if c.transport is not None:
            c.transport.close()
    await asyncio.wait(tasks, timeout=5.0)
    for t in tasks:
        t.cancel()
    return tally


__all__ = ["Connection", "Record", "Tally", "closed_loop", "connect", "open_loop", "request_bytes"]
