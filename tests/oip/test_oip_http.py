"""The OIP REST API with tritonclient.http against a real server (see conftest)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tests.oip import oip_models
from tests.oip.conftest import OipServer
from tests.oip.oip_models import ALL_DATATYPES, input_name

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(oip: OipServer) -> Any:
    c = httpclient.InferenceServerClient(oip.http_url, connection_timeout=10, network_timeout=30)
    try:
        yield c
    finally:
        c.close()


def _input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> Any:
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def _sample(datatype: str, rows: int = 2, binary: bool = True) -> np.ndarray:
    if datatype == "BYTES":
        third = b"\x00\xff" if binary else b"zz"  # JSON carries BYTES as UTF-8 text
        return np.array([[b"ab", b""], [third, "é".encode()]][:rows], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]][:rows], dtype=bool)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return np.array([[1.5, -2.25], [1e3, 0.125]][:rows], dtype=dtype)
    dtype = np.dtype(datatype.lower())
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max], [0, 7]][:rows], dtype=dtype)


def test_health_and_server_metadata(client: Any, oip: OipServer) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "clipper_core"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("summer")
    assert client.is_model_ready("summer", "1")
    assert not client.is_model_ready("summer", "9")
    assert not client.is_model_ready("nope")
    assert client.is_model_ready("alias")  # an application is a model too


def test_model_metadata(client: Any) -> None:
    # A closure declares no outputs: what it answers tells (FP64 sums).
    client.infer("summer", [_input("input", np.array([[1.0]]), "FP64")])
    meta = client.get_model_metadata("summer")
    assert meta == {
        "name": "summer",
        "versions": ["1"],
        "platform": "python_closure",
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, -1]}],
        "outputs": [{"name": "output", "datatype": "FP64", "shape": [-1]}],
    }
    assert client.get_model_metadata("summer", "1")["name"] == "summer"
    mixer = client.get_model_metadata("mixer")
    assert mixer["platform"] == "python_model"
    assert [(t["name"], t["datatype"], t["shape"]) for t in mixer["inputs"]] == [
        ("a", "INT32", [-1, 2]),
        ("b", "FP16", [-1, 2]),
        ("text", "BYTES", [-1, 1]),
    ]
    assert [t["name"] for t in mixer["outputs"]] == ["total", "upper", "rows", "half"]
    shout = client.get_model_metadata("shout")
    assert shout["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1, -1]}]
    # An application reports its linked model's specs under its own name.
    alias = client.get_model_metadata("alias")
    assert alias["name"] == "alias" and alias["inputs"][0]["datatype"] == "FP64"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_clipper_model_rows(client: Any, binary: bool) -> None:
    x = np.array([[1.0, 2.0, 3.5], [4.0, 5.0, 6.0]])
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    res = client.infer(
        "summer",
        [_input("input", x, "FP64", binary)],
        outputs=[out],
        request_id="req-7",
        parameters={"tag": "hello", "n": 3},
    )
    np.testing.assert_array_equal(res.as_numpy("output"), [6.5, 15.0])
    reply = res.get_response()
    assert reply["id"] == "req-7"
    assert reply["model_name"] == "summer" and reply["model_version"] == "1"
    assert reply["parameters"]["tag"] == "hello" and reply["parameters"]["n"] == 3


def test_application_as_model_and_name_precedence(client: Any) -> None:
    x = np.array([[1.0, 1.0]])
    res = client.infer("alias", [_input("input", x, "FP64")])
    np.testing.assert_array_equal(res.as_numpy("output"), [2.0])
    assert res.get_response()["model_name"] == "alias"
    # An app and a model are both named "echo": the model answers.
    meta = client.get_model_metadata("echo")
    assert len(meta["inputs"]) == len(ALL_DATATYPES)


def test_strings_model_with_bytes_tensor(client: Any) -> None:
    text = np.array([["héllo"], ["world"]], dtype=object)
    res = client.infer("shout", [_input("input", text, "BYTES")])
    assert res.as_numpy("output").tolist() == ["HÉLLO!".encode(), b"WORLD!"]
    res = client.infer(
        "shout",
        [_input("input", text, "BYTES", binary=False)],
        outputs=[httpclient.InferRequestedOutput("output", binary_data=False)],
    )
    assert res.as_numpy("output").tolist() == ["HÉLLO!", "WORLD!"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(client: Any, binary: bool) -> None:
    inputs = []
    expected = {}
    for datatype in ALL_DATATYPES:
        arr = _sample(datatype, binary=binary)
        inputs.append(_input(input_name(datatype), arr, datatype, binary))
        expected[f"out_{datatype.lower()}"] = arr
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in expected]
    res = client.infer("echo", inputs, outputs=outputs)
    for name, arr in expected.items():
        got = res.as_numpy(name)
        if arr.dtype == object:
            decoded = [[v if binary else v.decode() for v in row] for row in arr.tolist()]
            assert got.tolist() == decoded
        else:
            assert got.dtype == arr.dtype, name
            np.testing.assert_array_equal(got, arr)
        out = res.get_output(name)
        assert out["shape"] == [2, 2]


def test_multiple_inputs_outputs_and_requested_subset(client: Any) -> None:
    a = np.array([[1, 2], [3, 4]], dtype=np.int32)
    b = np.array([[0.5, 0.25], [2.0, 4.0]], dtype=np.float16)
    text = np.array([[b"x"], [b"yz"]], dtype=object)
    inputs = [_input("a", a, "INT32"), _input("b", b, "FP16"), _input("text", text, "BYTES")]
    res = client.infer("mixer", inputs)
    np.testing.assert_array_equal(res.as_numpy("total"), a + b.astype(np.float32))
    assert res.as_numpy("upper").tolist() == [[b"X"], [b"YZ"]]
    assert res.as_numpy("half").dtype == np.float16
    # Only what was asked for, JSON and binary mixed.
    res = client.infer(
        "mixer",
        inputs,
        outputs=[
            httpclient.InferRequestedOutput("half", binary_data=False),
            httpclient.InferRequestedOutput("total", binary_data=True),
        ],
    )
    names = [o["name"] for o in res.get_response()["outputs"]]
    assert names == ["half", "total"]
    np.testing.assert_array_equal(res.as_numpy("half"), (b / 2).astype(np.float16))


def test_concurrent_clients_are_batched_and_get_their_own_rows(oip: OipServer) -> None:
    """16 clients at once, 2 rows each: the batcher merges requests into model calls
    (the model reports its call's row count), and each client gets its rows back."""

    async def one(i: int, client: Any) -> tuple[int, np.ndarray, np.ndarray]:
        a = np.array([[i, 100 + i], [200 + i, 300 + i]], dtype=np.int32)
        b = np.zeros((2, 2), dtype=np.float16)
        text = np.array([[f"c{i}".encode()], [f"d{i}".encode()]], dtype=object)
        inputs = []
        for name, arr, dt in (("a", a, "INT32"), ("b", b, "FP16"), ("text", text, "BYTES")):
            inp = aiohttpclient.InferInput(name, list(arr.shape), dt)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        res = await client.infer("mixer", inputs)
        return i, res.as_numpy("total"), res.as_numpy("rows"), res.as_numpy("upper")

    async def run() -> list[Any]:
        clients = [aiohttpclient.InferenceServerClient(oip.http_url) for _ in range(16)]
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(one(i, c) for i, c in enumerate(clients))), 60
            )
        finally:
            for c in clients:
                await c.close()

    before = oip.model_stats("mixer")
    results = asyncio.run(run())
    rows_seen = []
    for i, total, rows, upper in results:
        np.testing.assert_array_equal(total, [[i, 100 + i], [200 + i, 300 + i]])
        assert upper.tolist() == [[f"C{i}".encode()], [f"D{i}".encode()]]
        rows_seen.append(int(rows[0]))
    assert max(rows_seen) > 2, f"no model call merged two requests: {rows_seen}"
    after = oip.model_stats("mixer")
    assert after["queries"] - before["queries"] == 16


def test_cache_keys_on_every_input_property(client: Any, oip: OipServer) -> None:
    x = np.array([[9.0, 1.0, 0.5]])
    before = oip.model_stats("summer")["cache_hits"]
    for _ in range(2):
        res = client.infer("summer", [_input("input", x, "FP64")])
        np.testing.assert_array_equal(res.as_numpy("output"), [10.5])
    assert oip.model_stats("summer")["cache_hits"] == before + 1
    # Same bytes, another shape: not the same request (nor a cache hit).
    flat = np.array([[11.0, 12.0, 13.0, 14.0]])
    res = client.infer("summer", [_input("input", flat, "FP64")])
    np.testing.assert_array_equal(res.as_numpy("output"), [50.0])
    res = client.infer("summer", [_input("input", flat.reshape(2, 2), "FP64")])
    np.testing.assert_array_equal(res.as_numpy("output"), [23.0, 27.0])
    assert oip.model_stats("summer")["cache_hits"] == before + 1


def test_slo_miss_answers_the_default_output_flagged(client: Any) -> None:
    res = client.infer("slowapp", [_input("input", np.array([[1.0], [2.0]]), "FP64")])
    np.testing.assert_array_equal(res.as_numpy("output"), [-1, -1])
    params = res.get_response()["parameters"]
    assert params["default"] is True and "latency objective" in params["default_explanation"]
    res = client.infer("orphan", [_input("input", np.array([[1.0]]), "FP64")])
    np.testing.assert_array_equal(res.as_numpy("output"), [7])
    assert res.get_response()["parameters"]["default"] is True


def _error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_errors_through_tritonclient(client: Any) -> None:
    x = np.array([[1.0, 2.0]])
    err = _error(lambda: client.infer("nope", [_input("input", x, "FP64")]))
    assert err.status() == "404" and "nope" in err.message()
    err = _error(lambda: client.infer("summer", [_input("input", x, "FP64")], model_version="9"))
    assert err.status() == "404" and "9" in err.message()
    err = _error(lambda: client.get_model_metadata("nope"))
    assert err.status() == "404"
    # INT64 -> FP64 can round (above 2**53): refused; FP32 -> FP64 is exact: taken.
    err = _error(lambda: client.infer("summer", [_input("input", x.astype(np.int64), "INT64")]))
    assert err.status() == "400" and "INT64" in err.message() and "FP64" in err.message()
    answer = client.infer("summer", [_input("input", x.astype(np.float32), "FP32")])
    assert answer.as_numpy("output").tolist() == [3.0]
    err = _error(lambda: client.infer("summer", [_input("other", x, "FP64")]))
    assert err.status() == "400" and "missing input 'input'" in err.message()
    a = np.zeros((1, 3), dtype=np.int32)  # the model takes [-1, 2]
    b = np.zeros((1, 2), dtype=np.float16)
    t = np.array([[b"x"]], dtype=object)
    err = _error(
        lambda: client.infer(
            "mixer", [_input("a", a, "INT32"), _input("b", b, "FP16"), _input("text", t, "BYTES")]
        )
    )
    assert err.status() == "400" and "shape" in err.message()
    a = np.zeros((2, 2), dtype=np.int32)
    err = _error(
        lambda: client.infer(
            "mixer", [_input("a", a, "INT32"), _input("b", b, "FP16"), _input("text", t, "BYTES")]
        )
    )
    assert err.status() == "400" and "batch dimension" in err.message()
    err = _error(
        lambda: client.infer(
            "summer",
            [_input("input", x, "FP64")],
            outputs=[httpclient.InferRequestedOutput("nothing")],
        )
    )
    assert err.status() == "400" and "nothing" in err.message()
    # The server still serves.
    assert client.infer("summer", [_input("input", x, "FP64")]).as_numpy("output").tolist() == [3]


def _post(oip: OipServer, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, data = oip.request("POST", "/v2/models/summer/infer", body, headers)
    return status, json.loads(data)


def test_malformed_requests_are_400_never_500(oip: OipServer) -> None:
    def header(**tensor: Any) -> bytes:
        t = {"name": "input", "datatype": "FP64", "shape": [1, 2], **tensor}
        return json.dumps({"inputs": [t]}).encode()

    raw = np.array([1.0, 2.0]).tobytes()
    sized = header(parameters={"binary_data_size": 16}) + raw
    length = "Inference-Header-Content-Length"
    cases = [
        # binary header length beyond the body
        (sized, {length: "999"}),
        # not a number
        (sized, {length: "x"}),
        # binary_data_size beyond the binary part
        (header(parameters={"binary_data_size": 32}) + raw, None),
        # binary part longer than the tensors
        (header(parameters={"binary_data_size": 8}) + raw, None),
        # binary size that does not fit the shape
        (header(shape=[1, 3], parameters={"binary_data_size": 16}) + raw, None),
        # JSON data that does not fit the shape
        (header(data=[1.0, 2.0, 3.0]), {}),
        # ragged JSON data
        (header(data=[[1.0], [2.0, 3.0]]), {}),
        (header(data=["a", "b"]), {}),
        (header(data=[True, 2.0]), {}),
        (header(datatype="FP99", data=[1, 2]), {}),
        (header(shape=[1, -2], data=[1, 2]), {}),
        (header(), {}),  # no data
        (b"{not json", {}),
        (b'{"inputs": []}', {}),
        (b"[1, 2]", {}),
        # more dimensions than numpy holds (a 500), on the fast path and off it
        (header(shape=[1] * 65, datatype="FP32", data=[1.0]), {}),
        (header(shape=[1] * 65, datatype="INT64", data=[1]), {}),
    ]
    for body, headers in cases:
        hdrs = dict(headers or {})
        if headers is None or "Inference-Header-Content-Length" not in hdrs:
            if b"binary_data_size" in body:
                hdrs["Inference-Header-Content-Length"] = str(body.index(raw))
        status, reply = _post(oip, body, hdrs)
        assert status == 400, (body, reply)
        assert isinstance(reply["error"], str) and reply["error"], reply
    status, reply = _post(oip, header(data=[1.0, 2.0]))
    assert status == 200 and reply["outputs"][0]["data"] == [3.0]


def test_a_late_model_description_is_waited_for_within_the_objective(
    oip: OipServer, tmp_path: Path
) -> None:
    # A new version's first OIP request fetches its description (input specs) from
    # a replica; it waited up to 5 s per replica whatever the request's deadline.
    flag = tmp_path / "describe-slowly"
    cloudpickle.register_pickle_by_value(oip_models)
    try:
        oip.conn.deploy_model("late", 1, "doubles", oip_models.LateDescription(str(flag), 3.0))
    finally:
        cloudpickle.unregister_pickle_by_value(oip_models)
    oip.conn.register_application("lateapp", "doubles", "-1", 300_000)
    oip.conn.link_model_to_app("lateapp", "late")
    flag.touch()
    client = httpclient.InferenceServerClient(oip.http_url, network_timeout=60)
    res = client.infer("lateapp", [_input("input", np.array([[1.0]]), "FP64")])
    params = res.get_response()["parameters"]
    assert params["default"] is True, params
    assert "latency objective" in params["default_explanation"], params
    assert "did not describe its inputs" in params["default_explanation"], params
    flag.unlink()  # the fetch goes on for the requests after it, and is kept
    deadline = time.monotonic() + 60
    while True:
        res = client.infer("lateapp", [_input("input", np.array([[1.0, 2.0]]), "FP64")])
        if not res.get_response().get("parameters", {}).get("default"):
            break
        assert time.monotonic() < deadline, res.get_response()
        time.sleep(0.2)
    np.testing.assert_array_equal(res.as_numpy("output"), [3.0])
