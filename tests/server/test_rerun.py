"""Scripts can be run again: the README's quickstart twice and after
``stop_all()``; registering or deploying again is a no-op that says so, a
change is applied or refused naming it; new versions roll forward; a failed
deploy-and-link leaves nothing behind."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.ports import free_port
from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.deployers import create_endpoint, deploy_python_closure
from clipper_core.deployers.python import deploy_and_link
from clipper_core.errors import ClipperError
from tests.server import models
from tests.server.conftest import Running

REPO = Path(__file__).resolve().parents[2]


def _readme_quickstart() -> str:
    """The README's quickstart, as written."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quickstart") :]
    return section[section.index("```python\n") + 10 : section.index("```\n", 10)]


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )


def _predict(port: int, body: object) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/hello/predict", json.dumps(body).encode()
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def test_readme_quickstart_runs_twice_and_after_stop_all(tmp_path: Path) -> None:
    qp, mp = free_port(), free_port()
    quickstart = _readme_quickstart()
    ports = "LocalContainerManager(query_port=1337, management_port=1338)"
    assert ports in quickstart and "stop_all" not in quickstart
    # The script unchanged but for where its server listens (the test's own ports).
    script = quickstart.replace(
        ports, f"LocalContainerManager(query_port={qp}, management_port={mp})"
    )
    script = "import logging; logging.basicConfig(level=logging.INFO)\n" + script
    env = {**os.environ, "CLIPPER_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    stop = (
        "from clipper_core import ClipperConnection, LocalContainerManager\n"
        f"ClipperConnection(LocalContainerManager(query_port={qp}, management_port={mp}))"
        ".stop_all({})\n"
    )
    try:
        first = _run(script, env)
        assert first.returncode == 0, first.stderr
        assert "unchanged" not in first.stderr
        assert _predict(qp, {"input": [1.0, 2.0, 3.5]})["output"] == 6.5

        second = _run(script, env)  # the server still runs: everything is as asked
        assert second.returncode == 0, second.stderr
        for what in ("a server already answers", "application hello", "model summer:1", "summer"):
            assert re.search(f"INFO:clipper_core.connection:unchanged: .*{what}", second.stderr), (
                what,
                second.stderr,
            )
        assert _predict(qp, {"input": [1.0, 2.0]})["output"] == 3.0

        assert _run(stop.format(""), env).returncode == 0  # keeps the state
        third = _run(script, env)
        assert third.returncode == 0, third.stderr
        assert "unchanged: application hello" in third.stderr  # brought back, as asked
        assert _predict(qp, {"input": [4.0]})["output"] == 4.0

        removed = _run(stop.format("remove_state=True"), env)
        assert removed.returncode == 0, removed.stderr
        assert not [p for p in (tmp_path / "state" / "models").rglob("*") if p.is_file()]
        fourth = _run(script, env)  # from nothing again
        assert fourth.returncode == 0, fourth.stderr
        assert "unchanged: application" not in fourth.stderr
        assert _predict(qp, {"input": [2.0]})["output"] == 2.0
    finally:
        _run(stop.format("remove_state=True"), env)


def test_register_again_is_a_noop_an_update_or_a_refusal(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    conn = running.conn
    assert conn.register_application("app", "doubles", "-1", 100_000) == "Success!"
    with caplog.at_level(logging.INFO, logger="clipper_core.connection"):
        said = conn.register_application("app", "doubles", "-1", 100_000)
    assert said == "unchanged: application app is registered as asked"
    assert [r.getMessage() for r in caplog.records if r.name == "clipper_core.connection"] == [said]

    said = conn.register_application("app", "doubles", "0", 250_000)
    assert said.startswith("updated: application app:")
    assert "slo_micros 100000 -> 250000" in said and "default_output '-1' -> '0'" in said
    info = conn.get_app_info("app")
    assert info is not None and info["latency_slo_micros"] == 250_000
    assert info["default_output"] == "0"

    said = conn.register_application("app", "doubles", "0", 250_000, policy="exp3")
    assert "policy 'single' -> 'exp3'" in said
    with pytest.raises(ClipperError, match="exists with input_type doubles, not strings"):
        conn.register_application("app", "strings", "0", 250_000)
    # A refused change changes nothing: the new objective is not kept either.
    with pytest.raises(ClipperError, match="nope"):
        conn.register_application("app", "doubles", "0", 500_000, policy="nope")
    info = conn.get_app_info("app")
    assert info is not None and info["latency_slo_micros"] == 250_000


def test_deploy_again_is_a_noop_an_update_or_a_refusal(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    conn = running.conn
    summer = models.make_sum()
    assert deploy_python_closure(conn, "m", 1, "doubles", summer) == "Success!"
    pids = running.replica_pids("m")
    with caplog.at_level(logging.INFO, logger="clipper_core.connection"):
        said = deploy_python_closure(conn, "m", 1, "doubles", summer)
    assert said == "unchanged: model m:1 is deployed with this code and settings"
    assert any(r.getMessage() == said for r in caplog.records)
    assert running.replica_pids("m") == pids  # nothing restarted

    said = deploy_python_closure(conn, "m", 1, "doubles", summer, num_replicas=2)
    assert said == "updated: model m:1: num_replicas 1 -> 2"
    assert conn.get_num_replicas("m", 1) == 2
    with pytest.raises(ClipperError, match=r"its code differs \(payload sha256"):
        deploy_python_closure(conn, "m", 1, "doubles", models.make_constant(1), num_replicas=2)
    with pytest.raises(ClipperError, match=r"batch_size -1 -> 8.*deploy it as a new version"):
        deploy_python_closure(conn, "m", 1, "doubles", summer, num_replicas=2, batch_size=8)
    with pytest.raises(ClipperError, match="input_type 'doubles' -> 'ints'"):
        deploy_python_closure(conn, "m", 1, "ints", summer, num_replicas=2)

    conn.register_application("app", "doubles", "-1", 1_000_000)
    assert conn.link_model_to_app("app", "m") == "Success!"
    assert conn.link_model_to_app("app", "m") == "unchanged: m linked to application app already"


def test_a_new_version_answers_once_it_serves_unless_a_canary(running: Running) -> None:
    conn = running.conn
    conn.register_application("ver", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "ver", 1, "doubles", models.make_constant("v1"))
    conn.link_model_to_app("ver", "ver")
    assert running.client.predict("ver", {"input": [1.0]})[1]["output"] == "v1"
    deploy_python_closure(conn, "ver", 2, "doubles", models.make_constant("v2"))
    assert conn.get_current_model_version("ver") == "2"
    assert running.client.predict("ver", {"input": [2.0]})[1]["output"] == "v2"
    conn.deploy_pickled("ver", 3, "doubles", models.make_constant("v3"), make_current=False)
    assert conn.get_current_model_version("ver") == "2"
    assert running.client.predict("ver", {"input": [3.0]})[1]["output"] == "v2"
    conn.set_model_version("ver", 3)
    assert running.client.predict("ver", {"input": [4.0]})[1]["output"] == "v3"


def _unimportable_function(tmp_path: Path) -> Any:
    """A function pickled by reference to a module the container cannot import."""
    source = tmp_path / "vanishing_model.py"
    source.write_text("def predict(inputs):\n    return [0 for _ in inputs]\n")
    spec = importlib.util.spec_from_file_location("vanishing_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["vanishing_model"] = module
    return module.predict


def test_failed_create_endpoint_leaves_nothing_behind(running: Running, tmp_path: Path) -> None:
    conn = running.conn
    create_endpoint(conn, "ok", "doubles", models.make_sum(), slo_micros=2_000_000)
    try:
        with pytest.raises(ClipperError, match="removed again: application broken"):
            create_endpoint(conn, "broken", "doubles", _unimportable_function(tmp_path))
    finally:
        sys.modules.pop("vanishing_model", None)
    assert conn.get_all_apps() == ["ok"]
    assert conn.get_all_models() == ["ok:1"]


def test_failed_link_removes_the_version_it_deployed(running: Running) -> None:
    conn = running.conn
    conn.register_application("nums", "doubles", "-1", 1_000_000)
    deploy_python_closure(conn, "words", 1, "strings", models.make_constant("a"))
    with pytest.raises(ClipperError, match="removed again: model words:2") as info:
        deploy_and_link(
            conn,
            "nums",
            "words",
            2,
            lambda: conn.deploy_pickled("words", 2, "strings", models.make_constant("b")),
        )
    assert "takes strings" in str(info.value) or "takes doubles" in str(info.value)
    assert conn.get_all_models() == ["words:1"]
    assert conn.get_current_model_version("words") == "1"  # current again


def test_stop_all_with_remove_state_on_an_embedded_server(running: Running) -> None:
    conn = running.conn
    create_endpoint(conn, "gone", "doubles", models.make_sum(), slo_micros=2_000_000)
    conn.remove_everything()
    assert conn.get_all_apps() == [] and conn.get_all_models() == []
    assert not [p for p in (running.state_dir / "models").rglob("*") if p.is_file()]


def test_for_server_connection_knows_the_grpc_port(running: Running) -> None:
    conn = ClipperConnection.for_server(running.server)
    assert isinstance(conn.cm, LocalContainerManager)
    assert conn.cm.grpc_port == running.server.grpc_port


def test_stop_all_leaves_alone_the_process_that_now_has_a_stale_pid(tmp_path: Path) -> None:
    """A server.pid left by a server that is gone (it crashed, or a reboot since)
    can name another process by now: stop_all() must neither wait for it nor kill
    it, and forgets the file."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = tmp_path / "state"
        state.mkdir()
        pid_file = state / "server.pid"
        pid_file.write_text(f"{bystander.pid} 1")  # a server that started at tick 1
        cm = LocalContainerManager(
            query_port=free_port(), management_port=free_port(), state_dir=str(state)
        )
        ClipperConnection(cm).stop_all(timeout=1.0)
        assert bystander.poll() is None, "the bystander was killed"
        assert not pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()
