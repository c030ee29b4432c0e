"""The HTTP/2 connection layer of the gRPC server (RFC 9113), on the running loop.

:class:`H2Connection` cuts frames from the socket's bytes and answers the
connection's own frames (SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY);
what a stream carries (HEADERS, DATA: the calls) is its subclass's,
:class:`~clipper_core.oip.h2_grpc.H2GrpcProtocol`.  Everything a client can make
it hold or do is bounded by :class:`~clipper_core.oip.h2_limits.H2Limits`: a
protocol error is a GOAWAY and a close, never an exception out of the protocol;
a client that stops reading stops being read; a connection handles so many
frames per loop turn and leaves the rest for the next; a connection idle,
stalled or trickling past its limits is closed by a watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from clipper_core.http.closing import close_or_abort
from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    HEADERS,
    PING,
    SETTINGS,
    WINDOW_UPDATE,
    H2ConnectionError,
    frame,
)
from clipper_core.oip.h2_limits import ConnectionOwner, DrainWindow, FloodMeter, RateWindow
from clipper_core.oip.h2_stream import Stream
from clipper_core.oip.hpack import HpackDecoder, HpackError

log = logging.getLogger("clipper_core.oip")

__all__ = ["RECV_WINDOW", "H2Connection"]

#: A stream's first window: a message over it waits for room (H2GrpcProtocol._admit).
RECV_WINDOW = 16 << 10
OUT_BATCH = 64 << 10  # queued output that is written at once, not at the loop's next turn


class H2Connection(asyncio.Protocol):
    """One client connection: frames, settings, windows, limits and time."""

    def __init__(self, owner: ConnectionOwner) -> None:
        self.owner = owner
        self.limits = owner.limits
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.settled = False  # the client's first SETTINGS came
        self.decoder = HpackDecoder()
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.send_window = 65535  # the connection's, toward the client
        self.peer_window = 65535  # initial window of the client's streams
        self.max_frame = h2.DEFAULT_FRAME
        self.peer_table = 4096  # the client's SETTINGS_HEADER_TABLE_SIZE
        # It changed: our next header block must begin with a table size update
        # (RFC 7541 4.2), or a strict decoder (libnghttp2) rejects it.
        self.table_resized = False
        # The connection's window toward us is what we will buffer: request bytes
        # go back to it as they leave the streams' bodies (see _credit), so a
        # client sending more than we hold waits instead of failing its calls.
        self.conn_window = max(65535, self.limits.max_buffered)
        self.recv_window = self.conn_window  # what the client may still send
        self.unacked = 0  # request bytes done with, not yet returned to it
        self.continuing: Stream | None = None  # its header block awaits CONTINUATION
        self.block_started = 0.0  # when the header block began
        self.block_bytes = 0  # of the header block, its frames' headers included
        self.peer = ""
        self.closing = False  # GOAWAY sent or received: no new streams
        self.dead = False  # closed by us: ignore whatever still arrives
        self.out: list[bytes] = []  # see _send
        self.flush_scheduled = False
        self.out_bytes = 0
        self.written = 0  # bytes given to the transport, ever (see _taken)
        self.buffered = 0  # request bytes held in the streams' bodies
        self.held = 0  # reply bytes held back by the client's windows
        # The streams among those whose own window is open: only the connection's
        # stops them, so only they can move when it opens (see _window_update).
        self.ready: dict[int, Stream] = {}
        self.wasted = FloodMeter(self.limits.max_wasted_per_second)
        self.empty = FloodMeter(self.limits.max_empty_frames_per_second)
        self.write_paused = False  # the client does not read (see pause_writing)
        self.frames_waiting = False  # frames read are left for later (see _later)
        self.turn_scheduled = False
        self.reading = True
        now = time.monotonic()
        self.opened = self.last_active = now
        self.drain = DrainWindow()
        self.rate = RateWindow(now)
        self.watchdog: asyncio.TimerHandle | None = None

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peer = h2.peer_name(transport.get_extra_info("peername"))
        lim = self.limits
        if not self.owner.connection_opened(self):  # over the limit: read nothing
            self.dead = True
            transport.write(h2.TOO_MANY_CONNECTIONS)
            return close_or_abort(transport, lim.stall_timeout)
        transport.write(
            h2.server_preface(lim.max_streams, RECV_WINDOW, self.conn_window, lim.max_header_list)
        )
        self.watchdog = asyncio.get_running_loop().call_later(lim.tick, self._watch)

    def _send(self, data: bytes) -> None:
        """Queue bytes for the socket: what the calls finishing in one loop
        iteration send goes out in one write (a syscall costs 20-70 µs here)."""
        self.out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes > OUT_BATCH:  # write now: a peer that does not read pauses us
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        self.out_bytes = 0
        out = self.out
        if out and self.transport is not None and not self.dead:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.written += len(data)
            self.transport.write(data)
        out.clear()

    def _held_bytes(self) -> int:
        """Reply bytes held for the client: those its windows hold back and those
        queued for its socket (a client that does not read fills the transport's
        buffer instead of its windows; both count against ``max_held``)."""
        queued = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.held + self.out_bytes + queued

    def _taken(self) -> int:
        """Bytes the client has taken off our socket, ever: progress is this
        growing fast enough (see DrainWindow), not bytes moved into a transport
        it does not read."""
        queued = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.written - queued

    def _close(self) -> None:
        self._flush()
        self.dead = True
        if self.transport is not None:  # reset if the client leaves it unread
            close_or_abort(self.transport, self.limits.stall_timeout)

    def pause_writing(self) -> None:
        # The client does not read: stop reading it, so PINGs, SETTINGS and new
        # calls cannot pile answers up in our write buffer.
        self.write_paused = True
        self._read_or_not()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.frames_waiting:  # left unread while the client did not read
            self._later()
        else:
            self._read_or_not()

    def _read_or_not(self) -> None:
        """Read the socket unless the client does not read us or frames wait."""
        want = not (self.write_paused or self.frames_waiting)
        if want != self.reading and self.transport is not None and not self.dead:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_closed(self)
        self.transport = None
        self.dead = True
        if self.watchdog is not None:
            self.watchdog.cancel()
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.ready.clear()

    def goaway(self, code: int = h2.NO_ERROR, why: str = "") -> None:
        """Tell the client to open no more streams (the ones it has finish, unless
        ``code`` is an error)."""
        if self.transport is not None and not self.closing and not self.dead:
            self.closing = True
            payload = self.last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + why.encode()
            self._send(frame(h2.GOAWAY, 0, 0, payload))
        if code != h2.NO_ERROR or not self.streams:
            self._close()

    def _watch(self) -> None:
        """The connection's clock: handshake, idle, stalled writes, trickling requests."""
        if self.dead:
            return
        lim = self.limits
        now = time.monotonic()
        if not self.settled and now - self.opened > lim.handshake_timeout:
            return self.goaway(h2.PROTOCOL_ERROR, "no HTTP/2 preface in time")
        if not self.streams and not self.buf and now - self.last_active > lim.idle_timeout:
            return self.goaway(h2.NO_ERROR, "idle")
        held, taken = self._held_bytes(), self._taken()
        if self.drain.stalled(now, held, taken, lim.min_rate, lim.stall_timeout):
            return self.goaway(h2.ENHANCE_YOUR_CALM, "the client does not read")
        if self.continuing is not None and now - self.block_started > lim.header_timeout:
            return self.goaway(h2.ENHANCE_YOUR_CALM, "header block not finished in time")
        # An open header block waits for the client even if its HEADERS ended the request.
        waiting = (
            self.buf or self.continuing is not None or any(not s.end for s in self.streams.values())
        )
        if not waiting or self.write_paused:  # not reading it: the drain's to judge
            self.rate = RateWindow(now)
        elif self.rate.too_slow(now, lim.min_rate, lim.rate_window):
            return self.goaway(h2.ENHANCE_YOUR_CALM, "request too slow")
        self.watchdog = asyncio.get_running_loop().call_later(lim.tick, self._watch)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        self.buf += data
        if not self.frames_waiting:  # else the turn scheduled handles them
            self._cut_frames()

    def _later(self) -> None:
        """Leave the frames in ``buf`` unread, the socket too: for the loop's
        next turn, or, while the client does not read, until it does."""
        self.frames_waiting = True
        self._read_or_not()
        if not self.write_paused and not self.turn_scheduled:
            self.turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self.turn_scheduled = False
        if self.write_paused:  # resume_writing schedules the turn
            return
        self.frames_waiting = False
        if not self.dead:
            self._cut_frames()
            self._read_or_not()

    def _cut_frames(self) -> None:
        """Handle the whole frames in ``buf``, ``frames_per_turn`` at most: the
        rest waits for the loop's next turn, with the socket unread meanwhile."""
        buf = self.buf
        try:
            if not self.preface:
                n = len(h2.PREFACE)
                if buf[:n] != h2.PREFACE[: len(buf)]:
                    raise H2ConnectionError(h2.PROTOCOL_ERROR, "not an HTTP/2 connection")
                if len(buf) < n:
                    return
                del buf[:n]
                self.preface = True
            pos = 0
            end = len(buf)
            budget = max(1, self.limits.frames_per_turn)
            while end - pos >= 9:
                # A client that does not read is not read: the calls it sends
                # would pile replies up for it (only those running are made).
                if not budget or self.write_paused:
                    self._later()
                    break
                budget -= 1
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > h2.DEFAULT_FRAME:  # before its bytes are held
                    raise H2ConnectionError(h2.FRAME_SIZE_ERROR, "frame over 16384 bytes")
                if end - pos - 9 < length:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id, payload)
                if self.dead:
                    return
            del buf[:pos]
        except H2ConnectionError as exc:
            log.info("h2 connection error from %s: %s", self.peer, exc)
            self.goaway(exc.code, str(exc))
        except HpackError as exc:
            self.goaway(h2.COMPRESSION_ERROR, str(exc))
        except Exception:  # a bug here must cost one connection, not the loop
            log.exception("h2 internal error on a connection from %s", self.peer)
            self.goaway(h2.INTERNAL_ERROR, "internal error")

    # -- frames ----------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "expected CONTINUATION")
        if not self.settled and kind != SETTINGS:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            stream = self.continuing
            if stream is None or stream.id != sid:
                raise H2ConnectionError(h2.PROTOCOL_ERROR, "unexpected CONTINUATION")
            if not payload and not flags & END_HEADERS:
                self._nothing()
            self.rate.received += len(payload)
            self._block_part(stream, payload)
            if flags & END_HEADERS:
                self.continuing = None
                self._header_block(stream)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid or len(payload) != 8:
                raise H2ConnectionError(h2.FRAME_SIZE_ERROR, "PING must be 8 bytes on stream 0")
            if flags & ACK:
                self._nothing()  # we send no PING
            else:
                self._waste()
                self._send(frame(PING, ACK, 0, payload))
        elif kind == h2.RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == h2.GOAWAY:
            self.closing = True
            if not self.streams:
                self._close()
        elif kind == h2.PUSH_PROMISE:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "a client cannot push")
        elif kind == h2.PRIORITY and not h2.priority_ok(sid, payload):
            stream = self.streams.get(sid)
            if stream is None:  # an idle or closed stream has nothing to reset
                raise H2ConnectionError(h2.FRAME_SIZE_ERROR, "PRIORITY must be 5 bytes")
            self._kill(stream, h2.FRAME_SIZE_ERROR)
        else:  # PRIORITY and unknown frame types are ignored, as the RFC asks
            self._nothing()

    def _waste(self) -> None:
        """Count a frame that makes us work without a call (PING, SETTINGS, a reset
        or refused stream, a stream error we answer with a reset, a WINDOW_UPDATE
        that can move no held reply): past the limit a second, the client goes."""
        if not self.wasted.hit(time.monotonic()):
            raise H2ConnectionError(h2.ENHANCE_YOUR_CALM, "too many control frames or resets")

    def _nothing(self) -> None:
        """Count a frame that does nothing: each is cheap, but hundreds of
        thousands a second keep a core busy."""
        if not self.empty.hit(time.monotonic()):
            raise H2ConnectionError(h2.ENHANCE_YOUR_CALM, "too many frames that do nothing")

    def _block_part(self, stream: Stream, part: bytes) -> None:
        stream.block += part
        self.block_bytes += 9 + len(part)
        if self.block_bytes > self.limits.max_header_block:
            raise H2ConnectionError(h2.ENHANCE_YOUR_CALM, "header block too large")

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        pairs = h2.read_settings(flags, sid, payload)
        if pairs is None:
            return self._nothing()  # an acknowledgement
        if self.settled:
            self._waste()
        self.settled = True
        for key, value in pairs:
            if key == h2.S_INITIAL_WINDOW:
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.window += delta
                    if stream.window > h2.MAX_WINDOW:
                        raise H2ConnectionError(h2.FLOW_CONTROL_ERROR, "a stream window overflows")
                    self._mark_ready(stream)
            elif key == h2.S_MAX_FRAME:
                self.max_frame = value
            elif key == h2.S_HEADER_TABLE_SIZE and value != self.peer_table:
                self.peer_table = value
                self.table_resized = True
        self._send(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(h2.FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise H2ConnectionError(h2.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > h2.MAX_WINDOW:
                raise H2ConnectionError(h2.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            if self.held and not self.ready:
                self._waste()  # it can move nothing: a flood of these only costs us
            elif not self.held:
                self._nothing()
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if sid > self.last_stream:
                    raise H2ConnectionError(h2.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return self._nothing()
            if not increment:
                return self._kill(stream, h2.PROTOCOL_ERROR)
            stream.window += increment
            if stream.window > h2.MAX_WINDOW:
                return self._kill(stream, h2.FLOW_CONTROL_ERROR)
            self._mark_ready(stream)  # the only stream this update can move
        self._flush_pending()  # progress is bytes taken, not updates (see _watch)

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(h2.FRAME_SIZE_ERROR, "RST_STREAM must be 4 bytes")
        if sid == 0 or sid > self.last_stream:
            raise H2ConnectionError(h2.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(sid)
        if stream is not None and not stream.reset:
            self._waste()
            self._drop(stream)

    # -- what the streams' layer does (H2GrpcProtocol) --------------------------------

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        raise NotImplementedError

    def _header_block(self, stream: Stream) -> None:
        raise NotImplementedError

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        raise NotImplementedError

    def _flush_pending(self) -> None:
        """Send what the windows allow of the ``ready`` streams' held replies."""
        raise NotImplementedError

    # -- streams -----------------------------------------------------------------------

    def _drop_body(self, stream: Stream) -> None:
        self.buffered -= len(stream.body)
        self._credit(len(stream.body))
        stream.body = bytearray()

    def _credit(self, n: int, now: bool = False) -> None:
        """Give ``n`` request bytes back to the connection's window: in updates of
        a quarter window (or at once with ``now``)."""
        self.unacked += n
        if self.unacked and (now or self.unacked >= self.conn_window // 4):
            self._send(frame(WINDOW_UPDATE, 0, 0, self.unacked.to_bytes(4, "big")))
            self.recv_window += self.unacked
            self.unacked = 0

    def _mark_ready(self, stream: Stream) -> None:
        """Keep ``ready`` in step with a stream's held reply and its window."""
        if stream.pending and stream.window > 0:
            self.ready[stream.id] = stream
        elif self.ready.get(stream.id) is stream:
            del self.ready[stream.id]

    def _close_stream(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        if self.ready.get(stream.id) is stream:
            del self.ready[stream.id]
        self._drop_body(stream)
        self.held -= len(stream.pending)
        stream.pending = b""
        self.last_active = time.monotonic()
        if self.closing and not self.streams:
            self._close()

    def _drop(self, stream: Stream) -> None:
        """End a stream without an answer: its handler is cancelled, and the stream
        counts against ``max_streams`` until the handler has ended."""
        stream.reset = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()  # its done-callback closes the stream
        else:
            self._close_stream(stream)

    def _kill(self, stream: Stream, code: int) -> None:
        """A stream error: RST_STREAM with ``code``.  Counted as waste: a client
        can make us reset streams (and cancel their handlers) as cheaply as it can
        reset them itself ("MadeYouReset", CVE-2025-8671)."""
        self._waste()
        self._send(frame(h2.RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self._drop(stream)

    def _reset(self, stream: Stream, code: int) -> None:
        self._send(frame(h2.RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self._close_stream(stream)
