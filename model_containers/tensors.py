"""Tensor batches in the container: decode named input tensors, encode outputs.

A tensor batch (``PredictRequest.tensors``, see ``protos/container.proto``) carries
named tensors whose first dimension is the batch: the frontend concatenated the
rows of several Open Inference Protocol requests.  Numeric tensors decode with one
``np.frombuffer``; BYTES elements (4-byte little-endian length, then the bytes)
need one Python step per element, as every BYTES codec does.

This module also holds what ``Model.predict_tensors`` does by default: a model
written for Clipper's ``predict(list)`` serves one input tensor, each row of which
becomes one input, and its N outputs become one output tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from model_containers.tensor_spec import TensorSpec

#: OIP datatype -> little-endian numpy dtype (BYTES: object arrays of ``bytes``).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("|b1"),
    "UINT8": np.dtype("|u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("|i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

#: The OIP datatype of each Clipper input type.
INPUT_TYPE_DATATYPES: dict[str, str] = {
    "ints": "INT32",
    "floats": "FP32",
    "doubles": "FP64",
    "strings": "BYTES",
    "bytes": "BYTES",
}

_LENGTH = np.dtype("<u4")


class TensorInputError(ValueError):
    """A tensor batch that the model cannot take (answered INVALID_ARGUMENT)."""


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The OIP datatype of a numpy dtype (``str``/``bytes``/object arrays: BYTES).

    Raises:
        ValueError: No OIP datatype fits (complex numbers, datetimes...).
    """
    if dtype.kind in "OSU":
        return "BYTES"
    native = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    for name, candidate in DATATYPES.items():
        if name != "BYTES" and candidate == native:
            return name
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def default_input_specs(input_type: str) -> tuple[TensorSpec, ...]:
    """The input a Clipper-typed model serves: ``input`` of shape [-1, -1]."""
    return (TensorSpec("input", INPUT_TYPE_DATATYPES[input_type], (-1, -1)),)


def default_output_specs() -> tuple[TensorSpec, ...]:
    """The output a model that declares none reports: ``output``, BYTES, [-1].

    The datatype actually answered is inferred from what ``predict`` returns.
    """
    return (TensorSpec("output", "BYTES", (-1,)),)


# -- BYTES ---------------------------------------------------------------------


def decode_bytes(data: bytes | memoryview, count: int) -> np.ndarray[Any, Any]:
    """``count`` length-prefixed elements as a 1-D object array of ``bytes``.

    Raises:
        ValueError: The lengths do not add up to ``len(data)``.
    """
    view = memoryview(data)
    end = len(view)
    if count * 4 > end:  # before allocating: the shape is the client's to choose
        raise ValueError(
            f"{count} BYTES elements need at least {count * 4} bytes (their lengths), got {end}"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > end:
            raise ValueError(f"BYTES data ends inside the length of element {i}")
        size = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + size > end:
            raise ValueError(f"BYTES element {i} of {size} bytes runs past the data")
        out[i] = bytes(view[pos : pos + size])
        pos += size
    if pos != end:
        raise ValueError(f"{end - pos} bytes left over after {count} BYTES elements")
    return out


def _element_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.bytes_):
        return bytes(value)
    if isinstance(value, np.str_):
        return str(value).encode("utf-8")
    try:
        text = json.dumps(value, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or an infinity: named, as the REST replies name them
        text = json.dumps(
            _named(value), default=_json_default, separators=(",", ":"), allow_nan=False
        )
    return text.encode("utf-8")


def _named(value: Any) -> Any:
    """``value`` with each non-finite float as ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (JSON has no such numbers; json.dumps would write invalid JSON)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (np.ndarray, np.generic)):
        return _named(value.tolist())
    if isinstance(value, dict):
        return {k: _named(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_named(v) for v in value]
    return value


def encode_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """Row-major elements, each a 4-byte little-endian length then the bytes.

    ``str`` elements are sent as UTF-8; other objects as JSON text.
    """
    parts: list[bytes] = []
    for value in array.ravel(order="C"):
        raw = _element_bytes(value)
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"a value of type {type(value).__name__} is not JSON serialisable")


# -- tensors -------------------------------------------------------------------


def decode_tensor(datatype: str, shape: Sequence[int], data: bytes) -> np.ndarray[Any, Any]:
    """A writable array for one tensor of a batch.

    Raises:
        TensorInputError: Unknown datatype, or the data does not fit the shape.
    """
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise TensorInputError(f"unknown datatype {datatype!r}")
    # shape[:]: a protobuf repeated field iterates until an IndexError (slow).
    dims = tuple(map(int, shape[:]))
    if dims and min(dims) < 0:
        raise TensorInputError(f"negative dimension in shape {list(dims)}")
    count = math.prod(dims)  # np.prod costs 5 us a call here, a tenth of a query
    if datatype == "BYTES":
        try:
            return decode_bytes(data, count).reshape(dims)
        except ValueError as exc:
            raise TensorInputError(str(exc)) from None
    if len(data) != count * dtype.itemsize:
        raise TensorInputError(
            f"{datatype} tensor of shape {list(dims)} needs {count * dtype.itemsize} bytes,"
            f" got {len(data)}"
        )
    # One copy makes the array writable (frombuffer on bytes is read-only); a
    # bytearray, not .copy(): one numpy array made instead of two.
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(dims)


def encode_tensor(array: Any, datatype: str | None = None) -> tuple[str, list[int], bytes]:
    """``(datatype, shape, data)`` of an output; ``datatype`` casts when given.

    Raises:
        ValueError: The value cannot become a tensor of that datatype.
    """
    arr = array if isinstance(array, np.ndarray) else np.asarray(array)
    if datatype is None:
        datatype = datatype_of(arr.dtype)
    if datatype == "BYTES":
        return datatype, list(arr.shape), encode_bytes(arr)
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"unknown datatype {datatype!r}")
    if arr.dtype.kind in "OSU":
        raise ValueError(f"cannot send {arr.dtype} values as {datatype}")
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return datatype, list(arr.shape), np.ascontiguousarray(arr).tobytes()


# -- the default predict_tensors -----------------------------------------------


def _rows(tensor: np.ndarray[Any, Any], input_type: str) -> list[Any]:
    """One Clipper input per row of the tensor."""
    n = tensor.shape[0]
    if input_type in ("strings", "bytes"):
        if tensor.dtype.kind not in "OSU":
            raise TensorInputError(f"a model of {input_type} inputs takes a BYTES tensor")
        width = int(np.prod(tensor.shape[1:], dtype=np.int64)) if tensor.ndim > 1 else 1
        if width != 1:
            raise TensorInputError(
                f"a model of {input_type} inputs takes one element per row; got rows of"
                f" shape {list(tensor.shape[1:])}"
            )
        flat = tensor.reshape(n)
        if input_type == "bytes":
            return [_element_bytes(v) for v in flat]
        out: list[Any] = []
        for i, value in enumerate(flat):
            if isinstance(value, str):
                out.append(value)
                continue
            try:
                out.append(_element_bytes(value).decode("utf-8"))
            except UnicodeDecodeError:
                raise TensorInputError(f"row {i} is not valid UTF-8") from None
        return out
    if tensor.dtype.kind in "OSU":
        raise TensorInputError(f"a model of {input_type} inputs takes a numeric tensor")
    dtype = DATATYPES[INPUT_TYPE_DATATYPES[input_type]]
    try:
        matrix = tensor.reshape(n, -1).astype(dtype, casting="same_kind", copy=False)
    except TypeError as exc:
        raise TensorInputError(f"cannot pass the tensor as {input_type}: {exc}") from None
    return list(matrix)


def outputs_to_tensor(outputs: Any, n: int, datatype: str | None = None) -> np.ndarray[Any, Any]:
    """The N outputs of ``predict`` as one array whose first dimension is N.

    Numbers become INT64/FP64/BOOL, numpy values keep their dtype, ``str`` and
    ``bytes`` become BYTES, anything else (lists, dicts...) BYTES holding JSON.

    Raises:
        ValueError: Not exactly N outputs.
    """
    if isinstance(outputs, np.ndarray):
        if outputs.ndim == 0 or outputs.shape[0] != n:
            raise ValueError(f"model returned an array of shape {outputs.shape} for {n} inputs")
        arr = outputs
    else:
        if not isinstance(outputs, (list, tuple)):
            raise ValueError(f"model returned {type(outputs).__name__}; expected a list")
        items = list(outputs)
        if len(items) != n:
            raise ValueError(f"model returned {len(items)} outputs for a batch of {n} inputs")
        arr = _stack(items)
    if datatype is not None and datatype != "BYTES" and arr.dtype.kind not in "OSU":
        arr = arr.astype(DATATYPES[datatype])
    return arr


def _stack(items: list[Any]) -> np.ndarray[Any, Any]:
    n = len(items)
    if n and all(isinstance(v, (np.ndarray, np.generic)) for v in items):
        first = items[0]
        if first.dtype.kind in "biuf" and all(
            v.dtype == first.dtype and np.shape(v) == np.shape(first) for v in items
        ):
            return np.stack(items)
    if n and all(type(v) is bool for v in items):
        return np.asarray(items, dtype=np.bool_)
    if n and all(type(v) is int for v in items):
        try:
            return np.asarray(items, dtype=np.int64)
        except OverflowError:
            pass
    if n and all(type(v) in (int, float) for v in items):
        return np.asarray(items, dtype=np.float64)
    out = np.empty(n, dtype=object)
    for i, v in enumerate(items):
        out[i] = v if isinstance(v, (bytes, str)) else _element_bytes(v)
    return out


class RowModel(Protocol):
    """What :func:`predict_rows` uses of a ``Model`` that implements ``predict``."""

    @property
    def input_type(self) -> str | None: ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...

    def predict(self, inputs: list[Any]) -> Sequence[Any]: ...


def predict_rows(model: RowModel, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    """``Model.predict_tensors`` for a Clipper-style model: rows in, rows out."""
    if len(inputs) != 1:
        raise TensorInputError(
            f"{type(model).__name__} takes one input tensor (it implements predict(), not"
            f" predict_tensors()); got {len(inputs)}: {sorted(inputs)}"
        )
    ((_, tensor),) = inputs.items()
    if tensor.ndim == 0:
        raise TensorInputError("the input tensor needs a batch dimension")
    input_type = model.input_type or "bytes"
    rows = _rows(tensor, input_type)
    outputs = model.predict(rows)
    specs = tuple(model.outputs) or default_output_specs()
    spec = specs[0]
    declared = spec.datatype if tuple(model.outputs) else None
    return {spec.name: outputs_to_tensor(outputs, len(rows), declared)}
