"""The OIP gRPC service with tritonclient.grpc against a real server (see conftest)."""

from __future__ import annotations

import queue
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.oip.conftest import OipServer
from tests.oip.oip_models import ALL_DATATYPES, input_name

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["h2", "aio"])
def grpc_url(request: pytest.FixtureRequest, oip: OipServer) -> str:
    """Each test runs against both transports of the gRPC port (behaviour parity)."""
    return oip.grpc_url_of(request.param)


@pytest.fixture
def client(grpc_url: str) -> Any:
    c = grpcclient.InferenceServerClient(grpc_url)
    try:
        yield c
    finally:
        c.close()


def _input(name: str, arr: np.ndarray, datatype: str) -> Any:
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"ab", b""], [b"\x00\xff", "é".encode()]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    if datatype.startswith("FP"):
        return np.array([[1.5, -2.25], [1e3, 0.125]], dtype=f"float{datatype[2:]}")
    info = np.iinfo(np.dtype(datatype.lower()))
    return np.array([[info.min, info.max], [0, 7]], dtype=datatype.lower())


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "clipper_core" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("summer")
    assert client.is_model_ready("summer", "1")
    assert not client.is_model_ready("summer", "9")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("mixer", as_json=True)
    assert meta["name"] == "mixer" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("a", "INT32", [-1, 2]),
        ("b", "FP16", [-1, 2]),
        ("text", "BYTES", [-1, 1]),
    ]
    meta = client.get_model_metadata("summer", "1", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": ["-1", "-1"]}]


def test_infer_with_raw_contents(client: Any) -> None:
    x = np.array([[1.0, 2.0, 3.5], [4.0, 5.0, 6.0]])
    res = client.infer(
        "summer",
        [_input("input", x, "FP64")],
        request_id="g-1",
        parameters={"tag": "hi", "n": 4, "ok": True},
        client_timeout=30,
    )
    np.testing.assert_array_equal(res.as_numpy("output"), [6.5, 15.0])
    reply = res.get_response(as_json=True)
    assert reply["id"] == "g-1" and reply["model_name"] == "summer"
    params = reply["parameters"]
    assert params["tag"]["string_param"] == "hi"
    assert params["n"]["int64_param"] == "4" and params["ok"]["bool_param"] is True
    # through an application
    res = client.infer("alias", [_input("input", x, "FP64")], client_timeout=30)
    np.testing.assert_array_equal(res.as_numpy("output"), [6.5, 15.0])


def test_request_parameters_are_echoed_with_their_type(grpc_url: str) -> None:
    # A uint64_param came back as int64_param (a typed client reading uint64 got
    # 0), and binary_data_output, consumed by HTTP, was echoed over gRPC only.
    x = np.array([[1.0, 2.0]])
    request = service_pb2.ModelInferRequest(model_name="summer", id="typed")
    request.inputs.add(name="input", datatype="FP64", shape=[1, 2])
    request.raw_input_contents.append(x.tobytes())
    request.parameters["u"].uint64_param = 5
    request.parameters["i"].int64_param = -5
    request.parameters["d"].double_param = 0.5
    request.parameters["binary_data_output"].bool_param = True
    # A timeout (µs) as uint64_param is a number like any other.
    request.parameters["timeout"].uint64_param = 30_000_000
    with grpc.insecure_channel(grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    params = {
        k: (v.WhichOneof("parameter_choice"), getattr(v, v.WhichOneof("parameter_choice")))
        for k, v in reply.parameters.items()
    }
    assert params == {
        "u": ("uint64_param", 5),
        "i": ("int64_param", -5),
        "d": ("double_param", 0.5),
        "timeout": ("uint64_param", 30_000_000),
    }
    assert np.frombuffer(reply.raw_output_contents[0], dtype=np.float64).tolist() == [3.0]


def test_every_datatype_and_multiple_outputs(client: Any) -> None:
    inputs = [_input(input_name(d), _sample(d), d) for d in ALL_DATATYPES]
    res = client.infer("echo", inputs, client_timeout=30)
    for datatype in ALL_DATATYPES:
        got = res.as_numpy(f"out_{datatype.lower()}")
        want = _sample(datatype)
        if datatype == "BYTES":
            assert got.tolist() == want.tolist()
        else:
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    a = np.array([[1, 2]], dtype=np.int32)
    b = np.array([[0.5, 1.5]], dtype=np.float16)
    t = np.array([[b"q"]], dtype=object)
    res = client.infer(
        "mixer",
        [_input("a", a, "INT32"), _input("b", b, "FP16"), _input("text", t, "BYTES")],
        outputs=[grpcclient.InferRequestedOutput("upper"), grpcclient.InferRequestedOutput("half")],
        client_timeout=30,
    )
    assert [o.name for o in res.get_response().outputs] == ["upper", "half"]
    assert res.as_numpy("upper").tolist() == [[b"Q"]]
    np.testing.assert_array_equal(res.as_numpy("half"), (b / 2).astype(np.float16))


def test_typed_contents(grpc_url: str) -> None:
    """Inputs in InferTensorContents instead of raw_input_contents."""
    with grpc.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name="summer")
        inp = req.inputs.add(name="input", datatype="FP64", shape=[2, 2])
        inp.contents.fp64_contents.extend([1.0, 2.0, 3.0, 4.0])
        reply = stub.ModelInfer(req, timeout=30)
        assert reply.outputs[0].datatype == "FP64"
        got = np.frombuffer(reply.raw_output_contents[0], dtype="<f8")
        np.testing.assert_array_equal(got, [3.0, 7.0])

        req = service_pb2.ModelInferRequest(model_name="mixer")
        req.inputs.add(name="a", datatype="INT32", shape=[1, 2]).contents.int_contents.extend(
            [5, 6]
        )
        # FP16 has no typed field: raw for every input, or typed for every input.
        req.inputs.add(name="b", datatype="FP16", shape=[1, 2])
        req.inputs.add(name="text", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(
            b"w"
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16" in info.value.details()

        req = service_pb2.ModelInferRequest(model_name="echo")
        for d in ALL_DATATYPES:
            if d == "FP16":
                continue
            inp = req.inputs.add(name=input_name(d), datatype=d, shape=[1, 1])
            field = {
                "BOOL": "bool_contents",
                "INT64": "int64_contents",
                "UINT64": "uint64_contents",
                "FP32": "fp32_contents",
                "FP64": "fp64_contents",
                "BYTES": "bytes_contents",
            }.get(d, "uint_contents" if d.startswith("U") else "int_contents")
            value: Any = {"BOOL": True, "BYTES": b"z"}.get(d, 3)
            getattr(inp.contents, field).append(value)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=30)  # FP16 missing
        assert "missing input 'in_fp16'" in info.value.details()


def test_concurrent_async_infer_is_batched(oip: OipServer, grpc_url: str) -> None:
    """16 async requests on one channel: merged by the batcher, each answered
    with exactly its own rows."""
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    with grpcclient.InferenceServerClient(grpc_url) as client:
        for i in range(16):
            a = np.array([[i, 1000 + i], [2000 + i, 3000 + i]], dtype=np.int32)
            b = np.ones((2, 2), dtype=np.float16)
            t = np.array([[f"g{i}".encode()], [b"h"]], dtype=object)
            client.async_infer(
                "mixer",
                [_input("a", a, "INT32"), _input("b", b, "FP16"), _input("text", t, "BYTES")],
                callback=lambda result, error, i=i: done.put((i, result, error)),
                client_timeout=60,
            )
        results = [done.get(timeout=60) for _ in range(16)]
    rows = []
    for i, result, error in results:
        assert error is None, error
        np.testing.assert_array_equal(
            result.as_numpy("total"), [[i + 1, 1001 + i], [2001 + i, 3001 + i]]
        )
        assert result.as_numpy("upper").tolist() == [[f"G{i}".encode()], [b"H"]]
        rows.append(int(result.as_numpy("rows")[0]))
    assert max(rows) > 2, f"no model call merged two requests: {rows}"


def _status(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_errors_map_to_grpc_status(client: Any, grpc_url: str, oip: OipServer) -> None:
    x = np.array([[1.0, 2.0]])
    status, msg = _status(lambda: client.infer("nope", [_input("input", x, "FP64")]))
    assert status == "StatusCode.NOT_FOUND" and "nope" in msg
    status, msg = _status(
        lambda: client.infer("summer", [_input("input", x, "FP64")], model_version="3")
    )
    assert status == "StatusCode.NOT_FOUND"
    status, msg = _status(lambda: client.get_model_metadata("nope"))
    assert status == "StatusCode.NOT_FOUND"
    status, msg = _status(
        lambda: client.infer("summer", [_input("input", x.astype(np.int64), "INT64")])
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "FP64" in msg
    answer = client.infer("summer", [_input("input", x.astype(np.float32), "FP32")])
    assert answer.as_numpy("output").tolist() == [3.0]
    status, msg = _status(lambda: client.infer("summer", [_input("wrong", x, "FP64")]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "missing input" in msg
    status, msg = _status(
        lambda: client.infer(
            "summer",
            [_input("input", x, "FP64")],
            outputs=[grpcclient.InferRequestedOutput("nothing")],
        )
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "nothing" in msg
    with grpc.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # raw contents whose size does not fit the shape
        req = service_pb2.ModelInferRequest(model_name="summer")
        req.inputs.add(name="input", datatype="FP64", shape=[1, 3])
        req.raw_input_contents.append(np.zeros(2).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "24 bytes" in info.value.details()
        # raw contents for some inputs only
        req = service_pb2.ModelInferRequest(model_name="mixer")
        for name, dt in (("a", "INT32"), ("b", "FP16"), ("text", "BYTES")):
            req.inputs.add(name=name, datatype=dt, shape=[1, 2])
        req.raw_input_contents.append(np.zeros(2, dtype=np.int32).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # malformed BYTES (length prefix past the end)
        req = service_pb2.ModelInferRequest(model_name="shout")
        req.inputs.add(name="input", datatype="BYTES", shape=[1, 1])
        req.raw_input_contents.append(b"\x09\x00\x00\x00abc")
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.infer("summer", [_input("input", x, "FP64")]).as_numpy("output").tolist() == [3]
