"""Management answers that Clipper's ``clipper_admin`` and people depend on: a link
to a missing app or model is a 404 (the store says which), a model registered
without an image echoes ``NO_CONTAINER``, and an app whose model has no live
replica says so instead of blaming the latency objective."""

from __future__ import annotations

from typing import Any

import pytest

from clipper_core.errors import ClipperError
from tests.reliability.conftest import http
from tests.server.conftest import Running


def admin(running: Running, op: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, reply = http(
        "POST",
        f"{running.server.management_url}/admin/{op}",
        body,
        headers=running.admin_headers(),
    )
    return status, reply


def test_link_answers_404_for_what_is_missing(running: Running) -> None:
    conn = running.conn
    conn.register_application("app", "doubles", "-1", 100_000)
    conn.register_model("ints-model", 1, "ints")
    status, reply = admin(running, "add_model_links", {"app_name": "app", "model_names": ["nope"]})
    assert status == 404 and "nope" in reply["cause"], reply
    status, reply = admin(running, "add_model_links", {"app_name": "gone", "model_names": ["x"]})
    assert status == 404 and "gone" in reply["cause"], reply
    status, reply = admin(
        running, "add_model_links", {"app_name": "app", "model_names": ["ints-model"]}
    )
    assert status == 400 and "ints" in reply["cause"] and "doubles" in reply["cause"], reply
    with pytest.raises(ClipperError, match="404"):
        conn.link_model_to_app("app", "nope")
    assert conn.get_linked_models("app") == []


def test_a_refused_link_of_several_models_links_none(running: Running) -> None:
    conn = running.conn
    conn.register_application("app", "doubles", "-1", 100_000)
    conn.register_model("good", 1, "doubles")
    status, reply = admin(
        running, "add_model_links", {"app_name": "app", "model_names": ["good", "nope"]}
    )
    assert status == 404 and "nope" in reply["cause"], reply
    assert conn.get_linked_models("app") == []  # the first was linked before, then the 404
    status, reply = admin(
        running, "add_model_links", {"app_name": "app", "model_names": ["good", "good"]}
    )
    assert status == 200, reply
    assert conn.get_linked_models("app") == ["good"]


def test_a_model_without_image_echoes_no_container(running: Running) -> None:
    # What Clipper's clipper_admin sends for register_model(image=None).
    status, reply = admin(
        running,
        "add_model",
        {
            "model_name": "byhand",
            "model_version": "1",
            "labels": [],
            "input_type": "doubles",
            "container_name": "NO_CONTAINER",
            "model_data_path": "DEPRECATED",
            "batch_size": -1,
            "num_replicas": 0,
        },
    )
    assert status == 200, reply
    info = running.conn.get_model_info("byhand", 1)
    assert info is not None and info["container_name"] == "NO_CONTAINER"
    running.conn.register_model("ours", 1, "doubles")
    info = running.conn.get_model_info("ours", 1)
    assert info is not None and info["container_name"] == "NO_CONTAINER"


def test_no_live_replica_is_named_as_such(running: Running) -> None:
    conn = running.conn
    conn.register_application("lonely", "doubles", "-1", 100_000)
    conn.register_model("absent", 1, "doubles")
    conn.link_model_to_app("lonely", "absent")
    status, reply = running.client.predict("lonely", {"input": [1.0]})
    assert status == 200 and reply["default"] is True, reply
    explanation = reply["default_explanation"]
    assert "no connected model" in explanation and "absent:1" in explanation
    assert "latency objective" not in explanation


def test_a_version_a_pipeline_cannot_feed_is_refused_as_for_an_app(running: Running) -> None:
    conn = running.conn
    conn.register_model("n", 1, "doubles")
    conn.register_model("pinned", 1, "doubles")
    status, reply = admin(
        running,
        "add_pipeline",
        {
            "name": "p",
            "slo_micros": 10_000_000,
            "stages": [
                {"name": "s", "model": "n", "output_type": "doubles"},
                {"name": "t", "model": "pinned", "version": "1"},
            ],
            "edges": [{"from": "s", "to": "t"}],
        },
    )
    assert status == 200, reply
    version_2 = {"model_version": "2", "input_type": "strings", "container": {"kind": "external"}}
    status, reply = admin(running, "add_model", {"model_name": "n", **version_2})
    assert status == 400 and "pipeline p" in reply["cause"], reply
    assert [
        m["model_version"] for m in conn.get_all_models(verbose=True) if m["model_name"] == "n"
    ] == ["1"]
    # A stage pinned to its version does not follow the model's new ones.
    status, reply = admin(running, "add_model", {"model_name": "pinned", **version_2})
    assert status == 200, reply
