"""The bounds of one HTTP/2 gRPC connection (:mod:`clipper_core.oip.h2_grpc`).

The port is on the network by default, so what one client can make the server
hold or do is bounded: streams at once, header sizes, buffered request bytes,
reply bytes held back by flow control, frames that cost work without a call
(PING, SETTINGS, reset and refused streams: the "rapid reset" attack; frames
that do nothing), frames handled per loop turn, and time
(the handshake, idle connections, a request trickling in, a peer that stops
reading or never opens its window).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from clipper_core.http.body_budget import BodyBudget
from clipper_core.oip.h2_frames import UnaryHandler

__all__ = ["ConnectionOwner", "DrainWindow", "FloodMeter", "H2Limits", "RateWindow"]


@dataclass(frozen=True)
class H2Limits:
    """What one connection may hold or cost.

    Attributes:
        max_message: Largest request message (RESOURCE_EXHAUSTED above it).
        max_streams: Concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS); a
            stream reset by the client still counts until its handler has ended.
        max_header_list: Decoded header list size (SETTINGS_MAX_HEADER_LIST_SIZE,
            RFC 9113 6.5.2: names + values + 32 per field); a request over it
            is answered RESOURCE_EXHAUSTED.
        max_header_block: Compressed header block, CONTINUATIONs included, each
            frame counting its 9-byte header too (empty CONTINUATIONs add up);
            more is a GOAWAY (ENHANCE_YOUR_CALM).
        max_buffered: Request bytes buffered over all streams of the connection:
            the connection's flow-control window (at least HTTP/2's 65,535),
            given back as calls take their requests, and what the streams'
            windows open to whole messages at once.  A client sending more waits;
            only requests not yet whole that alone fill it fail (the largest,
            RESOURCE_EXHAUSTED).
        max_held: Reply bytes held for the client: held back by its windows or
            queued on a socket it does not read; above it new streams are
            refused (REFUSED_STREAM) until the client reads.  A reply already
            made is kept, whatever it adds.  While the client does not read
            (the transport's writing paused) nothing more is read from it: what
            it can make us hold is the replies of the calls running then (at
            most ``max_streams``).
        max_wasted_per_second: PING, SETTINGS, client resets, refused
            streams, streams we reset for the client's errors and connection
            WINDOW_UPDATEs that can move no held reply, per second; more is a
            GOAWAY (ENHANCE_YOUR_CALM).
        max_empty_frames_per_second: Frames that do nothing (PRIORITY, unknown
            types, SETTINGS and PING acknowledgements, DATA and CONTINUATION
            without content or end, WINDOW_UPDATEs with nothing to move or on
            closed streams), per second; more is a GOAWAY (ENHANCE_YOUR_CALM).
        frames_per_turn: Frames one connection has handled per event-loop turn;
            past them it stops reading until the next turn, so that a flood on
            one connection does not hold up the others' calls.
        handshake_timeout: Seconds for the client's preface.
        header_timeout: Seconds a header block may take, from its HEADERS to
            its last CONTINUATION (nothing else may come meanwhile).
        idle_timeout: Seconds a connection without streams stays open.
        stall_timeout: While the connection holds replies (see ``max_held``),
            each ``stall_timeout`` seconds the client must have taken off the
            socket all it held at their start, or ``min_rate`` bytes a second;
            else the connection closes (a client that stopped reading, or takes
            a byte now and then: see :class:`DrainWindow`).
        min_rate: Bytes per second of HEADERS/DATA an incomplete request must
            keep arriving at, measured over ``rate_window`` seconds (slowloris),
            and of held replies the client must take (see ``stall_timeout``).
        rate_window: See ``min_rate``.
    """

    max_message: int = 4 << 20
    max_streams: int = 1024
    max_header_list: int = 16 << 10
    max_header_block: int = 64 << 10
    max_buffered: int = 64 << 20
    max_held: int = 64 << 20
    max_wasted_per_second: int = 1000
    max_empty_frames_per_second: int = 10_000
    frames_per_turn: int = 256
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    idle_timeout: float = 300.0
    stall_timeout: float = 30.0
    min_rate: int = 1024
    rate_window: float = 10.0

    @property
    def tick(self) -> float:
        """How often a connection's watchdog looks."""
        shortest = min(
            self.handshake_timeout, self.header_timeout, self.stall_timeout, self.rate_window
        )
        return max(0.05, shortest / 4)


class FloodMeter:
    """Counts events in one-second windows; :meth:`hit` is False past the limit."""

    __slots__ = ("count", "limit", "start")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.start = 0.0
        self.count = 0

    def hit(self, now: float) -> bool:
        if now - self.start >= 1.0:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count <= self.limit


class RateWindow:
    """Bytes received over a window, to find a request that trickles in."""

    __slots__ = ("received", "start")

    def __init__(self, now: float) -> None:
        self.start = now
        self.received = 0

    def too_slow(self, now: float, min_rate: int, window: float) -> bool:
        """At each full window: True if fewer than ``min_rate`` bytes a second came;
        starts the next window either way."""
        elapsed = now - self.start
        if elapsed < window:
            return False
        slow = self.received < min_rate * elapsed
        self.start = now
        self.received = 0
        return slow


class DrainWindow:
    """Whether a client takes the replies held for it, over windows of
    ``stall_timeout``: any byte taken counting as progress, a client opening its
    window a byte every half second held megabytes for ever.  At the end of each
    window the client must have taken what was held at its start, or ``min_rate``
    bytes a second, whichever is less: a slow reader is served, at a cost to us
    it pays for in reading; one that stops is cut within two windows.
    """

    __slots__ = ("owed", "start", "taken")

    def __init__(self) -> None:
        self.start = 0.0
        self.owed = 0  # held at the window's start; 0: no window (nothing held)
        self.taken = 0  # the client's running count of bytes taken, then

    def stalled(self, now: float, held: int, taken: int, min_rate: int, window: float) -> bool:
        """``held``: bytes held now; ``taken``: bytes the client has taken, ever."""
        if not held:
            self.owed = 0
            return False
        if not self.owed:
            self.start, self.owed, self.taken = now, held, taken
            return False
        elapsed = now - self.start
        if elapsed < window:
            return False
        stalled = taken - self.taken < min(self.owed, min_rate * elapsed)
        self.start, self.owed, self.taken = now, held, taken
        return stalled


class ConnectionOwner(Protocol):
    """What a connection needs of its server (``conn``: the
    :class:`~clipper_core.oip.h2_connection.H2Connection`, which imports this)."""

    @property
    def handlers(self) -> Mapping[str, UnaryHandler]: ...

    @property
    def limits(self) -> H2Limits: ...

    @property
    def body_budget(self) -> BodyBudget | None:
        """The server's budget for request bytes held at once (None: none)."""

    def connection_opened(self, conn: Any) -> bool:
        """False: refused (the server's connection limit), it must close."""

    def connection_closed(self, conn: Any) -> None: ...
