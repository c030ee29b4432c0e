"""Prediction pipelines end to end: a real server, real model containers over gRPC,
queries over Clipper REST and the Open Inference Protocol (HTTP and gRPC).

One server (and its containers) serves the whole module; each test registers
pipelines of its own names over the models deployed once."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clipper_core import cli
from clipper_core.deployers import deploy_python_closure
from clipper_core.errors import ClipperError
from tests.reliability.conftest import wait_for
from tests.server import models, pipeline_models
from tests.server.conftest import Running, start_server

pytestmark = pytest.mark.timeout(300)

SLO = 10_000_000  # 10 s: generous on a loaded machine, still bounded


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start_server(tmp_path_factory.mktemp("pipelines") / "state")
    try:
        conn = r.conn
        for name, func in (
            ("scale2", pipeline_models.make_scale(2.0)),
            ("add1", pipeline_models.make_add(1.0)),
            ("total", pipeline_models.make_total()),
            ("fuse", pipeline_models.make_fuse()),
            ("big", models.make_constant("big")),
            ("small", models.make_constant("small")),
        ):
            input_type = "strings" if name == "fuse" else "doubles"
            deploy_python_closure(conn, name, 1, input_type, func, progress=None)
        yield r
    finally:
        r.bg.stop()


def stage(name: str, model: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "model": model, **kw}


def edge(source: str, target: str, **when: Any) -> dict[str, Any]:
    return {"from": source, "to": target, **({"when": when} if when else {})}


def pipeline_metrics(r: Running, name: str) -> dict[str, Any]:
    return dict(r.conn.get_metrics()["pipelines"][name])


# -- shapes of DAG ----------------------------------------------------------------------


def test_three_stage_sequence(srv: Running) -> None:
    conn = srv.conn
    conn.register_pipeline(
        "seq",
        [
            stage("pre", "scale2", output_type="doubles"),
            stage("mid", "add1", version="1", output_type="doubles"),
            stage("end", "total"),
        ],
        [edge("pre", "mid"), edge("mid", "end")],
        SLO,
        "-1",
    )
    info = conn.get_pipeline_info("seq")
    assert info is not None and info["input_type"] == "doubles"  # the entry model's
    assert [s["name"] for s in info["stages"]] == ["pre", "mid", "end"]
    assert "seq" in conn.get_all_pipelines()
    status, reply = srv.client.predict("seq", {"input": [1.0, 2.0]})
    assert status == 200, reply
    # [1, 2] -> x2 -> [2, 4] -> +1 -> [3, 5] -> sum -> 8
    assert reply["output"] == 8.0 and reply["default"] is False
    assert reply["model"] == "total:1" and reply["models"] == ["scale2:1", "add1:1", "total:1"]
    status, reply = srv.client.predict("seq", {"input_batch": [[1.0], [0.5, 0.5], [10.0]]})
    assert status == 200, reply
    assert [p["output"] for p in reply["batch_predictions"]] == [3.0, 4.0, 21.0]
    m = pipeline_metrics(srv, "seq")
    assert {s: c["answered"] for s, c in m["stages"].items()} == {"pre": 4, "mid": 4, "end": 4}
    assert [(e["from"], e["to"], e["taken"]) for e in m["edges"]] == [
        ("pre", "mid", 4),
        ("mid", "end", 4),
    ]
    app = srv.conn.get_metrics()["apps"]["seq"]
    assert app["requests"] == 4 and app["answers_within_slo"] == 4
    # A pipeline takes no version, and learns nothing from feedback.
    status, reply = srv.client.predict("seq", {"input": [1.0], "version": "1"})
    assert status == 400 and "takes no version" in reply["cause"]
    status, reply = srv.client.post("/seq/update", {"input": [1.0], "label": 1})
    assert status == 400 and "pipeline" in reply["cause"]


def test_fan_out_and_joins(srv: Running) -> None:
    conn = srv.conn
    fan = [
        stage("a", "scale2", output_type="doubles"),
        stage("b", "add1", output_type="doubles"),
        stage("c", "scale2", output_type="doubles"),
    ]
    fan_edges = [edge("a", "b"), edge("a", "c")]
    conn.register_pipeline(
        "cat",
        [*fan, stage("j", combine="concat")],
        [*fan_edges, edge("b", "j"), edge("c", "j")],
        SLO,
        "-1",
    )
    conn.register_pipeline(
        "bydict",
        [*fan, stage("j", combine="dict")],
        [*fan_edges, edge("b", "j"), edge("c", "j")],
        SLO,
        "-1",
    )
    conn.register_pipeline(
        "fused",
        [*fan, stage("j", "fuse", combine="dict", output_type="strings")],
        [*fan_edges, edge("b", "j"), edge("c", "j")],
        SLO,
        "-1",
    )
    # A fan-out that never joins answers both branches, by stage.
    conn.register_pipeline("forked", fan, fan_edges, SLO, "-1")
    # [1] -> a: [2] -> b: [3], c: [4]
    expected = {
        "cat": [3.0, 4.0],
        "bydict": {"b": [3.0], "c": [4.0]},
        "fused": "b=3;c=4",
        "forked": {"b": [3.0], "c": [4.0]},
    }
    for name, output in expected.items():
        status, reply = srv.client.predict(name, {"input": [1.0]})
        assert status == 200 and not reply["default"], (name, reply)
        assert reply["output"] == output, name
    status, reply = srv.client.predict("fused", {"input_batch": [[1.0], [2.0]]})
    assert [p["output"] for p in reply["batch_predictions"]] == ["b=3;c=4", "b=5;c=8"]


def test_conditional_branches_and_their_measured_fractions(srv: Running) -> None:
    conn = srv.conn
    conn.register_pipeline(
        "route",
        [stage("a", "scale2", output_type="doubles"), stage("hi", "big"), stage("lo", "small")],
        [
            edge("a", "hi", op=">=", value=10, field=0),
            edge("a", "lo", op="<", value=10, field=0),
        ],
        SLO,
        "-1",
    )
    # A cascade: the second model only when the first says so; else the first answers.
    conn.register_pipeline(
        "cascade",
        [stage("a", "scale2", output_type="doubles"), stage("hi", "big")],
        [edge("a", "hi", op=">=", value=10, field=0)],
        SLO,
        "-1",
    )
    outputs = []
    for x in range(20):
        status, reply = srv.client.predict("route", {"input": [float(x)]})
        assert status == 200 and not reply["default"], reply
        outputs.append(reply["output"])
    assert outputs == ["small"] * 5 + ["big"] * 15  # 2x >= 10 from x = 5 on
    m = pipeline_metrics(srv, "route")
    fractions = {(e["from"], e["to"]): e["taken_fraction"] for e in m["edges"]}
    assert fractions == {("a", "hi"): 0.75, ("a", "lo"): 0.25}
    assert m["stages"]["hi"]["skipped"] == 5 and m["stages"]["lo"]["skipped"] == 15
    status, reply = srv.client.predict("cascade", {"input": [1.0]})
    assert reply["output"] == [2.0] and reply["model"] == "scale2:1"
    status, reply = srv.client.predict("cascade", {"input": [7.0]})
    assert reply["output"] == "big"
    # The branch figures are in the Prometheus exposition too.
    req = urllib.request.Request(f"{srv.bg.query_url}/metrics", headers={"Accept": "text/plain"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    assert 'clipper_pipeline_edge_taken_total{pipeline="route",source="a",target="hi"} 15.0' in text
    assert 'clipper_pipeline_stage_skipped_total{pipeline="route",stage="lo"} 15.0' in text
    assert 'clipper_pipeline_stage_latency_seconds_count{pipeline="route",stage="a"} 20.0' in text


# -- deadlines and failures -------------------------------------------------------------


def test_deadline_exhausted_mid_pipeline_answers_the_default_naming_the_stage(
    srv: Running,
) -> None:
    conn = srv.conn
    deploy_python_closure(
        conn, "slow", 1, "doubles", pipeline_models.make_scale(1.0, delay=2.0), progress=None
    )
    conn.register_pipeline(
        "late",
        [
            stage("a", "scale2", output_type="doubles"),
            stage("slow", "slow", output_type="doubles"),
            stage("c", "total"),
        ],
        [edge("a", "slow"), edge("slow", "c")],
        500_000,  # 500 ms; the middle stage takes two seconds
        "-1",
    )
    status, reply = srv.client.predict("late", {"input": [1.0]})
    assert status == 200 and reply["default"] is True and reply["output"] == -1
    assert "stage 'slow' (slow:1)" in reply["default_explanation"], reply
    # Once the slow stage's batch is measured, a query whose remaining budget
    # cannot cover it is answered at once, without queueing for it (one query a
    # second still probes, to keep the estimate current).
    wait_for(
        "the slow batch measured",
        lambda: conn.get_metrics()["models"]["slow:1"]["batches"],
        timeout=60,
    )
    explanations = []
    for x in range(2, 6):
        status, reply = srv.client.predict("late", {"input": [float(x)]})
        assert status == 200 and reply["default"] is True, reply
        explanations.append(reply["default_explanation"])
        if "expects" in reply["default_explanation"]:
            break
    assert all("stage 'slow'" in e for e in explanations), explanations
    assert "expects" in explanations[-1] and "remain" in explanations[-1], explanations
    m = pipeline_metrics(srv, "late")
    assert m["stages"]["slow"]["deadline_misses"] == len(explanations) + 1
    assert m["stages"]["c"]["requests"] == 0
    assert conn.get_metrics()["apps"]["late"]["default_outputs"]["slo"] == len(explanations) + 1


def test_a_stage_container_killed_mid_query_answers_or_fails_clearly(srv: Running) -> None:
    conn = srv.conn
    deploy_python_closure(
        conn, "victim", 1, "doubles", pipeline_models.make_scale(3.0, delay=2.0), progress=None
    )
    conn.register_pipeline(
        "fragile",
        [
            stage("a", "scale2", output_type="doubles"),
            stage("v", "victim", output_type="doubles"),
            stage("c", "total"),
        ],
        [edge("a", "v"), edge("v", "c")],
        60_000_000,
        "-1",
    )
    [pid] = srv.replica_pids("victim")

    def busy() -> bool:
        replicas = conn.get_metrics()["models"]["victim:1"]["replica_list"]
        return any(r["busy"] for r in replicas)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(srv.client.predict, "fragile", {"input": [1.0]}, timeout=120)
        wait_for("the victim at work", busy, timeout=60)
        os.kill(pid, signal.SIGKILL)
        status, reply = fut.result(timeout=150)
    # The batch is handed to the restarted replica: an answer, or else a clear error.
    if status == 200:
        assert reply["default"] is False and reply["output"] == 6.0, reply  # [1] x2 x3
    else:
        assert status in (500, 503, 504), reply
        assert "stage 'v'" in reply["cause"], reply
    wait_for(
        "the victim restarted",
        lambda: srv.replica_pids("victim") not in ([], [pid]),
        timeout=60,
    )


def test_stage_errors_fail_the_query_naming_the_stage(srv: Running) -> None:
    conn = srv.conn
    deploy_python_closure(conn, "picky", 1, "doubles", models.make_failing(), progress=None)
    conn.register_pipeline(
        "errs",
        [stage("a", "add1", output_type="doubles"), stage("p", "picky")],
        [edge("a", "p")],
        SLO,
        "-1",
    )
    status, reply = srv.client.predict("errs", {"input": [-5.0]})
    assert status == 500, reply
    assert "pipeline errs: stage 'p' (picky:1) failed" in reply["cause"], reply
    assert "negative inputs are not supported" in reply["cause"], reply
    # In a batch, only the failing input gets the default, with the error.
    status, reply = srv.client.predict("errs", {"input_batch": [[1.0], [-5.0]]})
    assert status == 200, reply
    good, bad = reply["batch_predictions"]
    assert good["output"] == 1 and not good["default"]
    assert bad["default"] and "stage 'p'" in bad["default_explanation"], bad
    # An output that is not what its stage declared fails at the hop.
    conn.register_pipeline(
        "liar",
        [stage("b", "big", output_type="doubles"), stage("t", "total")],
        [edge("b", "t")],
        SLO,
        "-1",
    )
    status, reply = srv.client.predict("liar", {"input": [1.0]})
    assert status == 500 and "stage 'b' answered 'big', not doubles" in reply["cause"], reply
    # A condition that cannot apply to the output is an error of that stage.
    conn.register_pipeline(
        "badtest",
        [stage("b", "big", output_type="doubles"), stage("t", "small")],
        [edge("b", "t", op=">", value=1)],
        SLO,
        "-1",
    )
    status, reply = srv.client.predict("badtest", {"input": [1.0]})
    assert status == 500 and "edge b->t: cannot test output > 1" in reply["cause"], reply
    m = pipeline_metrics(srv, "errs")
    assert m["stages"]["p"]["errors"] == 2 and m["stages"]["a"]["answered"] == 3
    # A stage whose model goes away answers the default, as an app without one.
    conn.stop_models(["picky"])
    status, reply = srv.client.predict("errs", {"input": [3.0]})
    assert status == 200 and reply["default"], reply
    assert "model 'picky' has no deployed version" in reply["default_explanation"]
    assert conn.get_metrics()["apps"]["errs"]["default_outputs"]["no_model"] == 1


# -- configuration ----------------------------------------------------------------------


def test_bad_configs_get_clear_errors(srv: Running) -> None:
    conn = srv.conn
    conn.register_application("an-app", "doubles", "-1", SLO)
    two = [stage("a", "scale2", output_type="doubles"), stage("b", "add1", output_type="doubles")]
    bad: list[tuple[str, list[Any], list[Any], int, str]] = [
        (
            "cyc",
            [*two, stage("c", "add1", output_type="doubles")],
            [edge("a", "b"), edge("b", "c"), edge("c", "b")],
            400,
            "cycle through b, c",
        ),
        ("unk", [stage("a", "nope")], [], 404, "model 'nope' is not deployed"),
        ("ver", [stage("a", "scale2", version="7")], [], 404, "no version '7'"),
        (
            "typ",
            [stage("a", "scale2", output_type="doubles"), stage("f", "fuse")],
            [edge("a", "f")],
            400,
            "model 'fuse' takes strings, but stage 'a' answers doubles",
        ),
        (
            "undeclared",
            [stage("a", "scale2"), stage("b", "add1")],
            [edge("a", "b")],
            400,
            "declares no output_type",
        ),
        ("dup", [stage("a", "scale2"), stage("a", "add1")], [], 400, "duplicate stage name 'a'"),
        ("an-app", [stage("a", "scale2")], [], 400, "an application named an-app exists"),
        ("two-entries", two, [], 400, "2 entry stages"),
        ("bad-when", two, [edge("a", "b", op="~", value=1)], 400, "unknown op"),
    ]
    for name, stages, edges, code, message in bad:
        with pytest.raises(ClipperError) as info:
            conn.register_pipeline(name, stages, edges, SLO, "-1")
        assert f"({code})" in str(info.value) and message in str(info.value), (name, info.value)
        assert conn.get_pipeline_info(name) is None
    conn.register_pipeline("taken", [stage("a", "scale2")], [], SLO, "-1")
    with pytest.raises(ClipperError, match=r"\(400\).*pipeline taken already exists"):
        conn.register_pipeline("taken", [stage("a", "scale2")], [], SLO, "-1")
    with pytest.raises(ClipperError, match=r"\(400\).*a pipeline named taken exists"):
        conn.register_application("taken", "doubles", "-1", SLO)
    with pytest.raises(ClipperError, match=r"\(404\)"):
        conn.delete_pipeline("never")
    with pytest.raises(ClipperError, match=r"\(404\)"):
        conn.update_pipeline("never", [stage("a", "scale2")], [], SLO, "-1")
    # Deleting the app does not touch the pipeline, nor the other way round.
    conn.unregister_application("an-app")
    status, reply = srv.client.predict("taken", {"input": [2.0]})
    assert status == 200 and reply["output"] == [4.0]


def test_update_and_delete(srv: Running) -> None:
    conn = srv.conn
    stages = [stage("a", "scale2", output_type="doubles"), stage("b", "total")]
    conn.register_pipeline("changing", stages, [edge("a", "b")], SLO, "-1")
    assert srv.client.predict("changing", {"input": [1.0, 2.0]})[1]["output"] == 6.0
    stages[0] = stage("a", "add1", output_type="doubles")  # one stage changes
    assert conn.update_pipeline("changing", stages, [edge("a", "b")], SLO, "-1") is True
    assert conn.update_pipeline("changing", stages, [edge("a", "b")], SLO, "-1") is False
    assert srv.client.predict("changing", {"input": [1.0, 2.0]})[1]["output"] == 5.0
    assert conn.get_pipeline_info("changing")["stages"][0]["model"] == "add1"  # type: ignore[index]
    conn.delete_pipeline("changing")
    assert conn.get_pipeline_info("changing") is None
    status, reply = srv.client.predict("changing", {"input": [1.0]})
    assert status == 404, reply
    # Its models stay deployed and serve.
    assert "add1:1" in conn.get_all_models()


def test_cli_lists_shows_and_deletes(srv: Running, capsys: pytest.CaptureFixture[str]) -> None:
    srv.conn.register_pipeline(
        "shown",
        [stage("a", "scale2", output_type="doubles"), stage("hi", "big")],
        [edge("a", "hi", op=">=", value=10, field=0)],
        SLO,
        "-1",
    )
    base = [
        "--management-port",
        str(srv.server.management_port),
        "--query-port",
        str(srv.server.query_port),
        "--state-dir",
        str(srv.state_dir),
    ]
    assert cli.main([*base, "pipelines"]) == 0
    out = capsys.readouterr().out
    assert "PIPELINE" in out and "shown" in out and "a hi" in out
    assert cli.main(["pipeline", "show", "shown", *base]) == 0
    out = capsys.readouterr().out
    assert "scale2" in out and "a->hi if output[0] >= 10" in out
    assert cli.main(["pipeline", "show", "shown", "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "shown"
    assert cli.main(["pipeline", "delete", "shown", *base]) == 0
    assert cli.main(["pipeline", "show", "shown", *base]) == 1
    assert "not registered" in capsys.readouterr().err


def test_dashboard_data_lists_pipelines(srv: Running) -> None:
    srv.conn.register_pipeline(
        "on-dash",
        [stage("a", "scale2", output_type="doubles"), stage("b", "total")],
        [edge("a", "b")],
        SLO,
        "-1",
    )
    assert srv.client.predict("on-dash", {"input": [1.0]})[0] == 200
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.server.management_port}/dashboard/data",
        headers=srv.admin_headers(),
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read())
    [p] = [p for p in data["pipelines"] if p["name"] == "on-dash"]
    assert p["entry"] == "a" and [s["name"] for s in p["stages"]] == ["a", "b"]
    assert p["stages"][1]["answered"] == 1 and p["requests"] == 1
    assert p["edges"] == [
        {"from": "a", "to": "b", "when": None, "evaluated": 1, "taken": 1, "taken_fraction": 1.0}
    ]


# -- the Open Inference Protocol --------------------------------------------------------


def _oip_http(srv: Running, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    return srv.client.post(f"/v2/models/{name}/infer", body)


def test_oip_http_and_grpc_answer_a_pipeline(srv: Running) -> None:
    conn = srv.conn
    conn.register_pipeline(
        "oipseq",
        [
            stage("a", "scale2", output_type="doubles"),
            stage("b", "add1", output_type="doubles"),
            stage("c", "total"),
        ],
        [edge("a", "b"), edge("b", "c")],
        SLO,
        "-1",
    )
    body = {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [2, 2], "data": [1, 2, 0, 0]}]
    }
    status, reply = _oip_http(srv, "oipseq", body)
    assert status == 200, reply
    [out] = reply["outputs"]
    assert out["name"] == "output" and out["shape"] == [2] and out["data"] == [8.0, 2.0]
    assert "default" not in reply.get("parameters", {})
    # One input tensor of the pipeline's type, and nothing else.
    status, reply = _oip_http(
        srv,
        "oipseq",
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [1]}]},
    )
    assert status == 400 and "takes FP64" in reply["error"], reply
    empty = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [2, 0], "data": []}]}
    status, reply = _oip_http(srv, "oipseq", empty)
    assert status == 400 and "[2, 0] has empty rows" in reply["error"], reply
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.server.grpc_port}")
    try:
        arr = np.array([[1.0, 2.0], [3.0, 1.0]])
        inp = grpcclient.InferInput("input", list(arr.shape), "FP64")
        inp.set_data_from_numpy(arr)
        result = client.infer("oipseq", [inp])
        assert result.as_numpy("output").tolist() == [8.0, 10.0]
        assert client.is_model_ready("oipseq")
        meta = client.get_model_metadata("oipseq", as_json=True)
        assert meta["inputs"][0]["datatype"] == "FP64"
    finally:
        client.close()
    # An application with a selection policy is still refused over OIP.
    conn.register_application("policied", "doubles", "-1", SLO, policy="ensemble")
    conn.link_model_to_app("policied", "total")
    status, reply = _oip_http(srv, "policied", body)
    assert status == 400 and "selects among its models" in reply["error"], reply


def test_oip_readiness_follows_the_version_a_stage_pins(srv: Running) -> None:
    conn = srv.conn
    conn.register_model("add1", "7", "doubles")  # no replica: it never serves
    conn.set_model_version("add1", "1")  # the one that serves stays current
    conn.register_pipeline("pinned7", [stage("a", "add1", version="7")], [], SLO, "-1")
    conn.register_pipeline("current", [stage("a", "add1")], [], SLO, "-1")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.server.grpc_port}")
    try:
        assert client.is_model_ready("current")
        assert not client.is_model_ready("pinned7")  # add1:1 serves, add1:7 does not
    finally:
        client.close()
