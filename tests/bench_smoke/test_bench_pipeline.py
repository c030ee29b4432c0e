"""The pipeline scenarios: their figures from synthetic server samples, their
scenario files, and a smoke run of each end to end (a real server, real model
containers, the pipeline registered through ``ClipperConnection``).  No speed is
asserted: the smoke runs keep the harness from rotting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import pipeline_figures, scenario, targets
from tests.bench_smoke.test_bench_smoke import check_plots, check_run, run_bench

# -- figures from samples -------------------------------------------------------------------


def _sample(t: float, queries: int, cpu: float, per_stage: dict[str, tuple[int, float]]) -> Any:
    """A server sample: the app ``p`` answered ``queries``; each stage answered n
    queries in ``n * stage_s`` seconds, its model ran them one per batch in
    ``0.8 * stage_s`` each, the model's own call ``0.1 * stage_s``."""
    stages, models = {}, {}
    for name, (n, stage_s) in per_stage.items():
        stages[name] = {
            "requests": n,
            "answered": n,
            "skipped": 0,
            "deadline_misses": 0,
            "errors": 0,
            "model": f"p-{name}",
            "latency_sum_s": n * stage_s,
            "latency_count": n,
        }
        models[f"p-{name}:1"] = {
            "taken": n,
            "batches": n,
            "batch_latency_sum_s": n * 0.8 * stage_s,
            "batch_latency_count": n,
            "model_latency_sum_s": n * 0.1 * stage_s,
            "model_latency_count": n,
        }
    taken = per_stage.get("c", (0, 0.0))[0]
    return {
        "t": t,
        "cpu_server_s": cpu,
        "apps": {
            "p": {"requests": queries, "latency_sum_s": queries * 0.002, "latency_count": queries}
        },
        "models": models,
        "pipelines": {
            "p": {
                "stages": stages,
                "edges": {
                    "a->b": {"when": None, "evaluated": queries, "taken": queries},
                    "b->c": {"when": "output < 3", "evaluated": queries, "taken": taken},
                },
            }
        },
    }


def test_stage_figures_and_hop_overhead_over_the_window() -> None:
    samples = [
        _sample(0.0, 0, 0.0, {"a": (0, 0.0005), "b": (0, 0.0005), "c": (0, 0.0005)}),
        _sample(1.0, 100, 0.05, {"a": (100, 0.0005), "b": (100, 0.0005), "c": (50, 0.0005)}),
        _sample(2.0, 300, 0.15, {"a": (300, 0.0005), "b": (300, 0.0005), "c": (150, 0.0005)}),
    ]
    f = pipeline_figures.stage_figures(samples, "p", 1.0, 2.0)
    assert f["queries"] == 200
    assert f["cpu_server_us_per_query"] == pytest.approx(500.0)
    assert f["server_latency_ms"] == pytest.approx(2.0)
    assert set(f["stages"]) == {"a", "b", "c"}
    a, c = f["stages"]["a"], f["stages"]["c"]
    assert (a["runs_per_query"], c["runs_per_query"]) == (1.0, 0.5)
    assert (a["stage_ms"], a["batch_ms"], a["model_ms"]) == (0.5, 0.4, 0.05)
    assert a["mean_batch_size"] == 1.0 and a["model"] == "p-a:1"
    assert f["edges"]["b->c"]["taken_fraction"] == 0.5
    assert f["edges"]["a->b"]["evaluated"] == 200
    # 2.5 stages a query, each with a 0.4 ms round trip: 1.0 ms of the 1.5 ms.
    hop = pipeline_figures.hop_overhead(f, 1.5, single=(0.6, 0.4))
    assert hop["hops"] == 2.5 and hop["round_trips_ms"] == pytest.approx(1.0)
    assert hop["hop_overhead_us"] == pytest.approx(200.0)
    assert hop["hop_overhead_with_transport_us"] == pytest.approx((1.5 - 0.125) / 2.5 * 1000)
    # (1.5 - 1.0) - (0.6 - 0.4) = 0.3 ms over the 1.5 hops beyond the first.
    assert hop["marginal_hop_overhead_us"] == pytest.approx(200.0)
    assert "taken 0.5" in pipeline_figures.format_stages(f)


def test_hop_overhead_without_round_trips_is_not_measured() -> None:
    f = {"stages": {"a": {"runs_per_query": 1.0, "batch_ms": None, "model_ms": None}}}
    hop = pipeline_figures.hop_overhead(f, 1.0)
    assert hop["hops"] == 1.0 and hop["hop_overhead_us"] is None


def test_pipeline_targets_read_the_pipeline_section() -> None:
    report = {
        "kind": "pipeline",
        "scenario": {"load": {"protocol": "rest", "mode": "closed", "concurrency": 32}},
        "runs": [],
        "pipeline": {
            "latency": {"hop_overhead_us": 120.0},
            "throughput": {"fraction_of_single": 0.35},
        },
    }
    got = targets.evaluate(
        report,
        [
            {"name": "hop", "when": {"kind": "pipeline"}, "hop_overhead_us_max": 150},
            {"name": "rate", "when": {"kind": "pipeline"}, "fraction_of_single_min": 0.4},
            {"name": "not this", "when": {"kind": "run"}, "hop_overhead_us_max": 1},
        ],
    )
    assert [(r["name"], r["met"]) for r in got] == [("hop", True), ("rate", False)]


# -- scenario files ---------------------------------------------------------------------------


def test_the_pipeline_scenarios_are_listed_apart() -> None:
    assert {"pipeline", "pipeline-noop"} <= set(scenario.available(pipelines=True))
    assert "noop" in scenario.available(pipelines=False)
    assert not set(scenario.available(pipelines=True)) & set(scenario.available(pipelines=False))
    sc = scenario.load_scenario("pipeline")
    assert sc.pipeline is not None
    assert [s.name for s in sc.pipeline.stages] == ["pre", "mm", "top", "label"]
    assert sc.pipeline.edges[-1]["when"] == {"op": "<", "value": 32}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[pipeline.stages]]\nname = 'a'\nkind = 'nope'\n", "kind must be one of"),
        (
            "[[pipeline.stages]]\nname = 'a'\n[[pipeline.edges]]\nfrom = 'a'\nto = 'z'\n",
            "no stage 'z'",
        ),
        (
            "[[pipeline.stages]]\nname = 'a'\n[[pipeline.stages]]\nname = 'a'\n",
            "a name of its own",
        ),
        ("[[pipeline.stages]]\nname = 'a'\ncolour = 1\n", "unknown key 'colour'"),
        (
            "[[pipeline.stages]]\nname = 'a'\n[[pipeline.edges]]\nfrom = 'a'\nto = 'a'\n"
            "when = { op = '~', value = 1 }\n",
            "op one of",
        ),
        ("[pipeline]\nrounds = 0\n[[pipeline.stages]]\nname = 'a'\n", "rounds must be"),
    ],
)
def test_bad_pipeline_tables_are_refused(tmp_path: Path, text: str, error: str) -> None:
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\n' + text)
    with pytest.raises(scenario.ScenarioError, match=error):
        scenario.load_scenario(str(p))


# -- end to end --------------------------------------------------------------------------------


# Both slow (17 s and more: a pipeline of containers under load): make test-slow
# and CI run them.
@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.parametrize("name", ["pipeline-noop", "pipeline"])
def test_pipeline_scenario_smoke(tmp_path: Path, name: str) -> None:
    report, _ = run_bench(tmp_path, name)
    assert report["kind"] == "pipeline"
    labels = [r["label"] for r in report["runs"]]
    assert labels == ["pipeline c=1", "single c=1", "pipeline c=4", "single c=4"]
    for run in report["runs"]:
        check_run(run)
    check_plots(report, "cdf", "timeline")
    lat, thr = report["pipeline"]["latency"], report["pipeline"]["throughput"]
    sc = scenario.load_scenario(name)
    assert sc.pipeline is not None
    assert set(lat["stages"]) == {s.name for s in sc.pipeline.stages}
    for st in lat["stages"].values():
        assert st["batch_ms"] is not None and st["batch_ms"] > 0
        assert st["mean_batch_size"] == 1.0  # one client: one query a batch
        assert st["errors"] == st["deadline_misses"] == 0
    assert lat["p50_ms"] <= lat["p99_ms"]
    assert lat["hop_overhead_us"] is not None
    assert lat["hop_overhead_with_transport_us"] >= lat["hop_overhead_us"]
    assert lat["marginal_hop_overhead_us"] is not None
    assert thr["pipeline_rps"] > 0 and thr["single_rps"] > 0
    assert thr["fraction_of_single"] > 0
    # The per-hop target applies at any load (the 32-client one not to a smoke run).
    hop = next(t for t in report["targets"] if t["checks"][0]["bound"] == "hop_overhead_us_max")
    assert hop["checks"][0]["measured"] == lat["hop_overhead_us"]
    if name == "pipeline-noop":
        assert lat["hops"] == pytest.approx(3.0, abs=0.05)
        return
    # The conditional edge: taken for some queries, not all, and its stage ran
    # for those (a run counts the queries whose answer came in the window).
    taken = lat["edges"]["top->label"]["taken_fraction"]
    assert 0.0 < taken < 1.0
    assert lat["stages"]["label"]["runs_per_query"] == pytest.approx(taken, abs=0.05)
    assert lat["hops"] == pytest.approx(3.0 + taken, abs=0.05)
