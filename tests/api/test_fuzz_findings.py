"""Regressions for what the schema-based fuzz run (test_openapi_fuzz.py) found,
each over real HTTP on a real server: the answer is the documented 400 naming
the field, not a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clipper_core.openapi import document
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
def test_malformed_pipeline_fields_are_400(
    served: Running, op: str, body: dict[str, Any], named: str
) -> None:
    reply = call(
        served.server.management_port, "POST", f"/admin/{op}", body, served.admin_headers()
    )
    assert reply[0] == 400, reply
    check_reply(document(), ("POST", f"/admin/{op}"), reply)
    assert named in json.loads(reply[2])["cause"]
