"""An HTTP/1.1 server for asyncio/uvloop, parsing with httptools (llhttp).

The listener: it accepts connections, each served by an
:class:`~clipper_core.http.protocol.HttpProtocol`, and drains them on stop.  The
wire format is in ``http.wire``, request parsing in ``http.request_parser``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import Callable
from typing import Any

from clipper_core.http.body_budget import BodyBudget
from clipper_core.http.closing import UNREAD_GRACE_MAX, close_or_abort
from clipper_core.http.messages import Request, Response
from clipper_core.http.protocol import LINGER_SECONDS, MAX_PIPELINE, HttpProtocol
from clipper_core.http.router import Router
from clipper_core.http.turn_budget import DEFAULT_READS_PER_TURN, TurnBudget
from clipper_core.http.wire import encode_response


class HttpServer:
    """An HTTP/1.1 server that routes requests with a :class:`Router`.

    Args:
        router: Routes requests to handlers.
        host: Address to bind.
        port: Port to bind; 0 picks a free one (see :attr:`port` after ``start``).
        max_body_size: Largest request body in bytes; larger ones get a 413.
        max_header_size: Largest request line plus header section; larger gets a 431.
        keepalive_timeout: Seconds an idle connection is kept open.
        access_log: Log one line per response on ``clipper_core.http.access``.
        backlog: The listening socket's backlog.
        ssl: Serve HTTPS with this context (see ``clipper_core.tls``); None: plain.
        guard: Called with every request before routing; a ``Response`` it returns
            is the answer (e.g. a 401), None lets the request through.
        header_guard: Called with every request as soon as its headers are read,
            its ``body`` still empty; a ``Response`` it returns is the answer and
            the body is dropped unread (a cheap refusal: e.g. 503 for a model that
            is overloaded).  A refused body over 64 KiB, or one the client waits to
            send (``Expect: 100-continue``), is not read at all: the answer is
            followed by closing the connection.
        max_inflight_body_bytes: The budget for the request bodies held at once,
            over all connections, from headers to answer: a request whose
            ``Content-Length`` (or chunked body) does not fit is answered 503 and
            the connection closed, before its body is read.  0: no budget.
        max_connections: Client connections open at once; one beyond it is
            answered 503 and closed as soon as it is accepted.  0: no limit.
        min_body_rate: Bytes per second an incomplete request (headers or body)
            must keep arriving at, measured over every ``body_rate_window``
            seconds; slower, it is answered 408 and the connection closed.  0: off.
        body_rate_window: Seconds over which ``min_body_rate`` is measured.
        reuse_port: Bind with ``SO_REUSEPORT``, so that other processes of this
            user serving the same port share its connections (query workers).
        reads_per_turn: Socket reads handled per event-loop turn; beyond them a
            connection waits in line for a later turn, so that a storm of
            requests cannot stall the rest of the loop for a long turn
            (``http.turn_budget``).  0: no bound.
    """

    def __init__(
        self,
        router: Router,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_size: int = 10 * 1024 * 1024,
        max_header_size: int = 64 * 1024,
        keepalive_timeout: float = 75.0,
        access_log: bool = False,
        backlog: int = 1024,
        ssl: ssl_module.SSLContext | None = None,
        guard: Callable[[Request], Response | None] | None = None,
        header_guard: Callable[[Request], Response | None] | None = None,
        max_inflight_body_bytes: int = 0,
        max_connections: int = 0,
        min_body_rate: int = 0,
        body_rate_window: float = 10.0,
        reuse_port: bool = False,
        reads_per_turn: int = DEFAULT_READS_PER_TURN,
    ) -> None:
        if min(max_inflight_body_bytes, max_connections, min_body_rate, reads_per_turn) < 0:
            raise ValueError("limits must be >= 0 (0: none)")
        if body_rate_window <= 0:
            raise ValueError("body_rate_window must be > 0")
        self.ssl = ssl
        self.guard = guard
        self.header_guard = header_guard
        self.body_budget = BodyBudget(max_inflight_body_bytes) if max_inflight_body_bytes else None
        self.max_connections = max_connections
        self.min_body_rate = min_body_rate
        self.body_rate_window = body_rate_window
        self.router = router
        self.host = host
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.keepalive_timeout = keepalive_timeout
        self.access_log = access_log
        self._requested_port = port
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._reads_per_turn = reads_per_turn
        #: The bound on reads per loop turn (set by :meth:`start`).
        self.turns: TurnBudget | None = None
        self._port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[HttpProtocol] = set()
        # Connections refused at accept (max_connections), until they close.
        self._refused: set[HttpProtocol] = set()
        self._all_closed: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The port actually bound (valid after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def connections(self) -> int:
        """How many client connections are open."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        if self._reads_per_turn:
            self.turns = TurnBudget(loop, self._reads_per_turn)
        self._server = await loop.create_server(
            lambda: HttpProtocol(self, loop),
            self.host,
            self._requested_port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port,
            ssl=self.ssl,
        )
        sockets = self._server.sockets
        self._port = sockets[0].getsockname()[1] if sockets else self._requested_port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds,
        close idle keep-alive connections, then cancel the handlers still running --
        their clients are answered 503, not dropped -- and close what remains."""
        server = self._server
        if server is None:
            return
        server.close()
        for conn in list(self._refused):
            conn._abort()
        if self.body_budget is not None:
            self.body_budget.close()
        if self._connections:
            self._all_closed = asyncio.Event()
            for conn in list(self._connections):
                conn._start_draining()
            if self._connections:
                try:
                    await asyncio.wait_for(self._all_closed.wait(), grace)
                except TimeoutError:
                    pass
            cancelled: list[asyncio.Future[Any]] = []
            for conn in list(self._connections):
                cancelled.extend(conn._cancel_running())
            if cancelled:
                # Cancelled handlers answer 503 ("cancelled") in order, and each
                # draining connection closes once it owes nothing.
                await asyncio.wait(cancelled, timeout=1.0)
                if self._connections:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._all_closed.wait(), 1.0)
            running: list[asyncio.Future[Any]] = []
            for conn in list(self._connections):
                running.extend(conn._abort())
            if running:
                # Let the cancelled handlers unwind before the loop may close.
                await asyncio.wait(running, timeout=1.0)
            if self._connections:
                await asyncio.wait_for(self._all_closed.wait(), 1.0)
        await server.wait_closed()
        self._server = None

    def shut(self, transport: asyncio.Transport) -> None:
        """Close a connection; reset it if its client leaves what it owes unread
        for the keep-alive timeout (10 s at most)."""
        close_or_abort(transport, min(UNREAD_GRACE_MAX, self.keepalive_timeout))

    def _connection_closed(self, conn: HttpProtocol) -> None:
        self._refused.discard(conn)
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


__all__ = ["LINGER_SECONDS", "MAX_PIPELINE", "HttpProtocol", "HttpServer", "encode_response"]
