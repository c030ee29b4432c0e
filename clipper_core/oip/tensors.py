"""Open Inference Protocol tensors in the frontend: parse requests, encode replies.

A request's inputs become numpy arrays without a Python loop over numbers:
binary tensor data is ``np.frombuffer`` on a ``memoryview`` slice of the request
body (zero-copy; the array is a read-only view), JSON data one ``np.asarray``.
BYTES elements need one Python step each (length-prefixed on the wire), as in
every OIP implementation.

Everything a client can get wrong raises ``BadInput`` with a message naming the
tensor and the problem.

Non-finite numbers: binary tensor data carries them exactly; in JSON ``data`` a
reply writes them as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(JSON has no such numbers, and ``null`` would lose them).  A JSON request cannot
hold them (no string is accepted as a number): send such inputs as binary data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from clipper_core.clipper_api import within_float_range
from clipper_core.errors import BadInput
from clipper_core.output_json import all_finite, jsonable
from clipper_core.structures import parse_oip_request as _parse_oip_request
from model_containers.tensors import DATATYPES, decode_bytes, encode_bytes

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "decode_binary",
    "decode_json_data",
    "encode_http_response",
    "parse_http_request",
    "parse_http_request_general",
]

#: The binary tensor extension's header: the byte length of the JSON part.
HEADER_LENGTH = "inference-header-content-length"

#: Most elements one tensor may hold (a shape that claims more is refused early).
MAX_ELEMENTS = 1 << 31
#: Largest dimension of a tensor with no elements (nothing else bounds it).
MAX_EMPTY_DIM = 1 << 16


def _numpy_max_dims() -> int:
    try:
        np.empty((1,) * 64)
    except ValueError:  # numpy 1.x
        return 32
    return 64


#: The installed numpy's limit on an array's dimensions (64 from numpy 2, 32
#: before): a deeper shape was a 500.
MAX_DIMS = _numpy_max_dims()

_INT_KINDS = "iu"


@dataclass(slots=True)
class InputTensor:
    """One input of a request, decoded."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray[Any, Any]


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` None follows the request default."""

    name: str
    binary: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """A parsed inference request (HTTP or gRPC)."""

    inputs: list[InputTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False

    @property
    def timeout(self) -> float | None:
        """The request's ``timeout`` parameter (microseconds, as Triton's) in seconds."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        # Any int but a bool: gRPC's uint64_param arrives as an int subclass.
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise BadInput(f"parameter 'timeout' must be a positive number of µs, got {value!r}")
        return float(value) / 1e6


@dataclass(slots=True)
class OutputTensor:
    """One output of a reply."""

    name: str
    datatype: str
    array: np.ndarray[Any, Any]
    binary: bool = False


# -- shapes and elements ---------------------------------------------------------


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A tensor's shape as a tuple of non-negative ints."""
    if type(shape) is not list and type(shape) is not tuple:
        raise BadInput(f"input {name!r}: 'shape' must be an array of integers, got {shape!r}")
    dims: list[int] = []
    for d in shape:
        if type(d) is not int or d < 0:
            raise BadInput(f"input {name!r}: shape {list(shape)} holds {d!r}, not a size >= 0")
        dims.append(d)
    if len(dims) > MAX_DIMS:
        raise BadInput(f"input {name!r}: shape has {len(dims)} dimensions, more than {MAX_DIMS}")
    count = 1
    for d in dims:
        count *= d
    if count > MAX_ELEMENTS:
        raise BadInput(f"input {name!r}: shape {dims} holds too many elements")
    if count == 0 and dims and max(dims) > MAX_EMPTY_DIM:
        # [3000000000, 0] holds no element (so no data bounds it) but would make
        # a reply of three billion rows.
        raise BadInput(f"input {name!r}: shape {dims} has a dimension too large for no data")
    return tuple(dims)


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def check_datatype(name: str, datatype: Any) -> str:
    if type(datatype) is not str or datatype not in DATATYPES:
        raise BadInput(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    return datatype


def decode_binary(
    name: str, datatype: str, shape: tuple[int, ...], data: memoryview
) -> np.ndarray[Any, Any]:
    """A tensor from its raw bytes; numeric tensors are zero-copy views of ``data``."""
    count = element_count(shape)
    if datatype == "BYTES":
        try:
            return decode_bytes(data, count).reshape(shape)
        except ValueError as exc:
            raise BadInput(
                f"input {name!r}: BYTES data does not match shape {list(shape)}: {exc}"
            ) from None
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise BadInput(
            f"input {name!r}: {datatype} shape {list(shape)} needs {expected} bytes of data,"
            f" got {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and count and int(arr.view(np.uint8).max()) > 1:
        raise BadInput(f"input {name!r}: BOOL bytes must be 0 or 1")
    return arr


def _walk(value: Any) -> Iterator[Any]:
    if type(value) is list:
        for v in value:
            yield from _walk(v)
    else:
        yield value


#: The largest finite value of each floating-point datatype.
_FLOAT_MAX = {name: float(np.finfo(DATATYPES[name]).max) for name in ("FP16", "FP32", "FP64")}


def decode_json_data(
    name: str, datatype: str, shape: tuple[int, ...], data: Any, may_hold_bools: bool = True
) -> np.ndarray[Any, Any]:
    """A tensor from JSON ``data`` (flat or nested, row-major).

    ``may_hold_bools`` False (the JSON text has no ``true``/``false``) skips the
    element scan that finds booleans hidden in numeric data (numpy reads
    ``[true, 2]`` as ``[1, 2]``).
    """
    count = element_count(shape)
    if type(data) is not list:
        data = [data]  # a scalar for a one-element tensor
    if datatype == "BYTES":
        items: list[bytes] = []
        for v in _walk(data):
            if type(v) is not str:
                raise BadInput(f"input {name!r}: BYTES data must be strings, got {v!r}")
            items.append(v.encode("utf-8"))
        if len(items) != count:
            raise BadInput(
                f"input {name!r}: shape {list(shape)} has {count} elements, data has {len(items)}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadInput(f"input {name!r}: data is not a regular array of numbers") from None
    if raw.dtype.kind == "O" or raw.dtype.kind in "USV":
        raise BadInput(f"input {name!r}: data must be a regular array of {datatype} numbers")
    if raw.size != count:
        raise BadInput(
            f"input {name!r}: shape {list(shape)} has {count} elements, data has {raw.size}"
        )
    dtype = DATATYPES[datatype]
    kind = raw.dtype.kind
    if datatype == "BOOL":
        if kind != "b" and raw.size:
            raise BadInput(f"input {name!r}: BOOL data must be true/false")
        return raw.astype(dtype).reshape(shape)
    if kind == "b" or (may_hold_bools and any(type(v) is bool for v in _walk(data))):
        raise BadInput(f"input {name!r}: {datatype} data holds booleans")
    if dtype.kind in _INT_KINDS:
        if raw.size and kind == "f" and datatype == "UINT64":
            # numpy reads a list mixing ints above 2**63 with others as float64.
            if not all(type(v) is int for v in _walk(data)):
                raise BadInput(f"input {name!r}: {datatype} data must be integers")
            try:
                return np.array(data, dtype=dtype).reshape(shape)
            except OverflowError:
                raise BadInput(f"input {name!r}: a value is out of range for UINT64") from None
        if raw.size and kind not in _INT_KINDS:
            raise BadInput(f"input {name!r}: {datatype} data must be integers")
        if raw.size:
            info = np.iinfo(dtype)
            lo, hi = int(raw.min()), int(raw.max())
            if lo < info.min or hi > info.max:
                bad = lo if lo < info.min else hi
                raise BadInput(f"input {name!r}: {bad} is out of range for {datatype}")
        return raw.astype(dtype).reshape(shape)
    # floating point
    if raw.size and kind not in "iuf":
        raise BadInput(f"input {name!r}: {datatype} data must be numbers")
    if within_float_range(raw, _FLOAT_MAX[datatype]):
        return raw.astype(dtype).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(dtype)
    if raw.size and not np.isfinite(arr).all():
        raise BadInput(f"input {name!r}: a value is out of range for {datatype}")
    return arr.reshape(shape)


# -- HTTP ---------------------------------------------------------------------------


def _json_error(exc: Exception) -> BadInput:
    return BadInput(f"the request's JSON is not valid: {exc}")


def _parameters(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise BadInput(f"{where} 'parameters' must be a JSON object")
    return value


def parse_http_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse the body of ``POST /v2/models/{m}/infer`` (JSON, or JSON + binary data).

    Args:
        body: The whole request body.
        header_length: The ``Inference-Header-Content-Length`` header, if sent.
    """
    if header_length is None and type(body) is bytes:
        # The commonest request, FP32/FP64 numbers, in one pass (ext/json_numbers.pyx);
        # None for anything else, which the general path below parses and words.
        fast = _parse_oip_request(body, MAX_ELEMENTS)
        if fast is not None:
            request_id, found = fast
            try:
                inputs = [InputTensor(n, dt, shape, a.reshape(shape)) for n, dt, shape, a in found]
            except ValueError:  # deeper than numpy holds: the general path words it
                return parse_http_request_general(body, header_length)
            return InferRequest(inputs, request_id)
    return parse_http_request_general(body, header_length)


def parse_http_request_general(body: bytes, header_length: str | None) -> InferRequest:
    """:func:`parse_http_request` without its fast path: what the fast path must
    equal wherever it answers."""
    view = memoryview(body)
    if header_length is not None:
        try:
            json_size = int(header_length.strip())
        except ValueError:
            raise BadInput(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if json_size < 0 or json_size > len(body):
            raise BadInput(
                f"Inference-Header-Content-Length is {json_size} but the body has {len(body)} bytes"
            )
        header, binary = view[:json_size], view[json_size:]
    else:
        header, binary = view, view[:0]
    try:
        obj = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _json_error(exc) from None
    if type(obj) is not dict:
        raise BadInput("the inference request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and type(request_id) is not str:
        raise BadInput("'id' must be a string")
    parameters = _parameters("the request's", obj.get("parameters"))
    binary_output = parameters.pop("binary_data_output", False)
    if type(binary_output) is not bool:
        raise BadInput("parameter 'binary_data_output' must be true or false")

    raw_inputs = obj.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise BadInput("'inputs' must be a non-empty array of tensors")
    inputs: list[InputTensor] = []
    pos = 0
    json_end = len(header)
    may_hold_bools = body.find(b"true", 0, json_end) >= 0 or body.find(b"false", 0, json_end) >= 0
    for i, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            raise BadInput(f"inputs[{i}] must be a JSON object")
        name = raw.get("name")
        if type(name) is not str or not name:
            raise BadInput(f"inputs[{i}] needs a 'name'")
        datatype = check_datatype(name, raw.get("datatype"))
        shape = check_shape(name, raw.get("shape"))
        params = _parameters(f"input {name!r}", raw.get("parameters"))
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise BadInput(f"input {name!r}: binary_data_size must be an integer >= 0")
            if "data" in raw:
                raise BadInput(f"input {name!r} has both 'data' and binary_data_size")
            if pos + size > len(binary):
                raise BadInput(
                    f"input {name!r}: binary_data_size {size} runs past the"
                    f" {len(binary)} bytes of binary data after the JSON header"
                )
            array = decode_binary(name, datatype, shape, binary[pos : pos + size])
            pos += size
        else:
            if "data" not in raw:
                raise BadInput(f"input {name!r} has neither 'data' nor binary_data_size")
            array = decode_json_data(name, datatype, shape, raw["data"], may_hold_bools)
        inputs.append(InputTensor(name, datatype, shape, array))
    if pos != len(binary):
        raise BadInput(
            f"{len(binary) - pos} bytes of binary data after the JSON header belong to no"
            " input (check binary_data_size and Inference-Header-Content-Length)"
        )

    outputs: list[RequestedOutput] | None = None
    raw_outputs = obj.get("outputs")
    if raw_outputs is not None:
        if type(raw_outputs) is not list:
            raise BadInput("'outputs' must be an array")
        outputs = []
        for i, raw in enumerate(raw_outputs):
            if type(raw) is not dict or type(raw.get("name")) is not str:
                raise BadInput(f"outputs[{i}] must be an object with a 'name'")
            params = _parameters(f"output {raw['name']!r}", raw.get("parameters"))
            binary_flag = params.get("binary_data")
            if binary_flag is not None and type(binary_flag) is not bool:
                raise BadInput(f"output {raw['name']!r}: binary_data must be true or false")
            outputs.append(RequestedOutput(raw["name"], binary_flag, params))
    return InferRequest(inputs, request_id, parameters, outputs, binary_output)


def _json_data(arr: np.ndarray[Any, Any], datatype: str) -> Any:
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if flat.dtype.kind == "f" and not all_finite(flat):
        return jsonable(flat)  # names the non-finite values: orjson writes null
    # orjson writes numpy arrays natively (no Python object per number).
    return np.ascontiguousarray(flat)


def encode_http_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    parameters: Mapping[str, Any],
    outputs: Sequence[OutputTensor],
) -> tuple[bytes, int | None]:
    """The reply body and, when some output is binary, the JSON header's length."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.array.shape),
        }
        if out.binary:
            data = (
                encode_bytes(out.array)
                if out.datatype == "BYTES"
                else np.ascontiguousarray(out.array).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = _json_data(out.array, out.datatype)
        described.append(entry)
    reply: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        reply["id"] = request_id
    if parameters:
        reply["parameters"] = dict(parameters)
    reply["outputs"] = described
    header = orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
