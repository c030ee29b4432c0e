"""Rate ramps (``python -m bench SCENARIO --rates``): open loop at increasing
rates, the highest whose SLO attainment reaches the target; one step at a time,
so that a sweep (:mod:`bench.sweep`) can interleave many ramps."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from bench.foreign_cpu import ForeignCpu
from bench.measure import Options, Target, measure
from bench.prepare import probe, start_server, target_for
from bench.runner import base_report, default_name, finish_report
from bench.scenario import Scenario
from bench.serverproc import ClipperProcess


def _ramp_rates(sc: Scenario) -> list[float] | None:
    return [float(r) for r in sc.ramp.rates] or None


def ramp_plan(sc: Scenario, *, confirm: bool = False) -> Generator[float, bool, None]:
    """The rates of a ramp, one at a time: send whether each passed.

    The scenario's explicit rates, or: from ``start``, multiply by ``factor`` until
    one fails (or come down from ``start`` until one passes), then bisect
    ``refine`` times between the last pass and the first fail.  With ``confirm``
    a failed rate is measured once more and passes if that try passes."""

    def trial(rate: float) -> Generator[float, bool, bool]:
        ok = yield rate
        if not ok and confirm:
            ok = yield rate
        return ok

    rp = sc.ramp
    explicit = _ramp_rates(sc)
    if explicit is not None:
        for rate in explicit:
            yield rate
        return
    rate, last_pass, first_fail = rp.start, None, None
    while rate <= rp.max_rate:
        if (yield from trial(rate)):
            last_pass = rate
            rate = rate * rp.factor
        else:
            first_fail = rate
            break
    # The start was already too fast: come down until a rate passes.
    floor = rp.start / rp.factor**6
    while last_pass is None and first_fail is not None and first_fail / rp.factor >= floor:
        rate = round(first_fail / rp.factor, 1)
        if (yield from trial(rate)):
            last_pass = rate
        else:
            first_fail = rate
    if last_pass is not None and first_fail is not None:
        lo, hi = last_pass, first_fail
        for _ in range(rp.refine):
            mid = round((lo + hi) / 2, 1)
            if (yield from trial(mid)):
                lo = mid
            else:
                hi = mid


def ramp_step(
    sc: Scenario,
    opts: Options,
    srv: ClipperProcess,
    target: Target,
    reqs: list[bytes],
    rate: float,
    *,
    label: str = "",
) -> dict[str, Any]:
    """One open-loop step of a ramp at ``rate``; waits for the queues to drain."""
    rp = sc.ramp
    others = ForeignCpu()
    r = measure(
        sc,
        target,
        reqs,
        opts,
        server=srv,
        mode=sc.load.mode if sc.load.mode != "closed" else "open",
        rate=rate,
        duration_s=rp.step_duration_s,
        warmup_s=rp.step_warmup_s,
        label=f"{label}{rate:g} req/s",
    )
    foreign = others.cores()
    r.pop("timeline", None)
    att = r["summary"]["slo_attainment"] or 0.0
    srv.wait_idle()
    step = {"rate": rate, "passed": att >= rp.attainment, **r}
    step["foreign_cpu"] = None if foreign is None else round(foreign, 3)
    return step


def ramp_result(sc: Scenario, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A ramp's report: its steps by rate, and the highest rate that passed."""
    passed = [s["rate"] for s in steps if s["passed"]]
    return {
        "mode": sc.load.mode if sc.load.mode != "closed" else "open",
        "attainment": sc.ramp.attainment,
        "best_rate": max(passed) if passed else None,
        "steps": sorted(steps, key=lambda s: s["rate"]),
    }


def ramp(
    sc: Scenario,
    opts: Options,
    srv: ClipperProcess,
    target: Target,
    reqs: list[bytes],
    *,
    label: str = "",
) -> dict[str, Any]:
    """Open loop at increasing rates; the highest with attainment >= the target."""
    steps: list[dict[str, Any]] = []
    plan = ramp_plan(sc)
    try:
        rate = next(plan)
        while True:
            steps.append(ramp_step(sc, opts, srv, target, reqs, rate, label=label))
            rate = plan.send(steps[-1]["passed"])
    except StopIteration:
        pass
    return ramp_result(sc, steps)


def run_ramp(sc: Scenario, opts: Options) -> dict[str, Any]:
    name = opts.name or default_name(sc, "ramp")
    data = base_report("ramp", sc, opts)
    srv = start_server(sc, opts, name)
    try:
        srv.deploy(sc, sc.name)
        target, reqs = target_for(sc, srv, sc.name)
        probe(target, reqs[0])
        data["ramp"] = ramp(sc, opts, srv, target, reqs)
    finally:
        srv.stop()
    best = data["ramp"]["best_rate"]
    if not opts.quiet:
        print(
            f"highest rate with >= {sc.ramp.attainment:.0%} SLO attainment"
            f" ({sc.app.slo_ms:g} ms): {best if best is not None else 'none'} req/s"
        )
    return finish_report(data, name, opts, sc)
