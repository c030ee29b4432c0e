"""A pipeline survives a kill -9 of the frontend: the restarted server serves it
again from the store, with its models' containers started anew."""

from __future__ import annotations

from pathlib import Path

from clipper_core.deployers import deploy_python_closure
from tests.reliability.conftest import ServeProcess, http, wait_for
from tests.reliability.test_shutdown_restart import _container_pids, _kill_9_and_restart
from tests.server import pipeline_models


def test_kill_9_restart_restores_pipelines(
    serve_processes: list[ServeProcess], tmp_path: Path
) -> None:
    first = ServeProcess(tmp_path / "state")
    serve_processes.append(first)
    conn = first.connection()
    deploy_python_closure(conn, "scale2", 1, "doubles", pipeline_models.make_scale(2.0))
    deploy_python_closure(conn, "total", 1, "doubles", pipeline_models.make_total())
    stages = [
        {"name": "a", "model": "scale2", "output_type": "doubles"},
        {"name": "big", "model": "total"},
    ]
    edges = [{"from": "a", "to": "big", "when": {"op": ">=", "value": 10, "field": 0}}]
    conn.register_pipeline("kept", stages, edges, 5_000_000, "-1")
    conn.register_pipeline("gone", stages, edges, 5_000_000, "-1")
    conn.delete_pipeline("gone")
    url = f"{first.query_url}/kept/predict"
    assert http("POST", url, {"input": [1.0]})[2]["output"] == [2.0]  # the branch not taken
    assert http("POST", url, {"input": [6.0, 1.0]})[2]["output"] == 14.0
    before = conn.get_all_pipelines(verbose=True)
    containers = _container_pids(conn)
    assert len(containers) == 2

    second = _kill_9_and_restart(first, containers, serve_processes)
    conn2 = second.connection()
    assert conn2.get_all_pipelines(verbose=True) == before
    assert conn2.get_pipeline_info("gone") is None
    wait_for("the replicas back", lambda: len(_container_pids(conn2)) == 2)
    url = f"{second.query_url}/kept/predict"
    status, _, reply = http("POST", url, {"input_batch": [[1.0], [6.0, 1.0]]})
    assert status == 200, reply
    assert [p["output"] for p in reply["batch_predictions"]] == [[2.0], 14.0]
    assert not any(p["default"] for p in reply["batch_predictions"])
    assert http("POST", f"{second.query_url}/gone/predict", {"input": [1.0]})[0] == 404
    edges_after = conn2.get_metrics()["pipelines"]["kept"]["edges"]
    assert [(e["evaluated"], e["taken"]) for e in edges_after] == [(2, 1)]
