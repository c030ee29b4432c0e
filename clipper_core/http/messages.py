"""The request and response objects that HTTP handlers see and return."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from clipper_core.admission import retry_after_header
from clipper_core.errors import ClipperError

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

logger = logging.getLogger("clipper_core.http")


class Request:
    """One parsed HTTP request.

    Attributes:
        method: The request method, upper case (``"GET"``, ``"POST"``...).
        path: The percent-decoded path, without the query string.
        query: The query string's parameters; the last value wins for repeated keys.
        headers: Header names, lower-cased, to their values.  Repeated headers are
            joined with ``", "``.
        body: The whole request body (chunked bodies are already reassembled).
        http_version: ``"1.1"`` or ``"1.0"``.
        keep_alive: Whether the connection stays open after the response.
        remote: The client's address (IP, without the port), or ``""`` if unknown.
    """

    __slots__ = (
        "body",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "remote",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        http_version: str = "1.1",
        keep_alive: bool = True,
        remote: str = "",
    ) -> None:
        self.remote = remote
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.keep_alive = keep_alive

    def json(self) -> Any:
        """The body parsed as JSON (raises ``orjson.JSONDecodeError`` on bad JSON)."""
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} ({len(self.body)} bytes)>"


class Response:
    """An HTTP response that a handler returns.

    Args:
        status: The HTTP status code.
        body: The body; a ``str`` is encoded as UTF-8.
        content_type: The ``Content-Type`` header.
        headers: Extra headers.  ``Content-Length``, ``Content-Type``, ``Date`` and
            ``Connection`` are written by the server and must not be given here.
    """

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str = b"",
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type} ({len(self.body)} bytes)>"


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response; numpy arrays and scalars are serialised natively."""
    return Response(status, orjson.dumps(obj, option=_JSON_OPTIONS), "application/json", headers)


def error_response(
    status: int, error: str, cause: str, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON error response in Clipper's shape: ``{"error": ..., "cause": ...}``."""
    return Response(
        status, orjson.dumps({"error": error, "cause": cause}), "application/json", headers
    )


def error_headers(exc: ClipperError) -> dict[str, str] | None:
    """``Retry-After`` on overload answers (503, 429), ``WWW-Authenticate`` on 401."""
    status = exc.http_status
    if status in (429, 503):
        retry = getattr(exc, "retry_after", None)
        return {"Retry-After": retry_after_header(retry if isinstance(retry, int | float) else 1.0)}
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="clipper_core"'}
    return None


def task_response(task: asyncio.Future[Any], request: Request | None) -> Response:
    """The answer of a finished handler task: its Response, or its error's."""
    if task.cancelled():
        return error_response(503, "cancelled", "the request's handling was cancelled")
    exc = task.exception()
    if exc is not None:
        return response_for_exception(exc, request)
    result = task.result()
    if isinstance(result, Response):
        return result
    return error_response(
        500, "internal", f"TypeError: handler returned {type(result).__name__}, not a Response"
    )


def response_for_exception(exc: BaseException, request: Request | None) -> Response:
    """The answer to a handler's exception: a ClipperError maps to its status."""
    if isinstance(exc, ClipperError):
        cause = str(exc) or exc.kind
        return error_response(exc.http_status, exc.kind, cause, error_headers(exc))
    where = f"{request.method} {request.path}" if request is not None else "a request"
    logger.error("unhandled error while handling %s", where, exc_info=exc)
    return error_response(500, "internal", f"{type(exc).__name__}: {exc}")
