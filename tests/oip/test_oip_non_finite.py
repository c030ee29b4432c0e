"""Non-finite numbers through the Open Inference Protocol: binary data and gRPC
carry them bit for bit; JSON data writes them as the strings "NaN", "Infinity" and
"-Infinity" (never null), which tritonclient reads back as numbers; a JSON
request cannot hold them."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.oip.conftest import OipServer
from tests.oip.oip_models import ALL_DATATYPES, input_name

pytestmark = pytest.mark.timeout(120)

FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
#: A quiet NaN with a payload, per float width: exactness is bit for bit.
NAN_BITS: dict[str, tuple[Any, int]] = {
    "FP16": (np.uint16, 0x7E01),
    "FP32": (np.uint32, 0x7FC00001),
    "FP64": (np.uint64, 0x7FF8000000000001),
}


def _special(datatype: str) -> np.ndarray:
    dtype = FLOATS[datatype]
    arr = np.array([[1.5, np.inf], [-np.inf, 0.0]], dtype=dtype)
    uint, bits = NAN_BITS[datatype]
    arr[1, 1] = np.array([bits], dtype=uint).view(dtype)[0]
    return arr


def _plain(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    return np.zeros((2, 2), dtype=datatype.lower())


def _echo_inputs() -> dict[str, np.ndarray]:
    return {d: _special(d) if d in FLOATS else _plain(d) for d in ALL_DATATYPES}


def _same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    uint = NAN_BITS[{np.dtype(v): k for k, v in FLOATS.items()}[want.dtype]][0]
    return got.dtype == want.dtype and np.array_equal(got.view(uint), want.view(uint))


def test_http_binary_output_is_exact_and_json_output_names_the_values(oip: OipServer) -> None:
    arrays = _echo_inputs()
    client = httpclient.InferenceServerClient(oip.http_url)
    try:
        inputs = []
        for datatype, arr in arrays.items():
            inp = httpclient.InferInput(input_name(datatype), list(arr.shape), datatype)
            inp.set_data_from_numpy(arr, binary_data=True)
            inputs.append(inp)
        for binary in (True, False):
            outputs = [
                httpclient.InferRequestedOutput(f"out_{d.lower()}", binary_data=binary)
                for d in FLOATS
            ]
            res = client.infer("echo", inputs, outputs=outputs)
            for datatype in FLOATS:
                got = res.as_numpy(f"out_{datatype.lower()}")
                want = arrays[datatype]
                if binary:
                    assert _same_bits(got, want), (datatype, got)
                else:
                    # tritonclient reads the names back as the numbers (NaN's
                    # payload is not carried by JSON).
                    assert got.dtype == want.dtype
                    np.testing.assert_array_equal(got, want)
    finally:
        client.close()


def test_json_reply_is_strict_json_without_null(oip: OipServer) -> None:
    arrays = _echo_inputs()
    header: dict[str, Any] = {"inputs": [], "outputs": []}
    blobs = []
    for datatype, arr in arrays.items():
        if datatype == "BYTES":
            data = b"".join(len(v).to_bytes(4, "little") + v for v in arr.reshape(-1))
        else:
            data = np.ascontiguousarray(arr).tobytes()
        header["inputs"].append(
            {
                "name": input_name(datatype),
                "datatype": datatype,
                "shape": [2, 2],
                "parameters": {"binary_data_size": len(data)},
            }
        )
        blobs.append(data)
    header["outputs"] = [{"name": f"out_{d.lower()}"} for d in FLOATS]
    head = json.dumps(header).encode()
    status, headers, body = oip.request(
        "POST",
        "/v2/models/echo/infer",
        head + b"".join(blobs),
        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/json"},
    )
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    reply = orjson.loads(body)  # strict JSON: orjson refuses bare NaN or Infinity
    for out in reply["outputs"]:
        assert out["data"] == [1.5, "Infinity", "-Infinity", "NaN"], out


def test_json_request_cannot_hold_non_finite_numbers(oip: OipServer) -> None:
    for data in ([1.0, "NaN"], [1.0, "Infinity"]):
        body = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": data}]}
        ).encode()
        status, _, reply = oip.request("POST", "/v2/models/summer/infer", body)
        assert status == 400, reply
    body = b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": [1, NaN]}]}'
    status, _, reply = oip.request("POST", "/v2/models/summer/infer", body)
    assert status == 400, reply


def test_grpc_raw_and_typed_contents_are_exact(oip: OipServer) -> None:
    arrays = _echo_inputs()
    client = grpcclient.InferenceServerClient(oip.grpc_url)
    try:
        inputs = []
        for datatype, arr in arrays.items():
            inp = grpcclient.InferInput(input_name(datatype), list(arr.shape), datatype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        res = client.infer("echo", inputs, client_timeout=30)
        for datatype in FLOATS:
            got = res.as_numpy(f"out_{datatype.lower()}")
            assert _same_bits(got, arrays[datatype]), (datatype, got)
    finally:
        client.close()
    # Typed contents in (fp64_contents), raw contents out: summer adds each row.
    channel = grpc.insecure_channel(oip.grpc_url)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="summer")
        tensor = request.inputs.add(name="input", datatype="FP64", shape=[3, 2])
        tensor.contents.fp64_contents.extend([1.0, np.inf, -np.inf, 2.0, np.nan, 1.0])
        reply = stub.ModelInfer(request, timeout=30)
    finally:
        channel.close()
    [out] = reply.outputs
    got = np.frombuffer(reply.raw_output_contents[0], dtype="<f8").reshape(list(out.shape))
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2]), got
