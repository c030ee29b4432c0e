"""What the HTTP/2 gRPC port sends back, against raw-frame clients: status
trailers whose size a client's input decides, and replies held back by the
client's flow-control windows (what they may hold, for how long, and what a
WINDOW_UPDATE costs).  As in ``test_h2_hostile``, nothing may reach the loop's
exception handler (``LoopThread.close`` asserts it)."""

from __future__ import annotations

import collections
import contextlib
import struct
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import grpc
import pytest

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_frames import CallContext
from clipper_core.oip.h2_limits import H2Limits
from clipper_core.oip.hpack import HpackDecoder, encode_literal
from tests.oip.test_h2_grpc import LoopThread
from tests.oip.test_h2_hostile import Raw, message, request_block

pytestmark = pytest.mark.timeout(60)

NO_WINDOW = struct.pack(">HI", h2.S_INITIAL_WINDOW, 0)  # the client's SETTINGS
PLUS_ONE = (1).to_bytes(4, "big")


async def _echo(raw: bytes, ctx: CallContext) -> bytes:
    return raw[::-1]


async def _not_found(raw: bytes, ctx: CallContext) -> bytes:
    """As the OIP servicer answers an unknown model: its name, from the request, in
    the message; the request says how long a name to make up."""
    await ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {'m' * int(raw)!r}")


async def _not_bytes(raw: bytes, ctx: CallContext) -> bytes:
    return "a handler's bug: text, not bytes"  # type: ignore[return-value]


@pytest.fixture
def make() -> Iterator[Callable[..., LoopThread]]:
    made: list[LoopThread] = []

    def start(**limits: Any) -> LoopThread:
        handlers = {"/t.S/Echo": _echo, "/t.S/NotFound": _not_found, "/t.S/Bug": _not_bytes}
        lt = LoopThread(handlers, H2Limits(**limits))
        made.append(lt)
        return lt

    yield start
    for lt in made:
        lt.close()


# -- status trailers -------------------------------------------------------------------


@pytest.mark.parametrize("name_length", [20_000, 17 << 20])
def test_a_long_status_message_is_cut_and_fits_the_peers_frames(
    make: Any, name_length: int
) -> None:
    """20,000 characters made one HEADERS frame over the client's 16 KiB frame size
    (grpcio fails the connection: RESOURCE_EXHAUSTED); over 16 MiB the frame could
    not be built at all, and the stream was never answered."""
    c = Raw(make().server.port)
    c.call(1, str(name_length).encode(), path="/t.S/NotFound")
    frames = c.read(lambda f: f[2] == 1 and f[0] == h2.HEADERS and bool(f[1] & h2.END_STREAM))
    assert all(len(f[3]) <= h2.DEFAULT_FRAME for f in frames)
    code, quoted = _status(c, frames)
    message = unquote(quoted)
    assert code == grpc.StatusCode.NOT_FOUND.value[0]
    assert message.startswith("unknown model 'mmm") and message.endswith("...")
    assert len(message.encode()) == h2.MAX_STATUS_MESSAGE + 3
    assert c.alive()


def test_a_reply_that_cannot_be_sent_still_ends_its_stream(make: Any) -> None:
    """A failure while answering escaped the call's task: the stream was never
    answered nor closed (the client waited to its deadline)."""
    c = Raw(make().server.port)
    c.call(1, b"", path="/t.S/Bug")
    assert c.rst(1) == h2.INTERNAL_ERROR
    c.call(3, b"ab")
    assert c.status(3) == (0, "")


def _status(c: Raw, frames: list[tuple[int, int, int, bytes]]) -> tuple[int, str]:
    fields: dict[str, str] = {}
    for kind, _, _, payload in frames:
        if kind == h2.HEADERS:
            fields.update(c.decoder.decode(payload))
    return int(fields["grpc-status"]), fields.get("grpc-message", "")


def test_a_header_block_longer_than_a_frame_goes_on_in_continuations() -> None:
    block = b"".join(encode_literal(b"k%d" % i, b"v" * 1000) for i in range(40))
    out = h2.header_frames(7, h2.END_STREAM, block, 16384)
    frames = []
    while out:
        n = int.from_bytes(out[:3], "big")
        frames.append((out[3], out[4], int.from_bytes(out[5:9], "big"), out[9 : 9 + n]))
        out = out[9 + n :]
    assert [f[0] for f in frames] == [h2.HEADERS, h2.CONTINUATION, h2.CONTINUATION]
    assert [f[1] for f in frames] == [h2.END_STREAM, 0, h2.END_HEADERS]
    assert all(f[2] == 7 and len(f[3]) <= 16384 for f in frames)
    decoded = HpackDecoder().decode(b"".join(f[3] for f in frames))
    assert decoded == [(f"k{i}", "v" * 1000) for i in range(40)]
    assert h2.header_frames(7, 0, b"ab", 16384) == h2.frame(h2.HEADERS, h2.END_HEADERS, 7, b"ab")


# -- replies held back by the client's windows -----------------------------------------


def _goaway_while(c: Raw, send: Callable[[], None], times: int) -> int:
    """Call ``send`` up to ``times`` times, a tenth of a second apart, until the
    server's GOAWAY comes; its error code, or -1 if none came."""
    c.sock.settimeout(0.1)
    for _ in range(times):
        with contextlib.suppress(OSError):  # closed: the GOAWAY is in our buffer
            send()
        with contextlib.suppress(TimeoutError):
            frames = c.read(lambda f: f[0] == h2.GOAWAY)
            if frames and frames[-1][0] == h2.GOAWAY:
                return int.from_bytes(frames[-1][3][4:8], "big")
    return -1


def _send_message(c: Raw, sid: int, body: bytes) -> None:
    """A request message in DATA frames of the default size, the last ending the stream."""
    data = message(body)
    for at in range(0, len(data), h2.DEFAULT_FRAME):
        end = h2.END_STREAM if at + h2.DEFAULT_FRAME >= len(data) else 0
        c.send(h2.DATA, end, sid, data[at : at + h2.DEFAULT_FRAME])


class _Replies:
    """The headers, DATA and ends of a raw client's streams, as it reads them."""

    def __init__(self, c: Raw) -> None:
        self.c = c
        self.fields: dict[int, dict[str, str]] = collections.defaultdict(dict)
        self.data: dict[int, bytes] = collections.defaultdict(bytes)
        self.ended: set[int] = set()

    def read_until(self, done: Callable[[], bool]) -> None:
        def seen(f: tuple[int, int, int, bytes]) -> bool:
            if f[0] == h2.DATA:
                self.data[f[2]] += f[3]
            elif f[0] == h2.HEADERS:
                self.fields[f[2]].update(self.c.decoder.decode(f[3]))
                if f[1] & h2.END_STREAM:
                    self.ended.add(f[2])
            return done()

        self.c.read(seen)


def test_window_updates_that_move_nothing_do_not_keep_held_replies(make: Any) -> None:
    """Any WINDOW_UPDATE counted as progress: a client that never opens a stream's
    window but adds a byte to the connection's now and then kept its held replies
    past the stall timeout for ever."""
    c = Raw(make(stall_timeout=0.5).server.port, settings=NO_WINDOW)
    c.call(1, b"abc")  # its reply waits for stream 1's window, which stays 0

    def update() -> None:
        c.send(h2.WINDOW_UPDATE, 0, 0, PLUS_ONE)

    assert _goaway_while(c, update, times=100) == h2.ENHANCE_YOUR_CALM


def test_a_flood_of_window_updates_that_move_nothing_is_cut(make: Any) -> None:
    """Each connection WINDOW_UPDATE went over every held reply, and none counted
    as waste: 2,000 of them with 1,000 replies held blocked the loop for seconds.
    Now one that can move nothing counts, as a PING does."""
    c = Raw(make(max_wasted_per_second=100).server.port, settings=NO_WINDOW)
    c.call(1, b"abc")
    c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1)  # held: its window is 0
    with contextlib.suppress(OSError):  # the server may close while we send
        c.sock.sendall(h2.frame(h2.WINDOW_UPDATE, 0, 0, PLUS_ONE) * 1000)
    assert c.goaway() == h2.ENHANCE_YOUR_CALM


def test_held_replies_move_as_their_windows_open(make: Any) -> None:
    """A stream's update sends its reply until the connection window stops it; the
    connection's update then sends the rest."""
    c = Raw(make().server.port, settings=NO_WINDOW)
    body = bytes(range(256)) * 160  # two replies of 40,965 bytes: over 65,535
    for sid in (1, 3):
        c.send(h2.HEADERS, h2.END_HEADERS, sid, request_block())
        _send_message(c, sid, body)
    replies = _Replies(c)

    def open_window(sid: int) -> None:
        c.send(h2.WINDOW_UPDATE, 0, sid, (1 << 20).to_bytes(4, "big"))

    open_window(1)
    replies.read_until(lambda: replies.ended == {1})
    open_window(3)  # the rest of the connection window, then stopped
    replies.read_until(lambda: len(replies.data[3]) == 65535 - 40965)
    open_window(0)
    replies.read_until(lambda: replies.ended == {1, 3})
    assert replies.data == {sid: message(body[::-1]) for sid in (1, 3)}


def test_replies_past_max_held_are_kept_and_new_streams_refused(make: Any) -> None:
    """A reply already made is not thrown away for the client's windows (grpc.aio
    keeps it too): past max_held, new streams are refused until the client reads."""
    c = Raw(make(max_held=100_000).server.port, settings=NO_WINDOW)
    sids = (1, 3, 5, 7, 9)
    for sid in sids:  # all open while nothing is held
        c.send(h2.HEADERS, h2.END_HEADERS, sid, request_block())
    body = bytes(range(250)) * 120  # replies of 30,005 bytes: three fit in 100,000
    for sid in sids:
        _send_message(c, sid, body)
    replies = _Replies(c)
    replies.read_until(lambda: set(replies.fields) == set(sids))  # all held
    c.call(11, b"x")
    assert c.rst(11) == h2.REFUSED_STREAM
    for sid in (0, *sids):  # the client reads: the held replies come whole
        c.send(h2.WINDOW_UPDATE, 0, sid, (1 << 20).to_bytes(4, "big"))
    replies.read_until(lambda: replies.ended == set(sids))
    for sid in sids:
        assert replies.fields[sid]["grpc-status"] == "0"
        assert replies.data[sid] == message(body[::-1])


def test_a_reply_larger_than_max_held_alone_is_still_sent(make: Any) -> None:
    """The limit bounds what replies pile up, not how large one may be."""
    c = Raw(make(max_held=10_000).server.port, settings=NO_WINDOW)
    body = bytes(range(250)) * 120
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block())
    _send_message(c, 1, body)
    replies = _Replies(c)
    replies.read_until(lambda: 1 in replies.fields)  # its headers: the reply is held
    c.send(h2.WINDOW_UPDATE, 0, 1, (1 << 20).to_bytes(4, "big"))
    replies.read_until(lambda: replies.ended == {1})
    assert replies.fields[1]["grpc-status"] == "0"
    assert replies.data[1] == message(body[::-1])


# -- the client's HPACK table size -----------------------------------------------------

TABLE_0 = struct.pack(">HI", h2.S_HEADER_TABLE_SIZE, 0)


def _blocks(c: Raw, sid: int) -> list[bytes]:
    """The header blocks of a stream's reply, to its trailers (each decodes)."""
    frames = c.read(lambda f: f[2] == sid and f[0] == h2.HEADERS and bool(f[1] & h2.END_STREAM))
    blocks = [f[3] for f in frames if f[0] == h2.HEADERS and f[2] == sid]
    for block in blocks:
        c.decoder.decode(block)
    return blocks


def _updates(blocks: list[bytes]) -> list[bool]:
    """Which blocks begin with a dynamic table size update to 0."""
    return [block[:1] == b"\x20" for block in blocks]


@pytest.mark.parametrize(("path", "body"), [("/t.S/Echo", b"hi"), ("/t.S/NotFound", b"3")])
def test_the_block_after_the_client_resizes_its_table_says_so(
    make: Any, path: str, body: bytes
) -> None:
    """RFC 7541 4.2: once the client changes SETTINGS_HEADER_TABLE_SIZE, our next
    header block begins with a table size update (libnghttp2 rejects one without)."""
    c = Raw(make().server.port, settings=TABLE_0)
    c.call(1, body, path=path)
    assert _updates(_blocks(c, 1))[0]
    c.call(3, body, path=path)
    assert not any(_updates(_blocks(c, 3)))


def test_a_held_replys_trailers_carry_a_resize_that_came_meanwhile(make: Any) -> None:
    c = Raw(make().server.port, settings=TABLE_0 + NO_WINDOW)
    c.call(1, b"hi")
    head = c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1)[-1][3]
    assert _updates([head]) == [True]
    c.send(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.S_HEADER_TABLE_SIZE, 100))
    c.send(h2.WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big"))
    assert _updates(_blocks(c, 1)) == [True]  # the trailers


def test_a_compressed_message_is_unimplemented_with_the_encodings_accepted(make: Any) -> None:
    """gRPC's doc/compression.md: UNIMPLEMENTED must say, in grpc-accept-encoding,
    what the server accepts (identity), so that the client can resend uncompressed;
    the answer had no such header."""
    c = Raw(make().server.port)
    c.send(h2.HEADERS, h2.END_HEADERS, 1, request_block(grpc_encoding="gzip"))
    c.send(h2.DATA, h2.END_STREAM, 1, b"\x01" + message(b"x")[1:])
    frames = c.read(lambda f: f[0] == h2.HEADERS and f[2] == 1)
    fields = dict(c.decoder.decode(frames[-1][3]))
    assert frames[-1][1] & h2.END_STREAM  # trailers only
    assert fields["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert fields["grpc-accept-encoding"] == "identity"
    c.call(3, b"x")  # then uncompressed, as the client would
    assert c.status(3) == (0, "")
