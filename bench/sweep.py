"""Sweeps (``python -m bench SCENARIO --sweep``): a grid of static batching
configurations and the adaptive controller modes, every one deployed at once
and ramped in lockstep (:mod:`bench.ramp`), each adaptive mode compared with
the best static configuration of the same sweep."""

from __future__ import annotations

import time
from typing import Any

from bench.measure import Options
from bench.prepare import probe, start_server, target_for
from bench.ramp import ramp_plan, ramp_result, ramp_step
from bench.runner import base_report, default_name, finish_report
from bench.scenario import Scenario
from bench.serverproc import ClipperProcess


def run_sweep(sc: Scenario, opts: Options) -> dict[str, Any]:
    """Static (batch size, wait) grid, each with a rate ramp; plus each adaptive
    controller mode (``sweep.controllers``: aimd, quantile) at each wait, in the
    same server and the same run, each compared with the best static config.

    Every configuration is deployed at once and the ramps advance in lockstep:
    each round measures the next step of every unfinished ramp, in an order that
    rotates from round to round.  On a shared machine the load drifts over
    minutes; run one after another, the configurations measured last (the
    adaptive ones) would meet another machine than the first.  Interleaved, the
    drift falls on all of them alike.

    A failed step is measured once more (``ramp_plan(confirm=True)``): one stall
    of the machine fails a step of a few thousand queries, and a ramp stops
    climbing at its first failure.  The best static configuration is the best of
    several ramps, so it shrugs off one unlucky ramp; an adaptive mode is the
    best of only its waits, and would not.

    With ``sweep.rounds`` R > 1 the whole interleaved ramp runs R times, round
    after round, and each configuration's rate is the median of its R ramps, so
    that one ramp's luck decides neither a static size nor an adaptive mode (the
    best static is then the best of medians; each round's own comparison is kept
    in the summary's ``rounds``)."""
    name = opts.name or default_name(sc, "sweep")
    data = base_report("sweep", sc, opts)
    waits = sc.sweep.batch_wait_micros
    # A batch of one is full at once: no wait applies, so it runs once.
    grid = [
        (b, w, "fixed") for w in waits for b in sc.sweep.batch_sizes if b != 1 or w == min(waits)
    ]
    if sc.sweep.adaptive:
        grid += [(-1, w, mode) for mode in sc.sweep.controllers for w in waits]
    srv = start_server(sc, opts, name)
    try:
        runs = [_SweepRun(sc, srv, i, bs, wait, mode) for i, (bs, wait, mode) in enumerate(grid)]
        for n in range(sc.sweep.rounds):
            if n:
                for r in runs:
                    r.next_round()
                if not opts.quiet:
                    print(f"sweep: round {n + 1} of {sc.sweep.rounds}")
            active = [r for r in runs if r.rate is not None]
            rnd = 0
            while active:
                k = rnd % len(active)
                for r in active[k:] + active[:k]:
                    r.step(opts, srv)
                active = [r for r in active if r.rate is not None]
                rnd += 1
        for r in runs:
            srv.undeploy(r.app)
    finally:
        srv.stop()
    configs = [r.config() for r in runs]
    data["sweep"] = {"configs": configs, "summary": sweep_summary(configs), "interleaved": True}
    if not opts.quiet:
        print("sweep:", data["sweep"]["summary"])
    return finish_report(data, name, opts, sc)


def disturbed(step: dict[str, Any], max_foreign_cpu: float | None) -> bool:
    """Whether a ramp step failed while programs outside the bench took more than
    ``max_foreign_cpu`` cores (None: no step is)."""
    foreign = step.get("foreign_cpu")
    return (
        max_foreign_cpu is not None
        and not step["passed"]
        and foreign is not None
        and foreign > max_foreign_cpu
    )


class _SweepRun:
    """One configuration of a sweep: deployed at once, ramped a step at a time."""

    def __init__(
        self, sc: Scenario, srv: ClipperProcess, i: int, bs: int, wait: int, mode: str
    ) -> None:
        cfg = sc.copy()
        cfg.model.batch_size = bs
        cfg.model.batch_wait_micros = wait
        cfg.model.controller = mode
        self.cfg = cfg
        self.app = f"{sc.name}-sweep{i}"
        self.what = f"batch {bs if mode == 'fixed' else mode}, wait {wait} us"
        srv.deploy(cfg, self.app)
        self.target, self.reqs = target_for(cfg, srv, self.app)
        probe(self.target, self.reqs[0])
        self.steps: list[dict[str, Any]] = []  # this round's
        self.done_rounds: list[list[dict[str, Any]]] = []  # the earlier rounds' steps
        self.disturbed: list[dict[str, Any]] = []  # steps measured again (see step)
        self._redone = False  # the step being measured is a redo of a disturbed one
        self.seconds = 0.0  # in its own steps
        self.plan = ramp_plan(cfg, confirm=True)
        self.rate: float | None = next(self.plan, None)

    def step(self, opts: Options, srv: ClipperProcess) -> None:
        """Measures the next rate of this configuration's ramp.

        With ``ramp.max_foreign_cpu``, a failed step during which programs outside
        the bench took more than that many cores is kept in the report (marked
        ``disturbed``) but decides nothing: the same rate is measured again in the
        next round, once; the second measurement counts whatever it meets."""
        assert self.rate is not None
        label = f"{self.what}: "
        t0 = time.monotonic()
        step = ramp_step(self.cfg, opts, srv, self.target, self.reqs, self.rate, label=label)
        self.seconds += time.monotonic() - t0
        if not self._redone and disturbed(step, self.cfg.ramp.max_foreign_cpu):
            step["disturbed"] = True
            step["round"] = len(self.done_rounds) + 1
            self.disturbed.append(step)
            self._redone = True
            if not opts.quiet:
                print(f"  disturbed: others took {step['foreign_cpu']:.2f} cores; measured again")
            return
        self._redone = False
        self.steps.append(step)
        try:
            self.rate = self.plan.send(step["passed"])
        except StopIteration:
            self.rate = None

    def next_round(self) -> None:
        """Starts this configuration's ramp over (``sweep.rounds``).  The app
        stays deployed: an adaptive mode starts the round with the limit its
        last step left, as it enters every step of a ramp."""
        self.done_rounds.append(self.steps)
        self.steps = []
        self._redone = False
        self.plan = ramp_plan(self.cfg, confirm=True)
        self.rate = next(self.plan, None)

    def config(self) -> dict[str, Any]:
        """The sweep report's row: the configuration and its ramp (``ramps``,
        one per round, and their median rate, with more than one round);
        ``seconds`` is its steps' time over all rounds."""
        m = self.cfg.model
        results = [ramp_result(self.cfg, steps) for steps in [*self.done_rounds, self.steps]]
        row: dict[str, Any] = {
            "batch_size": m.batch_size,
            "batch_wait_micros": m.batch_wait_micros,
            "controller": m.controller,
            "best_rate": results[0]["best_rate"],
            "seconds": round(self.seconds, 1),
        }
        if len(results) == 1:
            row["ramp"] = results[0]
        else:
            row["round_rates"] = [r["best_rate"] for r in results]
            row["best_rate"] = median_rate(row["round_rates"])
            row["ramps"] = results
        row["disturbed_steps"] = self.disturbed
        return row


def median_rate(rates: list[float | None]) -> float | None:
    """The median of a configuration's ramps; a ramp that passed no rate counts
    as the lowest (None if the median is such a ramp)."""
    ordered = sorted(rates, key=lambda r: -1.0 if r is None else r)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    lo, hi = ordered[mid - 1], ordered[mid]
    return None if lo is None or hi is None else (lo + hi) / 2


def sweep_summary(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best static config, the best of each adaptive mode, and each one's rate
    as a fraction of the best static's (all from the same sweep)."""
    keys = ("batch_size", "batch_wait_micros", "controller", "best_rate")

    def best(cs: list[dict[str, Any]]) -> dict[str, Any] | None:
        rated = [c for c in cs if c["best_rate"] is not None]
        if not rated:
            return None
        top = max(rated, key=lambda c: c["best_rate"])
        return {k: top.get(k) for k in keys}

    best_static = best([c for c in configs if c["batch_size"] > 0])
    adaptive = [c for c in configs if c["batch_size"] <= 0]
    modes = {}
    for mode in dict.fromkeys(c.get("controller") or "aimd" for c in adaptive):
        top = best([c for c in adaptive if (c.get("controller") or "aimd") == mode])
        if top is None:
            continue
        if best_static is not None:
            top["over_best_static"] = round(top["best_rate"] / best_static["best_rate"], 4)
        modes[mode] = top
    best_adaptive = best(adaptive)
    summary: dict[str, Any] = {
        "best_static": best_static,
        "adaptive": best_adaptive,
        "adaptive_modes": modes,
    }
    if best_static and best_adaptive:
        summary["adaptive_over_best_static"] = round(
            best_adaptive["best_rate"] / best_static["best_rate"], 4
        )
    rounds = max((len(c.get("round_rates") or ()) for c in configs), default=0)
    if rounds > 1:
        # Each round read alone, as a one-round sweep would have: how often the
        # comparison holds ramp by ramp, next to the medians' verdict above.
        # A mode none of whose ramps passed a rate in a round reads None there.
        names = list(dict.fromkeys(c.get("controller") or "aimd" for c in adaptive))
        summary["rounds"] = [
            _round_verdict(
                sweep_summary([{**_bare(c), "best_rate": c["round_rates"][n]} for c in configs]),
                names,
            )
            for n in range(rounds)
        ]
    if any("ramp" in c or "ramps" in c for c in configs):
        summary["noise"] = sweep_noise(configs)
    return summary


def _bare(c: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in c.items() if k not in ("ramp", "ramps", "round_rates")}


def _round_verdict(s: dict[str, Any], modes: list[str]) -> dict[str, Any]:
    best = s["best_static"]
    tops = s["adaptive_modes"]
    return {
        "best_static": None if best is None else {k: best[k] for k in ("batch_size", "best_rate")},
        "over_best_static": {m: (tops.get(m) or {}).get("over_best_static") for m in modes},
    }


def sweep_noise(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far one sweep's rates can be trusted, from the sweep itself.

    * ``retried`` / ``retry_passed``: the failed steps measured once more at the
      same rate, and how many of those passed.  The same configuration at the same
      rate a few seconds apart: each that passed is a step decided by the machine.
    * ``resolution``: per configuration, the gap between its best rate and the
      lowest rate above it that failed, as a share of the best rate (the ramp's
      rounding: its true highest rate is somewhere in that gap); with several
      rounds, the widest of its ramps' gaps.
    * ``static_rates``: every static configuration's best rate (with several
      rounds, the median of its ramps), to see how far
      apart the ones that should be alike came out."""
    retried = retry_passed = 0
    resolution: dict[str, float | None] = {}
    static_rates: dict[str, float | None] = {}
    for c in configs:
        name = _config_name(c)
        if c["batch_size"] > 0:
            static_rates[name] = c["best_rate"]
        gaps: list[float] = []
        for ramp in c.get("ramps") or [c.get("ramp", {})]:
            by_rate: dict[float, list[bool]] = {}
            for s in ramp.get("steps", []):
                by_rate.setdefault(s["rate"], []).append(s["passed"])
            for tries in by_rate.values():
                if len(tries) > 1:
                    retried += 1
                    retry_passed += tries[-1]
            best = ramp.get("best_rate", c["best_rate"])
            fails = [r for r, tries in by_rate.items() if not any(tries) and best and r > best]
            if best and fails:
                gaps.append(min(fails) / best - 1)
        # With several rounds, the coarsest of them.
        resolution[name] = round(max(gaps), 4) if gaps else None
    return {
        "retried": retried,
        "retry_passed": retry_passed,
        "resolution": resolution,
        "static_rates": static_rates,
    }


def _config_name(c: dict[str, Any]) -> str:
    size = c["batch_size"] if c["batch_size"] > 0 else c.get("controller") or "aimd"
    return f"{size}@{c['batch_wait_micros']}us"
