"""Regressions for what the schema-based fuzz run (test_openapi_fuzz.py) and
reviews found, each over real HTTP on a real server."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

from clipper_core.deployers import deploy_python_closure
from clipper_core.openapi import document
from clipper_core.selection.losses import score
from tests.api.rest_calls import call, check_reply
from tests.server.conftest import Running

_STAGE = {"name": "a", "model": "sum"}
_PIPELINE = {"name": "p", "input_type": "doubles"}


@pytest.mark.parametrize(
    ("op", "body", "named"),
    [
        # A stage's output_type or combine that is a list or an object was looked
        # up in a frozenset: TypeError (unhashable), answered 500.
        (
            "add_pipeline",
            {**_PIPELINE, "stages": [{**_STAGE, "output_type": [1]}]},
            "unknown output_type [1]",
        ),
        (
            "update_pipeline",
            {**_PIPELINE, "stages": [{"name": "a", "combine": {"x": 1}}]},
            "unknown combine {'x': 1}",
        ),
        # So was an edge end that is not a string.
        (
            "add_pipeline",
            {**_PIPELINE, "stages": [_STAGE], "edges": [{"from": {"a": 1}, "to": "a"}]},
            "'from' names no stage",
        ),
        (
            "add_pipeline",
            {**_PIPELINE, "stages": [_STAGE], "edges": [{"from": "a", "to": ["a"]}]},
            "'to' names no stage",
        ),
        # So was an edge end that is not a string, where the input type is derived
        # from the entry stage's model (no input_type in the body).
        (
            "add_pipeline",
            {"name": "p", "stages": [_STAGE], "edges": [{"from": "a", "to": {}}]},
            "'to' names no stage",
        ),
        # And a pipeline's input type in a declarative file (400 already, but
        # naming "unhashable type" instead of the field).
        (
            "apply",
            {"pipelines": [{"name": "p", "input_type": ["doubles"], "stages": [_STAGE]}]},
            "unknown input type ['doubles']",
        ),
    ],
)
def test_malformed_pipeline_fields_are_400_not_500(
    served: Running, op: str, body: dict[str, Any], named: str
) -> None:
    reply = call(
        served.server.management_port, "POST", f"/admin/{op}", body, served.admin_headers()
    )
    assert reply[0] == 400, reply
    check_reply(document(), ("POST", f"/admin/{op}"), reply)
    assert named in json.loads(reply[2])["cause"]


@pytest.mark.parametrize("slo", [2**63, 2**64 - 1, 86_400_000_001])
@pytest.mark.parametrize(
    ("op", "body", "field"),
    [
        ("add_app", {"name": "late", "input_type": "doubles"}, "latency_slo_micros"),
        ("add_pipeline", {**_PIPELINE, "name": "late", "stages": [_STAGE]}, "slo_micros"),
        ("apply", {"apps": [{"name": "late", "input_type": "doubles"}]}, "slo_micros"),
    ],
)
def test_a_latency_objective_past_a_day_is_400_naming_the_field(
    served: Running, op: str, body: dict[str, Any], field: str, slo: int
) -> None:
    # An objective past SQLite's INTEGER (2**63 - 1) was a 500 (OverflowError);
    # one past a day is a typo: refused before anything is stored.
    if op == "apply":
        body = {"apps": [{**body["apps"][0], "slo_micros": slo}]}
    else:
        body = {**body, field: slo}
    reply = call(
        served.server.management_port, "POST", f"/admin/{op}", body, served.admin_headers()
    )
    assert reply[0] == 400, reply
    check_reply(document(), ("POST", f"/admin/{op}"), reply)
    assert f"{field} must be at most 86,400,000,000" in json.loads(reply[2])["cause"]
    assert "late" not in served.conn.get_all_apps()


_CLOSURE = {"model_name": "f", "model_version": "1", "input_type": "doubles"}


@pytest.mark.parametrize(
    ("op", "body", "named"),
    [
        # From a review: a payload's file name with a folder in it was written
        # outside the version's folder (".." up to the state folder), and "." was
        # a 500 (IsADirectoryError).
        (
            "add_model",
            {
                **_CLOSURE,
                "container": {"kind": "closure", "filename": "../../../escaped.txt"},
                "payload_b64": "eA==",
            },
            "must be a plain file name",
        ),
        (
            "add_model",
            {**_CLOSURE, "container": {"kind": "closure", "filename": "."}, "payload_b64": "eA=="},
            "must be a plain file name",
        ),
        # The fuzz run: a declarative app's policy that is not a string reached the
        # policy lookup (unhashable: a 500) once policies were checked with the file.
        (
            "apply",
            {"apps": [{"name": "a", "input_type": "doubles", "policy": [], "policy_config": [1]}]},
            "policy must be a non-empty string",
        ),
        # "no" was read as true.
        ("add_model", {**_CLOSURE, "cache_enabled": "no"}, "'cache_enabled' must be true or false"),
        # A malformed address was tried for a minute, then a 500.
        (
            "register_replica",
            {"model_name": "sum", "model_version": "1", "address": "not an address"},
            "address must be host:port",
        ),
        (
            "register_replica",
            {"model_name": "sum", "model_version": "1", "address": "127.0.0.1:99999"},
            "port of 1-65535",
        ),
    ],
)
def test_malformed_management_fields_are_400_at_once(
    served: Running, op: str, body: dict[str, Any], named: str
) -> None:
    reply = call(
        served.server.management_port, "POST", f"/admin/{op}", body, served.admin_headers()
    )
    assert reply[0] == 400, reply
    assert named in json.loads(reply[2])["cause"]
    assert not list(served.state_dir.parent.rglob("escaped.txt"))
    assert served.conn.get_model_info("f", 1) is None


def make_identity() -> Any:
    def predict(inputs: list[Any]) -> list[list[float]]:
        return [[float(v) for v in x] for x in inputs]

    return predict


@pytest.fixture(scope="module")
def vector_app(served: Running) -> str:
    """An app whose model answers its input: outputs are arrays of numbers."""
    conn = served.conn
    conn.register_application("vec", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "ident", 1, "doubles", make_identity())
    conn.link_model_to_app("vec", "ident")
    return "vec"


@pytest.mark.parametrize(
    ("x", "label"),
    [([1.0, 2.0], [1e308, 1e308]), ([1e308, 1e308], [1.0, 2.0]), ([1e308, 1.0], [-1e308, 1.0])],
)
def test_feedback_with_large_finite_numbers_is_learned(
    served: Running, vector_app: str, x: list[float], label: list[float]
) -> None:
    # The label's (or the output's) finiteness was checked on its sum, which
    # overflows: finite numbers were refused as "an array that is not all numbers"
    # (400), with a RuntimeWarning from numpy in the server.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert score(x, label) == 1.0
        assert score(label, label) == 0.0
    reply = call(
        served.server.query_port, "POST", f"/{vector_app}/update", {"input": x, "label": label}
    )
    assert reply[0] == 200, reply
    assert check_reply(document(), ("POST", "/{app}/update"), reply)["models"] == ["ident:1"]
