"""What ``python -m bench`` runs: a scenario once, against a bare server
(``--compare``), up a ladder of rates (``--rates``), or over a grid of static
batching configurations (``--sweep``).  Each starts its own server, deploys the
scenario's model, and tears everything down at the end.

One load run is ``bench.measure``; starting and probing the server, ``bench.prepare``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from bench import profiles, report, targets
from bench.foreign_cpu import ForeignCpu
from bench.measure import Options, Target, measure
from bench.prepare import probe, start_server, target_for
from bench.scenario import Scenario
from bench.serverproc import BareProcess, ClipperProcess


def resolve_concurrency(sc: Scenario, explicit: bool) -> None:
    """The sleep scenario sizes its closed loop from the formula's optimum."""
    optimum = sc.optimum_batch_size()
    if not explicit and sc.load.concurrency_factor > 0 and optimum is not None:
        sc.load.concurrency = math.ceil(sc.load.concurrency_factor * optimum)


def default_name(sc: Scenario, kind: str) -> str:
    ld = sc.load
    load = f"c{ld.concurrency}" if ld.mode == "closed" else f"r{ld.rate:g}"
    if ld.mode == "burst":
        load += f"b{ld.burst_size}"
    parts = [sc.name, ld.protocol]
    if kind in ("run", "compare"):
        parts += [ld.mode, load]
    if kind != "run":
        parts.append(kind)
    return "-".join(parts)


def _finish(report_data: dict[str, Any], name: str, opts: Options, sc: Scenario) -> dict[str, Any]:
    path = opts.out / f"{name}.json"
    if sc.targets:
        report_data["targets"] = targets.evaluate(report_data, sc.targets)
        if report_data["targets"] and not opts.quiet:
            print(targets.format_targets(report_data["targets"]))
    if opts.plots:
        report_data["plots"] = draw(report_data, opts.out, name)
    report.write_json(report_data, path)
    if not opts.quiet:
        print(f"report: {path}")
        for p in report_data.get("plots", []):
            print(f"plot:   {p}")
    return report_data


def draw(data: dict[str, Any], out: Path, name: str) -> list[str]:
    from bench import plots

    made: list[Path | None] = []
    runs = data.get("runs", [])
    slo = data.get("scenario", {}).get("app", {}).get("slo_ms")
    optimum = None
    for r in runs:
        if "controller" in r:
            optimum = r["controller"]["optimum_formula"]
    if runs:
        made.append(
            plots.latency_cdf(
                [(r["label"], r["summary"]) for r in runs], out / f"{name}-cdf.png", name
            )
        )
        main = runs[0]
        made.append(
            plots.timeline(
                main["timeline"],
                out / f"{name}-timeline.png",
                f"{name}: {main['label']}",
                slo_ms=slo,
                optimum=optimum,
            )
        )
        made.append(plots.throughput_vs_batch(main["timeline"], out / f"{name}-batch.png", name))
    if "ramp" in data:
        made.append(
            plots.ramp(
                data["ramp"]["steps"], out / f"{name}-ramp.png", name, data["ramp"]["attainment"]
            )
        )
    if "sweep" in data:
        made.append(plots.sweep(data["sweep"]["configs"], out / f"{name}-sweep.png", name))
    return [str(p) for p in made if p is not None]


def _base_report(kind: str, sc: Scenario, opts: Options) -> dict[str, Any]:
    return {
        "kind": kind,
        "scenario": sc.to_dict(),
        "meta": report.meta(opts.argv),
        "runs": [],
    }


# -- the modes ------------------------------------------------------------------------


def run(
    sc: Scenario,
    opts: Options,
    *,
    compare: bool = False,
    rounds: int = 1,
    bare: str | None = None,
) -> dict[str, Any]:
    """The scenario once (and the bare server under the same load with ``--compare``).

    With ``rounds`` > 1, ``--compare`` alternates ours and the bare server that
    many times, both up all along, and reports the median of the per-round
    fractions (a shared machine drifts: a ratio within a round is fairer than
    two separate runs).  ``bare`` picks the gRPC floor: ``grpc`` (grpc.aio) or
    ``grpc-sync`` (grpc.server on a thread pool)."""
    kind = "compare" if compare else "run"
    name = opts.name or default_name(sc, kind)
    opts.profile_name = name
    data = _base_report(kind, sc, opts)
    timings = data["timings_s"] = {}
    t = time.monotonic()
    srv = start_server(sc, opts, name)
    bare_kind = bare
    bare_proc: BareProcess | None = None
    try:
        timings["server_start"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        srv.deploy(sc, sc.name)
        timings["deploy"] = round(time.monotonic() - t, 2)
        target, reqs = target_for(sc, srv, sc.name)
        reply = probe(target, reqs[0])
        bare_target = None
        if compare:
            bare_proc = _bare_for(sc, reply, bare_kind)
            bare_target = Target("127.0.0.1", bare_proc.port, sc.load.protocol, sc.name, sc.name)
        t = time.monotonic()
        for i in range(max(1, rounds) if compare else 1):
            suffix = f" #{i + 1}" if rounds > 1 else ""
            data["runs"].append(
                measure(sc, target, reqs, opts, server=srv, label=f"clipper_core{suffix}")
            )
            if bare_target is not None and bare_proc is not None:
                label = _BARE_LABELS[bare_kind or _default_bare(sc)]
                cpu0 = bare_proc.cpu_s()
                bare_run = measure(sc, bare_target, reqs, opts, label=label + suffix)
                _note_bare_cpu(bare_run, cpu0, bare_proc.cpu_s(), opts.quiet)
                data["runs"].append(bare_run)
        timings["load"] = round(time.monotonic() - t, 2)
        data["server_log_tail"] = srv.log_tail(10)
    finally:
        t = time.monotonic()
        if bare_proc is not None:
            bare_proc.stop()
        srv.stop()
        timings["teardown"] = round(time.monotonic() - t, 2)
    if opts.profile == "cprofile":
        txt = profiles.pstats_summary(opts.out / f"{name}-server.prof")
        data["profile"] = None if txt is None else [str(opts.out / f"{name}-server.prof"), str(txt)]
    profile_files = data.get("profile") or data["runs"][0].get("profile") or []
    if not opts.quiet:
        for p in profile_files:
            print(f"profile: {p}")
    if compare:
        data["comparison"] = compare_rounds(data["runs"])
        frac = data["comparison"]["throughput_fraction_of_bare"]
        if not opts.quiet and frac is not None:
            print(f"clipper_core throughput = {frac:.1%} of the bare server's", end="")
            rounds_list = data["comparison"]["rounds"]
            if len(rounds_list) > 1:
                each = " / ".join(f"{r['fraction']:.1%}" for r in rounds_list)
                print(f" (median of {len(rounds_list)} rounds: {each})", end="")
            print()
    return _finish(data, name, opts, sc)


def _note_bare_cpu(
    run: dict[str, Any], cpu0: float | None, cpu1: float | None, quiet: bool
) -> None:
    """The bare server's CPU over a run (warm-up included) per request its load
    workers sent: the floor's own cost, next to ``server CPU`` of ours."""
    sent = sum(w.get("sent", 0) for w in run.get("workers", []))
    if cpu0 is None or cpu1 is None or not sent:
        return
    run["bare_server"] = {
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_us_per_req": round((cpu1 - cpu0) / sent * 1e6, 1),
    }
    if not quiet:
        print(f"{'':36}bare server CPU {run['bare_server']['cpu_us_per_req']:.0f} us/req")


_BARE_LABELS = {"http": "bare uvloop", "grpc": "bare grpc.aio", "grpc-sync": "bare grpc sync"}


def _default_bare(sc: Scenario) -> str:
    return "grpc" if sc.load.protocol == "oip-grpc" else "http"


def _bare_for(sc: Scenario, reply: bytes, kind: str | None) -> BareProcess:
    ctype = "application/octet-stream" if sc.load.protocol == "oip-binary" else "application/json"
    bare = BareProcess(kind or _default_bare(sc), reply, content_type=ctype)
    bare.start()
    return bare


def compare_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round (ours, bare) throughput and fraction; the medians over rounds."""
    rounds = []
    for ours_run, bare_run in zip(runs[0::2], runs[1::2], strict=True):
        ours, floor = ours_run["summary"], bare_run["summary"]
        frac = ours["throughput_rps"] / floor["throughput_rps"] if floor["throughput_rps"] else None
        rounds.append(
            {
                "ours_rps": ours["throughput_rps"],
                "bare_rps": floor["throughput_rps"],
                "fraction": frac,
                "p50_ms": [ours["latency_ms"]["p50"], floor["latency_ms"]["p50"]],
                "p99_ms": [ours["latency_ms"]["p99"], floor["latency_ms"]["p99"]],
            }
        )
    fracs = [r["fraction"] for r in rounds if r["fraction"] is not None]
    median_frac = statistics.median(fracs) if fracs else None
    return {
        "throughput_fraction_of_bare": None if median_frac is None else round(median_frac, 4),
        "ours_rps_median": statistics.median(r["ours_rps"] for r in rounds),
        "bare_rps_median": statistics.median(r["bare_rps"] for r in rounds),
        "p50_ms": [
            statistics.median(r["p50_ms"][0] for r in rounds),
            statistics.median(r["p50_ms"][1] for r in rounds),
        ],
        "p99_ms": [
            statistics.median(r["p99_ms"][0] for r in rounds),
            statistics.median(r["p99_ms"][1] for r in rounds),
        ],
        "rounds": rounds,
    }


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
    data = _base_report("ramp", sc, opts)
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
    return _finish(data, name, opts, sc)


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
    best of only its waits, and would not."""
    name = opts.name or default_name(sc, "sweep")
    data = _base_report("sweep", sc, opts)
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
    return _finish(data, name, opts, sc)


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
        self.steps: list[dict[str, Any]] = []
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

    def config(self) -> dict[str, Any]:
        """The sweep report's row: the configuration and its ramp."""
        m = self.cfg.model
        result = ramp_result(self.cfg, self.steps)
        return {
            "batch_size": m.batch_size,
            "batch_wait_micros": m.batch_wait_micros,
            "controller": m.controller,
            "best_rate": result["best_rate"],
            "seconds": round(self.seconds, 1),
            "ramp": result,
            "disturbed_steps": self.disturbed,
        }


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
    if any("ramp" in c for c in configs):
        summary["noise"] = sweep_noise(configs)
    return summary


def sweep_noise(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far one sweep's rates can be trusted, from the sweep itself.

    * ``retried`` / ``retry_passed``: the failed steps measured once more at the
      same rate, and how many of those passed.  The same configuration at the same
      rate a few seconds apart: each that passed is a step decided by the machine.
    * ``resolution``: per configuration, the gap between its best rate and the
      lowest rate above it that failed, as a share of the best rate (the ramp's
      rounding: its true highest rate is somewhere in that gap).
    * ``static_rates``: every static configuration's best rate, to see how far
      apart the ones that should be alike came out."""
    retried = retry_passed = 0
    resolution: dict[str, float | None] = {}
    static_rates: dict[str, float | None] = {}
    for c in configs:
        name = _config_name(c)
        if c["batch_size"] > 0:
            static_rates[name] = c["best_rate"]
        by_rate: dict[float, list[bool]] = {}
        for s in c.get("ramp", {}).get("steps", []):
            by_rate.setdefault(s["rate"], []).append(s["passed"])
        for tries in by_rate.values():
            if len(tries) > 1:
                retried += 1
                retry_passed += tries[-1]
        best = c["best_rate"]
        fails = [r for r, tries in by_rate.items() if not any(tries) and best and r > best]
        resolution[name] = round(min(fails) / best - 1, 4) if best and fails else None
    return {
        "retried": retried,
        "retry_passed": retry_passed,
        "resolution": resolution,
        "static_rates": static_rates,
    }


def _config_name(c: dict[str, Any]) -> str:
    size = c["batch_size"] if c["batch_size"] > 0 else c.get("controller") or "aimd"
    return f"{size}@{c['batch_wait_micros']}us"


def replot(path: Path, out: Path | None = None) -> list[str]:
    import json

    data = json.loads(path.read_text())
    return draw(data, out or path.parent, path.stem)


# -- selection policies -----------------------------------------------------------------


def run_selection(args: Any, argv: list[str]) -> int:
    """``python -m bench selection``: regret per policy over a labelled stream."""
    from bench import regret

    rounds = args.labels or (400 if args.smoke else 5000)
    seeds = args.seeds or (1 if args.smoke else 5)
    name = args.name or "selection-regret"
    if not args.quiet:
        print(f"selection: {seeds} stream(s) of {rounds} labels, in process", flush=True)
    data: dict[str, Any] = {"kind": "selection", "meta": report.meta(argv)}
    data.update(regret.run_regret(rounds=rounds, seeds=seeds, quiet=args.quiet))
    path = args.out / f"{name}.json"
    if not args.no_plots:
        title = f"{data['stream']['models']} models, accuracies {data['stream']['accuracies']}"
        data["plots"] = [str(regret.plot_regret(data, args.out / f"{name}.png", title))]
    report.write_json(data, path)
    if not args.quiet:
        print(f"report: {path}")
        for p in data.get("plots", []):
            print(f"plot:   {p}")
    return 0


def run_feedback(sc: Scenario, opts: Options, rate: float | None, pairs: int = 3) -> dict[str, Any]:
    """``--feedback``: /predict alone, then with /update at the query rate."""
    from bench import feedback

    name = opts.name or f"{default_name(sc, 'run')}-feedback"
    opts.profile_name = name
    data = feedback.run_feedback(sc, opts, feedback_rate=rate, pairs=pairs)
    path = opts.out / f"{name}.json"
    report.write_json(data, path)
    if not opts.quiet:
        print(f"report: {path}")
    return data
