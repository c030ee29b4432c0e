"""CI smoke runs of the load harness: each scenario end to end, in seconds.

Each test runs ``python -m bench <scenario> --smoke`` in a subprocess (a real
server, real model containers, load from worker processes) and checks the JSON
report's shape and that no request failed.  No speed is asserted: these keep the
harness from rotting; the numbers come from full runs on a quiet machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import scenario

REPO_ROOT = Path(__file__).resolve().parents[2]

SUMMARY_FIELDS = {
    "requests",
    "ok",
    "errors",
    "throughput_rps",
    "latency_ms",
    "default_rate",
    "slo_attainment",
    "slo_ms",
    "cdf",
}
LATENCY_FIELDS = {"p50", "p90", "p99", "p999", "max", "mean"}


def run_bench(tmp_path: Path, *args: str, timeout: float = 300) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--smoke", "--out", str(out), "--name", "r"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 and "is not available" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads((out / "r.json").read_text())
    return report, out


def check_run(run: dict[str, Any]) -> None:
    s = run["summary"]
    assert SUMMARY_FIELDS <= set(s), set(s)
    assert LATENCY_FIELDS <= set(s["latency_ms"])
    assert s["requests"] > 0
    assert s["errors"] == {}, s["errors"]
    assert s["ok"] == s["requests"]
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
    assert 0.0 <= s["slo_attainment"] <= 1.0
    assert run["timeline"], "no timeline"
    assert {"t", "throughput_rps", "p50_ms", "p99_ms"} <= set(run["timeline"][0])


def check_plots(report: dict[str, Any], *suffixes: str) -> None:
    made = {Path(p).name for p in report["plots"]}
    for suffix in suffixes:
        assert f"r-{suffix}.png" in made, made
        assert Path(next(p for p in report["plots"] if p.endswith(f"-{suffix}.png"))).stat().st_size


@pytest.mark.timeout(360)
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if n == "noop" else pytest.mark.slow)
        for n in scenario.available(pipelines=False)  # pipelines: test_bench_pipeline
    ],
)
def test_scenario_smoke(tmp_path: Path, name: str) -> None:
    report, _ = run_bench(tmp_path, name)
    assert report["kind"] == "run"
    assert report["meta"]["machine"]["cpus"] >= 1
    (run,) = report["runs"]
    check_run(run)
    server = run["summary"]["server"]
    assert server["mean_batch_size"] is not None and server["mean_batch_size"] >= 1
    assert "batch_size" in run["timeline"][-1]
    check_plots(report, "cdf", "timeline")
    if name == "sleep":
        c = run["controller"]
        assert c["optimum_formula"] == 45
        assert c["settled_controller_batch_size"] is not None
    if name == "cache":
        assert server["cache_hit_rate"] > 0


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_compare_with_the_bare_server(tmp_path: Path) -> None:
    report, _ = run_bench(tmp_path, "noop", "--compare")
    ours, bare = report["runs"]
    check_run(ours)
    check_run(bare)
    assert bare["target"] == "bare"
    assert report["comparison"]["throughput_fraction_of_bare"] > 0
    # The bare server's own CPU, read from /proc around its run.
    assert bare["bare_server"]["cpu_s"] >= 0
    assert bare["bare_server"]["cpu_us_per_req"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_rate_ramp(tmp_path: Path) -> None:
    report, _ = run_bench(tmp_path, "matmul", "--rates", "auto")
    steps = report["ramp"]["steps"]
    assert [s["rate"] for s in steps] == [50.0, 100.0]
    for s in steps:
        assert s["mode"] == "open"
        assert s["summary"]["errors"] == {}
    assert report["ramp"]["best_rate"] == 100.0
    check_plots(report, "ramp")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep(tmp_path: Path) -> None:
    report, _ = run_bench(tmp_path, "matmul", "--sweep")
    configs = report["sweep"]["configs"]
    assert {(c["batch_size"], c["batch_wait_micros"]) for c in configs} == {(4, 500), (-1, 500)}
    assert [c["controller"] for c in configs] == ["fixed", "aimd", "quantile"]
    summary = report["sweep"]["summary"]
    assert summary["best_static"]["batch_size"] == 4
    assert summary["adaptive"]["batch_size"] == -1
    # Both adaptive modes, each against the best static config of this sweep.
    assert set(summary["adaptive_modes"]) == {"aimd", "quantile"}
    for mode in summary["adaptive_modes"].values():
        assert mode["over_best_static"] > 0
    # How far the sweep can be trusted, from the sweep itself.
    assert set(summary["noise"]["static_rates"]) == {"4@500us"}
    for c in configs:
        for s in c["ramp"]["steps"]:
            assert s["foreign_cpu"] is None or s["foreign_cpu"] >= 0
    (target,) = report["targets"]
    assert target["checks"][0]["bound"] == "every_adaptive_over_best_static_min"
    check_plots(report, "sweep")


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_sweep_on_the_sleep_model(tmp_path: Path) -> None:
    # The model whose capacity is its batch size's, not the CPU's (issue 18):
    # every step of every configuration reports the controller against n*.
    # Two rounds: each configuration ramps twice and is read by the median.
    report, _ = run_bench(tmp_path, "sleep-sweep", "--sweep", "--sweep-rounds", "2")
    configs = report["sweep"]["configs"]
    assert [(c["batch_size"], c["controller"]) for c in configs] == [
        (4, "fixed"),
        (-1, "aimd"),
        (-1, "quantile"),
    ]
    for c in configs:
        assert len(c["ramps"]) == len(c["round_rates"]) == 2, c
        assert c["round_rates"] == [r["best_rate"] for r in c["ramps"]]
        for ramp in c["ramps"]:
            assert [s["rate"] for s in ramp["steps"]] == [50.0, 100.0]
            for s in ramp["steps"]:
                assert s["mode"] == "open"
                assert s["summary"]["errors"] == {}
                assert s["controller"]["optimum_formula"] == 40
    summary = report["sweep"]["summary"]
    assert set(summary["adaptive_modes"]) == {"aimd", "quantile"}
    assert [set(r["over_best_static"]) for r in summary["rounds"]] == [{"aimd", "quantile"}] * 2
    (target,) = report["targets"]
    assert target["checks"][0]["bound"] == "every_adaptive_over_best_static_min"


@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.parametrize("protocol", ["oip-json", "oip-binary", "oip-grpc"])
def test_oip_protocols(tmp_path: Path, protocol: str) -> None:
    report, _ = run_bench(tmp_path, "noop", "--protocol", protocol, "--no-plots")
    (run,) = report["runs"]
    assert run["protocol"] == protocol
    check_run(run)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_hand_written_grpc_client_against_ours_and_bare_grpc_aio(tmp_path: Path) -> None:
    report, _ = run_bench(
        tmp_path, "noop", "--protocol", "oip-grpc", "--grpc-client", "h2", "--compare", "--no-plots"
    )
    ours, bare = report["runs"]
    check_run(ours)
    check_run(bare)
    assert bare["label"] == "bare grpc.aio"


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_open_loop_bursts_from_two_workers(tmp_path: Path) -> None:
    report, _ = run_bench(
        tmp_path, "noop", "--mode", "burst", "--burst-size", "8", "--workers", "2", "--no-plots"
    )
    (run,) = report["runs"]
    check_run(run)
    assert len(run["workers"]) == 2
    assert "lag_ms" in run["summary"]
