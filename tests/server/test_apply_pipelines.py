"""Pipelines in declarative files, end to end: created, left alone when unchanged,
one stage's change updates only that pipeline, prune deletes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Running

pytestmark = pytest.mark.timeout(300)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "declarative" / "app.toml"

MODELS_PY = """
def scale(inputs):
    return [[2.0 * v for v in x] for x in inputs]


def total(inputs):
    return [float(sum(x)) for x in inputs]


def total_plus_one(inputs):
    return [float(sum(x)) + 1 for x in inputs]
"""

FILE = """
[[models]]
name = "scale"
version = "1"
input_type = "doubles"
source = "models.py:scale"

[[models]]
name = "total"
version = "1"
input_type = "doubles"
source = "models.py:total"
current = true

[[models]]
name = "total"
version = "2"
input_type = "doubles"
source = "models.py:total_plus_one"

[[pipelines]]
name = "p"
input_type = "doubles"
slo_micros = 10000000
default_output = "-1"
stages = [
    {{ name = "a", model = "scale", output_type = "doubles" }},
    {{ name = "b", model = "total", version = "{version}" }},
]
edges = [{{ from = "a", to = "b" }}]

[[pipelines]]
name = "q"
input_type = "doubles"
stages = [{{ name = "only", model = "scale" }}]
"""


def write(tmp_path: Path, version: str = "1", extra: str = "") -> Path:
    (tmp_path / "models.py").write_text(MODELS_PY)
    path = tmp_path / "app.toml"
    path.write_text(FILE.format(version=version) + extra)
    return path


def made(changes: list[dict[str, Any]]) -> list[str]:
    return [c["text"] for c in changes if c["kind"] != "unchanged"]


def test_pipelines_apply_idempotently_and_one_stage_at_a_time(
    running: Running, tmp_path: Path
) -> None:
    conn = running.conn
    created = made(conn.apply(write(tmp_path)))
    assert "create pipeline p: 2 stage(s)" in created and "create pipeline q: 1 stage(s)" in created
    status, reply = running.client.predict("p", {"input": [1.0, 2.0]})
    assert (status, reply["output"]) == (200, 6.0), reply
    assert made(conn.apply(write(tmp_path))) == []

    changes = conn.apply(write(tmp_path, version="2"))
    assert made(changes) == ["update pipeline p: stage b model total:1 -> total:2"]
    assert {c["text"] for c in changes if c["what"] == "pipeline"} == {
        "update pipeline p: stage b model total:1 -> total:2",
        "unchanged pipeline q",
    }
    assert running.client.predict("p", {"input": [1.0, 2.0]})[1]["output"] == 7.0

    path = write(tmp_path, version="2")
    path.write_text(path.read_text().split('[[pipelines]]\nname = "q"')[0])
    assert made(conn.apply(path, prune=True)) == ["delete pipeline q"]
    assert running.client.predict("q", {"input": [1.0]})[0] == 404


def test_a_pipelines_api_keys_apply_from_the_file(running: Running, tmp_path: Path) -> None:
    import json
    import urllib.request

    def status(key: str | None) -> int:
        headers = {"Content-Type": "application/json", **({"X-Api-Key": key} if key else {})}
        req = urllib.request.Request(
            f"{running.bg.query_url}/q/predict", b'{"input": [1.0]}', headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert json.loads(resp.read())["output"] == [2.0]
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    key, other = "q-pipeline-key-00001", "q-pipeline-key-00002"
    keyed = write(tmp_path)
    keyed.write_text(keyed.read_text() + f'api_keys = ["{key}"]\n')
    created = made(running.conn.apply(keyed))
    assert "create pipeline q: 1 stage(s), 1 API key(s)" in created, created
    assert (status(None), status(key)) == (401, 200)
    assert made(running.conn.apply(keyed)) == []
    keyed.write_text(keyed.read_text().replace(key, other))
    replaced = made(running.conn.apply(keyed))
    assert replaced == ["update pipeline q: api_keys replaced (1 -> 1 key(s))"]
    assert (status(key), status(other)) == (401, 200)
    # A file without the keys lifts them, as for an application.
    assert made(running.conn.apply(write(tmp_path))) == [
        "update pipeline q: api_keys replaced (1 -> 0 key(s))"
    ]
    assert status(None) == 200


def test_bad_pipelines_are_refused_naming_the_field(running: Running, tmp_path: Path) -> None:
    from clipper_core.errors import ClipperError

    path = write(tmp_path)
    path.write_text(path.read_text().replace('name = "only", model', 'name = "only", modle'))
    with pytest.raises(ClipperError, match=r"pipelines\[1\] \(q\): unknown stages\[0\] field"):
        running.conn.apply(path)
    assert running.conn.get_all_models() == []


def test_the_whole_example_file_applies(running: Running) -> None:
    assert {c["kind"] for c in running.conn.apply(EXAMPLE)} == {"create"}
    assert running.client.predict("scaled-sum", {"input": [1.0, 2.0]})[1]["output"] == 6.0
    assert {c["kind"] for c in running.conn.apply(EXAMPLE)} == {"unchanged"}
