"""Reading HTTP/1.x requests off a connection with httptools (llhttp).

:class:`RequestParser` is the half of a connection that turns the parser's callbacks
into :class:`Request` objects, enforcing the size limits on the request line, the
header section and the body as the bytes arrive.  What to do with a request, and
how to answer, is its subclass's business (``clipper_core.http.protocol``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, unquote_to_bytes

import httptools

from clipper_core.http.body_budget import BodyBudget
from clipper_core.http.messages import Request, Response, error_response
from model_containers import hop_trace

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_METHOD_NAMES: dict[bytes, str] = {}


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


#: Declared bodies up to this size are read (and dropped) after a refusal, so that
#: the connection stays open; a larger one is refused at once and the connection
#: closed, rather than read for nothing.
DISCARD_BODY_LIMIT = 64 * 1024


class RequestParser(asyncio.Protocol):
    """The request-reading half of one HTTP/1.x connection.

    Subclasses implement the hooks: :meth:`_dispatch` (a complete request),
    :meth:`_answer` (a request refused before its body, once complete),
    :meth:`_send_interim` (a ``100 Continue``) and :meth:`_fail_response` (an
    answer to give before closing: a protocol error, or a refusal).

    Args:
        max_body: Largest request body in bytes; larger ones fail with 413.
        max_header: Largest request line plus header section; larger fail with 431.
        header_guard: Called with each request once its headers are read (its
            ``body`` still empty); a ``Response`` it returns is the answer, and
            the body is dropped unread.
        budget: The server's budget for request bodies in flight: a request's
            body is reserved from it as its headers arrive, else 503.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_budget",
        "_guard",
        "_header_size",
        "_headers",
        "_headers_done",
        "_in_message",
        "_keep_alive",
        "_max_body",
        "_max_header",
        "_message_seq",
        "_method",
        "_parser",
        "_peer",
        "_raw_header_size",
        "_refusal",
        "_request",
        "_reserved",
        "_stopped_input",
        "_url",
    )

    def __init__(
        self,
        max_body: int,
        max_header: int,
        header_guard: Callable[[Request], Response | None] | None = None,
        budget: BodyBudget | None = None,
    ) -> None:
        self._max_body = max_body
        self._max_header = max_header
        self._guard = header_guard
        self._budget = budget
        # Bytes of the budget the message being read holds.
        self._reserved = 0
        # The message's request, made when its headers are in (with a header guard).
        self._request: Request | None = None
        # The answer of a request refused on its headers; its body is dropped.
        self._refusal: Response | None = None
        self._parser = httptools.HttpRequestParser(self)
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
        self._stopped_input = False  # no more requests are read; close when answered
        self._peer = ""

    # -- hooks for the connection -------------------------------------------------

    def _dispatch(self, request: Request, reserved: int) -> None:
        """Handle one complete request, which holds ``reserved`` bytes of the
        body budget until it is answered."""
        raise NotImplementedError

    def _answer(self, request: Request, response: Response) -> None:
        """Answer a complete request with ``response``, in order."""
        raise NotImplementedError

    def _send_interim(self, data: bytes) -> None:
        """Send an interim answer (``100 Continue``) in its place in the order."""
        raise NotImplementedError

    def _fail_response(self, response: Response) -> None:
        """Answer ``response`` after the answers already owed, then close."""
        raise NotImplementedError

    def _fail(
        self, status: int, error: str, cause: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer a protocol error after the answers already owed, then close."""
        self._fail_response(error_response(status, error, cause, headers))

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        if hop_trace.ENABLED:
            hop_trace.start("http_read")
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
        self._request = None
        self._refusal = None

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
        if "host" not in headers and parser.get_http_version() == "1.1":
            # RFC 9112 3.2: a server must answer 400 to an HTTP/1.1 request
            # without Host; the same-origin check reads it, too.
            self._fail(400, "bad_request", "HTTP/1.1 request has no Host header")
            raise _Abort
        coding = headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # llhttp undoes "chunked" only: a body in gzip (say) would reach the
            # handler still compressed and be read as malformed JSON.
            self._fail(
                501,
                "not_implemented",
                f"Transfer-Encoding {coding!r} is not supported; send 'chunked' or none",
            )
            raise _Abort
        length = headers.get("content-length")
        declared = 0
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = 0  # llhttp has validated it; be safe anyway
            if declared > self._max_body:
                self._fail(
                    413,
                    "payload_too_large",
                    f"request body of {length} bytes exceeds the limit of {self._max_body} bytes",
                )
                raise _Abort
        expect = headers.get("expect")
        expects_continue = (
            expect is not None
            and expect.lower() == "100-continue"
            and parser.get_http_version() != "1.0"
        )
        guard = self._guard
        if guard is not None:
            path, query = _split_url(self._url)
            request = Request(
                method,
                path,
                query,
                headers,
                b"",
                parser.get_http_version(),
                self._keep_alive,
                self._peer,
            )
            self._request = request
            refusal = guard(request)
            if refusal is not None:
                if expects_continue or declared > DISCARD_BODY_LIMIT:
                    # Reading the body would cost more than the connection.
                    self._fail_response(refusal)
                    raise _Abort
                self._refusal = refusal
                return
        budget = self._budget
        if budget is not None and declared > 0:
            if not budget.reserve(declared):
                self._fail_budget(declared)
                raise _Abort
            self._reserved = declared
        if expects_continue:
            self._send_interim(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        refusal = self._refusal
        if refusal is not None:
            # A refused request's body is dropped; a long one (chunked) is not
            # worth the connection.
            if self._body_size > DISCARD_BODY_LIMIT:
                self._fail_response(refusal)
                raise _Abort
            return
        if self._body_size > self._max_body:
            self._fail(
                413,
                "payload_too_large",
                f"request body exceeds the limit of {self._max_body} bytes",
            )
            raise _Abort
        budget = self._budget
        if budget is not None and self._body_size > self._reserved:
            # A chunked body reserves as it grows.
            more = self._body_size - self._reserved
            if not budget.reserve(more):
                self._fail_budget(self._body_size)
                raise _Abort
            self._reserved += more
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        request = self._request
        self._request = None
        if not self._keep_alive:
            self._stopped_input = True
        refusal = self._refusal
        if refusal is not None and request is not None:
            self._refusal = None
            self._answer(request, refusal)
            return
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        if request is None:
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
        else:
            request.body = body
        reserved = self._reserved
        self._reserved = 0
        if hop_trace.ENABLED:
            hop_trace.mark("http_parsed")
        self._dispatch(request, reserved)

    def _fail_budget(self, size: int) -> None:
        budget = self._budget
        assert budget is not None
        self._fail(
            503,
            "overloaded",
            f"the server holds {budget.in_use} bytes of request bodies; {size} more would"
            f" exceed its budget of {budget.limit} bytes",
            {"Retry-After": "1"},
        )

    def _release_reserved(self) -> None:
        """Give back what the message being read holds (the connection is lost)."""
        if self._reserved and self._budget is not None:
            self._budget.release(self._reserved)
        self._reserved = 0
        self._body = []

    def _header_cause(self) -> str:
        return f"request header section exceeds the limit of {self._max_header} bytes"


__all__ = ["RequestParser"]
