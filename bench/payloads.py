"""Request bytes for each protocol, built once before the run.

* ``rest``: Clipper's ``POST /<app>/predict`` with ``{"input": [...]}``;
* ``oip-json``: Open Inference Protocol ``POST /v2/models/<m>/infer``, JSON tensor;
* ``oip-binary``: the same with the binary tensor extension (JSON header, then the
  raw little-endian tensor; ``Inference-Header-Content-Length``);
* ``oip-grpc``: a serialized ``inference.ModelInferRequest`` with
  ``raw_input_contents``, encoded here by hand (the load generator sends bytes with
  identity serializers, so it needs no generated code and no per-call encoding).

Each HTTP payload is a complete HTTP/1.1 request (head and body) ready to write.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

#: Clipper input type -> (OIP datatype, little-endian numpy dtype).
OIP_TYPES: dict[str, tuple[str, str]] = {
    "floats": ("FP32", "<f4"),
    "doubles": ("FP64", "<f8"),
    "ints": ("INT32", "<i4"),
}

GRPC_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def make_vectors(input_type: str, dim: int, count: int, seed: int) -> list[np.ndarray[Any, Any]]:
    """``count`` distinct input vectors of length ``dim`` (seeded)."""
    rng = np.random.default_rng(seed)
    if input_type == "ints":
        return [rng.integers(0, 1000, dim).astype(np.int32) for _ in range(count)]
    dtype = np.float32 if input_type == "floats" else np.float64
    # Rounded to 4 decimals: short JSON, still distinct.
    return [np.round(rng.standard_normal(dim), 4).astype(dtype) for _ in range(count)]


def _json_values(vec: np.ndarray[Any, Any]) -> list[Any]:
    if vec.dtype.kind == "f":
        return [round(float(v), 4) for v in vec]
    return [int(v) for v in vec]


def http_request(
    method: str, path: str, host: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def oip_shape(shape: list[int], dim: int) -> list[int]:
    return [dim if s < 0 else s for s in shape]


def rest_body(vec: np.ndarray[Any, Any]) -> bytes:
    return orjson.dumps({"input": _json_values(vec)})


def oip_json_body(vec: np.ndarray[Any, Any], input_type: str, shape: list[int]) -> bytes:
    datatype = OIP_TYPES[input_type][0]
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": oip_shape(shape, len(vec)),
                    "datatype": datatype,
                    "data": _json_values(vec),
                }
            ]
        }
    )


def oip_binary_body(
    vec: np.ndarray[Any, Any], input_type: str, shape: list[int]
) -> tuple[bytes, int]:
    """The body and the length of its JSON header."""
    datatype, dtype = OIP_TYPES[input_type]
    raw = np.ascontiguousarray(vec, dtype=dtype).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": oip_shape(shape, len(vec)),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, len(header)


# -- protobuf wire format (proto3), just what ModelInferRequest needs -------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def grpc_infer_request(
    model: str, vec: np.ndarray[Any, Any], input_type: str, shape: list[int], request_id: str = ""
) -> bytes:
    """A serialized ``ModelInferRequest`` (KServe v2 ``grpc_predict_v2.proto``):
    model_name = 1, id = 3, inputs = 5 (InferInputTensor: name = 1, datatype = 2,
    shape = 3 packed int64), raw_input_contents = 7."""
    datatype, dtype = OIP_TYPES[input_type]
    packed_shape = b"".join(_varint(s) for s in oip_shape(shape, len(vec)))
    tensor = (
        _field_bytes(1, b"input")
        + _field_bytes(2, datatype.encode())
        + _field_bytes(3, packed_shape)
    )
    msg = _field_bytes(1, model.encode())
    if request_id:
        msg += _field_bytes(3, request_id.encode())
    msg += _field_bytes(5, tensor)
    msg += _field_bytes(7, np.ascontiguousarray(vec, dtype=dtype).tobytes())
    return msg


def grpc_response_model_name(data: bytes) -> str | None:
    """Field 1 (model_name) of a serialized ``ModelInferResponse``, if present."""
    if len(data) >= 2 and data[0] == 0x0A:
        n, i = 0, 1
        shift = 0
        while i < len(data):
            b = data[i]
            n |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        return data[i : i + n].decode("utf-8", "replace")
    return None


#: What a default output looks like in a reply (Clipper REST JSON, and the same
#: flag in an OIP JSON ``parameters`` object).  OIP gRPC replies are checked for a
#: ``parameters`` map entry ``"default" -> bool_param: true``.
DEFAULT_MARKERS_JSON = (b'"default":true', b'"default": true')
DEFAULT_MARKER_GRPC = b"\n\x07default\x12\x02\x08\x01"


def build_payloads(
    protocol: str,
    *,
    host: str,
    port: int,
    app: str,
    model: str,
    input_type: str,
    vectors: list[np.ndarray[Any, Any]],
    shape: list[int],
) -> list[bytes]:
    """One ready-to-send request per input vector."""
    hostport = f"{host}:{port}"
    out: list[bytes] = []
    for vec in vectors:
        if protocol == "rest":
            out.append(
                http_request(
                    "POST",
                    f"/{app}/predict",
                    hostport,
                    rest_body(vec),
                    {"Content-Type": "application/json"},
                )
            )
        elif protocol == "oip-json":
            out.append(
                http_request(
                    "POST",
                    f"/v2/models/{model}/infer",
                    hostport,
                    oip_json_body(vec, input_type, shape),
                    {"Content-Type": "application/json"},
                )
            )
        elif protocol == "oip-binary":
            body, header_len = oip_binary_body(vec, input_type, shape)
            out.append(
                http_request(
                    "POST",
                    f"/v2/models/{model}/infer",
                    hostport,
                    body,
                    {
                        "Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(header_len),
                    },
                )
            )
        elif protocol == "oip-grpc":
            out.append(grpc_infer_request(model, vec, input_type, shape))
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
    return out
