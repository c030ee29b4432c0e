"""A model without a live replica is answered at once, naming it, on every path:
apps with a selection policy and pipelines over Clipper's REST API (the default
output, flagged, as the direct path answers) and pipelines over OIP HTTP and gRPC
(503 / UNAVAILABLE).  A real server process, real model containers; the models
without replicas are registered by hand (their replicas would join later).

Every objective here is far beyond the clients' 30 s timeouts: an answer at all
means an answer at once."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.oip.conftest import OipServer

pytestmark = pytest.mark.timeout(180)

#: Ten minutes: no test waits for it.
FAR = 600_000_000


def _predict(oip: OipServer, app: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, raw = oip.request("POST", f"/{app}/predict", json.dumps(body).encode())
    reply = json.loads(raw)
    assert status == 200, reply
    return dict(reply)


@pytest.fixture(scope="module")
def ghosts(oip: OipServer) -> OipServer:
    """Models ``wraith`` and ``shade`` (doubles), registered without replicas."""
    for name in ("wraith", "shade"):
        oip.conn.register_model(name, 1, "doubles")
    return oip


def test_an_ensemble_answers_from_its_live_models_and_names_the_others(ghosts: OipServer) -> None:
    conn = ghosts.conn
    conn.register_application("chorus", "doubles", "-1", FAR, policy="ensemble")
    conn.link_model_to_app("chorus", "summer")
    conn.link_model_to_app("chorus", "wraith")
    reply = _predict(ghosts, "chorus", {"input": [1.0, 2.0]})
    assert reply["default"] is False and reply["output"] == 3.0, reply
    assert reply["models"] == ["summer:1"] and reply["missing"] == ["wraith:1"]
    assert reply["confidence"] == 0.5  # half the models answered


def test_policies_whose_models_have_no_replica_answer_the_default_at_once(
    ghosts: OipServer,
) -> None:
    conn = ghosts.conn
    for policy in ("ensemble", "exp3", "exp4", "cascade"):
        app = f"empty-{policy}"
        conn.register_application(app, "doubles", "-1", FAR, policy=policy)
        conn.link_model_to_app(app, "wraith")
        conn.link_model_to_app(app, "shade")
        reply = _predict(ghosts, app, {"input": [1.0]})
        assert reply["default"] is True and reply["output"] == -1, reply
        why = reply["default_explanation"]
        assert why.startswith("no connected model found for query: "), why
        assert "no live replica" in why and "latency objective" not in why, why
        # The models asked are named (exp3 asks one, the others both).
        assert reply["missing"] and all(m in why for m in reply["missing"]), reply
        if policy in ("ensemble", "exp4", "cascade"):
            assert sorted(reply["missing"]) == ["shade:1", "wraith:1"], reply
        batch = _predict(ghosts, app, {"input_batch": [[1.0], [2.0]]})["batch_predictions"]
        assert all(p["default"] and "no live replica" in p["default_explanation"] for p in batch)


def test_a_cascade_skips_a_stage_without_replicas(ghosts: OipServer) -> None:
    conn = ghosts.conn
    order = {"order": ["shade", "summer"]}
    conn.register_application("ladder", "doubles", "-1", FAR, policy="cascade", policy_config=order)
    conn.link_model_to_app("ladder", "shade")
    conn.link_model_to_app("ladder", "summer")
    reply = _predict(ghosts, "ladder", {"input": [2.0, 2.0]})
    assert reply["default"] is False and reply["output"] == 4.0, reply
    assert reply["model"] == "summer:1" and reply["missing"] == ["shade:1"]


def test_a_pipeline_stage_without_replicas_is_refused_at_once(ghosts: OipServer) -> None:
    conn = ghosts.conn
    conn.register_pipeline(
        "haunted-walk",
        [
            {"name": "sum", "model": "summer", "output_type": "doubles"},
            {"name": "then", "model": "wraith"},
        ],
        [{"from": "sum", "to": "then"}],
        FAR,
        "-1",
    )
    # Clipper's REST API: the default output, flagged, naming the stage and model.
    reply = _predict(ghosts, "haunted-walk", {"input": [1.0, 2.0]})
    assert reply["default"] is True and reply["output"] == -1, reply
    why = reply["default_explanation"]
    assert "stage 'then'" in why and "wraith:1 has no live replica" in why, why
    # OIP over HTTP: 503 at once, the body naming the model versions.
    x = np.array([[1.0, 2.0]])
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}]}
    status, _, raw = ghosts.request(
        "POST", "/v2/models/haunted-walk/infer", json.dumps(body).encode()
    )
    assert status == 503, raw
    answer = json.loads(raw)
    assert answer["models"] == ["wraith:1"] and "no live replica" in answer["error"], answer
    http = httpclient.InferenceServerClient(ghosts.http_url, network_timeout=30)
    try:
        inp = httpclient.InferInput("input", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            http.infer("haunted-walk", [inp])
        assert info.value.status() == "503" and "wraith:1" in info.value.message()
    finally:
        http.close()
    # OIP over gRPC: UNAVAILABLE, naming it.
    grpc = grpcclient.InferenceServerClient(ghosts.grpc_url)
    try:
        inp = grpcclient.InferInput("input", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            grpc.infer("haunted-walk", [inp], client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "wraith:1 has no live replica" in info.value.message()
    finally:
        grpc.close()


def test_a_pipeline_whose_live_branch_answers_is_not_refused(ghosts: OipServer) -> None:
    # Only what a query needs counts: a branch not taken may lack replicas.
    conn = ghosts.conn
    conn.register_pipeline(
        "forked-walk",
        [
            {"name": "sum", "model": "summer", "output_type": "doubles"},
            {"name": "rare", "model": "shade"},
        ],
        [{"from": "sum", "to": "rare", "when": {"op": ">", "value": 100}}],
        FAR,
        "-1",
    )
    reply = _predict(ghosts, "forked-walk", {"input": [1.0, 2.0]})
    assert reply["default"] is False and reply["output"] == 3.0, reply
    reply = _predict(ghosts, "forked-walk", {"input": [100.0, 2.0]})
    assert (
        reply["default"] is True and "shade:1 has no live replica" in reply["default_explanation"]
    )
