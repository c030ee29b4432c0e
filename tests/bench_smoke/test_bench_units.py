"""The load harness's parts, without a clipper_core server: schedules, payloads,
the HTTP client against the bare server, reports, plots and scenarios (the
sweep's parts: test_bench_sweep_units.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop

from bench import load, payloads, report, scenario
from bench.bare_process import BareProcess

# -- schedules and inputs ---------------------------------------------------------------


def test_poisson_schedule_has_the_rate_and_stays_in_the_horizon() -> None:
    t = load.arrival_times("open", 2000.0, 5.0, seed=1)
    assert t[0] == 0.0 and t[-1] < 5.0
    assert np.all(np.diff(t) >= 0)
    assert abs(len(t) / 5.0 - 2000.0) < 2000.0 * 0.05
    gaps = np.diff(t)
    # Exponential gaps: coefficient of variation close to 1.
    assert 0.9 < gaps.std() / gaps.mean() < 1.1


def test_burst_schedule_sends_bursts_of_the_given_size() -> None:
    t = load.arrival_times("burst", 1000.0, 4.0, burst_size=10, seed=2)
    _, counts = np.unique(t, return_counts=True)
    assert set(counts.tolist()) == {10}
    assert abs(len(t) / 4.0 - 1000.0) < 1000.0 * 0.15


def test_schedules_are_reproducible() -> None:
    a = load.arrival_times("open", 500.0, 2.0, seed=7)
    b = load.arrival_times("open", 500.0, 2.0, seed=7)
    assert np.array_equal(a, b)


def test_payload_order_uniform_is_round_robin() -> None:
    order = load.payload_order("uniform", 5, 12, seed=0)
    assert all((order[i + 1] - order[i]) % 5 == 1 for i in range(11))


def test_payload_order_zipf_is_skewed() -> None:
    order = load.payload_order("zipf", 1000, 50_000, zipf_s=1.1, seed=0)
    _, counts = np.unique(order, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[0] > 20 * 50  # the favourite far above the uniform share (50)
    assert top[:10].sum() > 0.25 * 50_000


# -- payloads ----------------------------------------------------------------------------


def test_rest_and_oip_http_requests_are_well_formed() -> None:
    vecs = payloads.make_vectors("floats", 8, 3, seed=0)
    assert len({v.tobytes() for v in vecs}) == 3
    for protocol in ("rest", "oip-json", "oip-binary"):
        (req,) = payloads.build_payloads(
            protocol,
            host="127.0.0.1",
            port=1,
            app="a",
            model="m",
            input_type="floats",
            vectors=vecs[:1],
            shape=[1, -1],
        )
        head, _, body = req.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"POST /")
        length = next(
            int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")
        )
        assert length == len(body)
        if protocol == "rest":
            assert lines[0] == b"POST /a/predict HTTP/1.1"
            assert json.loads(body) == {"input": [round(float(x), 4) for x in vecs[0]]}
        elif protocol == "oip-json":
            doc = json.loads(body)
            assert doc["inputs"][0]["shape"] == [1, 8]
            assert doc["inputs"][0]["datatype"] == "FP32"
        else:
            hlen = next(int(x.split(b":")[1]) for x in lines if x.startswith(b"Inference-Header"))
            doc = json.loads(body[:hlen])
            assert doc["inputs"][0]["parameters"]["binary_data_size"] == 32
            assert np.array_equal(np.frombuffer(body[hlen:], "<f4"), vecs[0])


def test_grpc_request_decodes_as_model_infer_request() -> None:
    pb = pytest.importorskip("clipper_core._proto.oip_service_pb2")
    vec = np.arange(8, dtype=np.float32)
    msg = pb.ModelInferRequest.FromString(
        payloads.grpc_infer_request("noop", vec, "floats", [1, -1], "id7")
    )
    assert msg.model_name == "noop" and msg.id == "id7"
    assert msg.inputs[0].name == "input" and msg.inputs[0].datatype == "FP32"
    assert list(msg.inputs[0].shape) == [1, 8]
    assert np.array_equal(np.frombuffer(msg.raw_input_contents[0], "<f4"), vec)
    reply = pb.ModelInferResponse(model_name="noop")
    reply.parameters["default"].bool_param = True
    data = reply.SerializeToString()
    assert payloads.grpc_response_model_name(data) == "noop"
    assert payloads.DEFAULT_MARKER_GRPC in data


# -- the HTTP client against the bare server ------------------------------------------


def _spec(mode: str, port: int, **kw: Any) -> dict[str, Any]:
    reqs = [
        payloads.http_request("POST", "/x/predict", f"127.0.0.1:{port}", b'{"input":[1]}')
        for _ in range(3)
    ]
    spec = {
        "protocol": "rest",
        "host": "127.0.0.1",
        "port": port,
        "mode": mode,
        "concurrency": 4,
        "payloads": reqs,
        "order": load.payload_order("uniform", 3, 100, seed=0),
        "duration_s": 0.5,
        "warmup_s": 0.1,
        "max_requests": 0,
        "timeout_s": 5.0,
        "max_connections": 16,
        "initial_connections": 2,
        "spin": False,
    }
    if mode != "closed":
        spec["schedule"] = load.arrival_times(mode, 400.0, 0.6, burst_size=8, seed=3)
    spec.update(kw)
    return spec


@pytest.fixture(scope="module")
def bare() -> Any:
    with BareProcess("http", b'{"output":1,"default":true}') as b:
        yield b


def test_closed_loop_against_the_bare_server(bare: BareProcess) -> None:
    rec = uvloop.run(load.run_load(_spec("closed", bare.port)))
    assert rec["sent"] == len(rec["t0"]) > 50
    assert set(rec["code"].tolist()) == {200}
    assert rec["default"].all()  # the reply says "default":true
    assert np.all(rec["t1"] >= rec["t0"])
    assert rec["connections"] == 4


def test_count_bound_stops_the_run(bare: BareProcess) -> None:
    rec = uvloop.run(load.run_load(_spec("closed", bare.port, max_requests=37)))
    assert len(rec["t0"]) == 37


@pytest.mark.parametrize("mode", ["open", "burst"])
def test_open_loop_measures_from_the_schedule(bare: BareProcess, mode: str) -> None:
    spec = _spec(mode, bare.port)
    rec = uvloop.run(load.run_load(spec))
    assert len(rec["t0"]) == len(spec["schedule"])
    assert set(rec["code"].tolist()) == {200}
    offsets = np.sort(rec["t0"] - rec["start"])
    # Latency origins are the scheduled times, not the (later) sends.
    assert np.allclose(offsets, np.sort(spec["schedule"]), atol=1e-6)
    assert len(rec["lag"]) == len(spec["schedule"])
    if mode == "burst":
        assert rec["connections"] >= 8  # the pool grew to send a burst at once


def test_connection_close_replies_reconnect_without_errors() -> None:
    import asyncio

    class CloseAfterReply(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )
                self.transport.close()

    async def go() -> dict[str, Any]:
        srv = await asyncio.get_running_loop().create_server(CloseAfterReply, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        async with srv:
            return await load.run_load(_spec("closed", port, duration_s=0.3, warmup_s=0))

    rec = uvloop.run(go())
    assert len(rec["code"]) > 10
    assert set(rec["code"].tolist()) == {200}


def test_connection_refused_is_a_connect_error() -> None:
    from bench.ports import free_port

    port = free_port()
    with pytest.raises(OSError):
        uvloop.run(load.run_load(_spec("closed", port)))


def test_workers_run_in_their_own_processes(bare: BareProcess) -> None:
    import os

    specs = [_spec("closed", bare.port, concurrency=2) for _ in range(2)]
    merged = load.merge(load.run_workers(specs, timeout=60))
    assert len(merged["workers"]) == 2
    assert all(w["pid"] != os.getpid() for w in merged["workers"])
    assert np.all(np.diff(merged["t0"]) >= 0)


def test_error_kinds_are_named() -> None:
    assert load.error_kind(503) == "http_503"
    assert load.error_kind(load.ERR_TIMEOUT) == "timeout"
    assert load.error_kind(load.GRPC_BASE - 14) == "grpc_UNAVAILABLE"


# -- reports -------------------------------------------------------------------------------


def _records() -> dict[str, Any]:
    n = 1000
    t0 = np.linspace(0.0, 10.0, n, endpoint=False)
    lat = np.full(n, 0.002)
    lat[-10:] = 0.050  # 1% slow
    code = np.full(n, 200, dtype=np.int32)
    code[::100] = 503  # 1% errors
    default = np.zeros(n, dtype=bool)
    default[1::100] = True  # 1% defaults
    return {
        "t0": t0,
        "t1": t0 + lat,
        "code": code,
        "default": default,
        "lag": np.zeros(0),
        "start": 0.0,
        "end": 10.05,
    }


def test_summary_counts_percentiles_errors_and_attainment() -> None:
    s = report.summarize(_records(), t_from=0.0, t_to=10.0, slo_s=0.010)
    assert s["requests"] == 1000 and s["ok"] == 990
    assert s["errors"] == {"http_503": 10}
    assert s["latency_ms"]["p50"] == pytest.approx(2.0)
    assert s["latency_ms"]["max"] == pytest.approx(50.0)
    assert s["defaults"] == 10
    # Misses: 10 errors, 10 defaults, 10 slow answers (all different requests).
    assert s["slo_attainment"] == pytest.approx(970 / 1000)
    assert s["throughput_rps"] == pytest.approx(99.0, abs=0.5)
    assert len(s["cdf"]["latency_ms"]) == len(s["cdf"]["percentiles"])


def test_summary_window_excludes_warmup() -> None:
    s = report.summarize(_records(), t_from=5.0, t_to=10.0, slo_s=1.0)
    assert s["requests"] == 500


def test_timeline_rates_are_per_covered_second() -> None:
    rec = _records()
    rows = report.timeline(rec, origin=2.0, t_end=10.0)
    assert rows[0]["t"] == -2.0 and rows[-1]["t"] == 7.0
    rates = [r["throughput_rps"] for r in rows]
    # 99 answers a second (one error in 100); the last second loses the slow
    # answers that complete after the end.
    assert all(r == 99 for r in rates[:-1])
    assert rates[-1] == 94


def test_controller_check_against_the_formula() -> None:
    samples = [
        {"t": float(t), "models": {"m:1": {"batch_size": 44, "taken": 44 * t, "batches": t}}}
        for t in range(11)
    ]
    c = report.controller_check(samples, "m:1", 45, 0.0, 10.0, a_ms=1, b_ms=5, batch_slo_ms=50)
    assert c["settled_controller_batch_size"] == 44
    assert c["settled_mean_batch_size"] == 44
    assert c["within_10pct"] is True


def test_plots_are_drawn(tmp_path: Path) -> None:
    from bench import plots

    rec = _records()
    s = report.summarize(rec, t_from=0.0, t_to=10.0, slo_s=0.010)
    rows = report.timeline(rec, origin=0.0, t_end=10.0)
    for r in rows:
        r["batch_size"], r["mean_batch_size"] = 8, 7.5
    made = [
        plots.latency_cdf([("a", s), ("b", s)], tmp_path / "cdf.png", "t"),
        plots.timeline(rows, tmp_path / "tl.png", "t", slo_ms=10, optimum=9),
        plots.throughput_vs_batch(rows, tmp_path / "b.png", "t"),
        plots.ramp(
            [{"rate": 1.0, "summary": s}, {"rate": 2.0, "summary": s}],
            tmp_path / "r.png",
            "t",
            0.99,
        ),
        plots.sweep(
            [
                {"batch_size": 4, "batch_wait_micros": 0, "best_rate": 10.0},
                {"batch_size": -1, "batch_wait_micros": 0, "best_rate": 12.0},
            ],
            tmp_path / "s.png",
            "t",
        ),
    ]
    for p in made:
        assert p is not None and p.read_bytes()[:4] == b"\x89PNG"


# -- scenarios -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", scenario.available())
def test_scenarios_load_and_shrink_for_smoke(name: str) -> None:
    sc = scenario.load_scenario(name)
    scenario.validate(sc)
    scenario.apply_smoke(sc)
    assert sc.load.duration_s <= 5
    scenario.validate(sc)


def test_sleep_optimum_follows_the_formula() -> None:
    sc = scenario.load_scenario("sleep")
    s_b = sc.app.slo_ms * scenario.batch_slo_share()
    assert sc.optimum_batch_size() == int((s_b - sc.model.b_ms) // sc.model.a_ms)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\n[load]\nconcurency = 3\n')
    with pytest.raises(scenario.ScenarioError, match="concurency"):
        scenario.load_scenario(str(p))


def test_a_request_cap_ends_the_window_with_the_load() -> None:
    # The load ran 0.25 s of a 5 s window: the rates are over those 0.25 s
    # (they were divided by the whole window: 20x too low).
    from bench.measure import load_end

    rec = {"t1": np.array([10.1, 10.2, 10.25, np.inf])}
    assert load_end(rec, 10.0, 15.0) == 10.25
    assert load_end({"t1": np.array([11.0, 20.0])}, 10.0, 15.0) == 15.0  # ran past it
    assert load_end({"t1": np.array([9.0])}, 10.0, 15.0) == 10.001  # spent in warm-up


def test_targets_read_the_median_of_the_rounds_and_say_not_measured() -> None:
    from bench import targets

    report_ = {
        "kind": "compare",
        "scenario": {"load": {"protocol": "rest", "mode": "closed", "concurrency": 32}},
        "runs": [{"summary": {"throughput_rps": 9000, "latency_ms": {"p99": 12.0}}}],
        "comparison": {"ours_rps_median": 15000, "p99_ms": [3.0, 1.0]},
    }
    rules = [{"name": "t", "throughput_rps_min": 10000, "p99_ms_max": 10}]
    (verdict,) = targets.evaluate(report_, rules)
    assert verdict["met"] is True  # round 1 alone (9,000, 12 ms) read NOT met
    (missing,) = targets.evaluate(report_, [{"name": "t", "fraction_of_bare_min": 0.2}])
    assert missing["met"] is None  # not measured, not "NOT met"


def test_the_frontend_cpu_counts_query_workers_not_replicas() -> None:
    import os
    import subprocess
    import sys

    from bench.serverproc import frontend_children

    sleep = "import time; time.sleep(30)"
    worker = subprocess.Popen([sys.executable, "-c", sleep, "clipper_core.query_worker"])
    replica = subprocess.Popen([sys.executable, "-c", sleep, "query_worker"])
    other = subprocess.Popen([sys.executable, "-c", sleep])
    try:
        found = frontend_children(os.getpid(), {replica.pid})
        assert worker.pid in found and replica.pid not in found and other.pid not in found
    finally:
        for p in (worker, replica, other):
            p.kill()
            p.wait()
