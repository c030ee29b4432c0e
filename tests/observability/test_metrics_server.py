"""``GET /metrics`` of a real server with real model processes: Prometheus text and
JSON carry the same figures; ``get_metrics``, ``inspect_instance``, ``clipper status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from clipper_core.deployers import create_endpoint, deploy_python_closure
from tests.observability.artifacts import REPO
from tests.server import models
from tests.server.conftest import Running, start_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str, accept: str = "text/plain;version=0.0.4;q=0.4,*/*;q=0.1") -> Samples:
    req = urllib.request.Request(base + "/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_prometheus_and_json_carry_the_same_figures(server: Running, logs: Any) -> None:
    conn, client = server.conn, server.client
    create_endpoint(conn, "obs", "doubles", models.make_sum(), slo_micros=2_000_000)
    create_endpoint(conn, "fragile", "doubles", models.make_failing(), slo_micros=2_000_000)
    create_endpoint(conn, "slow", "doubles", models.make_constant(7, delay=0.4), slo_micros=50_000)

    for i in range(20):  # 10 distinct inputs, each twice: 10 cache hits
        status, _ = client.predict("obs", {"input": [float(i % 10), 1.0]})
        assert status == 200
    status, reply = client.predict("obs", {"input_batch": [[100.0], [101.0], [102.0]]})
    assert status == 200 and len(reply["batch_predictions"]) == 3
    assert client.predict("obs", {"input": "not numbers"})[0] == 400
    assert client.predict("fragile", {"input": [-1.0]})[0] == 500
    status, reply = client.predict("fragile", {"input_batch": [[1.0], [-1.0]]})
    assert status == 200 and [p["default"] for p in reply["batch_predictions"]] == [False, True]
    status, reply = client.predict("slow", {"input": [1.0]})
    assert status == 200 and reply["default"] is True

    s = scrape(server.bg.query_url)
    app = {"app": "obs"}
    assert value(s, "clipper_app_requests_total", **app) == 24
    assert value(s, "clipper_app_answers_within_slo_total", **app) == 23
    assert value(s, "clipper_app_errors_total", kind="bad_input", **app) == 1
    assert value(s, "clipper_app_latency_seconds_count", **app) == 21
    assert value(s, "clipper_app_latency_seconds_bucket", le="+Inf", **app) == 21
    assert value(s, "clipper_app_slo_seconds", **app) == 2.0
    assert value(s, "clipper_app_throughput_per_second", **app) > 0
    assert value(s, "clipper_app_goodput_per_second", **app) > 0
    assert 0.9 <= value(s, "clipper_app_slo_attainment_ratio", **app) <= 1.0
    assert value(s, "clipper_app_latency_window_seconds", quantile="0.99", **app) > 0

    frag = {"app": "fragile"}
    assert value(s, "clipper_app_errors_total", kind="model_error", **frag) == 2
    assert value(s, "clipper_app_default_outputs_total", reason="error", **frag) == 1
    assert value(s, "clipper_app_default_outputs_total", reason="slo", app="slow") == 1
    assert value(s, "clipper_app_answers_within_slo_total", app="slow") == 0

    mv = {"model": "obs", "version": "1"}
    assert value(s, "clipper_model_requests_total", **mv) == 23
    assert value(s, "clipper_model_cache_hits_total", **mv) == 10
    assert value(s, "clipper_model_cache_misses_total", **mv) == 13
    batches = value(s, "clipper_model_batches_total", **mv)
    assert 1 <= batches <= 13
    assert value(s, "clipper_model_batch_size_count", **mv) == batches
    assert value(s, "clipper_model_batch_size_sum", **mv) == 13
    assert value(s, "clipper_model_batch_latency_seconds_count", **mv) == batches
    # The container measured its model calls and sent the time back.
    assert value(s, "clipper_model_container_latency_seconds_count", **mv) == batches
    assert value(s, "clipper_model_container_latency_seconds_sum", **mv) > 0
    assert value(s, "clipper_model_container_latency_seconds_sum", **mv) < value(
        s, "clipper_model_batch_latency_seconds_sum", **mv
    )
    assert value(s, "clipper_model_queue_length", **mv) == 0
    assert value(s, "clipper_model_queue_capacity", **mv) == 10_000
    assert 1 <= value(s, "clipper_model_batch_size_limit", **mv) <= 256
    assert value(s, "clipper_model_max_batch_size", **mv) == 256
    assert value(s, "clipper_model_version_current", **mv) == 1
    assert value(s, "clipper_model_replicas", **mv) == 1
    assert value(s, "clipper_model_replicas_healthy", **mv) == 1
    assert value(s, "clipper_replica_up", replica="0", **mv) == 1
    assert value(s, "clipper_replica_restarts_total", replica="0", **mv) == 0
    fmv = {"model": "fragile", "version": "1"}
    assert value(s, "clipper_model_errors_total", kind="model_error", **fmv) == 2
    assert value(s, "clipper_model_default_outputs_total", model="slow", version="1") == 1
    # SLO attainment and goodput per model version: the inputs it answered for its
    # apps within their objectives (the cache's answers count for the version).
    assert value(s, "clipper_model_slo_judged_total", **mv) == 23
    assert value(s, "clipper_model_answers_within_slo_total", **mv) == 23
    assert value(s, "clipper_model_slo_attainment_ratio", **mv) == 1.0
    assert value(s, "clipper_model_goodput_per_second", **mv) > 0
    # The batch of two, and the single query that failed: a miss for the model as
    # for its app (single failures were left out, so a failing model read 1.0).
    assert value(s, "clipper_model_slo_judged_total", **fmv) == 3
    assert value(s, "clipper_model_answers_within_slo_total", **fmv) == 1
    smv = {"model": "slow", "version": "1"}
    assert value(s, "clipper_model_slo_judged_total", **smv) == 1
    assert value(s, "clipper_model_answers_within_slo_total", **smv) == 0
    assert value(s, "clipper_model_slo_attainment_ratio", **smv) == 0.0
    assert value(s, "clipper_cache_hits_total") == 10
    assert value(s, "clipper_cache_capacity_bytes") > 0
    assert value(s, "process_resident_memory_bytes") > 0  # this server's own registry

    # The same figures as Python data.
    m = conn.get_metrics()
    a = m["apps"]["obs"]
    assert a["requests"] == 24 and a["answers_within_slo"] == 23
    assert a["errors"] == {"bad_input": 1}
    assert a["latency_seconds"]["count"] == 21
    assert m["apps"]["fragile"]["default_outputs"]["error"] == 1
    o = m["models"]["obs:1"]
    assert (o["requests"], o["cache_hits"], o["cache_misses"]) == (23, 10, 13)
    assert o["batches"] == batches and o["batch_size"]["sum"] == 13
    assert o["container_latency_seconds"]["count"] == batches
    assert o["replicas"] == 1 and o["replica_list"][0]["healthy"] is True
    assert (o["slo_judged"], o["answers_within_slo"]) == (23, 23)
    assert o["window"]["slo_attainment"] == 1.0
    assert m["cache"]["hits"] == 10
    assert conn.inspect_instance()["metrics"]["apps"]["obs"]["requests"] == 24

    # Access logs are off by default.
    assert logs.events("http_access") == []


def test_refused_keys_and_rate_limits_do_not_count_against_the_slo(server: Running) -> None:
    conn, client = server.conn, server.client
    key = "k" * 24
    create_endpoint(conn, "keyed", "doubles", models.make_sum(), slo_micros=2_000_000)
    conn.set_app_api_keys("keyed", [key])
    for _ in range(6):  # no key: 401, the client's fault
        assert client.predict("keyed", {"input": [1.0]})[0] == 401
    for _ in range(2):
        req = urllib.request.Request(
            client.base + "/keyed/predict",
            data=b'{"input": [1.0, 2.0]}',
            headers={"Content-Type": "application/json", "X-Api-Key": key},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["output"] == 3.0
    a = conn.get_metrics()["apps"]["keyed"]
    assert a["errors"] == {"unauthorized": 6}
    assert a["answers_within_slo"] == 2
    assert a["window"]["slo_attainment"] == 1.0
    assert value(scrape(client.base), "clipper_app_slo_attainment_ratio", app="keyed") == 1.0


def test_oip_requests_to_an_app_count_in_its_figures(server: Running) -> None:
    conn = server.conn
    # Apps named apart from their models: over OIP a model's name wins.
    deploy_python_closure(conn, "summer", 1, "doubles", models.make_sum())
    deploy_python_closure(conn, "sleeper", 1, "doubles", models.make_constant(7, delay=0.4))
    conn.register_application("oipobs", "doubles", "-1", 2_000_000)
    conn.link_model_to_app("oipobs", "summer")
    conn.register_application("oipslow", "doubles", "-1", 50_000)
    conn.link_model_to_app("oipslow", "sleeper")

    def infer(app: str, rows: list[list[float]]) -> dict[str, Any]:
        tensor: dict[str, Any] = {"name": "input", "datatype": "FP64"}
        tensor["shape"] = [len(rows), len(rows[0])]
        tensor["data"] = [v for r in rows for v in r]
        status, reply = server.client.post(f"/v2/models/{app}/infer", {"inputs": [tensor]})
        assert status == 200, reply
        return dict(reply)

    assert infer("oipobs", [[1.0, 2.0], [3.0, 4.0]])["outputs"][0]["data"] == [3.0, 7.0]
    assert infer("oipobs", [[5.0, 5.0]])["outputs"][0]["data"] == [10.0]
    slow_reply = infer("oipslow", [[1.0]])
    assert slow_reply["parameters"]["default"] is True, slow_reply
    # INT64 -> FP64 is not lossless (FP32 would be converted and answered).
    bad = {"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}
    assert server.client.post("/v2/models/oipobs/infer", bad)[0] == 400

    m = conn.get_metrics()
    a = m["apps"]["oipobs"]
    # Rows count as inputs (as Clipper's input_batch does); a request is one latency.
    assert a["requests"] == 4 and a["answers_within_slo"] == 3
    assert a["errors"] == {"bad_input": 1} and a["latency_seconds"]["count"] == 2
    o = m["models"]["summer:1"]
    assert (o["slo_judged"], o["answers_within_slo"]) == (3, 3)
    slow = m["apps"]["oipslow"]
    assert slow["requests"] == 1 and slow["default_outputs"]["slo"] == 1
    assert slow["answers_within_slo"] == 0
    so = m["models"]["sleeper:1"]
    assert (so["slo_judged"], so["answers_within_slo"], so["default_outputs"]) == (1, 0, 1)


def test_an_app_without_a_live_replica_counts_no_model_not_slo(server: Running) -> None:
    # Answered at once for want of a replica: an outage, which an SLO alert
    # would otherwise report as a slow model.
    conn = server.conn
    conn.register_model("ghost", "1", "doubles")
    conn.register_application("haunted", "doubles", "-1", 100_000)
    conn.link_model_to_app("haunted", "ghost")
    assert server.client.predict("haunted", {"input": [1.0]})[1]["default"] is True
    batch = server.client.predict("haunted", {"input_batch": [[1.0], [2.0]]})[1]
    assert all(p["default"] for p in batch["batch_predictions"]), batch
    a = conn.get_metrics()["apps"]["haunted"]
    assert a["requests"] == 3 and a["answers_within_slo"] == 0, a
    assert a["default_outputs"]["no_model"] == 3 and a["default_outputs"]["slo"] == 0, a
    # The same through a selection policy; and a model error inside a batch counts
    # among the app's errors there as on the direct path.
    conn.register_application("chorus", "doubles", "-1", 2_000_000, policy="ensemble")
    conn.link_model_to_app("chorus", "ghost")
    assert server.client.predict("chorus", {"input": [1.0]})[1]["default"] is True
    create_endpoint(conn, "brittle", "doubles", models.make_failing(), slo_micros=2_000_000)
    conn.register_application("choosy", "doubles", "-1", 2_000_000, policy="ensemble")
    conn.link_model_to_app("choosy", "brittle")
    status, reply = server.client.predict("choosy", {"input_batch": [[1.0], [-1.0]]})
    assert status == 200 and reply["batch_predictions"][1]["default"], reply
    apps = conn.get_metrics()["apps"]
    chorus, choosy = apps["chorus"], apps["choosy"]
    assert chorus["default_outputs"]["no_model"] == 1 and chorus["default_outputs"]["slo"] == 0
    assert choosy["default_outputs"]["error"] == 1 and sum(choosy["errors"].values()) == 1, choosy


def test_clipper_clients_get_json_prometheus_gets_text(server: Running) -> None:
    base = server.bg.query_url
    server.conn.register_application("lonely", "doubles", "-1", 100_000)
    assert server.client.predict("lonely", {"input": [1.0]})[1]["default"] is True
    # Clipper's clipper_admin.inspect_instance() is requests.get(url): Accept */*.
    for headers in ({"Accept": "*/*"}, {}, {"Accept": "application/json"}):
        req = urllib.request.Request(base + "/metrics", headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            doc = json.loads(resp.read())
        assert doc["apps"] == ["lonely"]  # the fields Clipper's clients saw stay
        assert doc["metrics"]["apps"]["lonely"]["default_outputs"]["no_model"] == 1
    with urllib.request.urlopen(base + "/metrics?format=prometheus", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert b'clipper_app_requests_total{app="lonely"} 1.0' in resp.read()
    openmetrics = "application/openmetrics-text;version=1.0.0"
    req = urllib.request.Request(base + "/metrics", headers={"Accept": openmetrics})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().rstrip().endswith(b"# EOF")


def test_two_servers_in_one_process_keep_their_own_registries(tmp_path: Path) -> None:
    first = start_server(tmp_path / "one")
    try:
        second = start_server(tmp_path / "two")
        try:
            first.conn.register_application("alpha", "doubles", "-1", 100_000)
            second.conn.register_application("beta", "doubles", "-1", 100_000)
            for _ in range(3):
                first.client.predict("alpha", {"input": [1.0]})
            second.client.predict("beta", {"input": [1.0]})
            s1, s2 = scrape(first.bg.query_url), scrape(second.bg.query_url)
            assert value(s1, "clipper_app_requests_total", app="alpha") == 3
            assert value(s2, "clipper_app_requests_total", app="beta") == 1
            assert ("clipper_app_requests_total", (("app", "beta"),)) not in s1
            assert ("clipper_app_requests_total", (("app", "alpha"),)) not in s2
        finally:
            second.bg.stop()
    finally:
        first.bg.stop()


def test_clipper_status_shows_the_figures(server: Running) -> None:
    create_endpoint(server.conn, "stat", "doubles", models.make_sum(), slo_micros=1_000_000)
    for i in range(5):
        assert server.client.predict("stat", {"input": [float(i)]})[0] == 200
    srv = server.server
    res = subprocess.run(
        [
            sys.executable, "-m", "clipper_core.cli",
            "--query-port", str(srv.query_port),
            "--management-port", str(srv.management_port),
            "status",
        ],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "CLIPPER_STATE_DIR": str(server.state_dir)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for column in ("REQUESTS", "REQ/S", "P99", "IN_SLO", "DEFAULTS", "HIT%", "MODEL_MS"):
        assert column in out
    app_row = next(line for line in out.splitlines() if line.startswith("stat "))
    assert app_row.split()[:6] == ["stat", "doubles", "1000", "ms", "stat", "5"]
    assert "100.0%" in app_row
    model_row = next(line for line in out.splitlines() if line.startswith("stat:1"))
    assert model_row.split()[1:3] == ["1/1", "5"]


def test_replica_crash_is_counted_and_logged(server: Running, logs: Any) -> None:
    create_endpoint(server.conn, "crashy", "doubles", models.make_sum(), slo_micros=2_000_000)
    assert server.client.predict("crashy", {"input": [1.0]})[0] == 200
    (pid,) = server.replica_pids("crashy")
    os.kill(pid, 9)

    def restarted() -> bool:
        s = scrape(server.bg.query_url)
        key = (
            "clipper_replica_restarts_total",
            (("model", "crashy"), ("replica", "0"), ("version", "1")),
        )
        return (
            s.get(key, 0) >= 1
            and value(s, "clipper_model_replicas_healthy", model="crashy", version="1") == 1
        )

    wait_for(restarted, "the replica's restart to show in the metrics")
    (crash,) = logs.events("replica_exited")
    assert crash["level"] == "warning"
    assert crash["model"] == "crashy" and crash["replica"] == "0" and crash["pid"] == pid
    assert crash["exit_code"] == -9
    assert "serving crashy:1" in crash["stderr_tail"]  # the container's own log lines
    assert [e["event"] for e in logs.events() if e["event"].startswith("replica_")][:2] == [
        "replica_started",
        "replica_ready",
    ]
    assert wait_for(lambda: logs.events("replica_restarting"), "a restart event")
    assert server.client.predict("crashy", {"input": [2.0]})[0] == 200


def test_cache_evictions_are_counted_and_an_evicted_input_misses(tmp_path: Path) -> None:
    # Each cached answer is charged len(key) + the value's size + 128 bytes
    # (ENTRY_OVERHEAD): the same for every input here (two doubles in, one
    # out), under 200 bytes, so 2 KiB holds about a dozen and a full cache has no
    # room for one more.
    budget = 2048
    running = start_server(tmp_path / "state", cache_bytes=budget)
    try:
        conn, client = running.conn, running.client
        create_endpoint(conn, "tiny", "doubles", models.make_sum(), slo_micros=30_000_000)
        distinct = 40
        for i in range(distinct):  # each input once: no hit sets a CLOCK reference bit
            status, reply = client.predict("tiny", {"input": [float(i), 1.0]})
            assert status == 200
            assert reply["output"] == i + 1.0 and reply["default"] is False

        s = scrape(running.bg.query_url)
        cache = conn.get_metrics()["cache"]
        evictions = value(s, "clipper_cache_evictions_total")
        assert evictions > 0
        assert cache["evictions"] == evictions
        assert cache["misses"] == value(s, "clipper_cache_misses_total") == distinct
        assert cache["hits"] == value(s, "clipper_cache_hits_total") == 0
        assert cache["capacity_bytes"] == value(s, "clipper_cache_capacity_bytes") == budget
        assert cache["bytes"] == value(s, "clipper_cache_bytes") <= budget
        assert cache["entries"] == value(s, "clipper_cache_entries") < distinct
        # Every answer was stored once and nothing was invalidated: what is not
        # in the cache any more was evicted.
        assert cache["entries"] + cache["evictions"] == distinct

        # Without reference bits CLOCK evicts in insertion order: the first input
        # went long ago.  Asking again is a miss, and the model answers it again.
        status, reply = client.predict("tiny", {"input": [0.0, 1.0]})
        assert status == 200
        assert reply["output"] == 1.0 and reply["default"] is False
        # The newest input is still cached (re-storing input 0 evicted an old one).
        status, reply = client.predict("tiny", {"input": [float(distinct - 1), 1.0]})
        assert status == 200
        assert reply["output"] == float(distinct) and reply["default"] is False

        s = scrape(running.bg.query_url)
        m = conn.get_metrics()
        cache, tiny = m["cache"], m["models"]["tiny:1"]
        assert cache["misses"] == value(s, "clipper_cache_misses_total") == distinct + 1
        assert cache["hits"] == value(s, "clipper_cache_hits_total") == 1
        assert (tiny["cache_misses"], tiny["cache_hits"]) == (distinct + 1, 1)
        mv = {"model": "tiny", "version": "1"}
        assert value(s, "clipper_model_cache_misses_total", **mv) == distinct + 1
        assert value(s, "clipper_model_cache_hits_total", **mv) == 1
        assert cache["evictions"] == value(s, "clipper_cache_evictions_total") > evictions
        assert cache["entries"] + cache["evictions"] == distinct + 1
    finally:
        running.bg.stop()
