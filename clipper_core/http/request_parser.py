"""Reading HTTP/1.x requests off a connection with httptools (llhttp).

:class:`RequestParser` is the half of a connection that turns the parser's callbacks
into :class:`Request` objects, enforcing the size limits on the request line, the
header section and the body as the bytes arrive.  What to do with a request, and
how to answer, is its subclass's business (``clipper_core.http.protocol``).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, unquote_to_bytes

import httptools

from clipper_core.http.messages import Request

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


class RequestParser(asyncio.Protocol):
    """The request-reading half of one HTTP/1.x connection.

    Subclasses implement the three hooks: :meth:`_dispatch` (a complete request),
    :meth:`_send_interim` (a ``100 Continue``) and :meth:`_fail` (a protocol error
    to answer before closing).

    Args:
        max_body: Largest request body in bytes; larger ones fail with 413.
        max_header: Largest request line plus header section; larger fail with 431.
    """

    __slots__ = (
        "_body",
        "_body_size",
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
        "_stopped_input",
        "_url",
    )

    def __init__(self, max_body: int, max_header: int) -> None:
        self._max_body = max_body
        self._max_header = max_header
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

    def _dispatch(self, request: Request) -> None:
        """Handle one complete request."""
        raise NotImplementedError

    def _send_interim(self, data: bytes) -> None:
        """Send an interim answer (``100 Continue``) in its place in the order."""
        raise NotImplementedError

    def _fail(self, status: int, error: str, cause: str) -> None:
        """Answer a protocol error after the answers already owed, then close."""
        raise NotImplementedError

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

    def _header_cause(self) -> str:
        return f"request header section exceeds the limit of {self._max_header} bytes"


__all__ = ["RequestParser"]
