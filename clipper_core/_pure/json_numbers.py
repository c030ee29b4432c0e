"""Pure-Python twin of ``clipper_core._ext.json_numbers``: the same answers, slower.

``parse_single_input(body, as_float32, max_elements)`` returns the numbers of a
body that is exactly ``{"input": [n, ...]}`` (one key, a flat non-empty array of
JSON numbers, whitespace where JSON allows it) as a 1-D float32 (or float64)
array, and None for any other body, which the caller then parses the general way
(``orjson`` and numpy, which also word the errors).  It only answers what the
general path answers, with the same numbers:

* a number with a fraction or an exponent is the correctly rounded double of its
  text (``float()``, as orjson);
* an integer of at most 15 digits is the double of its value (``-0`` is ``0.0``,
  as numpy makes of JSON's integers); a longer one returns None;
* infinity (an exponent too large for a double) returns None, and with
  ``as_float32`` so does any number beyond float32's largest finite value;
* more than ``max_elements`` numbers return None.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

__all__ = ["parse_single_input"]

_WS = rb"[ \t\n\r]*"
_BODY = re.compile(
    _WS + rb"\{" + _WS + rb'"input"' + _WS + rb":" + _WS + rb"\[([^\]]*)\]" + _WS + rb"\}" + _WS,
)
_NUMBER = re.compile(_WS + rb"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][+-]?[0-9]+)?" + _WS)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def parse_single_input(
    body: bytes, as_float32: bool, max_elements: int
) -> np.ndarray[Any, Any] | None:
    """The numbers of ``{"input": [n, ...]}``, or None (see the module's text)."""
    if type(body) is not bytes:
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    whole = _BODY.fullmatch(body)
    if whole is None:
        return None
    tokens = whole.group(1).split(b",")
    if len(tokens) > max_elements:
        return None
    values: list[float] = []
    for token in tokens:
        number = _NUMBER.fullmatch(token)
        if number is None:
            return None
        integer, fraction, exponent = number.groups()
        if fraction is None and exponent is None:
            if len(integer.lstrip(b"-")) > 15:
                return None
            value = float(int(integer))
        else:
            value = float(number.group(1) + (fraction or b"") + (exponent or b""))
            if not math.isfinite(value):
                return None
        if as_float32 and abs(value) > _FLOAT32_MAX:
            return None
        values.append(value)
    arr = np.array(values, dtype=np.float64)
    return arr.astype(np.float32) if as_float32 else arr
