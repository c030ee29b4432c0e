"""The state of one HTTP/2 stream (one unary gRPC call) of :mod:`clipper_core.oip.h2_grpc`."""

from __future__ import annotations

import asyncio

__all__ = ["Stream"]


class Stream:
    """One call, from its HEADERS to its trailers.

    Attributes:
        id: The stream id.
        window: What we may still send on it (may go negative, RFC 9113 6.9.2).
        headers: The request's header list, once its block is decoded.
        block: A header block awaiting CONTINUATION.
        body: Request bytes received (the length-prefixed message).
        committed: What the connection's request budget counts for it: its body
            bytes, or once admitted its whole message (see
            ``H2GrpcProtocol._admit``).
        admitted: Its stream window covers its whole message.
        reserved: What it holds of the server's ``body_budget``: its body bytes,
            its whole message once admitted, kept until it is answered (the
            handler holds the request meanwhile).
        end: The client has ended its side (END_STREAM).
        refused: Over a limit: decoded (the HPACK table must stay in step), then
            refused.
        failed: Answered with an error before any handler ran.
        reset: Ended without an answer (the client reset it); its handler, if
            any, is being cancelled and the stream still counts until it ends.
        pending: Reply bytes held back by flow control (a view: what is sent
            goes off its front without copying the rest).
        task: The handler's task while it runs.
    """

    __slots__ = (
        "admitted",
        "block",
        "body",
        "committed",
        "end",
        "failed",
        "headers",
        "id",
        "pending",
        "refused",
        "reserved",
        "reset",
        "task",
        "window",
    )

    def __init__(self, stream_id: int, window: int) -> None:
        self.id = stream_id
        self.window = window
        self.headers: list[tuple[str, str]] | None = None
        self.block = b""
        self.body = bytearray()
        self.committed = 0
        self.admitted = False
        self.reserved = 0
        self.end = False
        self.refused = False
        self.failed = False
        self.reset = False
        self.pending: bytes | memoryview = b""
        self.task: asyncio.Task[None] | None = None
