"""Request parameters reach the model: over OIP HTTP and gRPC, through the
batcher (requests with different parameters never share a call) and the
prediction cache (parameters are part of the key)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.oip.conftest import OipServer

pytestmark = pytest.mark.timeout(120)


def _infer(oip: OipServer, x: list[list[float]], parameters: dict[str, Any] | None) -> Any:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP64",
                "shape": [len(x), len(x[0])],
                "data": [v for row in x for v in row],
            }
        ]
    }
    if parameters is not None:
        body["parameters"] = parameters
    status, _, raw = oip.request(
        "POST",
        "/v2/models/scaler/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200, raw
    return json.loads(raw)


def _outputs(reply: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o["data"] for o in reply["outputs"]}


def test_parameters_reach_the_model_and_are_echoed(oip: OipServer) -> None:
    reply = _infer(oip, [[1.0, 2.0]], {"scale": 3, "tag": "a"})
    out = _outputs(reply)
    assert out["y"] == [3.0, 6.0]
    assert json.loads(out["keys"][0]) == ["scale", "tag"]
    assert reply["parameters"] == {"scale": 3, "tag": "a"}
    # None: the model's default.
    assert _outputs(_infer(oip, [[1.0, 2.0]], None))["y"] == [1.0, 2.0]


def test_server_parameters_are_not_the_models(oip: OipServer) -> None:
    out = _outputs(_infer(oip, [[1.5]], {"scale": 2, "timeout": 20_000_000}))
    assert out["y"] == [3.0]
    assert json.loads(out["keys"][0]) == ["scale"]


def test_the_cache_keys_on_the_parameters(oip: OipServer) -> None:
    x = [[7.0, 8.0]]
    before = oip.model_stats("scaler")
    assert _outputs(_infer(oip, x, {"scale": 2}))["y"] == [14.0, 16.0]
    # Same input, other parameters: not the cached answer.
    assert _outputs(_infer(oip, x, {"scale": 5}))["y"] == [35.0, 40.0]
    # Same parameters in another key order: the same entry.
    assert _outputs(_infer(oip, x, {"tag": "t", "scale": 2}))["y"] == [14.0, 16.0]
    assert _outputs(_infer(oip, x, {"scale": 2, "tag": "t"}))["y"] == [14.0, 16.0]
    after = oip.model_stats("scaler")
    assert after["cache_hits"] - before["cache_hits"] == 1, (before, after)


def test_concurrent_requests_with_different_parameters_are_not_merged(oip: OipServer) -> None:
    def one(i: int) -> tuple[int, dict[str, Any]]:
        scale = 2 if i % 2 else 10
        # Distinct inputs: every request is a cache miss.
        return scale, _outputs(_infer(oip, [[1000.0 + i]], {"scale": scale}))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    merged = 0
    for i, (scale, out) in enumerate(results):
        assert out["y"] == [(1000.0 + i) * scale]
        merged = max(merged, out["rows"][0])
    # Requests did share calls (the batcher merged them), each with its own scale.
    assert merged > 1


def test_parameters_over_grpc(oip: OipServer) -> None:
    client = grpcclient.InferenceServerClient(oip.grpc_url)
    try:
        x = np.array([[1.0, -2.0]])
        inp = grpcclient.InferInput("x", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        res = client.infer("scaler", [inp], parameters={"scale": 4, "flag": True})
        np.testing.assert_array_equal(res.as_numpy("y"), [[4.0, -8.0]])
        assert json.loads(res.as_numpy("keys")[0]) == ["flag", "scale"]
    finally:
        client.close()


def test_parameters_over_http_with_tritonclient(oip: OipServer) -> None:
    client = httpclient.InferenceServerClient(oip.http_url)
    try:
        x = np.array([[0.5, 0.25]])
        inp = httpclient.InferInput("x", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)  # binary
        res = client.infer("scaler", [inp], parameters={"scale": 8})
        np.testing.assert_array_equal(res.as_numpy("y"), [[4.0, 2.0]])
    finally:
        client.close()
