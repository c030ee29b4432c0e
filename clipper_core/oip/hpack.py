"""HPACK (RFC 7541), the header compression of HTTP/2: what the gRPC port needs.

:class:`HpackDecoder` reads every header block a client sends (static table,
dynamic table, Huffman strings); a block that adds nothing to the dynamic table
(after the first calls of a gRPC channel, nearly every one) is remembered by its
bytes, so a repeated block costs one dict lookup.  The encoder side is two
functions: replies are a few fixed blocks built once, plus literal fields
(never added to the peer's table, never Huffman-coded) for error messages.
"""

from __future__ import annotations

__all__ = ["HeaderListTooLarge", "HpackDecoder", "HpackError", "encode_int", "encode_literal"]

#: Blocks up to this size are remembered (a cache of big ones would be memory
#: a client chooses).
_CACHED_BLOCK = 1024


class HpackError(ValueError):
    """A header block that cannot be decoded (an HTTP/2 COMPRESSION_ERROR)."""


class HeaderListTooLarge(Exception):
    """A block that decodes to more than the limit: the table was kept in step, the
    fields were not kept (a few bytes can name a 4 KiB table entry many times)."""


#: RFC 7541 Appendix A, indexes 1..61.
_STATIC_TEXT = (
    ":authority|:method=GET|:method=POST|:path=/|:path=/index.html|:scheme=http"
    "|:scheme=https|:status=200|:status=204|:status=206|:status=304|:status=400"
    "|:status=404|:status=500|accept-charset|accept-encoding=gzip, deflate"
    "|accept-language|accept-ranges|accept|access-control-allow-origin|age|allow"
    "|authorization|cache-control|content-disposition|content-encoding"
    "|content-language|content-length|content-location|content-range|content-type"
    "|cookie|date|etag|expect|expires|from|host|if-match|if-modified-since"
    "|if-none-match|if-range|if-unmodified-since|last-modified|link|location"
    "|max-forwards|proxy-authenticate|proxy-authorization|range|referer|refresh"
    "|retry-after|server|set-cookie|strict-transport-security|transfer-encoding"
    "|user-agent|vary|via|www-authenticate"
)
STATIC_TABLE: tuple[tuple[str, str], ...] = tuple(
    (name, value) for name, _, value in (f.partition("=") for f in _STATIC_TEXT.split("|"))
)

#: RFC 7541 Appendix B: ``code:bit length`` for symbols 0..256 (256 is EOS).
_HUFFMAN = (
    "1ff8:13 7fffd8:23 fffffe2:28 fffffe3:28 fffffe4:28 fffffe5:28 fffffe6:28 fffffe7:28 "
    "fffffe8:28 ffffea:24 3ffffffc:30 fffffe9:28 fffffea:28 3ffffffd:30 fffffeb:28 fffffec:28 "
    "fffffed:28 fffffee:28 fffffef:28 ffffff0:28 ffffff1:28 ffffff2:28 3ffffffe:30 ffffff3:28 "
    "ffffff4:28 ffffff5:28 ffffff6:28 ffffff7:28 ffffff8:28 ffffff9:28 ffffffa:28 ffffffb:28 "
    "14:6 3f8:10 3f9:10 ffa:12 1ff9:13 15:6 f8:8 7fa:11 3fa:10 3fb:10 f9:8 7fb:11 fa:8 16:6 "
    "17:6 18:6 0:5 1:5 2:5 19:6 1a:6 1b:6 1c:6 1d:6 1e:6 1f:6 5c:7 fb:8 7ffc:15 20:6 ffb:12 "
    "3fc:10 1ffa:13 21:6 5d:7 5e:7 5f:7 60:7 61:7 62:7 63:7 64:7 65:7 66:7 67:7 68:7 69:7 "
    "6a:7 6b:7 6c:7 6d:7 6e:7 6f:7 70:7 71:7 72:7 fc:8 73:7 fd:8 1ffb:13 7fff0:19 1ffc:13 "
    "3ffc:14 22:6 7ffd:15 3:5 23:6 4:5 24:6 5:5 25:6 26:6 27:6 6:5 74:7 75:7 28:6 29:6 2a:6 "
    "7:5 2b:6 76:7 2c:6 8:5 9:5 2d:6 77:7 78:7 79:7 7a:7 7b:7 7ffe:15 7fc:11 3ffd:14 1ffd:13 "
    "ffffffc:28 fffe6:20 3fffd2:22 fffe7:20 fffe8:20 3fffd3:22 3fffd4:22 3fffd5:22 7fffd9:23 "
    "3fffd6:22 7fffda:23 7fffdb:23 7fffdc:23 7fffdd:23 7fffde:23 ffffeb:24 7fffdf:23 "
    "ffffec:24 ffffed:24 3fffd7:22 7fffe0:23 ffffee:24 7fffe1:23 7fffe2:23 7fffe3:23 "
    "7fffe4:23 1fffdc:21 3fffd8:22 7fffe5:23 3fffd9:22 7fffe6:23 7fffe7:23 ffffef:24 "
    "3fffda:22 1fffdd:21 fffe9:20 3fffdb:22 3fffdc:22 7fffe8:23 7fffe9:23 1fffde:21 7fffea:23 "
    "3fffdd:22 3fffde:22 fffff0:24 1fffdf:21 3fffdf:22 7fffeb:23 7fffec:23 1fffe0:21 "
    "1fffe1:21 3fffe0:22 1fffe2:21 7fffed:23 3fffe1:22 7fffee:23 7fffef:23 fffea:20 3fffe2:22 "
    "3fffe3:22 3fffe4:22 7ffff0:23 3fffe5:22 3fffe6:22 7ffff1:23 3ffffe0:26 3ffffe1:26 "
    "fffeb:20 7fff1:19 3fffe7:22 7ffff2:23 3fffe8:22 1ffffec:25 3ffffe2:26 3ffffe3:26 "
    "3ffffe4:26 7ffffde:27 7ffffdf:27 3ffffe5:26 fffff1:24 1ffffed:25 7fff2:19 1fffe3:21 "
    "3ffffe6:26 7ffffe0:27 7ffffe1:27 3ffffe7:26 7ffffe2:27 fffff2:24 1fffe4:21 1fffe5:21 "
    "3ffffe8:26 3ffffe9:26 ffffffd:28 7ffffe3:27 7ffffe4:27 7ffffe5:27 fffec:20 fffff3:24 "
    "fffed:20 1fffe6:21 3fffe9:22 1fffe7:21 1fffe8:21 7ffff3:23 3fffea:22 3fffeb:22 "
    "1ffffee:25 1ffffef:25 fffff4:24 fffff5:24 3ffffea:26 7ffff4:23 3ffffeb:26 7ffffe6:27 "
    "3ffffec:26 3ffffed:26 7ffffe7:27 7ffffe8:27 7ffffe9:27 7ffffea:27 7ffffeb:27 ffffffe:28 "
    "7ffffec:27 7ffffed:27 7ffffee:27 7ffffef:27 7fffff0:27 3ffffee:26 3fffffff:30 "
)


def _huffman_codes() -> dict[tuple[int, int], int]:
    """``(bit length, code)`` -> symbol, from the table above."""
    codes: dict[tuple[int, int], int] = {}
    for symbol, entry in enumerate("".join(_HUFFMAN).split()):
        code, _, bits = entry.partition(":")
        codes[(int(bits), int(code, 16))] = symbol
    return codes


_EOS = 256
_FAIL = -1
_LEAF = 1 << 10


def _huffman_machine() -> tuple[list[tuple[int, bytes]], frozenset[int]]:
    """The code as a machine that reads four bits a step (as nghttp2 does).

    Its states are the code tree's inner nodes (0 is the root).  Entry
    ``state * 16 + nibble`` is ``(next state, symbols completed on the way)``;
    the next state is ``_FAIL`` where the nibble completes EOS.  The second
    value: the states a string may end in, the root and the first seven nodes
    down the all-ones path (padding is at most seven bits of EOS's prefix).
    """
    # inner node -> [child 0, child 1]; a child is an inner node's index, or
    # _LEAF + the symbol of a leaf
    children: list[list[int]] = [[-1, -1]]
    for (bits, code), symbol in _huffman_codes().items():
        node = 0
        for i in range(bits - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = _LEAF + symbol
            else:
                if children[node][bit] == -1:
                    children.append([-1, -1])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    table: list[tuple[int, bytes]] = []
    for state in range(len(children)):
        for nibble in range(16):
            node = state
            out = bytearray()
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child < _LEAF:
                    node = child
                elif child == _LEAF + _EOS:
                    node = _FAIL
                    break
                else:
                    out.append(child - _LEAF)
                    node = 0
            table.append((node, bytes(out)))
    accepting = {0}
    node = 0
    for _ in range(7):
        node = children[node][1]
        accepting.add(node)
    return table, frozenset(accepting)


_MACHINE, _ACCEPTING = _huffman_machine()


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded string (section 5.2); padding must be EOS's leading ones."""
    table = _MACHINE
    out = bytearray()
    state = 0
    for byte in data:
        state, emitted = table[(state << 4) | (byte >> 4)]
        if state < 0:
            raise HpackError("EOS symbol inside a Huffman string")
        if emitted:
            out += emitted
        state, emitted = table[(state << 4) | (byte & 0xF)]
        if state < 0:
            raise HpackError("EOS symbol inside a Huffman string")
        if emitted:
            out += emitted
    if state not in _ACCEPTING:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An integer with an N-bit prefix (section 5.1); ``first`` holds the flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name, raw strings (section 6.2.2)."""
    return b"".join((b"\x00", encode_int(len(name), 7), name, encode_int(len(value), 7), value))


class HpackDecoder:
    """One connection's decoding context (its dynamic table lives across blocks).

    Args:
        max_table_size: The SETTINGS_HEADER_TABLE_SIZE this side announced: the
            largest table size the peer may ask for.
    """

    def __init__(self, max_table_size: int = 4096) -> None:
        self.max_allowed = max_table_size
        self.max_size = max_table_size
        self.size = 0
        self.dynamic: list[tuple[str, str]] = []  # newest first
        self._cache: dict[bytes, list[tuple[str, str]]] = {}

    def decode(self, block: bytes, max_list: int = 1 << 62) -> list[tuple[str, str]]:
        """The header list of one complete block, in order (names and values as
        latin-1 text, so any byte survives).

        Raises:
            HpackError: The block is malformed (the connection cannot go on).
            HeaderListTooLarge: Its list is over ``max_list`` (RFC 9113 6.5.2 sizes).
        """
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        headers: list[tuple[str, str]] = []
        append = headers.append
        list_size = 0
        changed = False
        pos = 0
        end = len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                field = self._entry(index)
            elif byte & 0x40:  # literal, added to the table
                name, value, pos = self._literal(block, pos, 6)
                field = (name, value)
                self._add(name, value)
                changed = True
            elif byte & 0x20:  # table size update
                if list_size:
                    raise HpackError("table size update after a header field")
                size, pos = self._int(block, pos, 5)
                if size > self.max_allowed:
                    raise HpackError(f"table size {size} over the announced {self.max_allowed}")
                self.max_size = size
                self._evict()
                changed = True
                continue
            else:  # literal without indexing / never indexed
                name, value, pos = self._literal(block, pos, 4)
                field = (name, value)
            list_size += len(field[0]) + len(field[1]) + 32
            if list_size <= max_list:
                append(field)
        if list_size > max_list:
            self._cache.clear()  # the table may have changed
            raise HeaderListTooLarge(f"header list of {list_size} bytes over {max_list}")
        if changed:
            self._cache.clear()
        elif len(self._cache) < 256 and len(block) <= _CACHED_BLOCK:
            self._cache[bytes(block)] = headers
        return headers

    def _int(self, data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            if pos >= len(data):
                raise HpackError("truncated integer")
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos
            if shift > 28:
                raise HpackError("integer too large")

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(data):
            raise HpackError("truncated string")
        huffman = data[pos] & 0x80
        length, pos = self._int(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HpackError("truncated string")
        raw = bytes(data[pos:end])
        return (huffman_decode(raw) if huffman else raw).decode("latin-1"), end

    def _literal(self, data: bytes, pos: int, prefix_bits: int) -> tuple[str, str, int]:
        index, pos = self._int(data, pos, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        return name, value, pos

    def _entry(self, index: int) -> tuple[str, str]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        i = index - len(STATIC_TABLE) - 1
        if 0 <= i < len(self.dynamic):
            return self.dynamic[i]
        raise HpackError(f"header index {index} is not in the table")

    def _add(self, name: str, value: str) -> None:
        self.dynamic.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.dynamic:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32
