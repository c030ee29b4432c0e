"""The container side of the wire format: decode a batch of inputs, encode outputs.

See ``protos/container.proto`` for the layout.  Nothing here loops over elements:
numeric inputs are one ``np.frombuffer`` split at the offsets, outputs of one dtype
and shape are one ``np.stack``.  The loops that remain run once per input or output
of the batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Any

import numpy as np

from model_containers._proto import container_pb2 as pb

#: Numeric input types and their little-endian numpy dtypes.
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "ints": np.dtype("<i4"),
    "floats": np.dtype("<f4"),
    "doubles": np.dtype("<f8"),
}

# dtype kinds that travel as TENSOR: bool, signed, unsigned, float.  Not complex:
# no reply format carries it (JSON has no complex number), so a complex output
# takes the JSON path and fails there as a clear model error, not a 500 "internal"
# in the frontend's reply encoder.
_TENSOR_KINDS = frozenset("biuf")

JSON = pb.JSON
TENSOR = pb.TENSOR
RAW_BYTES = pb.RAW_BYTES


class DecodeError(ValueError):
    """A request's payload does not match its offsets or input type."""


#: Up to this many offsets, decode_inputs checks them in Python rather than numpy.
_SMALL_BATCH = 64


class OutputError(ValueError):
    """A model returned outputs that cannot be sent back (wrong count, bad type)."""


@dataclass(frozen=True)
class EncodedOutputs:
    """The fields of a PredictResponse, ready to be put in the message."""

    encoding: int
    data: bytes
    offsets: list[int]
    dtype: str = ""
    shape: tuple[int, ...] = ()


def decode_inputs(input_type: str, data: bytes, offsets: Sequence[int]) -> list[Any]:
    """Split one request's payload into its N inputs.

    Args:
        input_type: One of the five input types.
        data: All inputs concatenated.
        offsets: N+1 byte offsets into ``data``.

    Returns:
        N inputs: writable 1-D numpy arrays (views of one copy of ``data``) for the
        numeric types, ``str`` for strings, ``bytes`` for bytes.

    Raises:
        DecodeError: The offsets are inconsistent, a numeric input is not a whole
            number of items, or a string is not UTF-8.
    """
    if len(offsets) == 0:
        if data:
            raise DecodeError(f"{len(data)} bytes of data but no offsets")
        return []
    # A slice, not list(): list() of a protobuf repeated field walks it until an
    # IndexError, whose message is formatted each time.
    cuts = offsets[:]
    if cuts[0] != 0 or cuts[-1] != len(data):
        raise DecodeError(
            f"offsets must run from 0 to len(data)={len(data)}, got {cuts[0]}..{cuts[-1]}"
        )
    if len(cuts) == 1:
        return []
    dtype = NUMERIC_DTYPES.get(input_type)
    if dtype is not None and len(cuts) == 2 and not len(data) % dtype.itemsize:
        # One numeric input (every query at low load): the checks above suffice.
        return [np.frombuffer(bytearray(data), dtype=dtype)]
    size = 1 if dtype is None else dtype.itemsize
    if len(cuts) <= _SMALL_BATCH:  # the common case: faster in Python than numpy
        ordered = all(a <= b for a, b in pairwise(cuts))
        aligned = size == 1 or not any(c % size for c in cuts)
    else:
        bounds = np.asarray(cuts, dtype=np.int64)
        ordered = bool(np.all(np.diff(bounds) >= 0))
        aligned = size == 1 or not bool(np.any(bounds % size))
    if not ordered:
        raise DecodeError("offsets must be non-decreasing")
    if not aligned:
        bad = next(i for i, c in enumerate(cuts) if c % size)
        raise DecodeError(
            f"{input_type} inputs are {size}-byte items; "
            f"offset {bad} ({cuts[bad]}) is not a multiple of {size}"
        )

    if dtype is not None:
        # One copy makes the inputs writable (frombuffer on bytes is read-only);
        # models that normalise in place are common.  A bytearray, not .copy():
        # one numpy array made instead of two.
        flat = np.frombuffer(bytearray(data), dtype=dtype)
        rows = [c // size for c in cuts]
        return [flat[a:b] for a, b in pairwise(rows)]  # np.split, minus its overhead

    if input_type == "bytes":
        return [data[a:b] for a, b in pairwise(cuts)]
    if input_type == "strings":
        view = memoryview(data)
        strings: list[Any] = []
        for i, (a, b) in enumerate(pairwise(cuts)):
            try:
                strings.append(str(view[a:b], "utf-8"))
            except UnicodeDecodeError as exc:
                raise DecodeError(f"input {i} is not valid UTF-8: {exc.reason}") from None
        return strings
    raise DecodeError(f"unknown input type {input_type!r}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"an output of type {type(value).__name__} is not JSON serialisable")


def _as_output_list(outputs: Any, n: int) -> list[Any] | np.ndarray[Any, Any]:
    """Check that the model returned N outputs; keep a numeric array as it is."""
    if isinstance(outputs, np.ndarray):
        if outputs.ndim == 0:
            raise OutputError(
                f"model returned a 0-d array; expected a list of {n} outputs (one per input)"
            )
        count = outputs.shape[0]
    elif isinstance(outputs, (list, tuple)):
        count = len(outputs)
    else:
        raise OutputError(
            f"model returned {type(outputs).__name__}; expected a list of {n} outputs "
            "(one per input)"
        )
    if count != n:
        raise OutputError(
            f"model returned {count} outputs for a batch of {n} inputs "
            "(it must return exactly one output per input)"
        )
    if isinstance(outputs, np.ndarray):
        return outputs if outputs.dtype.kind in _TENSOR_KINDS else list(outputs)
    return list(outputs)


#: ``dtype.str`` by dtype: numpy formats that string anew on each read.
_DTYPE_STRS: dict[np.dtype[Any], str] = {}


def _dtype_str(dtype: np.dtype[Any]) -> str:
    text = _DTYPE_STRS.get(dtype)
    if text is None:
        text = dtype.str
        if len(_DTYPE_STRS) < 64:
            _DTYPE_STRS[dtype] = text
    return text


def _tensor(array: np.ndarray[Any, Any]) -> EncodedOutputs:
    array = np.ascontiguousarray(array)
    n = array.shape[0]
    row = array.itemsize * math.prod(array.shape[1:])
    return EncodedOutputs(
        encoding=TENSOR,
        data=array.tobytes(),
        offsets=[i * row for i in range(n + 1)],
        dtype=_dtype_str(array.dtype),
        shape=tuple(int(d) for d in array.shape[1:]),
    )


def _offsets(lengths: Iterable[int]) -> list[int]:
    return [0, *accumulate(lengths)]


def encode_outputs(outputs: Any, n: int) -> EncodedOutputs:
    """Encode a model's outputs for a batch of ``n`` inputs.

    TENSOR when every output is a numpy array or scalar of one numeric dtype and
    one shape (or the model returned one numeric array of N rows); RAW_BYTES when
    every output is bytes-like; JSON otherwise.

    Raises:
        OutputError: Not exactly ``n`` outputs, or an output JSON cannot encode.
    """
    if n == 1 and type(outputs) is list and len(outputs) == 1:
        # One output row (every query at low load): _tensor without the stack.
        first = outputs[0]
        if type(first) is np.ndarray and first.dtype.kind in _TENSOR_KINDS:
            return EncodedOutputs(
                encoding=TENSOR,
                data=first.tobytes(),
                offsets=[0, first.nbytes],
                dtype=_dtype_str(first.dtype),
                shape=first.shape,
            )
    items = _as_output_list(outputs, n)
    if isinstance(items, np.ndarray):
        return _tensor(items)
    if n == 0:
        return EncodedOutputs(encoding=JSON, data=b"", offsets=[0])

    first = items[0]
    if isinstance(first, (np.ndarray, np.generic)) and first.dtype.kind in _TENSOR_KINDS:
        dtype, shape = first.dtype, np.shape(first)
        if all(
            isinstance(o, (np.ndarray, np.generic)) and o.dtype == dtype and np.shape(o) == shape
            for o in items
        ):
            # One row needs no stack (a view; _tensor copies it out once).
            return _tensor(first.reshape((1, *shape)) if n == 1 else np.stack(items))

    if all(isinstance(o, (bytes, bytearray, memoryview)) for o in items):
        return EncodedOutputs(
            encoding=RAW_BYTES,
            data=b"".join(items),
            offsets=_offsets([memoryview(o).nbytes for o in items]),
        )

    docs: list[bytes] = []
    for i, item in enumerate(items):
        try:
            docs.append(
                json.dumps(
                    item, default=_json_default, ensure_ascii=False, separators=(",", ":")
                ).encode("utf-8")
            )
        except (TypeError, ValueError) as exc:
            raise OutputError(f"output {i}: {exc}") from None
    return EncodedOutputs(encoding=JSON, data=b"".join(docs), offsets=_offsets(map(len, docs)))
