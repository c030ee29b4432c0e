"""Poison inputs: an input that makes the model process exit is isolated from its
batch, answered with an error that names the crash, and refused at once after
that, while the rest of its batch is answered (real containers, a closure that
calls ``os._exit(1)`` on one input)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.ports import free_port
from tests.containers.container_harness import Launcher, closure_args, pickle_closure
from tests.reliability import models
from tests.reliability.conftest import http, wait_for
from tests.server.conftest import Running, start_server

POISON = -1.0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start_server(tmp_path / "state")
    try:
        yield r
    finally:
        r.bg.stop()


def _deploy(running: Running, app: str, calls: Path, slo_micros: int, **kw: Any) -> Any:
    conn = running.conn
    conn.register_application(app, "doubles", "-1", slo_micros)
    conn.deploy_pickled(
        app, 1, "doubles", models.make_crasher(str(calls), POISON), cache_enabled=False, **kw
    )
    conn.link_model_to_app(app, app)
    return running.server.dataplane.get_model_version(app, "1")


def _poison_calls(calls: Path) -> list[int]:
    """The pids of the processes that the poison input reached."""
    return [pid for pid, x in models.read_pid_calls(str(calls)) if x == POISON]


def _restarted(running: Running, app: str, crashed: list[int]) -> list[int] | None:
    """The replica's pid once a process that the poison did not crash runs."""
    pids = running.replica_pids(app)
    return pids if pids and not set(pids) & set(crashed) else None


def _assert_crash_error(status: int, body: Any) -> None:
    assert status == 500, body
    assert body["error"] == "input_crashed_model", body
    assert "input crashed the model container of" in body["cause"], body
    # An error about the crash, not the latency objective's default output.
    assert "latency" not in body["cause"], body


def test_poison_in_a_batch_is_isolated_and_the_rest_answered(
    running: Running, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.log"
    # Batches of exactly four (a long batch wait): the four requests make one batch.
    mv = _deploy(running, "psn", calls, 120_000_000, batch_size=4, batch_wait_micros=2_000_000)
    url = f"{running.bg.query_url}/psn/predict"
    inputs = [1.0, 2.0, POISON, 3.0]
    with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
        futs = [pool.submit(http, "POST", url, {"input": [x]}, timeout=150) for x in inputs]
        results = [f.result(timeout=200) for f in futs]
    for x, (status, _, body) in zip(inputs, results, strict=True):
        if x == POISON:
            _assert_crash_error(status, body)
        else:
            assert status == 200 and not body["default"], body
            assert body["output"] == 2.0 * x, body
    # The poison met two processes: its batch, then alone (the lost batch is
    # handed back split).
    met = _poison_calls(calls)
    assert len(met) == 2 and len(set(met)) == 2, met
    assert mv.isolation.isolated == 1
    # Each innocent input was answered once, alone, by a replica.
    seen = models.read_pid_calls(str(calls))
    for x in (1.0, 2.0, 3.0):
        assert sum(1 for _, v in seen if v == x) == 2, seen

    # Known now: refused at once, without reaching a replica.
    [pid] = wait_for("the replica back", lambda: _restarted(running, "psn", met))
    status, _, body = http("POST", url, {"input": [POISON]})
    _assert_crash_error(status, body)
    assert len(_poison_calls(calls)) == 2
    assert mv.isolation.refused == 1
    # In a batch request it fails only its own input.
    status, _, body = http("POST", url, {"input_batch": [[POISON], [4.0]]}, timeout=60)
    assert status == 200, body
    first, second = body["batch_predictions"]
    assert (
        first["default"] and "input crashed the model container" in first["default_explanation"]
    ), first
    assert second["output"] == 8.0 and not second["default"], second
    assert running.replica_pids("psn") == [pid]
    stats = running.conn.get_metrics()["models"]["psn:1"]
    assert stats["errors"]["input_crashed_model"] == 3, stats


def test_poison_is_pinned_after_its_client_gave_up(running: Running, tmp_path: Path) -> None:
    calls = tmp_path / "calls.log"
    # A one-second objective: the isolation (two restarts) outlasts it.
    mv = _deploy(running, "psn2", calls, 1_000_000, batch_size=1)
    url = f"{running.bg.query_url}/psn2/predict"
    status, _, body = http("POST", url, {"input": [POISON]}, timeout=60)
    if status == 200:
        # Answered by the objective's timer: the default output says why.
        assert body["default"] and "went away with a batch" in body["default_explanation"], body
    else:
        _assert_crash_error(status, body)
    # The isolation went on without the client, until the input was pinned.
    wait_for("the poison pinned", lambda: mv.isolation.isolated == 1, timeout=120)
    status, _, body = http("POST", url, {"input": [POISON]})
    _assert_crash_error(status, body)
    # It came alone: two processes, the second time alone again.
    met = _poison_calls(calls)
    assert len(met) == 2 and len(set(met)) == 2, met
    wait_for("the replica back", lambda: _restarted(running, "psn2", met), timeout=60)

    def answered() -> bool:
        status, _, body = http("POST", url, {"input": [7.0]}, timeout=60)
        return status == 200 and body["output"] == 14.0 and not body["default"]

    wait_for("an answer from the restarted replica", answered, timeout=60)
    assert len(_poison_calls(calls)) == 2


def test_distinct_poison_inputs_in_a_row_leave_the_model_serving(
    running: Running, tmp_path: Path
) -> None:
    """A new poison input each time (nothing to refuse by digest): each is
    isolated, mostly by promoting the warm standby, and the model keeps answering
    between them; no replica ends up failed."""
    calls = tmp_path / "calls.log"
    conn = running.conn
    conn.register_application("psnd", "doubles", "-1", 120_000_000)
    conn.deploy_pickled(
        "psnd",
        1,
        "doubles",
        models.make_negative_crasher(str(calls)),
        cache_enabled=False,
        num_replicas=2,
    )
    conn.link_model_to_app("psnd", "psnd")
    mv = running.server.dataplane.get_model_version("psnd", "1")
    url = f"{running.bg.query_url}/psnd/predict"
    poisons = [-1.0, -2.0, -3.0, -4.0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for k, poison in enumerate(poisons):
            normal = [pool.submit(http, "POST", url, {"input": [10.0 * k + i]}, timeout=150)
                      for i in range(3)]  # fmt: skip
            status, _, body = http("POST", url, {"input": [poison]}, timeout=150)
            _assert_crash_error(status, body)
            for i, fut in enumerate(normal):
                status, _, body = fut.result(timeout=200)
                assert status == 200 and body["output"] == 2.0 * (10.0 * k + i), body
    assert mv.isolation.isolated == len(poisons)
    # Still serving: both replicas run, and a normal input is answered.
    wait_for("two replicas running", lambda: len(running.replica_pids("psnd")) == 2)
    status, _, body = http("POST", url, {"input": [5.0]}, timeout=60)
    assert status == 200 and body["output"] == 10.0 and not body["default"], body
    # Its last crash may still be on its way to the supervisor (the process gone,
    # its exit not yet read) when the two were counted: wait for both to run.
    wait_for(
        "both replicas running, none failed",
        lambda: [r.state for r in running.server.manager.list("psnd", "1")] == ["running"] * 2,
    )


def test_scaling_down_under_load_pins_no_input_as_poison(running: Running) -> None:
    """Replicas stopped on purpose refuse calls while they stop: their dispatchers
    go first, so nothing they had is taken for a crash (good inputs were pinned as
    poison for 10 minutes), and every query is answered by the model."""
    conn = running.conn
    conn.register_application("shrink", "doubles", "-1", 120_000_000)
    conn.deploy_pickled(
        "shrink", 1, "doubles", models.make_sleeper(0.05), cache_enabled=False,
        batch_size=1, num_replicas=3,
    )  # fmt: skip
    conn.link_model_to_app("shrink", "shrink")
    mv = running.server.dataplane.get_model_version("shrink", "1")
    url = f"{running.bg.query_url}/shrink/predict"
    wait_for("three replicas", lambda: len(mv.replicas) == 3)

    def client(k: int) -> list[tuple[int, dict[str, str], Any]]:
        return [http("POST", url, {"input": [100.0 * k + i]}, timeout=120) for i in range(25)]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        load = [pool.submit(client, k) for k in range(6)]
        wait_for(
            "load on every replica",
            lambda: sum(bool(s.in_flight) for s in mv.replicas.values()) >= 2,
        )
        conn.set_num_replicas("shrink", 1)
        answers = [a for f in load for a in f.result(timeout=300)]
    assert len(mv.replicas) == 1
    assert [(s, b.get("error")) for s, _, b in answers if s != 200 or b["default"]] == []
    assert len(mv.isolation.poison) == 0


def test_poison_is_pinned_on_a_replica_that_comes_back_in_place(
    running: Running, tmp_path: Path
) -> None:
    # A replica registered by hand (as on another host, or a pod that Kubernetes
    # restarts): after a crash it comes back at the same address, and the
    # frontend's slot recovers in place (no reconnect). Its return must count as
    # a sign of life, or the poison's second loss reads as "died together, no
    # evidence", and the input is handed back until "replicas kept going away".
    calls = tmp_path / "calls.log"
    closure = pickle_closure(tmp_path / "crasher.pkl", models.make_crasher(str(calls), POISON))
    port = free_port()
    args = [*closure_args(closure, "doubles", name="ext"), "--host", "127.0.0.1"]
    args += ["--port", str(port)]
    launcher = Launcher(tmp_path)
    done = threading.Event()

    def keep_running() -> None:
        # What a supervisor on the replica's host does: start it again, same port.
        while not done.is_set():
            container = launcher.start(*args)
            while container.proc.poll() is None and not done.is_set():
                time.sleep(0.05)

    supervisor = threading.Thread(target=keep_running, daemon=True)
    supervisor.start()
    try:
        conn = running.conn
        conn.register_model("ext", 1, "doubles")
        conn.register_application("extapp", "doubles", "-1", 120_000_000)
        conn.link_model_to_app("extapp", "ext")
        status, _, reply = http(
            "POST",
            f"{running.server.management_url}/admin/register_replica",
            {"model_name": "ext", "model_version": "1", "address": f"127.0.0.1:{port}"},
            headers=running.admin_headers(),
        )
        assert status == 200, reply
        url = f"{running.bg.query_url}/extapp/predict"
        ok = wait_for("the replica serving", lambda: http("POST", url, {"input": [2.0]})[2])
        assert ok["output"] == 4.0 and not ok["default"], ok
        status, _, body = http("POST", url, {"input": [POISON]}, timeout=150)
        _assert_crash_error(status, body)
        assert len(_poison_calls(calls)) == 2  # lost alone twice: pinned
        status, _, body = http("POST", url, {"input": [POISON]})
        _assert_crash_error(status, body)  # refused without reaching the replica
        assert len(_poison_calls(calls)) == 2
    finally:
        done.set()
        supervisor.join(60)
        launcher.stop_all()
