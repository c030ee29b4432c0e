"""One client connection of the HTTP/2 gRPC server, on the running loop.

``grpc.aio`` spends most of a small call in its own machinery (the C core's
completion queue, its polling thread, the Cython glue, a task per call): for
the OIP noop model, 400 µs of the frontend's CPU per call, of which the servicer
is well under half.  This is the same protocol as an ``asyncio.Protocol`` on
uvloop: frames are cut from the socket's bytes, header blocks decoded with
:mod:`clipper_core.oip.hpack`, and a reply is one write of three frames
(headers, data, trailers) built from fixed bytes.

What it implements of HTTP/2 (RFC 9113) and gRPC over it: the preface and
SETTINGS exchange, PING, GOAWAY, RST_STREAM, padding, priority fields (read,
ignored), CONTINUATION, flow control both ways (requests: the connection's window is
what it buffers, given back as calls take their bodies; replies held back while
the client's window is short), ``grpc-timeout`` and
user metadata.  Unary methods only, uncompressed messages only (a compressed one
is answered UNIMPLEMENTED), cleartext only (TLS ports stay on ``grpc.aio``).
The connection's frames, limits and clock are
:class:`~clipper_core.oip.h2_connection.H2Connection`'s; this is what streams
carry: requests, calls and their replies.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_call_head import MAX_HEADS, CallHead, call_head
from clipper_core.oip.h2_connection import RECV_WINDOW, H2Connection
from clipper_core.oip.h2_frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    OK_TRAILERS,
    PRIORITY_FLAG,
    REPLY_HEADERS,
    WINDOW_UPDATE,
    CallContext,
    GrpcAbort,
    H2ConnectionError,
    UnaryHandler,
    frame,
)
from clipper_core.oip.h2_limits import ConnectionOwner
from clipper_core.oip.h2_stream import Stream
from clipper_core.oip.hpack import HeaderListTooLarge

log = logging.getLogger("clipper_core.oip")

__all__ = ["H2GrpcProtocol"]


class H2GrpcProtocol(H2Connection):
    """One client connection serving unary gRPC calls."""

    def __init__(self, owner: ConnectionOwner) -> None:
        super().__init__(owner)
        # id(header list) -> (the list, what it says): see h2_call_head
        self.heads: dict[int, tuple[list[tuple[str, str]], CallHead]] = {}
        self.committed = 0  # of max_buffered: see _admit
        self.queued: dict[int, Stream] = {}  # waiting for room, in arrival order
        self.budget = owner.body_budget  # server-wide, shared with the HTTP query port
        self.eof = False  # the client half-closed: its windows can open no more

    # -- requests ----------------------------------------------------------------------
    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or sid % 2 == 0:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "bad stream id for HEADERS")
        block = h2.unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise H2ConnectionError(h2.FRAME_SIZE_ERROR, "HEADERS priority cut short")
            block = block[5:]
        stream = self.streams.get(sid)
        if stream is None:
            if sid <= self.last_stream:
                raise H2ConnectionError(h2.STREAM_CLOSED, "HEADERS on a closed stream")
            self.last_stream = sid
            self.last_active = time.monotonic()
            stream = Stream(sid, self.peer_window)
            lim = self.limits
            if (
                len(self.streams) >= lim.max_streams
                or self.closing
                or self._held_bytes() > lim.max_held
            ):
                stream.refused = True  # decode (the table must stay in step), then refuse
            self.streams[sid] = stream
        elif stream.end or stream.reset:
            raise H2ConnectionError(h2.STREAM_CLOSED, "HEADERS after the end of a request")
        stream.block = b""
        self.block_bytes = 0
        self._block_part(stream, block)
        self.rate.received += len(payload)
        if flags & END_STREAM:
            stream.end = True
        if flags & END_HEADERS:
            self._header_block(stream)
        else:
            self.continuing = stream
            self.block_started = time.monotonic()

    def _header_block(self, stream: Stream) -> None:
        block, stream.block = stream.block, b""
        try:
            headers = self.decoder.decode(block, self.limits.max_header_list)
        except HeaderListTooLarge as exc:
            if stream.headers is not None:
                raise H2ConnectionError(h2.ENHANCE_YOUR_CALM, str(exc)) from None
            if not stream.refused:
                stream.headers = []
                self._fail_stream(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                return
        if stream.refused:
            self._waste()
            self._reset(stream, h2.REFUSED_STREAM)
        elif stream.headers is None:
            stream.headers = headers
            if stream.end:
                self._dispatch(stream)
        elif not stream.end:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "trailers without END_STREAM")
        else:  # trailers from the client: the request is complete
            self._dispatch(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_window -= len(payload)
        if self.recv_window < 0:
            raise H2ConnectionError(h2.FLOW_CONTROL_ERROR, "DATA past the connection window")
        stream = self.streams.get(sid)
        if stream is None and sid > self.last_stream:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "DATA on an idle stream")
        if not flags & END_STREAM and len(payload) <= 256 and not h2.unpad(flags, payload):
            self._nothing()  # no data (padding at most) and no end
        if stream is None or stream.reset or stream.failed:
            self._credit(len(payload))  # not kept
            return
        if stream.end:
            self._credit(len(payload))
            self._kill(stream, h2.STREAM_CLOSED)
            return
        data = h2.unpad(flags, payload)
        self._credit(len(payload) - len(data))  # the padding
        self.rate.received += len(payload)
        body = stream.body
        body += data
        self.buffered += len(data)
        if not stream.admitted:
            stream.committed += len(data)
            self.committed += len(data)
            if not self._reserve(stream, len(data)):
                return
        size = int.from_bytes(body[1:5], "big") + 5 if len(body) >= 5 else 0
        if len(body) > self.limits.max_message + 5 or size > self.limits.max_message + 5:
            self._fail_stream(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, "request too large")
        elif flags & END_STREAM:
            stream.end = True
            self._dispatch(stream)
        elif size > RECV_WINDOW and not stream.admitted and sid not in self.queued:
            self.queued[sid] = stream
            self._admit()
        if self.recv_window <= 0 or self.buffered > self.limits.max_buffered:
            self._unjam()

    def _admit(self) -> None:
        """Open the window of queued streams to their whole message, first come
        first served, while what is committed stays within max_buffered.

        Streams start with a small window (RECV_WINDOW): a client sending many
        large messages at once (grpcio interleaves them) could otherwise fill
        the connection's window with parts of each and none could end.
        """
        while self.queued:
            stream = next(iter(self.queued.values()))
            size = int.from_bytes(stream.body[1:5], "big") + 5
            more = size - stream.committed
            if self.committed + more > self.limits.max_buffered:
                return
            del self.queued[stream.id]
            if not self._reserve(stream, size - stream.reserved):
                return  # failed: _drop_body admits the next
            self.committed += more
            stream.committed = size
            stream.admitted = True
            increment = (size - RECV_WINDOW).to_bytes(4, "big")
            self._send(frame(WINDOW_UPDATE, 0, stream.id, increment))

    def _reserve(self, stream: Stream, n: int) -> bool:
        """Take ``n`` bytes of the server's budget for ``stream``'s request; False:
        they do not fit, the stream is answered UNAVAILABLE (the HTTP port's 503)."""
        budget = self.budget
        if budget is None or budget.reserve(n):
            stream.reserved += n
            return True
        why = "the server holds too much request data; retry later"
        self._fail_stream(stream, grpc.StatusCode.UNAVAILABLE, why)
        return False

    def _release(self, stream: Stream) -> None:
        if stream.reserved and self.budget is not None:
            self.budget.release(stream.reserved)
        stream.reserved = 0

    def _close_stream(self, stream: Stream) -> None:
        self._release(stream)
        super()._close_stream(stream)

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self.streams.values():
            self._release(stream)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        """The client closed its side (``shutdown(SHUT_WR)``): the calls it
        sent whole are still answered, then the connection closes."""
        self.closing = self.eof = True
        if self.frames_waiting:  # calls may be among them: keep writing
            return True
        for stream in list(self.streams.values()):
            if not stream.end or stream.headers is None:
                self._drop(stream)  # its request (or header block) can never end
            elif stream.pending:  # a held reply: what the windows allowed is sent
                self._reset(stream, h2.CANCEL)
        return bool(self.streams) and not self.dead  # True: keep writing

    def _drop_body(self, stream: Stream) -> None:
        super()._drop_body(stream)
        self.committed -= stream.committed
        stream.committed = 0
        if self.queued.pop(stream.id, None) is not None or self.queued:
            self._admit()

    def _unjam(self) -> None:
        """The connection's window is spent (or, below the 65,535 bytes of an
        HTTP/2 connection's first window, max_buffered): return what the calls
        took at once; if requests not yet whole hold all of it, none can end, so
        the largest fails instead of every one waiting for ever."""
        self._credit(0, now=True)
        if self.recv_window > 0 and self.buffered <= self.limits.max_buffered:
            return
        partial = [s for s in self.streams.values() if s.body and not s.failed]
        if partial:
            largest = max(partial, key=lambda s: len(s.body))
            why = "the connection holds too much request data"
            self._fail_stream(largest, grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            self._credit(0, now=True)

    # -- calls -----------------------------------------------------------------------

    def _dispatch(self, stream: Stream) -> None:
        headers = stream.headers or []
        # The decoder hands back the same list for a repeated block: what the
        # headers say of the call is worked out once per distinct list.
        cached = self.heads.get(id(headers))
        if cached is not None and cached[0] is headers:
            head = cached[1]
        else:
            head = call_head(headers, self.owner.handlers)
            if len(self.heads) >= MAX_HEADS:
                self.heads.clear()
            self.heads[id(headers)] = (headers, head)  # holds the list: its id stays its own
        if head.malformed:
            self._kill(stream, h2.PROTOCOL_ERROR)
            return
        if head.failure is not None:
            self._fail_stream(stream, *head.failure)
            return
        assert head.handler is not None
        body = stream.body
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._fail_stream(
                stream, grpc.StatusCode.INTERNAL, "the request is not one whole message"
            )
            return
        if body[0]:
            why = "compressed messages are not supported"
            self._fail_stream(stream, grpc.StatusCode.UNIMPLEMENTED, why, h2.ACCEPT_IDENTITY)
            return
        if head.bad_timeout is not None:
            self._fail_stream(stream, grpc.StatusCode.INTERNAL, head.bad_timeout)
            return
        timeout = head.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        ctx = CallContext(head.metadata, self.peer, deadline)
        request = bytes(body[5:])
        self._drop_body(stream)
        call = self._call(stream, head.handler, request, ctx)
        stream.task = task = asyncio.get_running_loop().create_task(call)
        # Not in the coroutine: a task cancelled before its first step (a reset in
        # the same read as the request) never runs its try/finally.
        task.add_done_callback(lambda _: self._call_ended(stream))

    async def _call(
        self, stream: Stream, handler: UnaryHandler, request: bytes, ctx: CallContext
    ) -> None:
        reply: bytes | None = None
        code, message = 0, ""
        try:
            try:
                reply = await handler(request, ctx)
            except GrpcAbort as exc:
                code, message = exc.code.value[0], exc.details
            except Exception as exc:
                log.exception("gRPC handler failed")
                code, message = grpc.StatusCode.UNKNOWN.value[0], f"Unexpected error: {exc!r}"
            # Out of the except clauses: a failure to answer must not chain the
            # handler's exception (a client's input, maybe megabytes) into the log.
            self._finish(stream, reply, code, message)
        except Exception:
            # The stream must still end: a client waits for it to its deadline.
            log.exception("cannot answer a gRPC call")
            if not self.dead and self.streams.get(stream.id) is stream:
                self._reset(stream, h2.INTERNAL_ERROR)

    def _call_ended(self, stream: Stream) -> None:
        """A handler's task is done, however it ended: its stream stops counting
        against ``max_streams`` unless it holds a reply for the client's window."""
        stream.task = None
        if self.streams.get(stream.id) is stream and (stream.reset or not stream.pending):
            self._close_stream(stream)

    def _fail_stream(
        self, stream: Stream, code: grpc.StatusCode, message: str, headers: bytes = b""
    ) -> None:
        """Answer a request that never reached a handler with a status (and
        ``headers``, an encoded header block of its own)."""
        stream.failed = True
        self._drop_body(stream)
        self._finish(stream, None, code.value[0], message, headers)

    def _finish(
        self, stream: Stream, reply: bytes | None, code: int, message: str, headers: bytes = b""
    ) -> None:
        if self.dead or self.streams.get(stream.id) is not stream:
            return
        sid = stream.id
        self._release(stream)  # the handler is done with the request
        if stream.reset:
            self._close_stream(stream)
            return
        if reply is None:  # trailers only
            block = self._block_start() + REPLY_HEADERS + headers + h2.status_block(code, message)
            self._send(h2.header_frames(sid, END_STREAM, block, self.max_frame))
            if not stream.end:  # the client is still sending: stop it
                self._send(frame(h2.RST_STREAM, 0, sid, h2.NO_ERROR.to_bytes(4, "big")))
            self._close_stream(stream)
            return
        n = len(reply) + 5
        fits = n <= self.max_frame and n <= self.send_window and n <= stream.window
        if fits and not self.table_resized:  # fixed bytes: without a table size update
            self.send_window -= n
            stream.window -= n
            self._send(h2.unary_reply(sid, reply))
            self._close_stream(stream)
            return
        message_bytes = b"\x00" + len(reply).to_bytes(4, "big") + reply
        head = frame(HEADERS, END_HEADERS, sid, self._block_start() + REPLY_HEADERS)
        self._send(head)
        # A view: each send takes its frames off the front without copying what
        # is left (a client opening its window a byte at a time would have made
        # every update copy the whole rest of a large reply).
        stream.pending = memoryview(message_bytes)
        self.held += n
        self._send_pending(stream)

    def _send_pending(self, stream: Stream) -> None:
        """Send what the windows allow of a held-back reply."""
        data = stream.pending
        out = []
        sent = 0
        while sent < len(data):
            n = min(len(data) - sent, self.max_frame, self.send_window, stream.window)
            if n <= 0:
                break
            out.append(frame(DATA, 0, stream.id, data[sent : sent + n]))
            sent += n
            self.send_window -= n
            stream.window -= n
        stream.pending = data[sent:]
        self.held -= sent
        if not stream.pending:
            trailers = self._block_start() + OK_TRAILERS
            out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers))
        if out:
            self._send(b"".join(out))
        if not stream.pending:
            self._close_stream(stream)
        elif self.eof:  # no WINDOW_UPDATE can come for the rest
            self._reset(stream, h2.CANCEL)
        else:
            self._mark_ready(stream)

    def _block_start(self) -> bytes:
        """What the next header block we send begins with: a dynamic table size
        update to 0 once the client has changed its table's size (we never add
        to its table, so 0 is always right), else nothing."""
        if not self.table_resized:
            return b""
        self.table_resized = False
        return b"\x20"

    def _flush_pending(self) -> None:
        # Each turn finishes a stream, spends its window or the connection's: the
        # cost is what moves, not the number of streams held.
        ready = self.ready
        while ready and self.send_window > 0 and not self.dead:
            self._send_pending(next(iter(ready.values())))
