"""Clipper's REST query API: parse and validate ``/<app>/predict`` bodies (the
replies' format is :mod:`clipper_core.clipper_reply`, re-exported here).

Compatible with Clipper's wire format: a query is ``{"input": X}`` or
``{"input_batch": [X, ...]}`` with an optional ``"version"``; X is a JSON array of
numbers for the numeric input types, a JSON string for ``strings`` and a base64
string for ``bytes``.  A reply is ``{"query_id", "output", "default"}`` plus
``"default_explanation"`` when the default output was returned.  Outputs become
JSON as :mod:`clipper_core.output_json` says (a non-finite number is named).

Numeric inputs become 1-D numpy arrays (``ints`` → int32, ``floats`` → float32,
``doubles`` → float64), converted a whole list at a time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import orjson

from clipper_core.clipper_reply import (
    DEFAULT_EXPLANATION,
    Answered,
    format_batch_reply,
    format_reply,
    reply_fields,
)
from clipper_core.errors import BadInput
from clipper_core.structures import parse_single_input as _parse_single_input

#: The input types an application or model can declare.
INPUT_TYPES: tuple[str, ...] = ("ints", "floats", "doubles", "strings", "bytes")

#: Most inputs in one ``input_batch``.
MAX_BATCH = 10_000
#: Most numbers in one numeric input.
MAX_INPUT_ELEMENTS = 1_000_000


_ALIASES = {
    "ints": "ints",
    "integers": "ints",
    "int": "ints",
    "floats": "floats",
    "float": "floats",
    "doubles": "doubles",
    "double": "doubles",
    "strings": "strings",
    "string": "strings",
    "str": "strings",
    "bytes": "bytes",
    "byte": "bytes",
}

_DTYPES: dict[str, np.dtype[Any]] = {
    "ints": np.dtype(np.int32),
    "floats": np.dtype(np.float32),
    "doubles": np.dtype(np.float64),
}
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Up to this many numbers, a range check runs faster in Python than numpy's.
SMALL_INPUT = 64
_reduce_min = np.minimum.reduce
_reduce_max = np.maximum.reduce


def within_float_range(arr: np.ndarray, limit: float) -> bool:
    """Whether every number of ``arr`` is within +-``limit``, so that a cast to a
    float type of that range cannot overflow.

    NaN fails the test.  A query's few numbers (``SMALL_INPUT`` at most) are
    compared in Python (~1 us); more take one ``min`` and one ``max`` reduction
    (~2 us for 256).  Either is cheaper than numpy's ``errstate`` and
    ``isfinite`` around the cast (~3.5 us for 256, ~6 us for a few).
    """
    if arr.size <= SMALL_INPUT:
        return all(-limit <= v <= limit for v in arr.ravel().tolist())
    return bool(_reduce_min(arr, axis=None) >= -limit and _reduce_max(arr, axis=None) <= limit)


@dataclass(slots=True)
class PredictQuery:
    """A validated prediction request.

    Attributes:
        inputs: One input per query: a 1-D numpy array (numeric types), ``str``
            (``strings``) or ``bytes`` (``bytes``).  One element unless ``batch``.
        batch: Whether the request used ``input_batch`` (answer with
            :func:`format_batch_reply`).
        version: The model version the client pinned, or ``None``.
        uid: The user id whose selection-policy state decides (``"uid"``; 0, the
            app-wide state, when absent).
    """

    inputs: list[Any]
    batch: bool
    version: str | None
    uid: int = 0


def validate_input_type(input_type: object) -> str:
    """The canonical name of an input type; Clipper's aliases are accepted.

    Raises:
        BadInput: Not one of :data:`INPUT_TYPES` or an alias of one.
    """
    if isinstance(input_type, str):
        canonical = _ALIASES.get(input_type.strip().lower())
        if canonical is not None:
            return canonical
    raise BadInput(f"unknown input type {input_type!r}; expected one of {', '.join(INPUT_TYPES)}")


def parse_predict(body: bytes, input_type: str) -> PredictQuery:
    """Parse and validate the body of ``POST /<app>/predict``.

    Args:
        body: The raw request body.
        input_type: The application's input type (canonical name or alias).

    Raises:
        BadInput: The body is not valid JSON, not an object, lacks (or has both of)
            ``input`` and ``input_batch``, or an input does not match
            ``input_type``.  The message names the problem.
    """
    input_type = validate_input_type(input_type)
    if (input_type == "floats" or input_type == "doubles") and type(body) is bytes:
        # The commonest body, {"input": [numbers]}, in one pass (ext/json_numbers.pyx);
        # None for anything else, which the general path parses and words.
        arr = _parse_single_input(body, input_type == "floats", MAX_INPUT_ELEMENTS)
        if arr is not None:
            return PredictQuery([arr], False, None, 0)
    return parse_predict_general(body, input_type)


def parse_predict_general(body: bytes, input_type: str) -> PredictQuery:
    """:func:`parse_predict` without its fast path (``input_type`` canonical): what
    the fast path must equal wherever it answers."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(_json_error(body, exc)) from None
    if type(obj) is not dict:
        raise BadInput(f"request body must be a JSON object, got {_json_type(obj)}")

    version = obj.get("version")
    if version is not None:
        if type(version) is int:
            version = str(version)
        elif type(version) is not str:
            raise BadInput(f"version must be a string or an integer, got {_json_type(version)}")
        elif not version:
            raise BadInput("version must not be empty")

    uid = obj.get("uid", 0)
    if type(uid) is not int or uid < 0:
        raise BadInput(f"uid must be an integer >= 0, got {orjson.dumps(uid).decode()}")

    has_input = "input" in obj
    has_batch = "input_batch" in obj
    if has_input == has_batch:
        if has_input:
            raise BadInput("request has both 'input' and 'input_batch'; send exactly one")
        raise BadInput("request must have 'input' or 'input_batch'")

    # Booleans hide inside numeric arrays (numpy turns [true, 1] into [1, 1]); the
    # exact check is a scan of every element, so pay for it only when the body
    # holds a boolean literal at all.
    # Both literals hold an "e": a body without one (no exponent, no "version")
    # needs no search for them; one byte is a memchr, ~20x faster than a word.
    may_hold_bools = (
        input_type in _DTYPES and b"e" in body and (b"true" in body or b"false" in body)
    )

    if has_input:
        return PredictQuery(
            [_convert(obj["input"], input_type, "input", may_hold_bools)], False, version, uid
        )

    batch = obj["input_batch"]
    if type(batch) is not list:
        raise BadInput(f"input_batch must be a JSON array of inputs, got {_json_type(batch)}")
    if not batch:
        raise BadInput("input_batch must not be empty")
    if len(batch) > MAX_BATCH:
        raise BadInput(f"input_batch has {len(batch)} inputs; the limit is {MAX_BATCH}")
    if input_type in _DTYPES:
        inputs = _convert_numeric_batch(batch, input_type, may_hold_bools)
    else:
        inputs = [_convert(x, input_type, f"input_batch[{i}]", False) for i, x in enumerate(batch)]
    return PredictQuery(inputs, True, version, uid)


def input_key(x: Any, input_type: str) -> bytes:
    """The bytes that identify an input in the prediction cache.

    The model's input type is part of the cache's model key, so the raw values
    suffice: an array's buffer, a string's UTF-8, the bytes themselves.
    """
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, np.ndarray):
        arr: np.ndarray = x
        dtype = _DTYPES.get(input_type)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        return arr.tobytes()
    raise TypeError(f"cannot key an input of type {type(x).__name__} for {input_type!r}")


class InputKeys(Sequence[bytes]):
    """The inputs' cache keys (``input_key``), computed when first read: a model
    version without a cache never reads them."""

    __slots__ = ("_input_type", "_inputs", "_keys")

    def __init__(self, inputs: Sequence[Any], input_type: str) -> None:
        self._inputs = inputs
        self._input_type = input_type
        self._keys: list[bytes] | None = None

    def _all(self) -> list[bytes]:
        keys = self._keys
        if keys is None:
            keys = self._keys = [input_key(x, self._input_type) for x in self._inputs]
        return keys

    def __len__(self) -> int:
        return len(self._inputs)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        return self._all()[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._all())


def parse_default_output(s: str) -> Any:
    """An application's default output as Clipper returns it: parsed as JSON when it
    parses (``"-1"`` → ``-1``, ``"[1, 2]"`` → ``[1, 2]``), else the string itself."""
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return s


# -- conversion -----------------------------------------------------------------


def _convert(x: Any, input_type: str, where: str, may_hold_bools: bool) -> Any:
    if input_type == "strings":
        if type(x) is not str:
            raise BadInput(
                f"{where} must be a JSON string for input type 'strings', got {_json_type(x)}"
            )
        return x
    if input_type == "bytes":
        if type(x) is not str:
            raise BadInput(
                f"{where} must be a base64-encoded JSON string for input type 'bytes', "
                f"got {_json_type(x)}"
            )
        try:
            return base64.b64decode(x, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadInput(f"{where} is not valid base64: {exc}") from None
    return _convert_numeric(x, input_type, where, may_hold_bools)


def _expect_numbers(input_type: str) -> str:
    return f"must be a JSON array of numbers for input type '{input_type}'"


def _convert_numeric(x: Any, input_type: str, where: str, may_hold_bools: bool) -> np.ndarray:
    if type(x) is not list:
        raise BadInput(f"{where} {_expect_numbers(input_type)}, got {_json_type(x)}")
    if not x:
        raise BadInput(f"{where} must not be empty")
    if len(x) > MAX_INPUT_ELEMENTS:
        raise BadInput(f"{where} has {len(x)} elements; the limit is {MAX_INPUT_ELEMENTS}")
    if may_hold_bools and bool in set(map(type, x)):
        raise _element_error(x, input_type, where)
    try:
        arr = np.array(x)
    except (ValueError, TypeError, OverflowError):
        raise _element_error(x, input_type, where) from None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise _element_error(x, input_type, where)
    return _cast(arr, input_type, where)


def _convert_numeric_batch(
    batch: list[Any], input_type: str, may_hold_bools: bool
) -> list[np.ndarray]:
    """Rows of one length convert as one 2-D array, whose rows are returned as
    views; anything else converts row by row (which also names a bad row)."""
    first = batch[0]
    if type(first) is list and first:
        width = len(first)
        total = width * len(batch)
        if total <= MAX_INPUT_ELEMENTS * 4 and not may_hold_bools:
            try:
                arr = np.array(batch)
            except (ValueError, TypeError, OverflowError):
                arr = None
            if (
                arr is not None
                and arr.ndim == 2
                and arr.shape[1] == width
                and width <= MAX_INPUT_ELEMENTS
                and arr.dtype.kind in "iuf"
            ):
                matrix = _cast(arr, input_type, "input_batch")
                return list(matrix)
    return [
        _convert_numeric(x, input_type, f"input_batch[{i}]", may_hold_bools)
        for i, x in enumerate(batch)
    ]


def _cast(arr: np.ndarray, input_type: str, where: str) -> np.ndarray:
    """Cast a numeric array to the input type's dtype, checking range and integrality
    without a Python loop."""
    kind = arr.dtype.kind
    if input_type == "ints":
        if kind == "f":
            if not np.isfinite(arr).all():
                raise BadInput(f"{where} holds a non-finite number; input type 'ints'")
            frac = arr != np.trunc(arr)
            if frac.any():
                bad = float(arr.flat[int(np.argmax(frac))])
                raise BadInput(
                    f"{where} holds a non-integral number ({bad!r}) for input type 'ints'"
                )
        lo, hi = arr.min(), arr.max()
        if lo < _INT32_MIN or hi > _INT32_MAX:
            bad = lo if lo < _INT32_MIN else hi
            raise BadInput(
                f"{where} holds {int(bad)}, outside the int32 range of input type 'ints'"
            )
        return arr.astype(np.int32)
    dtype = _DTYPES[input_type]
    if arr.dtype == dtype:
        # doubles from JSON: orjson refuses NaN and infinities, so it is finite.
        return arr
    if input_type == "floats" and within_float_range(arr, _FLOAT32_MAX):
        return arr.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype)
    if kind == "f" or dtype == np.float32:
        if not np.isfinite(out).all():
            raise BadInput(
                f"{where} holds a number outside the range of {dtype.name} "
                f"for input type '{input_type}'"
            )
    return out


def _element_error(x: list[Any], input_type: str, where: str) -> BadInput:
    """Name the first element that is not a number (the slow path of an error)."""
    for i, v in enumerate(x):
        t = type(v)
        if t is list:
            return BadInput(
                f"{where}[{i}] is an array: {where} {_expect_numbers(input_type)} "
                "(nested arrays are not allowed)"
            )
        if t is not int and t is not float:
            return BadInput(
                f"{where}[{i}] is {_a(_json_type(v))}, not a number: "
                f"{where} {_expect_numbers(input_type)}"
            )
        if t is int and not -(2**63) <= v < 2**64:
            return BadInput(f"{where}[{i}] = {v} is out of range for input type '{input_type}'")
    return BadInput(f"{where} {_expect_numbers(input_type)}")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    t = type(v)
    if t is bool:
        return "boolean"
    if t is int or t is float:
        return "number"
    if t is str:
        return "string"
    if t is list:
        return "array"
    if t is dict:
        return "object"
    return t.__name__


def _a(noun: str) -> str:
    if noun == "null":
        return noun
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _json_error(body: bytes, exc: orjson.JSONDecodeError) -> str:
    if not body.strip():
        return "request body is empty; expected a JSON object"
    hint = ""
    if b"NaN" in body or b"Infinity" in body:
        hint = " (NaN and Infinity are not valid JSON numbers)"
    return f"request body is not valid JSON{hint}: {exc}"


__all__ = [
    "DEFAULT_EXPLANATION",
    "INPUT_TYPES",
    "MAX_BATCH",
    "MAX_INPUT_ELEMENTS",
    "Answered",
    "PredictQuery",
    "format_batch_reply",
    "format_reply",
    "input_key",
    "parse_default_output",
    "parse_predict",
    "parse_predict_general",
    "reply_fields",
    "validate_input_type",
]
