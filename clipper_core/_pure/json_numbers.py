"""Pure-Python twin of ``clipper_core._ext.json_numbers``: the same answers, slower.

Two fast paths for the commonest JSON query bodies; each returns None for any
body it does not take, which the caller then parses the general way (``orjson``
and numpy, which also word the errors), and only ever answers what the general
path answers, with the same numbers.  The extension scans the bytes itself; this
twin takes the same bodies by the same rules through regular expressions
(``parse_single_input``) and Python's ``json`` (``parse_oip_request``).

``parse_single_input(body, as_float32, max_elements)`` returns the numbers of a
body that is exactly ``{"input": [n, ...]}`` (one key, a flat non-empty array of
JSON numbers, whitespace where JSON allows it) as a 1-D float32 (or float64)
array:

* a number with a fraction or an exponent is the correctly rounded double of its
  text (``float()``, as orjson);
* an integer of at most 15 digits is the double of its value (``-0`` is ``0.0``,
  as numpy makes of JSON's integers); a longer one returns None;
* infinity (an exponent too large for a double) returns None, and with
  ``as_float32`` so does any number beyond float32's largest finite value;
* more than ``max_elements`` numbers return None.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

__all__ = ["parse_oip_request", "parse_single_input"]

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


class _Declined(Exception):
    """A body the fast path does not take."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a key twice
        raise _Declined
    return obj


def _refuse_constant(name: str) -> Any:  # NaN, Infinity: not JSON
    raise _Declined


def _plain_int(value: Any) -> bool:
    return type(value) is int and len(str(abs(value))) <= 15


def _numbers(data: Any, as_float32: bool, max_elements: int) -> list[float]:
    if type(data) is not list or not data or len(data) > max_elements:
        raise _Declined
    values: list[float] = []
    for v in data:
        if type(v) is float:
            if not math.isfinite(v):
                raise _Declined
        elif not _plain_int(v):  # a bool, a long integer, anything else
            raise _Declined
        value = float(v)
        if as_float32 and abs(value) > _FLOAT32_MAX:
            raise _Declined
        values.append(value)
    return values


def parse_oip_request(
    body: bytes, max_elements: int
) -> tuple[str | None, list[tuple[str, str, tuple[int, ...], np.ndarray[Any, Any]]]] | None:
    """The inputs of an Open Inference Protocol JSON request whose every input is
    FP32 or FP64 data given as numbers, or None for any other body.

    Taken: an object of ``"inputs"`` and optionally ``"id"`` (no other key, none
    twice), ``"inputs"`` a non-empty array of objects each with exactly ``"name"``,
    ``"shape"``, ``"datatype"`` and ``"data"``: name and id plain ASCII strings
    without escapes, the name not empty, shape integers >= 0 of at most 15 digits,
    datatype ``"FP32"`` or ``"FP64"``, data a flat non-empty array of numbers (the
    rules of :func:`parse_single_input`) whose count is the shape's, at most
    ``max_elements``.  Returns ``(id or None, [(name, datatype, shape, 1-D array of
    that datatype), ...])``.
    """
    if type(body) is not bytes:
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    if not body.isascii() or b"\\" in body:  # non-ASCII or an escape: in a string
        return None
    try:
        # Decoded first: json.loads of bytes would also take UTF-16 and UTF-32,
        # which are ASCII-only bytes too but not JSON to orjson.
        text = body.decode("ascii")
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_refuse_constant)
        if type(obj) is not dict or "inputs" not in obj or not set(obj) <= {"inputs", "id"}:
            raise _Declined
        request_id = obj.get("id")
        if "id" in obj and type(request_id) is not str:
            raise _Declined
        raw_inputs = obj["inputs"]
        if type(raw_inputs) is not list or not raw_inputs:
            raise _Declined
        inputs = []
        for raw in raw_inputs:
            if type(raw) is not dict or set(raw) != {"name", "shape", "datatype", "data"}:
                raise _Declined
            name, shape, datatype = raw["name"], raw["shape"], raw["datatype"]
            if type(name) is not str or not name or datatype not in ("FP32", "FP64"):
                raise _Declined
            if type(shape) is not list or not all(_plain_int(d) and d >= 0 for d in shape):
                raise _Declined
            count = 1
            for d in shape:
                count *= d
                if count > max_elements:
                    raise _Declined
            as_float32 = datatype == "FP32"
            values = _numbers(raw["data"], as_float32, max_elements)
            if len(values) != count:
                raise _Declined
            arr = np.array(values, dtype=np.float64)
            inputs.append(
                (name, datatype, tuple(shape), arr.astype(np.float32) if as_float32 else arr)
            )
    except (_Declined, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None  # (RecursionError: nested deeper than Python's json goes)
    return request_id, inputs
