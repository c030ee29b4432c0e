"""Non-finite outputs on Clipper's REST API: a model's inf, -inf and NaN come back
as the strings "Infinity", "-Infinity" and "NaN" in strict JSON, never as null
(real containers; outputs sent as JSON and as tensors)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.reliability import models
from tests.server.conftest import Running, start_server


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start_server(tmp_path / "state")
    try:
        yield r
    finally:
        r.bg.stop()


def _predict(running: Running, app: str, body: dict[str, object]) -> object:
    req = urllib.request.Request(
        f"{running.bg.query_url}/{app}/predict",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        raw = resp.read()
    assert b"null" not in raw, raw
    return orjson.loads(raw)  # strict JSON: orjson refuses bare NaN or Infinity


@pytest.mark.parametrize("as_array", [False, True], ids=["json", "tensor"])
def test_non_finite_outputs_are_named_not_null(running: Running, as_array: bool) -> None:
    conn = running.conn
    conn.register_application("nf", "doubles", "-1", 30_000_000)
    conn.deploy_pickled("nf", 1, "doubles", models.make_non_finite(as_array))
    conn.link_model_to_app("nf", "nf")
    reply = _predict(running, "nf", {"input": [2.5]})
    assert isinstance(reply, dict)
    assert reply["output"] == [2.5, "Infinity", "-Infinity", "NaN"], reply
    assert reply["default"] is False
    reply = _predict(running, "nf", {"input_batch": [[1.0], [3.0]]})
    assert isinstance(reply, dict)
    outputs = [p["output"] for p in reply["batch_predictions"]]
    assert outputs == [[x, "Infinity", "-Infinity", "NaN"] for x in (1.0, 3.0)], reply
    # The names read back as the numbers.
    assert [float(v) for v in outputs[0]][1] == float("inf")
