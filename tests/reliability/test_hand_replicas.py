"""Replicas registered by hand (``register_replica``: containers this server did not
start, real processes here): one that dies stops counting as up while idle, and
comes back by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.ports import free_port
from tests.containers.container_harness import Container, Launcher, closure_args, pickle_closure
from tests.observability.test_metrics_server import scrape
from tests.reliability import models
from tests.reliability.conftest import http, wait_for
from tests.server.conftest import Running, start_server


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _start(launcher: Launcher, tmp_path: Path, name: str, model: Any, port: int) -> Container:
    closure = pickle_closure(tmp_path / f"{name}-{port}.pkl", model)
    args = [*closure_args(closure, "doubles", name="ext"), "--host", "127.0.0.1"]
    return launcher.start(*args, "--port", str(port))


def _register(running: Running, replica_id: str, port: int) -> None:
    status, _, reply = http(
        "POST",
        f"{running.server.management_url}/admin/register_replica",
        {
            "model_name": "ext",
            "model_version": "1",
            "replica_id": replica_id,
            "address": f"127.0.0.1:{port}",
        },
        headers=running.admin_headers(),
    )
    assert status == 200, reply


def _external_app(running: Running) -> None:
    conn = running.conn
    conn.register_model("ext", 1, "doubles")
    conn.register_application("extapp", "doubles", "-1", 20_000_000)
    conn.link_model_to_app("extapp", "ext")


def _replica_metrics(running: Running) -> dict[str, float]:
    """``clipper_replica_up`` per replica id of ext:1, and ``clipper_model_replicas``
    under the key ``"replicas"``."""
    out: dict[str, float] = {}
    for (name, labels), v in scrape(running.bg.query_url).items():
        lab = dict(labels)
        if lab.get("model") != "ext":
            continue
        if name == "clipper_replica_up":
            out[lab["replica"]] = v
        elif name == "clipper_model_replicas":
            out["replicas"] = v
    return out


def test_a_dead_idle_replica_registered_by_hand_stops_counting_and_comes_back(
    tmp_path: Path, launcher: Launcher
) -> None:
    running = start_server(tmp_path / "state")
    try:
        port = free_port()
        container = _start(launcher, tmp_path, "double", models.make_sleeper(0.0), port)
        _external_app(running)
        _register(running, "hand-1", port)
        url = f"{running.bg.query_url}/extapp/predict"
        status, _, body = http("POST", url, {"input": [2.0]})
        assert status == 200 and body["output"] == 2.0 and not body["default"], body
        assert _replica_metrics(running) == {"hand-1": 1.0, "replicas": 1.0}
        mv = running.server.dataplane.get_model_version("ext", "1")
        slot = mv.replicas["hand-1"]

        container.proc.kill()  # and no query follows: only a probe can notice
        container.wait()
        wait_for(
            "the dead replica to stop counting",
            lambda: _replica_metrics(running) == {"hand-1": 0.0, "replicas": 0.0},
        )
        assert not slot.up  # nor does admission control count it
        assert mv.replicas["hand-1"] is slot  # still registered: it may come back

        # Back at its address: it counts, and serves, again by itself.
        _start(launcher, tmp_path, "double", models.make_sleeper(0.0), port)
        wait_for(
            "the replica to count again",
            lambda: _replica_metrics(running) == {"hand-1": 1.0, "replicas": 1.0},
        )
        assert slot.up
        status, _, body = http("POST", url, {"input": [3.0]})
        assert status == 200 and body["output"] == 3.0 and not body["default"], body
    finally:
        running.bg.stop()
