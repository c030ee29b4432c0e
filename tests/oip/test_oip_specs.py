"""OIP metadata that tells the truth, lossless datatype conversions, and a model
without a live replica refused at once (503 / UNAVAILABLE), on a real server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clipper_core.dataplane.tensor_batch import TensorResult
from clipper_core.errors import BadInput
from clipper_core.oip.specs import build_query, converts_losslessly, learn_outputs
from clipper_core.oip.tensors import InferRequest, InputTensor
from tests.oip.conftest import OipServer

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("given", "wanted"),
    [
        ("FP32", "FP64"),
        ("FP16", "FP32"),
        ("INT8", "INT32"),
        ("INT16", "INT32"),
        ("UINT8", "INT32"),
        ("INT32", "FP64"),
        ("INT16", "FP32"),
        ("BOOL", "INT32"),
        ("INT32", "INT64"),
    ],
)
def test_lossless_conversions_are_accepted(given: str, wanted: str) -> None:
    assert converts_losslessly(given, wanted)


@pytest.mark.parametrize(
    ("given", "wanted"),
    [
        ("FP64", "FP32"),
        ("INT64", "FP64"),
        ("INT32", "FP32"),
        ("FP32", "INT32"),
        ("UINT32", "INT32"),
        ("BYTES", "FP64"),
        ("FP64", "BYTES"),
        ("INT64", "INT32"),
    ],
)
def test_lossy_conversions_are_refused(given: str, wanted: str) -> None:
    assert not converts_losslessly(given, wanted)


def test_build_query_converts_to_the_advertised_datatype() -> None:
    specs = [{"name": "input", "datatype": "FP64", "shape": [-1, 2]}]
    x = np.array([[1.5, 2.25]], dtype=np.float32)
    request = InferRequest([InputTensor("input", "FP32", x.shape, x)])
    query = build_query("m:1", specs, request)
    assert list(query.datatypes) == ["FP64"] and query.arrays[0].dtype == np.float64
    assert query.arrays[0].tolist() == [[1.5, 2.25]]
    big = np.array([[2**53 + 1, 0]], dtype=np.int64)
    with pytest.raises(BadInput, match=r"INT64.*FP64"):
        build_query("m:1", specs, InferRequest([InputTensor("input", "INT64", big.shape, big)]))


def test_each_metadata_document_checks_requests_by_its_own_specs() -> None:
    """The specs are read once per metadata document: a new version's document
    (another shape, another name) is not checked by the old one's rules."""
    x = np.zeros((1, 3), dtype=np.float32)
    request = InferRequest([InputTensor("x", "FP32", x.shape, x)])
    three = [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert build_query("m:1", three, request).rows == 1
    assert build_query("m:1", three, request).rows == 1  # read from the kept plan
    four = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    with pytest.raises(BadInput, match=r"shape \[1, 3\].*\[-1, 4\]"):
        build_query("m:2", four, request)
    renamed = [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    with pytest.raises(BadInput, match=r"missing input 'y'.*\['y'\]"):
        build_query("m:3", renamed, request)
    rank = [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 1]}]
    with pytest.raises(BadInput, match="has shape"):
        build_query("m:4", rank, request)


def test_undeclared_outputs_are_learned_from_an_answer() -> None:
    meta: dict[str, Any] = {"outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}]}
    learn_outputs(meta, TensorResult({"output": ("FP64", np.zeros((3, 2)))}))
    assert meta["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1, 2]}]
    declared = {"outputs": [{"name": "total", "datatype": "FP32", "shape": [-1, 2]}]}
    learn_outputs(declared, TensorResult({"total": ("FP64", np.zeros((3, 2)))}))
    assert declared["outputs"][0]["datatype"] == "FP32"  # declared: the container casts


def test_closure_metadata_advertises_what_it_returns(oip: OipServer) -> None:
    client = httpclient.InferenceServerClient(oip.http_url, network_timeout=30)
    try:
        x = np.array([[1.0, 2.0]])
        inp = httpclient.InferInput("input", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        answer = client.infer("summer", [inp])
        assert answer.get_output("output")["datatype"] == "FP64"
        meta = client.get_model_metadata("summer")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, -1]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1]}]
    finally:
        client.close()


def test_no_live_replica_is_refused_at_once_on_every_path(oip: OipServer) -> None:
    conn = oip.conn
    conn.register_model("ghost", 1, "doubles")  # its replicas would join by hand
    # An objective far beyond the clients' timeouts: an answer means "at once".
    conn.register_application("haunted", "doubles", "-1", 600_000_000)
    conn.link_model_to_app("haunted", "ghost")
    x = np.array([[1.0, 2.0]])
    http = httpclient.InferenceServerClient(oip.http_url, network_timeout=30)
    try:
        for name in ("ghost", "haunted"):
            inp = httpclient.InferInput("input", list(x.shape), "FP64")
            inp.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException) as info:
                http.infer(name, [inp])
            assert info.value.status() == "503", info.value
            assert "ghost:1" in info.value.message() and "no live replica" in info.value.message()
    finally:
        http.close()
    grpc = grpcclient.InferenceServerClient(oip.grpc_url)
    try:
        inp = grpcclient.InferInput("input", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            grpc.infer("ghost", [inp], client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "ghost:1" in info.value.message()
    finally:
        grpc.close()
    # Clipper's REST API keeps its shape: the default output, flagged, at once.
    status, _, body = oip.request("POST", "/haunted/predict", json.dumps({"input": [1.0]}).encode())
    reply = json.loads(body)
    assert status == 200 and reply["default"] is True and reply["output"] == -1
    assert "no connected model found" in reply["default_explanation"]
    assert "ghost:1" in reply["default_explanation"]
