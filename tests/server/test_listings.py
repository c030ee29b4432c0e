"""No silent mis-links: listings name the model that answers an app, and
``clipper deploy --app`` refuses options that cannot apply to an existing app."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.deployers import deploy_python_closure
from tests.server import models
from tests.server.conftest import Running, start_server

REPO = Path(__file__).resolve().parents[2]


def _clipper(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    ports = [
        "--query-port",
        str(running.server.query_port),
        "--management-port",
        str(running.server.management_port),
    ]
    return subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", *ports, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CLIPPER_STATE_DIR": str(running.state_dir), "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )


def test_listings_name_the_answering_model(running: Running) -> None:
    conn = running.conn
    conn.register_application("app", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "zeta", 1, "doubles", models.make_constant("zeta"))
    deploy_python_closure(conn, "alpha", 1, "doubles", models.make_constant("alpha"))
    conn.link_model_to_app("app", "zeta")
    conn.link_model_to_app("app", "alpha")
    # Listed in link order, answered by the first linked: the listing says which.
    info = conn.get_app_info("app")
    assert info is not None and info["linked_models"] == ["zeta", "alpha"]
    assert info["answering_model"] == "zeta:1"
    assert running.client.predict("app", {"input": [1.0]})[1]["model"] == "zeta:1"
    (listed,) = conn.get_all_apps(verbose=True)
    assert listed["answering_model"] == "zeta:1"
    deploy_python_closure(conn, "zeta", 2, "doubles", models.make_constant("zeta2"))
    assert conn.get_app_info("app")["answering_model"] == "zeta:2"  # type: ignore[index]
    res = _clipper(running, "apps")
    assert res.returncode == 0, res.stderr
    assert "ANSWERS" in res.stdout and "zeta:2" in res.stdout
    conn.set_selection_policy("app", "exp3")
    assert conn.get_app_info("app")["answering_model"] is None  # type: ignore[index]


def test_the_first_linked_model_still_answers_after_a_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = start_server(state_dir)
    try:
        conn = first.conn
        conn.register_application("app", "doubles", "-1", 2_000_000)
        deploy_python_closure(conn, "b", 1, "doubles", models.make_constant("b"))
        deploy_python_closure(conn, "a", 1, "doubles", models.make_constant("a"))
        conn.link_model_to_app("app", "b")
        conn.link_model_to_app("app", "a")
        assert first.client.predict("app", {"input": [1.0]})[1]["output"] == "b"
    finally:
        first.bg.stop()
    second = start_server(state_dir)  # the state comes back from the store
    try:
        conn = second.conn
        status, reply = second.client.predict("app", {"input": [1.0]})
        assert status == 200 and reply["output"] == "b" and reply["model"] == "b:1", reply
        info = conn.get_app_info("app")
        assert info is not None and info["answering_model"] == "b:1"
        assert info["linked_models"] == ["b", "a"] == conn.get_linked_models("app")
        (listed,) = conn.get_all_apps(verbose=True)
        assert listed["answering_model"] == "b:1" and listed["linked_models"] == ["b", "a"]
    finally:
        second.bg.stop()


def test_deploy_to_an_existing_app_refuses_what_cannot_apply(
    running: Running, tmp_path: Path
) -> None:
    source = tmp_path / "newmodel.py"
    source.write_text("def predict(inputs):\n    return ['new' for _ in inputs]\n")
    conn = running.conn
    conn.register_application("app", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "old", 1, "doubles", models.make_constant("old"))
    conn.link_model_to_app("app", "old")
    deploy = ["deploy", "new", f"{source}:predict", "--input-type", "doubles", "--app", "app"]

    res = _clipper(running, *deploy, "--default-output", "0")
    assert res.returncode == 1
    assert "default output is '-1', not --default-output '0'" in res.stderr, res.stderr
    assert "nothing was deployed" in res.stderr
    res = _clipper(running, *deploy)
    assert res.returncode == 1 and "answered by old:1" in res.stderr and "--replace" in res.stderr
    assert conn.get_all_models() == ["old:1"]

    res = _clipper(running, *deploy, "--replace", "--default-output", "-1")
    assert res.returncode == 0, res.stderr
    assert conn.get_linked_models("app") == ["new"]
    assert running.client.predict("app", {"input": [1.0]})[1]["output"] == "new"


def test_cli_deploy_as_a_canary(running: Running, tmp_path: Path) -> None:
    source = tmp_path / "v.py"
    source.write_text("def v1(inputs):\n    return [1 for _ in inputs]\n")
    source.write_text(source.read_text() + "def v2(inputs):\n    return [2 for _ in inputs]\n")
    base = ["deploy", "m", "--input-type", "doubles"]
    assert _clipper(running, *base[:2], f"{source}:v1", *base[2:]).returncode == 0
    res = _clipper(running, *base[:2], f"{source}:v2", *base[2:], "--version", "2",
                   "--no-make-current")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert running.conn.get_current_model_version("m") == "1"
    res = _clipper(running, *base[:2], f"{source}:v1", *base[2:])
    assert res.returncode == 0 and res.stdout.startswith("unchanged"), res.stdout


def test_listings_skip_an_app_deleted_while_they_read(running: Running) -> None:
    # The verbose listing read the apps, then each app's links: an app deleted in
    # between (another call, another frontend) turned the whole listing into 404.
    conn = running.conn
    conn.register_application("kept", "doubles", "-1", 2_000_000)
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        other = ClipperConnection(
            LocalContainerManager(
                "127.0.0.1",
                running.server.query_port,
                running.server.management_port,
                str(running.state_dir),
            )
        )
        while not stop.is_set() and churned[0] < 2_000:
            other.register_application("passing", "doubles", "-1", 2_000_000)
            other.unregister_application("passing")
            churned[0] += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        listings = []
        for _ in range(300):
            listings.append({a["name"] for a in conn.get_all_apps(verbose=True)})
            conn.get_app_info("passing")  # none of these may fail while it comes and goes
            conn.get_linked_models("passing")
    finally:
        stop.set()
        worker.join(timeout=60)
    assert churned[0] > 0 and all("kept" in names for names in listings)
