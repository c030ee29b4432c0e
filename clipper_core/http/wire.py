"""HTTP/1.1 responses as bytes on the wire: status line, headers, body.

The status and content-type lines are encoded once and cached, and the ``Date``
header is formatted once a second, since every response carries all three.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus

from clipper_core.http.messages import Request, Response, error_response
from model_containers import hop_trace

logger = logging.getLogger("clipper_core.http")
access_logger = logging.getLogger("clipper_core.http.access")

_CRLF = b"\r\n"
_CONNECTION_CLOSE = b"Connection: close\r\n"
_CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"

_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_CONTENT_TYPE_LINES: dict[str, bytes] = {}

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
    if hop_trace.ENABLED:
        hop_trace.finish("frontend", "reply_encoded")
    return b"".join(parts)


__all__ = ["encode_answer", "encode_response"]


def encode_answer(
    request: Request, response: Response, keep_alive: bool, access_log: bool
) -> bytes:
    """``response`` to ``request`` as bytes (a 500 if it cannot be encoded), and
    its access-log line when ``access_log``."""
    try:
        data = encode_response(response, keep_alive, request.http_version, request.method == "HEAD")
    except Exception as exc:
        logger.error(
            "cannot encode the response to %s %s", request.method, request.path, exc_info=exc
        )
        data = encode_response(
            error_response(500, "internal", f"{type(exc).__name__}: {exc}"),
            keep_alive,
            request.http_version,
        )
    if access_log:
        access_logger.info(
            '"%s %s HTTP/%s" %d %d',
            request.method,
            request.path,
            request.http_version,
            response.status,
            len(response.body),
        )
    return data
