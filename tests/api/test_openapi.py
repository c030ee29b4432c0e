"""The OpenAPI document of both REST APIs (clipper_core.openapi): the file the
docs link is the one the code builds, it is valid OpenAPI 3.1, it lists exactly
the routes a running server registers, and real answers of a real server (the
closure model ``sum`` behind ``hello``) match its response schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from clipper_core.openapi import document, document_bytes, port_paths
from clipper_core.openapi.schemas import NAME_PATTERN
from clipper_core.store import record_checks
from tests.api.rest_calls import call, check_reply
from tests.server.conftest import Running

DOC_FILE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "openapi.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def test_docs_file_is_the_built_document() -> None:
    assert DOC_FILE.read_bytes() == document_bytes(), (
        "docs/reference/openapi.json is stale: run python -m clipper_core.openapi"
    )


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def _documented(items: dict[str, Any]) -> set[tuple[str, str]]:
    methods = ("get", "post", "put", "delete", "patch", "head", "options")
    return {(m.upper(), path) for path, item in items.items() for m in item if m in methods}


def test_every_route_is_documented_and_every_documented_route_served(served: Running) -> None:
    listeners = served.server.listeners
    assert listeners is not None
    by_port = port_paths()
    for port, server in (("query", listeners.query), ("management", listeners.admin)):
        registered = set(server.router.routes())
        assert registered == _documented(by_port[port]), port


def test_served_documents(served: Running, doc: dict[str, Any]) -> None:
    qport, mport = served.server.query_port, served.server.management_port
    reply = call(qport, "GET", "/openapi.json")
    assert check_reply(doc, ("GET", "/openapi.json"), reply) == doc
    # The management port's copy needs the token, like every management route.
    refused = call(mport, "GET", "/admin/openapi.json")
    assert refused[0] == 401
    check_reply(doc, ("GET", "/admin/openapi.json"), refused)
    reply = call(mport, "GET", "/admin/openapi.json", headers=served.admin_headers())
    assert json.loads(reply[2]) == doc


def test_query_port_answers_match_the_schemas(served: Running, doc: dict[str, Any]) -> None:
    port = served.server.query_port
    predict = ("POST", "/{app}/predict")
    cases: list[tuple[tuple[str, str], str, str, Any, int]] = [
        (predict, "POST", "/hello/predict", {"input": [1.0, 2.0, 3.0]}, 200),
        (predict, "POST", "/hello/predict", {"input_batch": [[1.0], [2.0, 3.0]]}, 200),
        (predict, "POST", "/hello/predict", {"input": "text"}, 400),
        (predict, "POST", "/hello/predict", {"input": [1.0], "input_batch": [[1.0]]}, 400),
        (predict, "POST", "/nobody/predict", {"input": [1.0]}, 404),
        (("POST", "/{app}/update"), "POST", "/hello/update", {"input": [1.0]}, 400),
        (("GET", "/health"), "GET", "/health", None, 200),
        (("GET", "/frontend"), "GET", "/frontend", None, 200),
        (("GET", "/v2"), "GET", "/v2", None, 200),
        (("GET", "/v2/health/live"), "GET", "/v2/health/live", None, 200),
        (("GET", "/v2/health/ready"), "GET", "/v2/health/ready", None, 200),
        (("GET", "/v2/models/{model}"), "GET", "/v2/models/sum", None, 200),
        (("GET", "/v2/models/{model}"), "GET", "/v2/models/nobody", None, 404),
        (
            ("GET", "/v2/models/{model}/versions/{version}"),
            "GET",
            "/v2/models/sum/versions/1",
            None,
            200,
        ),
        (("GET", "/v2/models/{model}/ready"), "GET", "/v2/models/sum/ready", None, 200),
        (
            ("POST", "/v2/models/{model}/infer"),
            "POST",
            "/v2/models/sum/infer",
            {
                "inputs": [
                    {"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
                ]
            },
            200,
        ),
        (("POST", "/v2/models/{model}/infer"), "POST", "/v2/models/sum/infer", {"inputs": []}, 400),
    ]
    for route, method, path, body, status in cases:
        reply = call(port, method, path, body)
        assert reply[0] == status, (method, path, reply)
        check_reply(doc, route, reply)
    prediction = check_reply(doc, predict, call(port, "POST", "/hello/predict", {"input": [2.5]}))
    assert prediction["output"] == 2.5 and prediction["default"] is False
    for accept in ("text/plain", "application/json"):
        reply = call(port, "GET", "/metrics", headers={"Accept": accept})
        assert reply[:2] == (200, accept)
        check_reply(doc, ("GET", "/metrics"), reply)


def test_management_answers_match_the_schemas(served: Running, doc: dict[str, Any]) -> None:
    port, auth = served.server.management_port, served.admin_headers()
    calls: list[tuple[str, Any, int]] = [
        (
            "add_app",
            {
                "name": "hello",
                "input_type": "doubles",
                "default_output": "-1",
                "latency_slo_micros": 2_000_000,
            },
            200,
        ),
        ("add_app", {"name": "a/b", "input_type": "doubles"}, 400),
        ("get_all_applications", {}, 200),
        ("get_all_applications", {"verbose": True}, 200),
        ("get_application", {"name": "hello"}, 200),
        ("get_application", {"name": "nobody"}, 200),
        ("get_linked_models", {"app_name": "hello"}, 200),
        ("get_model", {"model_name": "sum", "model_version": "1"}, 200),
        ("get_all_models", {"verbose": True}, 200),
        ("get_all_containers", {"verbose": True}, 200),
        ("get_all_containers", {}, 200),
        ("get_num_replicas", {"model_name": "sum"}, 200),
        ("get_replica_token", {"model_name": "sum", "model_version": "1"}, 200),
        ("get_replica_token", {"model_name": "sum", "model_version": "9"}, 404),
        ("get_state", {}, 200),
        ("apply", {"apps": [{"name": "other", "input_type": "doubles"}], "dry_run": True}, 200),
        ("get_all_pipelines", {"verbose": True}, 200),
        ("get_pipeline", {"name": "nobody"}, 200),
        ("get_selection_state", {"app_name": "hello"}, 200),
        ("set_api_keys", {"app_name": "hello", "api_keys": ["short"]}, 400),
        ("set_model_version", {"model_name": "sum", "model_version": "1"}, 200),
        ("add_model_links", {"app_name": "hello", "model_names": ["sum"]}, 200),
    ]
    for name, body, status in calls:
        reply = call(port, "POST", f"/admin/{name}", body, auth)
        assert reply[0] == status, (name, reply)
        check_reply(doc, ("POST", f"/admin/{name}"), reply)
    app = json.loads(call(port, "POST", "/admin/get_application", {"name": "hello"}, auth)[2])
    assert app["answering_model"] == "sum:1"
    # The guard's answers: no token, not JSON, a foreign Host.
    check_reply(doc, ("POST", "/admin/get_state"), call(port, "POST", "/admin/get_state", {}))
    not_json = call(port, "POST", "/admin/get_state", raw=b"x", headers=auth)
    assert not_json[0] == 415
    check_reply(doc, ("POST", "/admin/get_state"), not_json)
    foreign = call(port, "GET", "/admin/ping", headers={**auth, "Host": "evil.example"})
    assert foreign[0] == 403
    check_reply(doc, ("GET", "/admin/ping"), foreign)
    for route, path in (
        ("/admin/ping", "/admin/ping"),
        ("/dashboard/data", "/dashboard/data"),
        ("/dashboard", "/dashboard"),
    ):
        reply = call(port, "GET", path, headers=auth)
        assert reply[0] == 200
        check_reply(doc, ("GET", route), reply)
    token = json.loads(
        call(
            port,
            "POST",
            "/admin/get_replica_token",
            {"model_name": "sum", "model_version": "1"},
            auth,
        )[2]
    )["bundle_token"]
    bundle = ("GET", "/admin/bundle/{model}/{version}")
    fetched = call(port, "GET", "/admin/bundle/sum/1", headers={"Authorization": f"Bearer {token}"})
    assert fetched[0] == 200 and fetched[2]
    check_reply(doc, bundle, fetched)
    check_reply(doc, bundle, call(port, "GET", "/admin/bundle/sum/1"))
    assert call(port, "POST", "/admin/no_such_call", {}, auth)[0] == 404


def test_limits_are_the_validators(doc: dict[str, Any]) -> None:
    # The limits in the document are the validators' own.
    from clipper_core.auth import MIN_API_KEY_LENGTH
    from clipper_core.clipper_api import MAX_BATCH, MAX_INPUT_ELEMENTS

    schemas = doc["components"]["schemas"]
    assert schemas["ApiKey"]["minLength"] == MIN_API_KEY_LENGTH == 16
    assert schemas["NumericInput"]["maxItems"] == MAX_INPUT_ELEMENTS == 1_000_000
    batch = schemas["PredictRequest"]["oneOf"][1]["properties"]["input_batch"]
    assert batch["maxItems"] == MAX_BATCH == 10_000
    assert NAME_PATTERN == f"^{record_checks._NAME_RE.pattern}$"
    schemes = doc["components"]["securitySchemes"]
    assert schemes["appApiKey"]["name"] == "X-Api-Key"
