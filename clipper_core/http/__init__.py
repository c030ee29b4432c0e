"""The HTTP/1.1 frontend: server, router, request and response objects."""

from __future__ import annotations

from clipper_core.http.messages import Request, Response, error_response, json_response
from clipper_core.http.router import Handler, Router
from clipper_core.http.server import HttpServer, encode_response

__all__ = [
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "Router",
    "encode_response",
    "error_response",
    "json_response",
]
