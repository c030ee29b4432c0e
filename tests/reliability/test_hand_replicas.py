"""Replicas registered by hand (``register_replica``: containers this server did not
start, real processes here): one that dies stops counting as up while idle, and
comes back by itself; one that hangs is quarantined after a batch timeout, with
a back-off, instead of taking a batch every ``batch_timeout``."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from bench.ports import free_port
from tests.containers.container_harness import Container, Launcher, closure_args, pickle_closure
from tests.observability.test_metrics_server import scrape
from tests.reliability import models
from tests.reliability.conftest import http, wait_for
from tests.server.conftest import Running, start_server


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


def test_a_hung_replica_registered_by_hand_is_quarantined_with_a_back_off(
    tmp_path: Path, launcher: Launcher
) -> None:
    # A hung container accepts connections and reports SERVING, but Predict never
    # returns.  Without a quarantine it would take a batch, lose it after the
    # batch timeout, and take the next one at once, for as long as it hangs.
    running = start_server(tmp_path / "state", batch_timeout=0.5)
    stop = threading.Event()
    try:
        good, stuck = free_port(), free_port()
        _start(launcher, tmp_path, "good", models.make_sleeper(0.0), good)
        _start(launcher, tmp_path, "stuck", models.make_stuck(), stuck)
        _external_app(running)
        _register(running, "good", good)
        _register(running, "stuck", stuck)
        mv = running.server.dataplane.get_model_version("ext", "1")
        url = f"{running.bg.query_url}/extapp/predict"

        def client(k: int) -> None:  # a steady load, so that a free replica gets a batch
            n = 0
            while not stop.is_set():
                n += 1
                http("POST", url, {"input": [float(k), float(n)]})  # distinct: no cache hit
                time.sleep(0.02)

        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(3)]
        for t in clients:
            t.start()
        # When each batch timeout happened (the stuck replica lost a batch).
        lost: list[float] = []
        end = time.monotonic() + 60
        while len(lost) < 3 and time.monotonic() < end:
            if mv.timeouts > len(lost):
                while mv.timeouts > len(lost):
                    lost.append(time.monotonic())
                # Quarantined at each timeout (for 1 s at least): not up meanwhile.
                assert _replica_metrics(running) == {"good": 1.0, "stuck": 0.0, "replicas": 2.0}
            time.sleep(0.01)
        assert len(lost) == 3, f"{len(lost)} batch timeout(s) within 60 s"
        # Each lost batch is followed by a quarantine (1 s, then 2 s) before the
        # next, on top of the 0.5 s the trial batch waits: lower bounds only.
        gaps = [b - a for a, b in itertools.pairwise(lost)]
        assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps
        stuck_slot = mv.replicas["stuck"]
        assert stuck_slot.quarantine == 4.0 and not stuck_slot.up  # nor admission counts it
        status, _, body = http("POST", url, {"input": [5.0]})
        assert status == 200 and body["output"] == 5.0, body  # the good one serves on
        # Without traffic, once its quarantine is over (and any trial batch lost),
        # it counts again: readiness must not keep it out of rotation for good.
        stop.set()
        wait_for("the idle stuck replica up after its quarantine", lambda: stuck_slot.up, 30)
        assert stuck_slot.quarantine >= 4.0  # the back-off is kept until a batch is answered
    finally:
        stop.set()
        running.bg.stop()
