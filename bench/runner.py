"""What ``python -m bench`` runs: a scenario once, or against a bare server
(``--compare``); up a ladder of rates (``--rates``) is :mod:`bench.ramp`, over a
grid of static batching configurations (``--sweep``) :mod:`bench.sweep`.  Each
starts its own server, deploys the scenario's model, and tears everything down
at the end.

One load run is ``bench.measure``; starting and probing the server, ``bench.prepare``.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from bench import profiles, report, targets
from bench.bare_process import BareProcess
from bench.measure import Options, Target, measure
from bench.prepare import probe, start_server, target_for
from bench.scenario import Scenario


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


def finish_report(
    report_data: dict[str, Any], name: str, opts: Options, sc: Scenario
) -> dict[str, Any]:
    """Evaluates the scenario's targets, writes the report and its plots."""
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


def base_report(kind: str, sc: Scenario, opts: Options) -> dict[str, Any]:
    """A report's common head: its kind, the scenario and the run's meta."""
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
    data = base_report(kind, sc, opts)
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
    return finish_report(data, name, opts, sc)


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
