"""Values on a pipeline's edges: a stage's output made the next model's input,
and the joins (``concat``, ``dict``) of several parents' outputs.

A stage's declared ``output_type`` is checked against the next stage at
registration; what a model actually answers is checked here, at the hop, so
that an output that is not what its stage declared fails its own query with a
clear error and never the batch it would have joined.  Pure: no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from clipper_core.errors import ModelError

__all__ = ["as_input", "join", "json_text"]

_DTYPES: dict[str, np.dtype[Any]] = {
    "ints": np.dtype(np.int32),
    "floats": np.dtype(np.float32),
    "doubles": np.dtype(np.float64),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_input(value: Any, input_type: str, source: str) -> Any:
    """``value`` as an input of ``input_type``: a flat numpy vector for the numeric
    types (a number becomes a one-element vector), ``str`` or ``bytes``.

    Args:
        value: What ``source`` answered (or a join of such answers).
        input_type: What the next model takes.
        source: Names where the value came from, for the error.

    Raises:
        ModelError: The value is not of ``input_type``.
    """
    dtype = _DTYPES.get(input_type)
    if dtype is not None:
        try:
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{arr.dtype} values")
            out = arr.astype(dtype, casting="same_kind").ravel()
            if dtype.kind == "i" and arr.dtype.kind in "iu" and arr.size:
                info = np.iinfo(dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise ValueError("values outside the int32 range")
        except (TypeError, ValueError) as exc:
            raise ModelError(
                f"{source} answered {_shown(value)}, not {input_type} ({exc})"
            ) from None
        return out
    if input_type == "strings" and isinstance(value, str):
        return value
    if input_type == "bytes" and isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ModelError(f"{source} answered {_shown(value)}, not {input_type}")


def join(combine: str, parents: Sequence[tuple[str, Any]], output_type: str, source: str) -> Any:
    """Join the outputs of a stage's parents (in the order of its edges).

    ``"dict"``: ``{parent name: output}``.  ``"concat"``: the outputs, each
    checked to be of ``output_type``, concatenated (vectors end to end, strings
    and bytes joined).

    Raises:
        ModelError: A parent's output is not of ``output_type``.
    """
    if combine == "dict":
        return dict(parents)
    parts = [as_input(v, output_type, f"{source} parent {name!r}") for name, v in parents]
    if output_type == "strings":
        return "".join(parts)
    if output_type == "bytes":
        return b"".join(parts)
    return np.concatenate(parts)


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_text(value: Any, source: str) -> str:
    """``value`` (a ``dict`` join) as JSON text, for a model that takes strings;
    numpy values become numbers and lists, bytes base64.

    Raises:
        ModelError: Something in it has no JSON form.
    """
    try:
        return orjson.dumps(
            value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        ).decode()
    except TypeError as exc:
        raise ModelError(f"{source}: the joined outputs have no JSON form: {exc}") from None
