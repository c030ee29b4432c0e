"""The sweep's and the ramp's parts, without a clipper_core server: the ramp's
plan, the sweep's summary, noise and rounds, their options, the batching
simulation."""

from __future__ import annotations

import pytest


def test_sweep_summary_compares_each_adaptive_mode_with_the_best_static() -> None:
    from bench import targets
    from bench.sweep import sweep_summary

    configs = [
        {"batch_size": 4, "batch_wait_micros": 0, "controller": "fixed", "best_rate": 100.0},
        {"batch_size": 8, "batch_wait_micros": 0, "controller": "fixed", "best_rate": 120.0},
        {"batch_size": -1, "batch_wait_micros": 0, "controller": "aimd", "best_rate": 118.0},
        {"batch_size": -1, "batch_wait_micros": 500, "controller": "aimd", "best_rate": None},
        {"batch_size": -1, "batch_wait_micros": 0, "controller": "quantile", "best_rate": 96.0},
        {"batch_size": -1, "batch_wait_micros": 500, "controller": "quantile", "best_rate": 90.0},
    ]
    summary = sweep_summary(configs)
    assert summary["best_static"]["best_rate"] == 120.0
    modes = summary["adaptive_modes"]
    assert (modes["aimd"]["best_rate"], modes["aimd"]["over_best_static"]) == (118.0, 0.9833)
    assert (modes["quantile"]["batch_wait_micros"], modes["quantile"]["over_best_static"]) == (
        0,
        0.8,
    )
    assert summary["adaptive_over_best_static"] == 0.9833  # the better mode
    load = {"protocol": "rest", "mode": "open", "concurrency": 1}
    report = {
        "kind": "sweep",
        "scenario": {"load": load},
        "runs": [],
        "sweep": {"summary": summary},
    }
    (result,) = targets.evaluate(
        report, [{"name": "each", "every_adaptive_over_best_static_min": 0.95}]
    )
    assert result["checks"][0]["measured"] == 0.8 and result["met"] is False


def test_ramp_plan_confirms_a_failure_when_asked() -> None:
    from bench.ramp import ramp_plan
    from bench.scenario import load_scenario

    sc = load_scenario("matmul")
    sc.ramp.rates = []
    sc.ramp.start, sc.ramp.factor, sc.ramp.refine = 500.0, 2.0, 1

    def walk(confirm: bool, fails: set[int]) -> list[float]:
        plan, rates, i = ramp_plan(sc, confirm=confirm), [], 0
        try:
            rate = next(plan)
            while True:
                rates.append(rate)
                rate = plan.send(not (rate >= 4000 or i in fails))
                i += 1
        except StopIteration:
            return rates

    assert walk(False, set()) == [500.0, 1000.0, 2000.0, 4000.0, 3000.0]
    assert walk(False, {1}) == [500.0, 1000.0, 750.0]  # one unlucky step ends the climb
    assert walk(True, {1}) == [500.0, 1000.0, 1000.0, 2000.0, 4000.0, 4000.0, 3000.0]


def test_sweep_noise_counts_retries_and_the_ramps_rounding() -> None:
    from bench.sweep import sweep_summary

    def ramp(*steps: tuple[float, bool]) -> dict[str, object]:
        return {"steps": [{"rate": r, "passed": p} for r, p in steps]}

    configs = [
        {
            "batch_size": 16,
            "batch_wait_micros": 1000,
            "controller": "fixed",
            "best_rate": 6500.0,
            # 6000 failed, then passed its retry; 7000 failed twice.
            "ramp": ramp(
                (4000, True),
                (6000, False),
                (6000, True),
                (6500, True),
                (7000, False),
                (7000, False),
            ),
        },
        {
            "batch_size": -1,
            "batch_wait_micros": 1000,
            "controller": "quantile",
            "best_rate": 6000.0,
            "ramp": ramp((4000, True), (6000, True), (6500, False), (6500, False)),
        },
    ]
    noise = sweep_summary(configs)["noise"]
    assert (noise["retried"], noise["retry_passed"]) == (3, 1)
    assert noise["resolution"] == {"16@1000us": 0.0769, "quantile@1000us": 0.0833}
    assert noise["static_rates"] == {"16@1000us": 6500.0}


def test_sweep_rounds_compare_medians_and_keep_each_rounds_verdict() -> None:
    from bench.sweep import median_rate, sweep_summary

    def ramp(best: float | None, *steps: tuple[float, bool]) -> dict[str, object]:
        return {"best_rate": best, "steps": [{"rate": r, "passed": p} for r, p in steps]}

    def row(bs: int, mode: str, rates: list[float | None]) -> dict[str, object]:
        return {
            "batch_size": bs,
            "batch_wait_micros": 1000,
            "controller": mode,
            "best_rate": median_rate(rates),
            "round_rates": rates,
            "ramps": [ramp(r, (r or 100.0, r is not None), (1600.0, False)) for r in rates],
        }

    configs = [
        # Static 40's lucky round (1,519) would have been the best alone.
        row(40, "fixed", [1477.0, 1519.0, 1434.0]),
        row(50, "fixed", [1434.0, 1477.0, 1477.0]),
        row(-1, "aimd", [1434.0, 1392.0, 1477.0]),
        row(-1, "quantile", [None, 1477.0, 1434.0]),
    ]
    summary = sweep_summary(configs)
    assert summary["best_static"]["best_rate"] == 1477.0
    modes = summary["adaptive_modes"]
    assert modes["aimd"]["over_best_static"] == round(1434 / 1477, 4)
    assert modes["quantile"]["over_best_static"] == round(1434 / 1477, 4)
    rounds = summary["rounds"]
    assert [r["best_static"] for r in rounds] == [
        {"batch_size": 40, "best_rate": 1477.0},
        {"batch_size": 40, "best_rate": 1519.0},
        {"batch_size": 50, "best_rate": 1477.0},
    ]
    assert rounds[0]["over_best_static"] == {"aimd": round(1434 / 1477, 4), "quantile": None}
    assert rounds[1]["over_best_static"]["aimd"] == round(1392 / 1519, 4)
    # Noise reads every round's ramp (1,600 req/s failed in each): the widest gap.
    assert summary["noise"]["resolution"]["aimd@1000us"] == round(1600 / 1392 - 1, 4)
    assert summary["noise"]["static_rates"] == {"40@1000us": 1477.0, "50@1000us": 1477.0}
    assert median_rate([None, None, 1.0]) is None
    assert median_rate([3.0, 1.0]) == 2.0 and median_rate([5.0]) == 5.0


def test_sweep_rounds_option_and_its_bounds() -> None:
    from bench.__main__ import apply_overrides, build_parser
    from bench.scenario import ScenarioError, apply_smoke, load_scenario, validate

    assert load_scenario("matmul").sweep.rounds == 1
    sc = load_scenario("sleep-sweep")
    assert sc.sweep.rounds == 3
    apply_overrides(sc, build_parser().parse_args(["sleep-sweep", "--sweep-rounds", "1"]))
    assert sc.sweep.rounds == 1
    smoke = load_scenario("sleep-sweep")
    apply_smoke(smoke)
    assert smoke.sweep.rounds == 1  # the smoke run ramps once
    sc.sweep.rounds = 0
    with pytest.raises(ScenarioError, match=r"sweep\.rounds"):
        validate(sc)


def test_refine_option_sets_the_ramps_bisection_steps() -> None:
    from bench.__main__ import apply_overrides, build_parser
    from bench.scenario import load_scenario

    sc = load_scenario("matmul")
    apply_overrides(sc, build_parser().parse_args(["matmul", "--sweep", "--refine", "4"]))
    assert sc.ramp.refine == 4


def test_batch_sim_reads_capacity_and_slo() -> None:
    from bench.batch_sim import BatchModel, attainment, max_rate

    model = BatchModel(a_ms=1.0, b_ms=10.0, replicas=2, slo_ms=100.0)
    # Far below capacity every query is in time; far above it, few are.
    assert attainment(model, 200.0, 40, queries=4000, seed=1) == 1.0
    assert attainment(model, 3000.0, 40, queries=4000, seed=1) < 0.5
    small, near, large = (
        max_rate(model, n, queries=4000, seeds=[1], steps=10) for n in (10, 40, 200)
    )
    # Too small a limit is capacity-bound (2 * 10 per 20 ms = 1,000/s); too large a
    # one lets batches run past the SLO; the objective's size does better than both.
    assert small < 1000.0 < near
    assert large < near
