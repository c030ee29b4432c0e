"""The frontend's side of the container wire format (``protos/container.proto``).

A batch travels as one payload plus N+1 byte offsets; outputs come back as JSON
documents, a tensor, or raw bytes; a failed call's gRPC status says whose fault it
was (:func:`status_error`).  The container's side is ``model_containers.codec``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import Any

import grpc
import numpy as np
import orjson

from clipper_core.errors import (
    BadInput,
    ClipperError,
    DeadlineExceeded,
    ModelError,
    ReplicaUnavailable,
)
from model_containers._proto import container_pb2 as pb

__all__ = [
    "INPUT_TYPES",
    "NUMERIC_DTYPES",
    "decode_outputs",
    "encode_batch",
    "input_type_name",
    "status_error",
]

#: Numeric input types and the little-endian dtype each travels as.
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "ints": np.dtype("<i4"),
    "floats": np.dtype("<f4"),
    "doubles": np.dtype("<f8"),
}
INPUT_TYPES: dict[str, int] = {
    "ints": pb.INTS,
    "floats": pb.FLOATS,
    "doubles": pb.DOUBLES,
    "strings": pb.STRINGS,
    "bytes": pb.BYTES,
}
_INPUT_TYPE_NAMES = {v: k for k, v in INPUT_TYPES.items()}


def input_type_name(value: int) -> str:
    """The name of a wire ``InputType`` value (``pb.DOUBLES`` -> ``"doubles"``); ``""``
    when unknown."""
    return _INPUT_TYPE_NAMES.get(value, "")


def encode_batch(inputs: Sequence[Any], input_type: str) -> tuple[bytes, list[int]]:
    """Concatenate a batch of inputs into one payload and N+1 byte offsets.

    Args:
        inputs: Numeric inputs are numpy arrays (or nested lists), flattened and
            cast to the input type's dtype (``int32``, ``float32``, ``float64``);
            strings are ``str`` (sent as UTF-8); bytes are bytes-like objects.
        input_type: ``"ints"``, ``"floats"``, ``"doubles"``, ``"strings"`` or
            ``"bytes"``.

    Returns:
        ``(data, offsets)`` with ``data[offsets[i]:offsets[i+1]]`` the i-th input.

    Raises:
        BadInput: An input does not fit the input type (a float for ``ints``, a
            ragged list, a non-string for ``strings``...).
    """
    dtype = NUMERIC_DTYPES.get(input_type)
    if dtype is not None:
        if all(type(x) is np.ndarray and x.dtype == dtype for x in inputs):
            arrays: Sequence[np.ndarray[Any, Any]] = inputs  # what the HTTP APIs send
        else:
            arrays = _numeric_arrays(inputs, input_type, dtype)
        # One copy per input, no concatenate: half the time of one big array's
        # concatenate + tobytes at 32 inputs (tobytes is C order whatever the layout).
        parts = [a.tobytes() for a in arrays]
        return b"".join(parts), [0, *accumulate(map(len, parts))]
    if input_type == "strings":
        try:
            parts = [s.encode("utf-8") for s in inputs]
        except (AttributeError, UnicodeEncodeError) as exc:
            raise BadInput(f"strings inputs must be str: {exc}") from None
        if not all(isinstance(s, str) for s in inputs):
            raise BadInput("strings inputs must be str")
    elif input_type == "bytes":
        if not all(isinstance(b, (bytes, bytearray, memoryview)) for b in inputs):
            raise BadInput("bytes inputs must be bytes-like")
        parts = [bytes(b) if isinstance(b, memoryview) else b for b in inputs]
    else:
        raise BadInput(f"unknown input type {input_type!r}; expected one of {list(INPUT_TYPES)}")
    return b"".join(parts), [0, *accumulate(map(len, parts))]


def _numeric_arrays(
    inputs: Sequence[Any], input_type: str, dtype: np.dtype[Any]
) -> list[np.ndarray[Any, Any]]:
    """Each input as an array of ``dtype``, refusing what does not fit."""
    arrays: list[np.ndarray[Any, Any]] = []
    for i, item in enumerate(inputs):
        try:
            # same_kind refuses float -> int but allows float64 -> float32.
            arrays.append(np.asarray(item).astype(dtype, casting="same_kind", copy=False))
        except (TypeError, ValueError) as exc:
            raise BadInput(f"input {i} is not a vector of {input_type}: {exc}") from None
        if arrays[-1].dtype.kind == "O":
            raise BadInput(f"input {i} is not a vector of {input_type}")
        if dtype.kind == "i" and arrays[-1].size:
            # astype wraps out-of-range integers silently; check the source.
            source = np.asarray(item)
            if source.dtype.kind in "iu" and source.dtype.itemsize > dtype.itemsize:
                info = np.iinfo(dtype)
                if source.min() < info.min or source.max() > info.max:
                    raise BadInput(f"input {i} has values outside the int32 range")
    return arrays


#: numpy dtypes by their ``PredictResponse.dtype`` string (np.dtype(str) costs 1 us).
_DTYPES: dict[str, np.dtype[Any]] = {}


def _dtype(name: str) -> np.dtype[Any]:
    dtype = np.dtype(name)
    if len(_DTYPES) < 64:  # the strings come from containers: bound the memo
        _DTYPES[name] = dtype
    return dtype


def _loads(doc: memoryview) -> Any:
    try:
        return orjson.loads(doc)
    except orjson.JSONDecodeError:
        # Python's json writes NaN/Infinity, which orjson refuses.
        return json.loads(bytes(doc))


def decode_outputs(response: pb.PredictResponse) -> list[Any]:
    """The N outputs of a PredictResponse.

    JSON outputs become Python objects; TENSOR outputs numpy arrays (numpy scalars
    for a scalar shape), read-only views of the response; RAW_BYTES outputs bytes.
    """
    encoding = response.encoding
    if encoding == pb.TENSOR:
        n = max(len(response.offsets) - 1, 0)
        # A slice, not tuple(): iterating a protobuf repeated field runs until an
        # IndexError, whose message is formatted each time.
        shape = tuple(response.shape[:])
        dtype = _DTYPES.get(response.dtype)
        if dtype is None:  # (not `or`: a dtype without fields is falsy)
            dtype = _dtype(response.dtype)
        flat = np.frombuffer(response.data, dtype=dtype)
        if n == 1 and shape:  # one query (low load): no list of row views
            return [flat.reshape(shape)]
        return list(flat.reshape((n, *shape)))
    offsets = response.offsets[:]
    data = response.data
    if encoding == pb.RAW_BYTES:
        return [data[a:b] for a, b in pairwise(offsets)]
    if encoding == pb.JSON:
        view = memoryview(data)
        return [_loads(view[a:b]) for a, b in pairwise(offsets)]
    raise ModelError(f"unknown output encoding {response.encoding}")


def status_error(code: grpc.StatusCode, details: str, call: str) -> ClipperError:
    """The error that a container's call failed with: ``code`` and ``details`` are
    its gRPC status (or the local socket's), ``call`` names the call and replica
    (``"m:1 replica 0 at host:port: predict"``)."""
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return ModelError(details or f"{call} failed")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadInput(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{call} missed its deadline")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # A message over the size limit: retrying it elsewhere fails the same way.
        return ModelError(
            f"{call} failed: the batch exceeds the message size limit ({details});"
            " send smaller inputs or lower the model's batch size"
        )
    return ReplicaUnavailable(f"{call} failed: {code.name}: {details}")
