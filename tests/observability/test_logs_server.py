"""Structured logs of a running server: deploys, version switches, overload, and
``clipper serve --log-format json --access-log``."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.ports import free_port
from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.deployers import deploy_python_closure
from tests.observability.artifacts import REPO
from tests.server import models
from tests.server.conftest import Running, start_server


def test_deploy_and_version_switch_events(server: Running, logs: Any) -> None:
    conn = server.conn
    conn.register_application("ver", "doubles", "-1", 1_000_000)
    deploy_python_closure(conn, "vm", 1, "doubles", models.make_constant(1))
    deploy_python_closure(conn, "vm", 2, "doubles", models.make_constant(2))
    conn.link_model_to_app("ver", "vm")
    conn.set_model_version("vm", "2")
    assert server.client.predict("ver", {"input": [0.0]})[1]["output"] == 2

    (app,) = logs.events("app_registered")
    assert app["app"] == "ver" and app["slo_micros"] == 1_000_000
    deployed = logs.events("model_deployed")
    assert [(d["model"], d["version"], d["replicas"]) for d in deployed] == [
        ("vm", "1", 1),
        ("vm", "2", 1),
    ]
    switches = [(e["previous"], e["version"]) for e in logs.events("version_switched")]
    assert switches == [(None, "1"), ("1", "2")]
    assert logs.events("model_linked")[0]["model"] == "vm"
    ready = logs.events("replica_ready")
    assert {(e["version"], e["replica"]) for e in ready} == {("1", "0"), ("2", "0")}


def test_overload_is_logged_once_and_counted(tmp_path: Path, logs: Any) -> None:
    running = start_server(tmp_path / "state", queue_capacity=2)
    try:
        conn = running.conn
        conn.register_application("busy", "doubles", "-1", 5_000_000)
        deploy_python_closure(conn, "slowpoke", 1, "doubles", models.make_sleepy(0.3), batch_size=1)
        conn.link_model_to_app("busy", "slowpoke")

        def query(i: int) -> int:
            return running.client.predict("busy", {"input": [float(i)]})[0]

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(query, range(12)))
        assert 503 in statuses and 200 in statuses
        overloads = logs.events("overload")
        assert len(overloads) == 1  # rate-limited: once per app every few seconds
        event = overloads[0]
        assert event["level"] == "warning"
        assert (event["app"], event["model"], event["version"]) == ("busy", "slowpoke", "1")
        errors = conn.get_metrics()["apps"]["busy"]["errors"]
        assert sum(errors.values()) == statuses.count(503)
        assert set(errors) <= {"queue_full", "overloaded"}
    finally:
        running.bg.stop()


def test_serve_writes_json_lines_and_access_logs_on_request(tmp_path: Path) -> None:
    qp, mp = free_port(), free_port()
    log_path = tmp_path / "server.log"
    argv = [
        sys.executable, "-m", "clipper_core.cli", "serve",
        "--query-port", str(qp), "--management-port", str(mp),
        "--state-dir", str(tmp_path / "state"),
        "--log-format", "json", "--log-level", "info", "--access-log",
    ]  # fmt: skip
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "CLIPPER_ADMIN_TOKEN"},
        )  # fmt: skip
    try:
        # The server generates its token into the state folder; the client reads it there.
        conn = ClipperConnection(
            LocalContainerManager("127.0.0.1", qp, mp, str(tmp_path / "state"))
        )
        end = time.monotonic() + 60
        while not conn.ping():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < end, "the server did not answer"
            time.sleep(0.1)
        conn.register_application("logged", "doubles", "-1", 100_000)
        with urllib.request.urlopen(f"http://127.0.0.1:{qp}/metrics", timeout=30) as resp:
            assert resp.status == 200
        conn._call("shutdown")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    events = [d["event"] for d in docs]
    assert "server_started" in events and "app_registered" in events
    access = [d for d in docs if d["event"] == "http_access"]
    assert any(d["path"] == "/metrics" and d["status"] == 200 for d in access)
    assert any(d["path"] == "/admin/add_app" for d in access)
