"""Texts of JSON numbers for the fast-path tests: every finite double written as
JSON writers write it, and decimal texts that take the slow, correctly rounded
conversion (long mantissas, exponents at the edges, integers around 15 digits)."""

from __future__ import annotations

import math
import struct

from hypothesis import strategies as st

__all__ = ["double_texts"]


def _decimal(mantissa: int, exponent: int, negative: bool) -> bytes:
    digits = str(mantissa)
    text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + f"e{exponent}"
    return ("-" if negative else "").encode() + text.encode()


double_texts = st.one_of(
    # The shortest repr of any finite double (what json.dumps writes).
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: repr(x).encode()),
    # Any double's bits, written with 17 significant digits.
    st.integers(0, 2**64 - 1)
    .map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0])
    .filter(math.isfinite)
    .map(lambda x: f"{x:.17g}".encode()),
    # Arbitrary decimal texts: long mantissas, exponents near the edges.
    st.builds(_decimal, st.integers(0, 10**30), st.integers(-340, 320), st.booleans()),
    # Integers of every length around the 15-digit limit.
    st.integers(-(10**17), 10**17).map(lambda i: str(i).encode()),
    # Fractions with leading zeros and trailing digits.
    st.builds(
        lambda i, z, f: f"{i}.{'0' * z}{f}".encode(),
        st.integers(0, 10**6),
        st.integers(0, 25),
        st.integers(0, 10**20),
    ),
)
