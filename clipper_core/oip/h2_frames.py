"""HTTP/2 frames and the gRPC call surface shared by :mod:`clipper_core.oip.h2_grpc`.

Frame types, flags, settings and error codes (RFC 9113), one function that
builds a frame, the fixed header blocks of a gRPC reply, and what a unary
handler sees of its call (:class:`CallContext`, the part of
``grpc.aio.ServicerContext`` the OIP servicer uses).
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import quote

import grpc

from clipper_core.oip.hpack import encode_literal

__all__ = [
    "CallContext",
    "GrpcAbort",
    "H2ConnectionError",
    "UnaryHandler",
    "frame",
    "header_frames",
    "parse_timeout",
    "peer_name",
    "priority_ok",
    "read_settings",
    "request_error",
    "server_preface",
    "status_block",
    "unary_handler",
    "unary_reply",
    "unpad",
]

#: ``await handler(request bytes, context)`` -> reply bytes.
UnaryHandler = Callable[[bytes, "CallContext"], Awaitable[bytes]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW = 1, 2, 3, 4
S_MAX_FRAME, S_MAX_HEADER_LIST = 5, 6

DEFAULT_FRAME = 16384
MAX_FRAME_LIMIT = (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1

TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# gRPC's wire format: at most 8 ASCII digits and a unit (more would overflow a float).
_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")
#: Bytes of a status message sent (UTF-8, before percent-encoding); more is cut.
MAX_STATUS_MESSAGE = 1024
#: Headers that are the transport's, not the caller's metadata.
NOT_METADATA = frozenset(("te", "content-type", "grpc-timeout", "grpc-encoding"))

REPLY_HEADERS = b"\x88" + encode_literal(b"content-type", b"application/grpc")
OK_TRAILERS = encode_literal(b"grpc-status", b"0")
# gRPC's doc/compression.md: a compressed message we cannot read is answered
# UNIMPLEMENTED with the encodings we accept, so that the client can resend it.
ACCEPT_IDENTITY = encode_literal(b"grpc-accept-encoding", b"identity")
# The fixed parts of a whole unary reply (see unary_reply).
_REPLY_HEAD = len(REPLY_HEADERS).to_bytes(3, "big") + bytes((HEADERS, END_HEADERS))
_REPLY_TRAILERS = len(OK_TRAILERS).to_bytes(3, "big") + bytes((HEADERS, END_HEADERS | END_STREAM))


def frame(kind: int, flags: int, stream: int, payload: bytes | memoryview = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return (
        bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags))
        + stream.to_bytes(4, "big")
        + payload
    )


#: What a connection over the server's limit gets: SETTINGS (a server's first
#: frame, RFC 9113 3.4), then a GOAWAY that admits no stream.
TOO_MANY_CONNECTIONS = frame(SETTINGS, 0, 0) + frame(
    GOAWAY, 0, 0, bytes(4) + ENHANCE_YOUR_CALM.to_bytes(4, "big") + b"too many connections"
)


def header_frames(stream: int, flags: int, block: bytes, max_frame: int) -> bytes:
    """A header block as one HEADERS frame, or as HEADERS and CONTINUATION frames
    when it is longer than the peer's ``max_frame`` (RFC 9113 4.2, 6.10):
    ``flags`` (END_STREAM) go on the HEADERS, END_HEADERS on the last frame."""
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream, block)
    parts = [block[i : i + max_frame] for i in range(0, len(block), max_frame)]
    out = [frame(HEADERS, flags, stream, parts[0])]
    out += [frame(CONTINUATION, 0, stream, part) for part in parts[1:-1]]
    out.append(frame(CONTINUATION, END_HEADERS, stream, parts[-1]))
    return b"".join(out)


def unary_reply(stream: int, reply: bytes) -> bytes:
    """A whole OK reply on ``stream``: headers, the message in one DATA frame, and
    trailers, joined once (the same bytes as three :func:`frame` calls); the
    caller checks that the message fits the windows and the frame size."""
    sid = stream.to_bytes(4, "big")
    n = len(reply)
    data_head = (n + 5).to_bytes(3, "big") + b"\x00\x00"  # DATA, no flags
    return b"".join(
        (
            _REPLY_HEAD,
            sid,
            REPLY_HEADERS,
            data_head,
            sid,
            b"\x00",  # not compressed
            n.to_bytes(4, "big"),
            reply,
            _REPLY_TRAILERS,
            sid,
            OK_TRAILERS,
        )
    )


class H2ConnectionError(Exception):
    """Ends the connection with a GOAWAY of ``code``."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def server_preface(
    max_streams: int, stream_window: int, connection_window: int, max_header_list: int
) -> bytes:
    """The server's first frames: its SETTINGS and a connection window update."""
    settings = struct.pack(
        ">HIHIHIHI",
        S_MAX_CONCURRENT,
        max_streams,
        S_INITIAL_WINDOW,
        stream_window,
        S_HEADER_TABLE_SIZE,
        4096,
        S_MAX_HEADER_LIST,
        max_header_list,
    )
    increment = (connection_window - 65535).to_bytes(4, "big")
    return frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, increment)


def peer_name(addr: object) -> str:
    """A socket address as gRPC names a peer: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``."""
    if not isinstance(addr, tuple):
        return ""
    if ":" in addr[0]:
        return f"ipv6:[{addr[0]}]:{addr[1]}"
    return f"ipv4:{addr[0]}:{addr[1]}"


def unpad(flags: int, payload: bytes) -> bytes:
    """A DATA or HEADERS payload without its padding."""
    if flags & PADDED:
        if not payload:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "a padded frame without its pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - pad]
    return payload


def priority_ok(stream: int, payload: bytes) -> bool:
    """Whether a PRIORITY frame is 5 bytes (else a stream error, RFC 9113 6.3);
    on stream 0 it is a connection error."""
    if not stream:
        raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
    return len(payload) == 5


def read_settings(flags: int, stream: int, payload: bytes) -> list[tuple[int, int]] | None:
    """The (key, value) pairs of a SETTINGS frame, those we use checked
    (RFC 9113 6.5); None for an acknowledgement."""
    if stream:
        raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags & ACK:
        if payload:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        return None
    if len(payload) % 6:
        raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length")
    pairs = [struct.unpack_from(">HI", payload, i) for i in range(0, len(payload), 6)]
    for key, value in pairs:
        if key == S_INITIAL_WINDOW and value > MAX_WINDOW:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "window too large")
        if key == S_MAX_FRAME and not DEFAULT_FRAME <= value <= MAX_FRAME_LIMIT:
            raise H2ConnectionError(PROTOCOL_ERROR, f"bad SETTINGS_MAX_FRAME_SIZE {value}")
        if key == S_ENABLE_PUSH and value > 1:
            raise H2ConnectionError(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
    return pairs


def parse_timeout(value: str) -> float:
    """Seconds of a ``grpc-timeout`` header (``"100m"``); ValueError if malformed."""
    if _TIMEOUT.fullmatch(value) is None:
        raise ValueError(f"bad grpc-timeout {value!r}")
    return int(value[:-1]) * TIMEOUT_UNITS[value[-1]]


def request_error(headers: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
    """Why the headers of a request are not a gRPC call, or None if they are."""
    if headers.get(":method") != "POST":
        return grpc.StatusCode.UNIMPLEMENTED, f"method {headers.get(':method')!r} is not POST"
    if not headers.get("content-type", "").startswith("application/grpc"):
        return grpc.StatusCode.INTERNAL, "content-type is not application/grpc"
    return None


def status_block(code: int, message: str) -> bytes:
    """The trailers of a status; a message past :data:`MAX_STATUS_MESSAGE` bytes is cut."""
    block = encode_literal(b"grpc-status", str(code).encode())
    if message:
        # A message may carry the client's input (an unknown model's name): cut,
        # the client does not choose the size of our trailers.
        text = message.encode(errors="backslashreplace")
        if len(text) > MAX_STATUS_MESSAGE:
            text = text[:MAX_STATUS_MESSAGE].decode(errors="ignore").encode() + b"..."
        block += encode_literal(b"grpc-message", quote(text, safe=b" ").encode())
    return block


class GrpcAbort(Exception):
    """Ends a call with a status (raised by :meth:`CallContext.abort`)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """What a handler may ask about its call: the part of
    ``grpc.aio.ServicerContext`` the OIP servicer uses."""

    __slots__ = ("_deadline", "_metadata", "_peer")

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str, deadline: float | None):
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise GrpcAbort(code, details)


def unary_handler(method: Callable[[Any, Any], Awaitable[Any]], request_type: Any) -> UnaryHandler:
    """A handler that parses the request message and serializes the reply."""
    parse = request_type.FromString

    async def handle(raw: bytes, ctx: CallContext) -> bytes:
        try:
            request = parse(raw)
        except Exception:
            raise GrpcAbort(grpc.StatusCode.INTERNAL, "cannot parse the request message") from None
        reply = await method(request, ctx)
        return bytes(reply.SerializeToString())

    return handle
