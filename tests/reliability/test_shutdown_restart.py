"""The frontend's lifecycle with a real ``clipper serve`` process: SIGTERM drains
the requests in flight, stops the containers and exits 0; a kill -9 leaves no
container behind, and a restart brings back every app, model, version, link,
replica count and key from the store, and every selection policy's learned
state."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
from pathlib import Path

from clipper_core.deployers import deploy_python_closure
from clipper_core.selection.runtime import kv_namespace
from tests.reliability import models
from tests.reliability.conftest import ServeProcess, http, pid_alive, wait_for
from tests.server import models as server_models
from tests.server import selection_helpers as selection_models


def _container_pids(conn) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted(r["pid"] for r in conn.get_state()["replicas"] if r["state"] == "running")


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_drains_in_flight_requests_and_exits_0(
    serve_processes: list[ServeProcess], tmp_path: Path
) -> None:
    srv = ServeProcess(tmp_path / "state", "--shutdown-grace", "60")
    serve_processes.append(srv)
    conn = srv.connection()
    conn.register_application("drain", "doubles", "-1", 60_000_000)
    # One input per batch, 0.4 s each: six requests need ~2.4 s to drain.
    conn.deploy_pickled(
        "drain", 1, "doubles", models.make_sleeper(0.4), batch_size=1, cache_enabled=False
    )
    conn.link_model_to_app("drain", "drain")
    containers = _container_pids(conn)
    assert len(containers) == 1
    url = f"{srv.query_url}/drain/predict"

    def queries_received() -> bool:
        [model] = [m for m in conn.get_state()["models"] if m["model"] == "drain"]
        return bool(model["queries"] >= 6)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(http, "POST", url, {"input": [float(i)]}) for i in range(6)]
        wait_for("six requests accepted", queries_received)
        srv.proc.send_signal(signal.SIGTERM)
        # It stops accepting at once, while the accepted requests still run.
        wait_for("the query port closed", lambda: _refuses_connections(srv.query_port))
        results = [f.result(timeout=120) for f in futs]
    assert srv.proc.wait(timeout=120) == 0, srv.log_tail()
    # Nothing accepted was dropped: every request got its model's answer.
    assert sorted(body["output"] for _, _, body in results) == [float(i) for i in range(6)]
    assert all(s == 200 and not body["default"] for s, _, body in results), results
    for pid in containers:
        assert not pid_alive(pid)


def test_kill_9_restart_restores_everything_and_leaves_no_orphans(
    serve_processes: list[ServeProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = ServeProcess(state)
    serve_processes.append(first)
    conn = first.connection()
    conn.register_application("persist", "doubles", "-1", 2_000_000)
    conn.register_application("other", "strings", "nothing", 500_000)
    deploy_python_closure(conn, "summer", 1, "doubles", server_models.make_sum())
    deploy_python_closure(
        conn, "summer", 2, "doubles", server_models.make_constant("v2"), queue_capacity=77
    )
    conn.set_num_replicas("summer", 2, version=2)
    conn.set_model_version("summer", 2)
    conn.link_model_to_app("persist", "summer")
    conn.set_app_api_keys("persist", ["persist-api-key-0001"])
    key = {"X-Api-Key": "persist-api-key-0001"}
    status, _, body = http(
        "POST", f"{first.query_url}/persist/predict", {"input": [1.0]}, headers=key
    )
    assert status == 200 and body["output"] == "v2"
    before = {
        "apps": conn.get_all_apps(verbose=True),
        "models": conn.get_all_models(verbose=True),
        "replicas": conn.get_all_model_replicas(),
    }
    containers = _container_pids(conn)
    assert len(containers) == 3  # summer:1 x1, summer:2 x2
    kv_before = _kv(state)
    assert any(ns == "auth.api_keys" for ns, _ in kv_before)

    second = _kill_9_and_restart(first, containers, serve_processes)
    conn2 = second.connection()
    assert conn2.get_all_apps(verbose=True) == before["apps"]
    assert conn2.get_all_models(verbose=True) == before["models"]
    assert conn2.get_current_model_version("summer") == "2"
    assert conn2.get_num_replicas("summer", 2) == 2
    assert conn2.get_num_replicas("summer", 1) == 1
    assert conn2.get_linked_models("persist") == ["summer"]
    info = conn2.get_model_info("summer", 2)
    assert info is not None and info["queue_capacity"] == 77
    wait_for(
        "the replicas back",
        lambda: sorted(conn2.get_all_model_replicas()) == sorted(before["replicas"]),
    )
    new_containers = _container_pids(conn2)
    assert len(new_containers) == 3 and not set(new_containers) & set(containers)
    url = f"{second.query_url}/persist/predict"
    assert http("POST", url, {"input": [1.0]})[0] == 401  # the API keys came back too
    status, _, body = http("POST", url, {"input": [1.0]}, headers=key)
    assert status == 200 and body["output"] == "v2" and not body["default"]
    status, _, body = http("POST", f"{second.query_url}/other/predict", {"input": "x"})
    assert status == 200 and body["output"] == "nothing"
    assert os.getpid() not in new_containers
    # The key/value state (API keys, selection policies' state) is all there.
    assert set(kv_before) <= set(_kv(state))


def test_kill_9_restart_restores_learned_selection_state(
    serve_processes: list[ServeProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = ServeProcess(state)
    serve_processes.append(first)
    conn = first.connection()
    conn.deploy_pickled("one", 1, "doubles", selection_models.make_label(1))
    conn.deploy_pickled("zero", 1, "doubles", selection_models.make_label(0))
    policies = {
        "bandit-exp3": ("exp3", {"eta": 0.5, "seed": 5}),
        # No exploration: what it picks follows from the learned state alone.
        "bandit-eg": ("epsilon_greedy", {"epsilon": 0.0, "seed": 5}),
    }
    for app, (policy, config) in policies.items():
        conn.register_application(
            app, "doubles", "-1", 2_000_000, policy=policy, policy_config=config
        )
        conn.link_model_to_app(app, "one")
        conn.link_model_to_app(app, "zero")
    # User 1 learns that "one" is right, user 2 that "zero" is.
    uids = {1: 1, 2: 0}
    for app in policies:
        for i in range(12):
            for uid, label in uids.items():
                body = {"input": [float(i)], "uid": uid}
                status, _, reply = http("POST", f"{first.query_url}/{app}/predict", body)
                assert status == 200 and not reply["default"], reply
                status, _, reply = http(
                    "POST", f"{first.query_url}/{app}/update", {**body, "label": label}
                )
                assert status == 200 and reply["success"], reply
    before = {
        (app, uid): conn.get_selection_state(app, uid) for app in policies for uid in (0, *uids)
    }
    for (app, uid), info in before.items():
        assert info is not None and info["policy"] == policies[app][0]
        assert info["own_state"] == (uid != 0)
    for app in policies:
        for uid in uids:
            assert before[app, uid]["state"]["updates"] == 12
    # Each user's weights moved away from the model that was wrong for it, and
    # epsilon-greedy learned (after trying it once) that "one" is wrong for user 2.
    assert before["bandit-exp3", 1]["state"]["weights"]["zero"] < 1.0
    assert before["bandit-exp3", 2]["state"]["weights"]["one"] < 1.0
    assert before["bandit-eg", 2]["state"]["loss"]["one"] > 0.0
    # An update is answered once its state is committed (StatePersister.put), so
    # the store already holds every learned state: no wait, nothing left to flush.
    kv = _kv(state)
    for (app, uid), info in before.items():
        if uid != 0:
            stored = json.loads(kv[kv_namespace(app), str(uid)])
            assert stored == {"policy": policies[app][0], "state": info["state"]}, (app, uid)
    containers = _container_pids(conn)
    assert len(containers) == 2

    second = _kill_9_and_restart(first, containers, serve_processes)
    conn2 = second.connection()
    for (app, uid), info in before.items():
        after = conn2.get_selection_state(app, uid)
        assert after is not None, (app, uid)
        assert after["policy"] == info["policy"] and after["policy_config"] == info["policy_config"]
        assert after["state"] == info["state"], (app, uid)
        assert after["own_state"] == info["own_state"] and after["uids"] == info["uids"]
    # And the restored state decides: with no exploration, each user gets the
    # model it learned is right.
    wait_for("the replicas back", lambda: len(_container_pids(conn2)) == 2)
    for uid, label in uids.items():
        body = {"input": [100.0], "uid": uid}
        status, _, reply = http("POST", f"{second.query_url}/bandit-eg/predict", body)
        assert status == 200 and not reply["default"] and reply["output"] == label, reply


def _kill_9_and_restart(
    first: ServeProcess, containers: list[int], serve_processes: list[ServeProcess]
) -> ServeProcess:
    """SIGKILL the frontend, wait until its containers noticed and went (no
    orphans), and start a new one on the same state folder."""
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    wait_for("the orphaned containers gone", lambda: not any(map(pid_alive, containers)))
    second = ServeProcess(first.state_dir)
    serve_processes.append(second)
    return second


def _kv(state: Path) -> dict[tuple[str, str], str]:
    db = sqlite3.connect(f"file:{state / 'state.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return {(ns, k): v for ns, k, v in db.execute("SELECT namespace, key, value FROM kv")}
    finally:
        db.close()


PARENT = """
import os, subprocess, sys, time
env = dict(os.environ, CLIPPER_PARENT_PID=str(os.getpid()))
child = subprocess.Popen(
    [sys.executable, "-m", "model_containers", "--model-name", "w", "--model-version", "1",
     "--input-type", "doubles", "--closure", sys.argv[1], "--port", "0"],
    env=env, stdout=subprocess.PIPE, text=True,
)
print(child.pid, flush=True)
print(child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def test_a_container_exits_when_its_parent_dies_without_the_death_signal(
    tmp_path: Path,
) -> None:
    # The portable fallback: no PR_SET_PDEATHSIG here, only CLIPPER_PARENT_PID.
    import subprocess
    import sys

    import cloudpickle

    closure = tmp_path / "f.pkl"
    closure.write_bytes(cloudpickle.dumps(server_models.make_sum()))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(closure)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        assert parent.stdout is not None
        container = int(parent.stdout.readline())
        assert parent.stdout.readline().startswith("CLIPPER_CONTAINER_READY")
        assert pid_alive(container)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for("the container gone", lambda: not pid_alive(container))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)
