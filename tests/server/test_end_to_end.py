"""The product's core path, end to end: deploy a Python model, link it to an app,
query it over HTTP.  Real server, real model processes, real gRPC and HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import math
import os
import signal
import threading
import time

import pytest

from clipper_core.deployers import create_endpoint, deploy_python_closure
from clipper_core.errors import ClipperError
from tests.server import models
from tests.server.conftest import Running, start_server


def test_predict_and_batch_predict(running: Running) -> None:
    conn = running.conn
    conn.register_application("sum", "doubles", "-1", 2_000_000)
    deploy_python_closure(conn, "summer", 1, "doubles", models.make_sum())
    conn.link_model_to_app("sum", "summer")

    status, reply = running.client.predict("sum", {"input": [1.0, 2.0, 3.5]})
    assert status == 200, reply
    assert reply["output"] == 6.5
    assert reply["default"] is False
    assert isinstance(reply["query_id"], int)
    assert "default_explanation" not in reply

    status, reply = running.client.predict(
        "sum", {"input_batch": [[1.0], [2.0, 2.0], [0.25, 0.25, 0.5]]}
    )
    assert status == 200, reply
    assert [p["output"] for p in reply["batch_predictions"]] == [1.0, 4.0, 1.0]
    ids = [p["query_id"] for p in reply["batch_predictions"]]
    assert len(set(ids)) == 3


@pytest.mark.parametrize(
    ("input_type", "value", "expected"),
    [
        ("ints", [1, 2, 3], "int32:6"),
        ("floats", [0.5, 0.25], "float32:0.75"),
        ("doubles", [0.1, 0.2], "float64:0.30000000000000004"),
        ("strings", "héllo", "str:HÉLLO"),
        ("bytes", base64.b64encode(b"\x00\x01abc").decode(), "bytes:5"),
    ],
)
def test_each_input_type(running: Running, input_type: str, value: object, expected: str) -> None:
    def describe(inputs: list) -> list:
        out = []
        for x in inputs:
            if isinstance(x, str):
                out.append(f"str:{x.upper()}")
            elif isinstance(x, bytes):
                out.append(f"bytes:{len(x)}")
            else:
                out.append(f"{x.dtype}:{x.sum().item()}")
        return out

    create_endpoint(running.conn, f"app-{input_type}", input_type, describe, slo_micros=2_000_000)
    status, reply = running.client.predict(f"app-{input_type}", {"input": value})
    assert status == 200, reply
    assert reply["output"] == expected


def test_slo_miss_returns_default_output(running: Running) -> None:
    conn = running.conn
    conn.register_application("slow", "doubles", "-1", 50_000)  # 50 ms
    deploy_python_closure(conn, "sleepy", 1, "doubles", models.make_constant(7, delay=0.5))
    conn.link_model_to_app("slow", "sleepy")
    started = time.monotonic()
    status, reply = running.client.predict("slow", {"input": [1.0]})
    elapsed = time.monotonic() - started
    assert status == 200, reply
    assert reply["default"] is True
    assert reply["output"] == -1  # Clipper parses the default output as JSON
    assert "latency objective" in reply["default_explanation"]
    assert elapsed < 0.45  # answered at the SLO, not after the model


def test_a_batch_wait_longer_than_the_objective_allows_is_cut_short(running: Running) -> None:
    # A 600 ms batch wait under a 500 ms objective, for a 40 ms model: the batch
    # is sent once its oldest input has only the batch objective (half the app's,
    # 250 ms) left, so a lone query is answered in time (~290 ms; margins wide
    # enough for a loaded CI host).  The taker waited out the whole wait before
    # (640 ms with the model): every light-load query got the default output.
    conn = running.conn
    conn.register_application("waits", "doubles", "-1", 500_000)
    deploy_python_closure(
        conn,
        "paced",
        1,
        "doubles",
        models.make_constant(5, delay=0.04),
        batch_wait_micros=600_000,
    )
    conn.link_model_to_app("waits", "paced")
    replies = [running.client.predict("waits", {"input": [float(i)]}) for i in range(6)]
    assert [(s, r["default"]) for s, r in replies] == [(200, False)] * 6, replies


def test_bad_inputs_get_clear_errors(running: Running) -> None:
    create_endpoint(running.conn, "typed", "ints", models.make_sum(), slo_micros=2_000_000)
    client = running.client
    status, body = client.predict("nope", {"input": [1]})
    assert status == 404 and "nope" in body["cause"]
    status, body = client.predict("typed", None, raw=b"{not json")
    assert status == 400 and body["error"]
    status, body = client.predict("typed", {"input": "a string"})
    assert status == 400 and "ints" in body["cause"]
    status, body = client.predict("typed", {"input": [1.5]})
    assert status == 400
    status, body = client.predict("typed", {"inputs": [1]})
    assert status == 400 and "input" in body["cause"]
    big = b'{"input": [' + b"1," * (6 * 1024 * 1024) + b"1]}"
    status, body = client.predict("typed", None, raw=big)
    assert status == 413
    # The server still serves after all that.
    status, body = client.predict("typed", {"input": [1, 2]})
    assert status == 200 and body["output"] == 3.0


def test_model_exception_fails_only_its_request(running: Running) -> None:
    create_endpoint(running.conn, "fragile", "doubles", models.make_failing(), slo_micros=2_000_000)
    status, body = running.client.predict("fragile", {"input": [-1.0]})
    assert status == 500
    assert "ValueError: negative inputs are not supported" in body["cause"]
    status, body = running.client.predict("fragile", {"input": [1.0]})
    assert status == 200 and body["output"] == 1


def test_one_bad_input_in_a_batch_fails_only_its_own_query(running: Running) -> None:
    # Four queries in one batch (batch size 4, a wait long enough to gather them);
    # the model raises for the negative one.  Before, every query of the batch got
    # that error (and another client's error text).
    conn = running.conn
    conn.register_application("mixed", "doubles", "-1", 5_000_000)
    deploy_python_closure(
        conn, "picky", 1, "doubles", models.make_failing(), batch_size=4, batch_wait_micros=500_000
    )
    conn.link_model_to_app("mixed", "picky")
    values = [1.0, -1.0, 2.0, 3.0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda v: running.client.predict("mixed", {"input": [v]}), values))
    assert [s for s, _ in replies] == [200, 500, 200, 200], replies
    assert [r["output"] for s, r in replies if s == 200] == [1, 1, 1]
    assert "negative inputs are not supported" in replies[1][1]["cause"]
    model = conn.get_metrics()["models"]["picky:1"]
    assert model["errors"] == {"model_error": 1}, model


def test_cache_hits_skip_the_container(running: Running) -> None:
    create_endpoint(running.conn, "counted", "doubles", models.make_counter(), slo_micros=2_000_000)
    first = running.client.predict("counted", {"input": [1.0, 2.0]})[1]
    again = running.client.predict("counted", {"input": [1.0, 2.0]})[1]
    other = running.client.predict("counted", {"input": [3.0]})[1]
    assert first["output"] == 1
    assert again["output"] == 1  # served from the cache: the model was not called
    assert other["output"] == 2  # the model saw exactly one call in between
    mv = running.server.dataplane.get_model_version("counted", "1")
    assert mv.cache_hits == 1


def test_cache_opt_out_calls_the_model_every_time(running: Running) -> None:
    running.conn.register_application("nocache", "doubles", "-1", 2_000_000)
    running.conn.deploy_pickled(
        "uncached", 1, "doubles", models.make_counter(), cache_enabled=False
    )
    running.conn.link_model_to_app("nocache", "uncached")
    outs = [running.client.predict("nocache", {"input": [1.0]})[1]["output"] for _ in range(3)]
    assert outs == [1, 2, 3]


def _load(client, app: str, n: int, workers: int = 8) -> list[tuple[int, dict]]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futs = [
            pool.submit(client.predict, app, {"input": [float(i)]}, timeout=20) for i in range(n)
        ]
        return [f.result(timeout=30) for f in futs]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_more_replicas_more_throughput(running: Running) -> None:
    conn = running.conn
    conn.register_application("busy", "doubles", "-1", 10_000_000)
    # batch_size=1: each query is one 0.2 s model call, so only replicas add capacity.
    conn.deploy_pickled(
        "busy", 1, "doubles", models.make_timed(0.2), batch_size=1, cache_enabled=False
    )
    conn.link_model_to_app("busy", "busy")
    started = time.monotonic()
    one = _load(running.client, "busy", 8)
    t_one = time.monotonic() - started
    conn.set_num_replicas("busy", 4)
    started = time.monotonic()
    four = _load(running.client, "busy", 8)
    t_four = time.monotonic() - started
    assert all(s == 200 and not r["default"] for s, r in one + four)
    assert len({r["output"][0] for _, r in one}) == 1
    assert _max_overlap([(r["output"][1], r["output"][2]) for _, r in one]) == 1
    # With four replicas the model calls ran side by side, on at least three
    # processes, so the same work finished sooner.
    assert len({r["output"][0] for _, r in four}) >= 3
    assert _max_overlap([(r["output"][1], r["output"][2]) for _, r in four]) >= 3
    assert t_four < t_one


def test_replica_killed_mid_load_no_request_hangs(running: Running) -> None:
    conn = running.conn
    conn.register_application("sturdy", "doubles", "-1", 10_000_000)
    conn.deploy_pickled(
        "sturdy", 1, "doubles", models.make_sleepy(0.05), num_replicas=2, cache_enabled=False
    )
    conn.link_model_to_app("sturdy", "sturdy")
    pids = running.replica_pids("sturdy")
    assert len(pids) == 2
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [
            pool.submit(running.client.predict, "sturdy", {"input": [float(i)]}, timeout=20)
            for i in range(60)
        ]
        time.sleep(0.3)
        os.kill(pids[0], signal.SIGKILL)
        results = [f.result(timeout=30) for f in futs]
    for status, reply in results:
        # Every request is answered: by a replica, or with a clear error.
        assert status == 200 or ("error" in reply and reply.get("cause")), reply
    answered = [r for s, r in results if s == 200 and not r["default"]]
    assert len(answered) >= 55
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = running.replica_pids("sturdy")
        if len(now) == 2 and pids[0] not in now:
            break
        time.sleep(0.1)
    assert len(running.replica_pids("sturdy")) == 2 and pids[0] not in running.replica_pids(
        "sturdy"
    )
    status, reply = running.client.predict("sturdy", {"input": [1.0]})
    assert status == 200 and not reply["default"]


def _wait_until(what: str, probe, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``probe`` until it is true; a guard against a hang, not a timing check."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.01)


def test_version_switch_under_load_has_no_failures(running: Running) -> None:
    conn = running.conn
    conn.register_application("ver", "doubles", "-1", 10_000_000)
    conn.deploy_pickled("ver", 1, "doubles", models.make_constant("v1", 0.005), cache_enabled=False)
    conn.link_model_to_app("ver", "ver")
    conn.deploy_pickled(
        "ver",
        2,
        "doubles",
        models.make_constant("v2", 0.005),
        cache_enabled=False,
        make_current=False,  # a canary: the switch comes under load
    )
    assert conn.get_current_model_version("ver") == "1"
    # Each answer with when its request was sent and when the answer came back.
    results: list[tuple[float, float, int, dict]] = []
    stop = threading.Event()
    enough = 30  # answers wanted from each version
    per_worker = 2000  # a bound on the load, should the switch never show

    def worker(w: int) -> None:
        for i in range(per_worker):
            if stop.is_set():
                return
            sent = time.monotonic()
            status, reply = running.client.predict("ver", {"input": [float(w * per_worker + i)]})
            results.append((sent, time.monotonic(), status, reply))

    def answers(version: str, sent_after: float = -math.inf) -> int:
        return sum(
            1 for sent, _, s, r in list(results) if sent > sent_after and r.get("output") == version
        )

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(worker, w) for w in range(6)]
        try:
            # The switch comes while the same workers keep the load going: after
            # v1 has answered, and until v2 answers the requests sent after it.
            _wait_until("answers from v1", lambda: answers("v1") >= enough)
            switch_asked = time.monotonic()
            conn.set_model_version("ver", 2)
            switched = time.monotonic()
            _wait_until("answers from v2", lambda: answers("v2", switched) >= enough)
        finally:
            stop.set()
        for f in workers:
            f.result(timeout=60)
    assert all(s == 200 and not r["default"] for _, _, s, r in results), [
        r for _, _, s, r in results if s != 200 or r["default"]
    ]
    outputs = [r["output"] for _, _, _, r in results]
    assert set(outputs) == {"v1", "v2"}, set(outputs)
    # Both versions served this one load: v1 alone before the switch was asked for,
    # v2 alone for every request sent after it was done.
    before = [r["output"] for _, received, _, r in results if received < switch_asked]
    after = [r["output"] for sent, _, _, r in results if sent > switched]
    assert len(before) >= enough and set(before) == {"v1"}
    assert len(after) >= enough and set(after) == {"v2"}
    assert running.client.predict("ver", {"input": [1.0]})[1]["output"] == "v2"
    assert conn.get_current_model_version("ver") == "2"
    conn.set_model_version("ver", 1)  # roll back
    assert running.client.predict("ver", {"input": [9.0]})[1]["output"] == "v1"


def test_deleting_a_busy_version_answers_what_it_holds_first(running: Running) -> None:
    # The queries queued at a version when it is deleted are answered before its
    # replicas stop (they got 503 queue_closed / replica_unavailable before).
    conn = running.conn
    conn.register_application("busy", "doubles", "-1", 20_000_000)
    deploy_python_closure(conn, "slow", 1, "doubles", models.make_constant("v1"), batch_size=1)
    conn.link_model_to_app("busy", "slow")
    deploy_python_closure(
        conn, "slow", 2, "doubles", models.make_constant("v2", delay=0.3), batch_size=1
    )
    conn.set_model_version("slow", 2)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        sent = [
            pool.submit(running.client.predict, "busy", {"input": [float(i)]}) for i in range(5)
        ]
        time.sleep(0.2)  # all five queued or in flight at version 2
        deleting = pool.submit(conn.stop_versioned_models, {"slow": ["2"]})
        time.sleep(0.3)  # draining: it answers what it holds and takes nothing new
        late = running.client.predict("busy", {"input": [9.0]})
        deleting.result(timeout=60)
        replies = [f.result(timeout=60) for f in sent]
    assert late[0] == 200 and late[1]["default"] is True, late
    assert [(s, r["output"]) for s, r in replies] == [(200, "v2")] * 5, replies
    assert conn.get_all_models() == ["slow:1"]
    # The deleted version was current: none is now, and the app's default says so.
    status, reply = running.client.predict("busy", {"input": [1.0]})
    assert status == 200 and reply["default"], reply
    assert "model 'slow' has no current version" in reply["default_explanation"], reply


def test_restart_restores_apps_models_and_containers(tmp_path) -> None:
    state = tmp_path / "state"
    first = start_server(state)
    try:
        create_endpoint(first.conn, "persist", "doubles", models.make_sum(), slo_micros=2_000_000)
        first.conn.set_num_replicas("persist", 2)
        assert first.client.predict("persist", {"input": [2.0, 3.0]})[1]["output"] == 5.0
        old_pids = first.replica_pids("persist")
    finally:
        first.bg.stop()
    for pid in old_pids:  # the containers were stopped with the server
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    second = start_server(state)
    try:
        assert second.conn.get_all_apps() == ["persist"]
        assert second.conn.get_linked_models("persist") == ["persist"]
        assert second.conn.get_num_replicas("persist") == 2
        assert len(second.replica_pids("persist")) == 2
        status, reply = second.client.predict("persist", {"input": [2.0, 3.0]})
        assert status == 200 and reply["output"] == 5.0 and not reply["default"]
    finally:
        second.bg.stop()


def test_configuration_api_reports_state(running: Running) -> None:
    conn = running.conn
    create_endpoint(
        conn,
        "info",
        "doubles",
        models.make_sum(),
        default_output="0",
        slo_micros=250_000,
        labels=["demo"],
    )
    assert conn.get_all_apps() == ["info"]
    app = conn.get_app_info("info")
    assert app is not None
    assert app["latency_slo_micros"] == 250_000 and app["linked_models"] == ["info"]
    assert conn.get_app_info("missing") is None
    assert conn.get_all_models() == ["info:1"]
    model = conn.get_model_info("info", 1)
    assert model is not None and model["is_current_version"] and model["labels"] == ["demo"]
    assert conn.get_all_model_replicas() == ["info:1:0"]
    # The same again changes nothing; other code under that version is refused.
    said = deploy_python_closure(conn, "info", 1, "doubles", models.make_sum(), labels=["demo"])
    assert said.startswith("unchanged")
    with pytest.raises(ClipperError, match="deployed already"):
        deploy_python_closure(conn, "info", 1, "doubles", models.make_constant(0), labels=["demo"])
    conn.stop_models(["info"])
    assert conn.get_all_models() == []
    conn.unregister_application("info")
    assert conn.get_all_apps() == []


def test_container_that_fails_to_start_reports_stderr(running: Running, tmp_path) -> None:
    # A pickle that can't be loaded in the container: the deploy fails with the
    # container's stderr instead of hanging.
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    running.conn.register_application("broken", "doubles", "-1", 100_000)
    with pytest.raises(ClipperError) as info:
        running.conn._add_model(
            "broken",
            1,
            "doubles",
            container={"kind": "closure", "filename": "x.pkl"},
            payload=b"not a pickle",
        )
    assert "pickle" in str(info.value).lower() or "exit" in str(info.value).lower()
    assert running.conn.get_all_models() == []


def test_hand_started_container_joins_replicas(running: Running, tmp_path) -> None:
    import subprocess
    import sys

    import cloudpickle

    running.conn.register_application("joined", "doubles", "-1", 2_000_000)
    running.conn.register_model("ext", 1, "doubles")
    running.conn.link_model_to_app("joined", "ext")
    path = tmp_path / "f.pkl"
    path.write_bytes(cloudpickle.dumps(models.make_constant("from-outside")))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_containers",
            "--model-name",
            "ext",
            "--model-version",
            "1",
            "--input-type",
            "doubles",
            "--closure",
            str(path),
            "--port",
            "0",
            "--register-url",
            running.server.management_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CLIPPER_ADMIN_TOKEN": str(running.server.config.admin_token)},
    )
    try:
        deadline = time.monotonic() + 20
        reply: dict = {}
        while time.monotonic() < deadline:
            status, reply = running.client.predict("joined", {"input": [1.0]}, timeout=5)
            if status == 200 and not reply["default"]:
                break
            time.sleep(0.2)
        assert reply.get("output") == "from-outside", reply
    finally:
        proc.terminate()
        proc.wait(timeout=10)
