"""One HTTP/1.x connection: dispatching requests and writing answers in order.

Each complete request is routed at once; an ``async`` handler runs as its own task,
so the requests that one connection pipelines are served concurrently (and can share
a batch downstream), while their responses are written strictly in request order
from a per-connection queue.  A plain-function handler (and every 404/405) is
answered inline without a task.

Errors the protocol finds itself (malformed request 400, body too large 413, header
section too large 431, a request arriving slower than the minimum rate 408, the
server's budget for request bodies exhausted 503) are answered in order after the
responses already owed, and then the connection is closed: the server half-closes
and keeps discarding input for a moment before closing, so that the client reads
the answer instead of a reset.  A connection beyond the server's connection limit
is answered 503 the same way as soon as it is accepted.  A read beyond the
server's reads for one loop turn waits in line for a later turn (``turn_budget``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from types import CoroutineType
from typing import Any, Protocol, cast

import httptools

from clipper_core.http.body_budget import BodyBudget
from clipper_core.http.exchange import Exchange, respond
from clipper_core.http.messages import (
    Request,
    Response,
    error_response,
    response_for_exception,
    task_response,
)
from clipper_core.http.request_parser import RequestParser
from clipper_core.http.router import Router
from clipper_core.http.turn_budget import TurnBudget
from clipper_core.http.wire import encode_answer, encode_response

logger = logging.getLogger("clipper_core.http")

#: Requests one connection may have in flight before the server stops reading it.
MAX_PIPELINE = 64
#: Seconds the server keeps discarding input after an error answer before closing.
LINGER_SECONDS = 2.0


class ConnectionOwner(Protocol):
    """What a connection reads from its server (``HttpServer``), and how it checks
    in and out of the server's set of open connections."""

    router: Router
    guard: Callable[[Request], Response | None] | None
    header_guard: Callable[[Request], Response | None] | None
    body_budget: BodyBudget | None
    max_connections: int
    min_body_rate: int
    body_rate_window: float
    max_body_size: int
    max_header_size: int
    keepalive_timeout: float
    access_log: bool
    turns: TurnBudget | None
    _connections: set[HttpProtocol]
    _refused: set[HttpProtocol]

    def _connection_closed(self, conn: HttpProtocol) -> None: ...
    def shut(self, transport: asyncio.Transport) -> None: ...


class HttpProtocol(RequestParser):
    """One HTTP/1.x connection.  Created by :class:`HttpServer`."""

    __slots__ = (
        "_bytes_in",
        "_draining",
        "_idle_timer",
        "_kept",
        "_last_active",
        "_linger_timer",
        "_loop",
        "_on_task_done",
        "_pending",
        "_rate_mark",
        "_rate_timer",
        "_read_paused",
        "_router",
        "_server",
        "_transport",
        "_write_paused",
    )

    def __init__(self, server: ConnectionOwner, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            server.max_body_size, server.max_header_size, server.header_guard, server.body_budget
        )
        self._server = server
        self._loop = loop
        self._router = server.router
        self._transport: asyncio.Transport | None = None
        self._pending: deque[Exchange] = deque()
        self._on_task_done = self._task_done
        # Connection state.
        self._draining = False  # the server is stopping
        self._read_paused = False
        self._write_paused = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # The minimum receive rate: bytes read so far, and at the last check.
        self._bytes_in = 0
        self._rate_mark = 0
        self._rate_timer: asyncio.TimerHandle | None = None
        # Data read while the server's reads for this turn were spent (TurnBudget).
        self._kept: bytes | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = str(peer[0])
        server = self._server
        limit = server.max_connections
        if limit and len(server._connections) >= limit:
            # Refused before reading anything; it does not count against the limit.
            server._refused.add(self)
            self._fail(
                503,
                "overloaded",
                f"the server has {len(server._connections)} connections open, its limit",
                {"Retry-After": "1"},
            )
            return
        server._connections.add(self)
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(self._server.keepalive_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stopped_input = True
        self._server._connection_closed(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        self._release_reserved()
        # Cancel the handlers still running; mark the finished ones' errors as
        # retrieved, since no one will write their responses.
        pending = self._pending
        self._pending = deque()
        for ex in pending:
            self._release(ex.reserved)
            task = ex.task
            if task is not None:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()

    def data_received(self, data: bytes) -> None:
        if self._stopped_input:
            return
        self._last_active = self._loop.time()
        self._bytes_in += len(data)
        turns = self._server.turns
        if turns is not None and (self._kept is not None or not turns.take()):
            # Wait in line for a later turn (turn_budget).  A client that sends
            # more meanwhile (pipelining) is not read until then; the first
            # chunk costs no pause_reading: libuv reads a socket dry anyway.
            if self._kept is None:
                self._kept = data
                turns.wait(self)
            else:
                self._kept += data
                self._update_reading()
            return
        self._feed(data)

    def _take_turn(self) -> bool:
        """Handle the data kept for this turn (``TurnBudget``); False if gone."""
        data = self._kept
        self._kept = None
        if data is None or self._transport is None or self._stopped_input:
            return False
        if self._read_paused:
            self._update_reading()
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        seq = self._message_seq
        in_headers = self._in_message and not self._headers_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request that asked to upgrade has been dispatched, with keep-alive
            # off; what follows is another protocol, which we do not speak.
            self._stopped_input = True
            return
        except httptools.HttpParserCallbackError as exc:
            if self._stopped_input:
                return  # a callback has queued the answer (413, 431) and stopped us
            # A bug of ours inside a callback, not the client's fault.
            logger.error("error while parsing a request", exc_info=exc.__context__ or exc)
            self._fail(500, "internal", f"{type(exc.__context__ or exc).__name__}: parser error")
            return
        except httptools.HttpParserError as exc:
            if not self._stopped_input:
                self._fail(400, "bad_request", f"malformed HTTP request: {exc}")
            return
        if in_headers and seq == self._message_seq and not self._headers_done:
            # The whole chunk belonged to an unfinished header section.  httptools
            # buffers a header until it is complete, so count raw bytes as well to
            # bound that buffer.
            self._raw_header_size += len(data)
            if self._raw_header_size > self._max_header:
                self._fail(431, "headers_too_large", self._header_cause())
                return
        if self._in_message and self._rate_timer is None and self._server.min_body_rate > 0:
            # An incomplete request must keep arriving at the minimum rate: a
            # trickle that resets the idle timer must not hold a partial body.
            self._rate_mark = self._bytes_in
            self._rate_timer = self._loop.call_later(
                self._server.body_rate_window, self._check_rate
            )

    def eof_received(self) -> bool | None:
        # A client that closes its side is gone for our purposes (a half-closed
        # HTTP client is rare, a vanished one common): closing the transport
        # cancels the handlers still running, so their work is not wasted.
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- dispatch and ordered writing ---------------------------------------------

    def _answer(self, request: Request, response: Response, reserved: int = 0) -> None:
        if not self._pending:
            self._write_now(request, response)
            self._release(reserved)
        else:
            self._pending.append(Exchange(request, None, response, reserved=reserved))

    def _dispatch(self, request: Request, reserved: int = 0) -> None:
        result: Any
        guard = self._server.guard
        refused = None if guard is None else guard(request)
        routed = refused or self._router.resolve(request.method, request.path)
        if type(routed) is tuple:
            handler, params = routed
            try:
                result = handler(request, params)
            except Exception as exc:
                result = response_for_exception(exc, request)
        else:
            result = routed
        if isinstance(result, Response):
            self._answer(request, result, reserved)
            return
        try:
            if type(result) is CoroutineType or asyncio.iscoroutine(result):
                ex = Exchange(request, reserved=reserved)
                ex.task = self._loop.create_task(respond(result, ex, self._handler_done))
                self._pending.append(ex)
                if len(self._pending) >= MAX_PIPELINE:
                    self._update_reading()
                return
            task = asyncio.ensure_future(result, loop=self._loop)
        except TypeError:
            response = error_response(
                500,
                "internal",
                f"TypeError: handler returned {type(result).__name__}, not a Response",
            )
            self._pending.append(Exchange(request, response=response, reserved=reserved))
            self._flush()
            return
        self._pending.append(Exchange(request, task, reserved=reserved))
        task.add_done_callback(self._on_task_done)
        if len(self._pending) >= MAX_PIPELINE:
            self._update_reading()

    def _handler_done(self, ex: Exchange, outcome: Response | BaseException) -> None:
        """A handler run by ``respond`` finished: write its answer if it is next."""
        ex.task = None
        if self._transport is None:  # the client is gone
            if isinstance(outcome, BaseException):
                logger.debug("handler failed after the client disconnected: %r", outcome)
            return
        if isinstance(outcome, BaseException):
            outcome = response_for_exception(outcome, ex.request)
        ex.response = outcome
        pending = self._pending
        if pending and pending[0] is ex:
            self._flush()

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if self._transport is None:
            # The client is gone.  Retrieve the outcome so that nothing is logged as
            # "never retrieved"; the handler's own error is logged at debug level.
            if not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    logger.debug("handler failed after the client disconnected: %r", exc)
            return
        pending = self._pending
        if pending and pending[0].task is task:
            self._flush()

    def _write_now(self, request: Request, response: Response) -> None:
        """Answer inline when nothing else is owed on the connection."""
        transport = self._transport
        if transport is None:
            return
        keep_alive = request.keep_alive and not (self._draining and not self._in_message)
        data = encode_answer(request, response, keep_alive, self._server.access_log)
        transport.write(data)
        self._last_active = self._loop.time()
        if not keep_alive:
            self._stopped_input = True
            self._server.shut(transport)

    def _flush(self) -> None:
        """Write every answer at the head of the queue that is ready, in order."""
        transport = self._transport
        if transport is None:
            return
        pending = self._pending
        out: list[bytes] = []
        close = linger = False
        while pending:
            ex = pending[0]
            data = ex.data
            if data is None:
                task = ex.task
                response = ex.response
                if task is not None:
                    if not task.done():
                        break
                    response = task_response(task, ex.request)
                request = ex.request
                assert request is not None and response is not None
                pending.popleft()
                self._release(ex.reserved)
                last = not pending and not self._in_message
                keep_alive = request.keep_alive and not ex.close and not (self._draining and last)
                out.append(encode_answer(request, response, keep_alive, self._server.access_log))
                if not keep_alive:
                    close = True
                    break
            else:
                pending.popleft()
                out.append(data)
                if ex.close:
                    close = linger = True
                    break
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            self._last_active = self._loop.time()
        if close:
            self._close(linger)
            return
        if self._read_paused:
            self._update_reading()
        if self._draining and not pending and not self._in_message and self._kept is None:
            self._server.shut(transport)

    def _send_interim(self, data: bytes) -> None:
        if not self._pending and self._transport is not None:
            self._transport.write(data)
        else:
            self._pending.append(Exchange(None, data=data))

    def _fail_response(self, response: Response) -> None:
        """Answer after the answers already owed, then close."""
        self._stopped_input = True
        self._in_message = False
        self._release_reserved()  # the message being read is abandoned
        data = encode_response(response, False)
        if self._pending:
            self._pending.append(Exchange(None, data=data, close=True))
        elif self._transport is not None:
            self._transport.write(data)
            self._close(linger=True)

    def _release(self, reserved: int) -> None:
        if reserved and self._budget is not None:
            self._budget.release(reserved)

    def _check_rate(self) -> None:
        """Cut a request that arrives slower than the minimum rate (408)."""
        self._rate_timer = None
        if self._transport is None or self._stopped_input or not self._in_message:
            return
        window = self._server.body_rate_window
        minimum = self._server.min_body_rate
        got = self._bytes_in - self._rate_mark
        if got < minimum * window and not self._read_paused:
            self._fail(
                408,
                "request_timeout",
                f"the request arrived at {got / window:.0f} bytes/s over {window:g} s,"
                f" under the minimum of {minimum} bytes/s",
            )
            return
        self._rate_mark = self._bytes_in
        self._rate_timer = self._loop.call_later(window, self._check_rate)

    def _close(self, linger: bool) -> None:
        """Close after the last answer.  With ``linger``, half-close first and keep
        discarding what the client still sends for a moment, so that it is not reset
        before it reads the answer."""
        transport = self._transport
        if transport is None:
            return
        self._stopped_input = True
        if linger and transport.can_write_eof() and self._linger_timer is None:
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                self._server.shut(transport)
                return
            if self._read_paused:
                self._read_paused = False
                transport.resume_reading()
            self._linger_timer = self._loop.call_later(LINGER_SECONDS, self._server.shut, transport)
        else:
            self._server.shut(transport)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._linger_timer is not None:
            return
        pause = self._write_paused or len(self._pending) >= MAX_PIPELINE or self._kept is not None
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _check_idle(self) -> None:
        self._idle_timer = None
        transport = self._transport
        if transport is None:
            return
        timeout = self._server.keepalive_timeout
        idle_for = self._loop.time() - self._last_active
        if not self._pending and idle_for >= timeout:
            # No answer owed and nothing heard for the whole timeout (an idle
            # keep-alive connection, or a client stalled in the middle of a request).
            self._server.shut(transport)
            return
        delay = timeout - idle_for if idle_for < timeout else timeout
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    # -- used by HttpServer -------------------------------------------------------

    def _start_draining(self) -> None:
        self._draining = True
        transport = self._transport
        if transport is not None and not (self._pending or self._in_message or self._kept):
            self._server.shut(transport)

    def _cancel_running(self) -> list[asyncio.Future[Any]]:
        """Cancel the handlers still running (their answers become 503s)."""
        running = [ex.task for ex in self._pending if ex.task is not None and not ex.task.done()]
        for task in running:
            task.cancel()
        return running

    def _abort(self) -> list[asyncio.Future[Any]]:
        """Close at once; returns the handler tasks that were still running."""
        running = [ex.task for ex in self._pending if ex.task is not None and not ex.task.done()]
        if self._transport is not None:
            self._transport.abort()
        return running


__all__ = ["LINGER_SECONDS", "MAX_PIPELINE", "ConnectionOwner", "HttpProtocol"]
