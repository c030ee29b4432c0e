"""An HTTP/1.1 server for asyncio/uvloop, parsing with httptools (llhttp).

One ``HttpProtocol`` per connection.  Each complete request is routed at once; an
``async`` handler runs as its own task, so the requests that one connection
pipelines are served concurrently (and can share a batch downstream), while their
responses are written strictly in request order from a per-connection queue.  A
plain-function handler (and every 404/405) is answered inline without a task.

Errors the protocol finds itself (malformed request 400, body too large 413, header
section too large 431) are answered in order after the responses already owed, and
then the connection is closed: the server half-closes and keeps discarding input for
a moment before closing, so that the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from types import CoroutineType
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_to_bytes

import httptools

from clipper_core.errors import ClipperError
from clipper_core.http.messages import Request, Response, error_headers, error_response
from clipper_core.http.router import Router

logger = logging.getLogger("clipper_core.http")
access_logger = logging.getLogger("clipper_core.http.access")

#: Requests one connection may have in flight before the server stops reading it.
MAX_PIPELINE = 64
#: Seconds the server keeps discarding input after an error answer before closing.
LINGER_SECONDS = 2.0

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF = b"\r\n"
_CONNECTION_CLOSE = b"Connection: close\r\n"
_CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CONTENT_LENGTH = b"Content-Length: "

_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_CONTENT_TYPE_LINES: dict[str, bytes] = {}
_METHOD_NAMES: dict[bytes, str] = {}

_date_second = 0
_date_line = b""


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def _content_type_line(content_type: str) -> bytes:
    line = _CONTENT_TYPE_LINES.get(content_type)
    if line is None:
        _check_header_value(content_type)
        line = b"Content-Type: " + content_type.encode("latin-1") + _CRLF
        if len(_CONTENT_TYPE_LINES) < 256:
            _CONTENT_TYPE_LINES[content_type] = line
    return line


def _date() -> bytes:
    # The Date header changes once a second; format it once a second.
    global _date_second, _date_line
    now = time.time()
    second = int(now)
    if second != _date_second:
        _date_second = second
        _date_line = (
            b"Date: "
            + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode("ascii")
            + _CRLF
        )
    return _date_line


def _check_header_value(value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"line break in a response header: {value!r}")


def encode_response(
    response: Response, keep_alive: bool, http_version: str = "1.1", head: bool = False
) -> bytes:
    """The bytes of ``response`` on the wire, status line to body.

    Args:
        response: What the handler returned.
        keep_alive: Whether the connection stays open afterwards.
        http_version: The request's version; an HTTP/1.0 keep-alive is announced.
        head: Answering a HEAD request: the body is left out, its length kept.
    """
    status = response.status
    body = response.body
    parts = [_status_line(status), _date()]
    if status >= 200 and status != 204 and status != 304:
        parts.append(_content_type_line(response.content_type))
        parts.append(b"Content-Length: %d\r\n" % len(body))
    else:
        body = b""
    if not keep_alive:
        parts.append(_CONNECTION_CLOSE)
    elif http_version == "1.0":
        parts.append(_CONNECTION_KEEP_ALIVE)
    headers = response.headers
    if headers:
        for name, value in headers.items():
            _check_header_value(name)
            _check_header_value(value)
            parts.append(name.encode("latin-1") + b": " + value.encode("latin-1") + _CRLF)
    parts.append(_CRLF)
    if body and not head:
        parts.append(body)
    return b"".join(parts)


def _split_url(url: bytes) -> tuple[str, dict[str, str]]:
    """Decoded path and query parameters of a request target."""
    if url[:1] == b"/" and b"?" not in url and b"%" not in url:
        return url.decode("utf-8", "replace"), {}
    if url[:1] != b"/" and url != b"*":
        # absolute-form ("http://host/path?q"), sent to proxies; take its path.
        try:
            parsed = httptools.parse_url(url)
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        except httptools.HttpParserInvalidURLError:
            pass
    raw_path, _, raw_query = url.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    raw_query = raw_query.partition(b"#")[0]
    path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
    query = (
        dict(parse_qsl(raw_query.decode("utf-8", "replace"), keep_blank_values=True))
        if raw_query
        else {}
    )
    return path, query


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing; the answer is already queued."""


class _Exchange:
    """One response owed on a connection, in request order.

    Exactly one of ``task`` (the handler still running or done), ``response`` (an
    inline answer) and ``data`` (pre-encoded bytes: ``100 Continue`` or a
    protocol error) is set.
    """

    __slots__ = ("close", "data", "request", "response", "task")

    def __init__(
        self,
        request: Request | None,
        task: asyncio.Future[Any] | None = None,
        response: Response | None = None,
        data: bytes | None = None,
        close: bool = False,
    ) -> None:
        self.request = request
        self.task = task
        self.response = response
        self.data = data
        self.close = close


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.x connection.  Created by :class:`HttpServer`."""

    __slots__ = (
        "_body",
        "_body_size",
        "_draining",
        "_header_size",
        "_headers",
        "_headers_done",
        "_idle_timer",
        "_in_message",
        "_keep_alive",
        "_last_active",
        "_linger_timer",
        "_loop",
        "_max_body",
        "_max_header",
        "_message_seq",
        "_method",
        "_on_task_done",
        "_parser",
        "_peer",
        "_pending",
        "_raw_header_size",
        "_read_paused",
        "_router",
        "_server",
        "_stopped_input",
        "_transport",
        "_url",
        "_write_paused",
    )

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._router = server.router
        self._max_body = server.max_body_size
        self._max_header = server.max_header_size
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[_Exchange] = deque()
        self._on_task_done = self._task_done
        # The message being parsed.
        self._url = b""
        self._method = "GET"
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_size = 0
        self._raw_header_size = 0
        self._message_seq = 0
        self._in_message = False
        self._headers_done = False
        self._keep_alive = True
        # Connection state.
        self._stopped_input = False  # no more requests are read; close when answered
        self._draining = False  # the server is stopping
        self._read_paused = False
        self._write_paused = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._peer = ""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = str(peer[0])
        self._server._connections.add(self)
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
        # Cancel the handlers still running; mark the finished ones' errors as
        # retrieved, since no one will write their responses.
        pending = self._pending
        self._pending = deque()
        for ex in pending:
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

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._stopped_input:
            raise _Abort
        self._message_seq += 1
        self._in_message = True
        self._headers_done = False
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._header_size = 0
        self._raw_header_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_size += len(url)
        if self._header_size > self._max_header:
            self._fail(431, "headers_too_large", self._header_cause())
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._max_header:
            self._fail(431, "headers_too_large", self._header_cause())
            raise _Abort
        key = name.lower().decode("latin-1")
        headers = self._headers
        if key in headers:
            headers[key] += ", " + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method)
        if method is None:
            method = raw_method.decode("ascii", "replace")
            if len(_METHOD_NAMES) < 64:
                _METHOD_NAMES[raw_method] = method
        self._method = method
        self._keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        headers = self._headers
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self._max_body
            except ValueError:
                too_large = False  # llhttp has validated it; be safe anyway
            if too_large:
                self._fail(
                    413,
                    "payload_too_large",
                    f"request body of {length} bytes exceeds the limit of {self._max_body} bytes",
                )
                raise _Abort
        expect = headers.get("expect")
        if (
            expect is not None
            and expect.lower() == "100-continue"
            and parser.get_http_version() != "1.0"
        ):
            self._send_interim(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._fail(
                413,
                "payload_too_large",
                f"request body exceeds the limit of {self._max_body} bytes",
            )
            raise _Abort
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        path, query = _split_url(self._url)
        request = Request(
            self._method,
            path,
            query,
            self._headers,
            body,
            self._parser.get_http_version(),
            self._keep_alive,
            self._peer,
        )
        if not self._keep_alive:
            self._stopped_input = True
        self._dispatch(request)

    # -- dispatch and ordered writing ---------------------------------------------

    def _dispatch(self, request: Request) -> None:
        result: Any
        guard = self._server.guard
        refused = None if guard is None else guard(request)
        routed = refused or self._router.resolve(request.method, request.path)
        if type(routed) is tuple:
            handler, params = routed
            try:
                result = handler(request, params)
            except Exception as exc:
                result = _error_for(exc, request)
        else:
            result = routed
        if isinstance(result, Response):
            if not self._pending:
                self._write_now(request, result)
            else:
                self._pending.append(_Exchange(request, None, result))
            return
        try:
            if type(result) is CoroutineType or asyncio.iscoroutine(result):
                task: asyncio.Future[Any] = self._loop.create_task(result)
            else:
                task = asyncio.ensure_future(result, loop=self._loop)
        except TypeError:
            response = error_response(
                500,
                "internal",
                f"TypeError: handler returned {type(result).__name__}, not a Response",
            )
            self._pending.append(_Exchange(request, response=response))
            self._flush()
            return
        self._pending.append(_Exchange(request, task))
        task.add_done_callback(self._on_task_done)
        if len(self._pending) >= MAX_PIPELINE:
            self._update_reading()

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
        data = self._encode(request, response, keep_alive)
        transport.write(data)
        self._last_active = self._loop.time()
        if not keep_alive:
            self._stopped_input = True
            transport.close()

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
                    response = _task_response(task, ex.request)
                request = ex.request
                assert request is not None and response is not None
                pending.popleft()
                last = not pending and not self._in_message
                keep_alive = request.keep_alive and not ex.close and not (self._draining and last)
                out.append(self._encode(request, response, keep_alive))
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
        if self._draining and not pending and not self._in_message:
            transport.close()

    def _encode(self, request: Request, response: Response, keep_alive: bool) -> bytes:
        try:
            data = encode_response(
                response, keep_alive, request.http_version, request.method == "HEAD"
            )
        except Exception as exc:
            logger.error(
                "cannot encode the response to %s %s", request.method, request.path, exc_info=exc
            )
            data = encode_response(
                error_response(500, "internal", f"{type(exc).__name__}: {exc}"),
                keep_alive,
                request.http_version,
            )
        if self._server.access_log:
            access_logger.info(
                '"%s %s HTTP/%s" %d %d',
                request.method,
                request.path,
                request.http_version,
                response.status,
                len(response.body),
            )
        return data

    def _send_interim(self, data: bytes) -> None:
        if not self._pending and self._transport is not None:
            self._transport.write(data)
        else:
            self._pending.append(_Exchange(None, data=data))

    def _fail(self, status: int, error: str, cause: str) -> None:
        """Answer a protocol error after the answers already owed, then close."""
        self._stopped_input = True
        self._in_message = False
        data = encode_response(error_response(status, error, cause), False)
        if self._pending:
            self._pending.append(_Exchange(None, data=data, close=True))
        elif self._transport is not None:
            self._transport.write(data)
            self._close(linger=True)

    def _header_cause(self) -> str:
        return f"request header section exceeds the limit of {self._max_header} bytes"

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
                transport.close()
                return
            if self._read_paused:
                self._read_paused = False
                transport.resume_reading()
            self._linger_timer = self._loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._linger_timer is not None:
            return
        pause = self._write_paused or len(self._pending) >= MAX_PIPELINE
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
            transport.close()
            return
        delay = timeout - idle_for if idle_for < timeout else timeout
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    # -- used by HttpServer -------------------------------------------------------

    def _start_draining(self) -> None:
        self._draining = True
        transport = self._transport
        if transport is not None and not self._pending and not self._in_message:
            transport.close()

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


def _task_response(task: asyncio.Future[Any], request: Request | None) -> Response:
    if task.cancelled():
        return error_response(503, "cancelled", "the request's handling was cancelled")
    exc = task.exception()
    if exc is not None:
        return _error_for(exc, request)
    result = task.result()
    if isinstance(result, Response):
        return result
    return error_response(
        500, "internal", f"TypeError: handler returned {type(result).__name__}, not a Response"
    )


def _error_for(exc: BaseException, request: Request | None) -> Response:
    """The answer to a handler's exception: a ClipperError maps to its status."""
    if isinstance(exc, ClipperError):
        cause = str(exc) or exc.kind
        return error_response(exc.http_status, exc.kind, cause, error_headers(exc))
    where = f"{request.method} {request.path}" if request is not None else "a request"
    logger.error("unhandled error while handling %s", where, exc_info=exc)
    return error_response(500, "internal", f"{type(exc).__name__}: {exc}")


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
    ) -> None:
        self.ssl = ssl
        self.guard = guard
        self.router = router
        self.host = host
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.keepalive_timeout = keepalive_timeout
        self.access_log = access_log
        self._requested_port = port
        self._backlog = backlog
        self._port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[HttpProtocol] = set()
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
        self._server = await loop.create_server(
            lambda: HttpProtocol(self, loop),
            self.host,
            self._requested_port,
            backlog=self._backlog,
            reuse_address=True,
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

    def _connection_closed(self, conn: HttpProtocol) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


__all__ = ["LINGER_SECONDS", "MAX_PIPELINE", "HttpProtocol", "HttpServer", "encode_response"]
