"""The container side of the wire format: decode a batch of inputs, encode outputs.

See ``protos/container.proto`` for the layout.  Nothing here loops over elements:
numeric inputs are one ``np.frombuffer`` split at the offsets, outputs of one dtype
and shape are one ``np.stack``.  The loops that remain run once per input or output
of the batch.
"""

from __future__ import annotations

import json
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

# dtype kinds that travel as TENSOR: bool, signed, unsigned, float, complex.
_TENSOR_KINDS = frozenset("biufc")

JSON = pb.JSON
TENSOR = pb.TENSOR
RAW_BYTES = pb.RAW_BYTES


class DecodeError(ValueError):
    """A request's payload does not match its offsets or input type."""


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
    bounds = np.asarray(offsets, dtype=np.int64)
    if bounds[0] != 0 or bounds[-1] != len(data):
        raise DecodeError(
            f"offsets must run from 0 to len(data)={len(data)}, "
            f"got {int(bounds[0])}..{int(bounds[-1])}"
        )
    if len(bounds) == 1:
        return []  # N = 0 (np.split would still return one empty section)
    if bool(np.any(np.diff(bounds) < 0)):
        raise DecodeError("offsets must be non-decreasing")

    dtype = NUMERIC_DTYPES.get(input_type)
    if dtype is not None:
        if bool(np.any(bounds % dtype.itemsize)):
            bad = int(np.argmax(bounds % dtype.itemsize != 0))
            raise DecodeError(
                f"{input_type} inputs are {dtype.itemsize}-byte items; "
                f"offset {bad} ({int(bounds[bad])}) is not a multiple of {dtype.itemsize}"
            )
        # One copy makes the inputs writable (frombuffer on bytes is read-only);
        # models that normalise in place are common.
        flat = np.frombuffer(data, dtype=dtype).copy()
        return np.split(flat, bounds[1:-1] // dtype.itemsize)

    cuts = bounds.tolist()
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


def _tensor(array: np.ndarray[Any, Any]) -> EncodedOutputs:
    array = np.ascontiguousarray(array)
    n = array.shape[0]
    row = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    return EncodedOutputs(
        encoding=TENSOR,
        data=array.tobytes(),
        offsets=(np.arange(n + 1, dtype=np.int64) * row).tolist(),
        dtype=array.dtype.str,
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
            return _tensor(np.stack(items))

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
