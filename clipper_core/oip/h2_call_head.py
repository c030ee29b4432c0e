"""What a gRPC request's header list says of its call, worked out once per list.

A gRPC channel sends the same header block on every call (after its first few,
every field is an index into the HPACK tables), and
:class:`~clipper_core.oip.hpack.HpackDecoder` hands back the same list for a
repeated block; :class:`~clipper_core.oip.h2_grpc.H2GrpcProtocol` keeps the
:class:`CallHead` of each list it has seen, so a call costs one dict lookup
here instead of a dict of its headers, the checks and the metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import UnaryHandler

__all__ = ["MAX_HEADS", "CallHead", "call_head"]

#: Header lists remembered per connection (a client sends a handful of distinct ones).
MAX_HEADS = 64

# RFC 9113 8.2.1: a name is not empty and has no controls, spaces, uppercase,
# non-ASCII or colon (but a pseudo-header's leading one).
_FIELD_NAME = re.compile(r":?[^\x00-\x20A-Z:\x7f-\xff]+")


@dataclass(frozen=True, slots=True)
class CallHead:
    """A request's headers, read.

    Attributes:
        handler: The method's handler; None when ``failure`` is set.
        failure: ``(status, message)`` the call is answered with at once, or None.
        timeout: Seconds of ``grpc-timeout``, or None without one.
        bad_timeout: Why ``grpc-timeout`` cannot be read (the call is answered
            INTERNAL once its body has been checked), or None.
        metadata: The caller's metadata (no pseudo-headers, no transport headers).
        malformed: A field name HTTP/2 forbids: the request is malformed (RFC
            9113 8.2), a stream error (RST_STREAM, PROTOCOL_ERROR), not a call.
    """

    handler: UnaryHandler | None
    failure: tuple[grpc.StatusCode, str] | None
    timeout: float | None
    bad_timeout: str | None
    metadata: tuple[tuple[str, str], ...]
    malformed: bool = False


def call_head(headers: Sequence[tuple[str, str]], handlers: Mapping[str, UnaryHandler]) -> CallHead:
    """Read one request's header list."""
    if not all(_FIELD_NAME.fullmatch(k) for k, _ in headers):
        return CallHead(None, None, None, None, (), malformed=True)
    fields = dict(headers)
    metadata = tuple(
        (k, v) for k, v in headers if not k.startswith(":") and k not in h2.NOT_METADATA
    )
    path = fields.get(":path", "")
    handler = handlers.get(path)
    if handler is None:
        failure = (grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")
        return CallHead(None, failure, None, None, metadata)
    error = h2.request_error(fields)
    if error is not None:
        return CallHead(None, error, None, None, metadata)
    timeout = None
    text = fields.get("grpc-timeout")
    if text:
        try:
            timeout = h2.parse_timeout(text)
        except ValueError:
            return CallHead(handler, None, None, f"bad grpc-timeout {text!r}", metadata)
    return CallHead(handler, None, timeout, None, metadata)
