"""The per-call shortcuts of the HTTP/2 gRPC server: the table-driven Huffman
decoder against the per-bit decoder it replaced, a whole unary reply against the
frames it stands for, and call heads read once per header list (real grpcio
clients on real sockets)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import pytest

from clipper_core.oip import h2_frames as h2
from clipper_core.oip.h2_call_head import call_head
from clipper_core.oip.h2_frames import CallContext
from clipper_core.oip.hpack import HpackDecoder, HpackError, _huffman_codes, huffman_decode
from tests.oip.test_h2_grpc import LoopThread

_CODES = _huffman_codes()
_BY_SYMBOL = {symbol: (bits, code) for (bits, code), symbol in _CODES.items()}


def _per_bit_decode(data: bytes) -> bytes:
    """The decoder before the table: one bit at a time, one dict lookup a bit."""
    out = bytearray()
    code = 0
    bits = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            bits += 1
            if bits >= 5:
                symbol = _CODES.get((bits, code))
                if symbol is not None:
                    if symbol == 256:
                        raise HpackError("EOS symbol inside a Huffman string")
                    out.append(symbol)
                    code = 0
                    bits = 0
    if bits > 7 or code != (1 << bits) - 1:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def _encode(text: bytes, symbols: list[int] | None = None) -> bytes:
    """RFC 7541 5.2: the codes, padded with EOS's leading ones."""
    acc = 0
    n = 0
    for symbol in symbols if symbols is not None else list(text):
        bits, code = _BY_SYMBOL[symbol]
        acc = (acc << bits) | code
        n += bits
    pad = -n % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((n + pad) // 8, "big")


def _outcome(decode: object, data: bytes) -> bytes | str:
    try:
        return decode(data)  # type: ignore[operator, no-any-return]
    except HpackError:
        return "error"


def test_every_symbol_decodes_alone_and_in_a_run() -> None:
    for symbol in range(256):
        data = _encode(bytes((symbol,)))
        assert huffman_decode(data) == _per_bit_decode(data) == bytes((symbol,))
    everything = bytes(range(256)) * 2
    assert huffman_decode(_encode(everything)) == everything


def test_random_strings_round_trip_like_the_per_bit_decoder() -> None:
    rng = random.Random(7)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-/:.%=, "
    for _ in range(2000):
        size = rng.randrange(0, 40)
        pool = alphabet if rng.random() < 0.7 else bytes(range(256))
        text = bytes(rng.choice(pool) for _ in range(size))
        data = _encode(text)
        assert huffman_decode(data) == _per_bit_decode(data) == text


def test_random_bytes_fail_where_the_per_bit_decoder_fails() -> None:
    rng = random.Random(11)
    outcomes = set()
    for _ in range(20000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 10)))
        got = _outcome(huffman_decode, data)
        assert got == _outcome(_per_bit_decode, data), data.hex()
        outcomes.add(got == "error")
    assert outcomes == {True, False}


def test_padding_and_eos_errors() -> None:
    a = _encode(b"a")  # 5 bits + 3 bits of padding
    assert huffman_decode(a) == b"a"
    with pytest.raises(HpackError, match="padding"):
        huffman_decode(bytes((a[0] & 0xF8,)))  # padding of zeros
    with pytest.raises(HpackError, match="padding"):
        huffman_decode(a + b"\xff")  # 11 bits of padding: over 7
    with pytest.raises(HpackError, match="EOS"):
        huffman_decode(_encode(b"", [ord("a"), 256, ord("b")]))
    assert huffman_decode(b"") == b""


def test_a_huffman_header_block_decodes() -> None:
    name, value = b"x-api-key", b"secret-123"
    block = (
        b"\x00"
        + bytes((0x80 | len(_encode(name)),))
        + _encode(name)
        + bytes((0x80 | len(_encode(value)),))
        + _encode(value)
    )
    assert HpackDecoder().decode(block) == [("x-api-key", "secret-123")]


def test_unary_reply_is_the_three_frames() -> None:
    for sid, reply in ((1, b""), (3, b"abc"), (0x7FFFFFFF, bytes(range(256)) * 40)):
        message = b"\x00" + len(reply).to_bytes(4, "big") + reply
        expected = (
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, h2.REPLY_HEADERS)
            + h2.frame(h2.DATA, 0, sid, message)
            + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, h2.OK_TRAILERS)
        )
        assert h2.unary_reply(sid, reply) == expected


async def _handler(raw: bytes, ctx: CallContext) -> bytes:
    return raw


def test_call_head_reads_the_headers() -> None:
    handlers = {"/t.S/M": _handler}
    base = [(":method", "POST"), (":path", "/t.S/M"), ("content-type", "application/grpc")]
    head = call_head([*base, ("te", "trailers"), ("grpc-timeout", "100m"), ("k", "v")], handlers)
    assert head.handler is _handler and head.failure is None and head.bad_timeout is None
    assert head.timeout == pytest.approx(0.1)
    assert head.metadata == (("k", "v"),)
    missing = call_head([(":method", "POST"), (":path", "/t.S/X")], handlers)
    assert missing.failure == (grpc.StatusCode.UNIMPLEMENTED, "Method not found: /t.S/X")
    get = call_head([(":method", "GET"), (":path", "/t.S/M")], handlers)
    assert get.failure is not None and get.failure[0] == grpc.StatusCode.UNIMPLEMENTED
    plain = call_head([(":method", "POST"), (":path", "/t.S/M")], handlers)
    assert plain.failure is not None and plain.failure[0] == grpc.StatusCode.INTERNAL
    bad = call_head([*base, ("grpc-timeout", "soon")], handlers)
    assert bad.failure is None and bad.bad_timeout == "bad grpc-timeout 'soon'"
    assert call_head(base, handlers).timeout is None
    for name in ("", "X-K", "a b", "a:b", "::p"):
        assert call_head([*base, (name, "v")], handlers).malformed, name
    assert not call_head([*base, ("x-k_1.~", "v")], handlers).malformed


async def _meta(raw: bytes, ctx: CallContext) -> bytes:
    meta = dict(ctx.invocation_metadata())
    return f"{meta.get('x-n')}|{ctx.time_remaining() is not None}".encode()


@pytest.fixture
def server() -> Iterator[LoopThread]:
    lt = LoopThread({"/t.S/Meta": _meta})
    try:
        yield lt
    finally:
        lt.close()


def test_repeated_and_changing_headers_on_one_connection(server: LoopThread) -> None:
    """The same block many times, then blocks that differ (metadata, timeouts):
    each call sees its own headers, and the remembered heads stay bounded."""
    with grpc.insecure_channel(f"127.0.0.1:{server.server.port}") as ch:
        call = ch.unary_unary("/t.S/Meta")
        for _ in range(20):
            assert call(b"", metadata=(("x-n", "same"),)) == b"same|False"
        for i in range(150):
            assert call(b"", metadata=(("x-n", str(i)),), timeout=30) == f"{i}|True".encode()
        assert call(b"", metadata=(("x-n", "same"),)) == b"same|False"
        heads = [len(c.heads) for c in server.server.connections]  # type: ignore[attr-defined]
    assert heads and all(0 < n <= 64 for n in heads)
