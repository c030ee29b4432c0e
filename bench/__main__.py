"""Latency benchmarks of clipper_core, end to end, on loopback.

    python -m bench SCENARIO [options]      run a scenario (noop, matmul, sleep, cache,
                                            pipeline, pipeline-noop, or a .toml file)
    python -m bench list                    the scenarios
    python -m bench selection               regret of each selection policy (in process)
    python -m bench plot REPORT.json        redraw a report's plots

Each run starts `python -m clipper_core.cli serve` on free ports with a temporary
state folder, deploys the scenario's model through ClipperConnection, drives load
from separate worker processes, writes OUT/NAME.json (+ PNG plots), and tears the
server and its model containers down by PID.

Examples (the targets of issue 8):
    python -m bench noop --concurrency 32 --compare      # req/s, fraction of bare
    python -m bench noop --concurrency 1                 # single-query latency
    python -m bench matmul --rates auto                  # highest rate, 99% in SLO
    python -m bench matmul --sweep                       # best static config
    python -m bench sleep                                # batch size vs formula
    python -m bench cache                                # Zipf keys, hit rate
    python -m bench noop --smoke                         # seconds: CI smoke run
    python -m bench selection --labels 5000 --seeds 5    # regret per policy, plot
    python -m bench noop --feedback --mode open -r 2000  # /update at the query rate
    python -m bench pipeline-noop --rounds 3             # 3 noop stages vs one: hop cost, rate
    python -m bench pipeline                             # preprocess, matmul, argmax, lookup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import scenario as scenario_mod


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", help="scenario name or .toml path; or 'list', or 'plot'")
    p.add_argument("report", nargs="?", help="with 'plot': the report JSON to redraw")

    m = p.add_argument_group("what to run")
    m.add_argument("--smoke", action="store_true", help="seconds and small counts (CI)")
    m.add_argument("--compare", action="store_true", help="also a bare uvloop server, same load")
    m.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--compare: alternate ours and the bare server N times; median fraction"
        " (pipeline scenarios: the pipeline and the single model)",
    )
    m.add_argument(
        "--bare",
        choices=["grpc", "grpc-sync"],
        help="--compare over oip-grpc: grpc.aio (default) or the sync grpc.server",
    )
    m.add_argument(
        "--rates",
        metavar="auto|R1,R2,...",
        help="open-loop ramp: the highest rate with >= 99%% SLO attainment",
    )
    m.add_argument("--step-duration", type=float, help="--rates/--sweep: seconds per rate")
    m.add_argument("--step-warmup", type=float, help="--rates/--sweep: warm-up per rate")
    m.add_argument("--attainment", type=float, help="--rates/--sweep: target (0.99)")
    m.add_argument(
        "--max-foreign-cpu",
        type=float,
        metavar="CORES",
        help="--sweep: measure a failed step once more when programs outside the bench"
        " took more than CORES cores during it (default: every step counts)",
    )
    m.add_argument(
        "--refine",
        type=int,
        metavar="N",
        help="--rates auto/--sweep: bisection steps between the last pass and the first"
        " fail (3: a gap of 1/8 of the last pass; each more halves it)",
    )
    m.add_argument("--sweep", action="store_true", help="grid of static (batch size, wait)")
    m.add_argument("--sweep-batch-sizes", type=_ints, metavar="1,2,4,...")
    m.add_argument("--sweep-waits", type=_ints, metavar="0,500,...", help="microseconds")
    m.add_argument("--no-adaptive", action="store_true", help="sweep: skip the adaptive rows")
    m.add_argument(
        "--sweep-controllers",
        type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
        metavar="aimd,quantile",
        help="sweep: the adaptive modes run at each wait (default both)",
    )
    m.add_argument(
        "--sweep-rounds",
        type=int,
        metavar="R",
        help="sweep: ramps per configuration, round after round; each configuration's"
        " rate is the median of its R ramps (odd R reads a ramp's own rate)",
    )
    m.add_argument(
        "--feedback",
        nargs="?",
        type=float,
        const=0.0,
        metavar="RATE",
        help="an exp3 app over two copies of the model; /predict alone, then with"
        " /update at RATE/s (default: the query rate); the p99 of both",
    )
    m.add_argument("--labels", type=int, help="selection: labels per stream (5000)")
    m.add_argument("--seeds", type=int, help="selection: streams averaged (5)")

    ld = p.add_argument_group("load (overrides the scenario's [load])")
    ld.add_argument("--protocol", choices=scenario_mod.PROTOCOLS)
    ld.add_argument("--mode", choices=scenario_mod.MODES)
    ld.add_argument("-c", "--concurrency", type=int, help="closed loop: clients")
    ld.add_argument("-r", "--rate", type=float, help="open loop: requests per second")
    ld.add_argument("--burst-size", type=int, help="burst mode: requests per burst")
    ld.add_argument("-d", "--duration", type=float, help="measured seconds")
    ld.add_argument("--warmup", type=float, help="seconds of load before measuring")
    ld.add_argument("-n", "--requests", type=int, help="stop after this many requests")
    ld.add_argument("--timeout", type=float, help="per-request timeout, seconds")
    ld.add_argument("--workers", type=int, help="load generator processes")
    ld.add_argument("--max-connections", type=int, help="open loop: connection pool cap")
    ld.add_argument("--grpc-channels", type=int, help="OIP gRPC: channels (TCP connections)")
    ld.add_argument(
        "--grpc-client",
        choices=["aio", "h2"],
        help="OIP gRPC load: grpc.aio channels (default) or hand-written HTTP/2 frames"
        " (closed loop; a fraction of grpc.aio's CPU per call)",
    )
    ld.add_argument("--oip-shape", type=_ints, metavar="1,-1", help="-1: the vector length")
    ld.add_argument("--seed", type=int)
    spin = ld.add_mutually_exclusive_group()
    spin.add_argument(
        "--spin",
        dest="spin",
        action="store_true",
        default=None,
        help="open loop: yield-spin to send on time (default with >= 4 CPUs)",
    )
    spin.add_argument("--no-spin", dest="spin", action="store_false")

    md = p.add_argument_group("model and app (override [model] / [app])")
    md.add_argument("--batch-size", type=int, help="-1 adaptive, > 0 fixed")
    md.add_argument("--batch-wait-us", type=int, help="delayed batching wait")
    md.add_argument(
        "--controller",
        choices=["aimd", "quantile", "fixed"],
        help="batch-size controller (default: fixed with --batch-size > 0, else aimd)",
    )
    md.add_argument("--replicas", type=int)
    cache = md.add_mutually_exclusive_group()
    cache.add_argument("--cache", dest="cache", action="store_true", default=None)
    cache.add_argument("--no-cache", dest="cache", action="store_false")
    md.add_argument("--slo-ms", type=float)
    md.add_argument("--distinct", type=int, help="distinct inputs")
    adm = md.add_mutually_exclusive_group()
    adm.add_argument(
        "--admission",
        dest="admission",
        action="store_true",
        default=None,
        help="server admission control on (`serve --no-admission` when off)",
    )
    adm.add_argument("--no-admission", dest="admission", action="store_false")
    md.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `clipper serve` argument (repeatable; use --server-arg=--x)",
    )

    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("build/bench"), help="(build/bench)")
    o.add_argument("--name", help="report file name (default from scenario and load)")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=["cprofile", "py-spy"],
        help="profile the server over the measured window (default cprofile; py-spy"
        " samples the server and its model containers)",
    )
    o.add_argument(
        "--pure-python",
        action="store_true",
        help="server on the pure-Python twins (CLIPPER_NO_EXTENSIONS=1)",
    )
    o.add_argument("--poll", type=float, default=0.5, help="server sampling interval, s")
    o.add_argument("-q", "--quiet", action="store_true")
    return p


def apply_overrides(sc: scenario_mod.Scenario, a: argparse.Namespace) -> None:
    ld, md = sc.load, sc.model
    for attr, value in (
        ("protocol", a.protocol),
        ("mode", a.mode),
        ("concurrency", a.concurrency),
        ("rate", a.rate),
        ("burst_size", a.burst_size),
        ("duration_s", a.duration),
        ("warmup_s", a.warmup),
        ("max_requests", a.requests),
        ("timeout_s", a.timeout),
        ("workers", a.workers),
        ("max_connections", a.max_connections),
        ("grpc_channels", a.grpc_channels),
        ("grpc_client", a.grpc_client),
        ("oip_shape", a.oip_shape),
        ("seed", a.seed),
    ):
        if value is not None:
            setattr(ld, attr, value)
    if a.batch_size is not None:
        md.batch_size = a.batch_size
    if a.batch_wait_us is not None:
        md.batch_wait_micros = a.batch_wait_us
    if a.controller is not None:
        md.controller = a.controller
    if a.replicas is not None:
        md.num_replicas = a.replicas
    if a.cache is not None:
        md.cache_enabled = a.cache
    if a.slo_ms is not None:
        sc.app.slo_ms = a.slo_ms
    if a.distinct is not None:
        sc.inputs.distinct = a.distinct
    if a.admission is not None:
        sc.server.admission = a.admission
    sc.server.args += a.server_arg
    if a.rates:
        if a.rates != "auto":
            sc.ramp.rates = _floats(a.rates)
        elif not a.smoke:
            sc.ramp.rates = []
    if a.step_duration is not None:
        sc.ramp.step_duration_s = a.step_duration
    if a.step_warmup is not None:
        sc.ramp.step_warmup_s = a.step_warmup
    if a.attainment is not None:
        sc.ramp.attainment = a.attainment
    if a.refine is not None:
        sc.ramp.refine = a.refine
    if a.max_foreign_cpu is not None:
        sc.ramp.max_foreign_cpu = a.max_foreign_cpu
    if a.sweep_batch_sizes:
        sc.sweep.batch_sizes = a.sweep_batch_sizes
    if a.sweep_waits:
        sc.sweep.batch_wait_micros = a.sweep_waits
    if a.no_adaptive:
        sc.sweep.adaptive = False
    if a.sweep_controllers:
        sc.sweep.controllers = a.sweep_controllers
    if a.sweep_rounds is not None:
        sc.sweep.rounds = a.sweep_rounds


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.scenario == "list":
        for name in scenario_mod.available():
            sc = scenario_mod.load_scenario(name)
            print(f"{name:<14} {sc.description}")
        print(f"{'selection':<14} regret of each selection policy over a labelled stream")
        return 0
    if args.scenario == "selection":
        from bench import runner

        return runner.run_selection(args, argv)

    from bench import ramp, runner, sweep

    if args.scenario == "plot":
        if not args.report:
            print("usage: python -m bench plot REPORT.json", file=sys.stderr)
            return 2
        for path in runner.replot(Path(args.report), args.out if "--out" in argv else None):
            print(path)
        return 0
    try:
        sc = scenario_mod.load_scenario(args.scenario)
        if args.smoke:
            scenario_mod.apply_smoke(sc)
        apply_overrides(sc, args)
        runner.resolve_concurrency(sc, explicit=args.concurrency is not None)
        scenario_mod.validate(sc)
    except scenario_mod.ScenarioError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    opts = runner.Options(
        out=args.out,
        name=args.name,
        plots=not args.no_plots,
        profile=args.profile,
        spin=args.spin,
        poll_s=args.poll,
        pure_python=args.pure_python,
        argv=argv,
        quiet=args.quiet,
    )
    if args.profile and (args.sweep or args.rates):
        print("bench: --profile works with single runs (not --sweep or --rates)", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"scenario {sc.name}: {sc.description}", flush=True)
    if sc.pipeline is not None:
        if args.compare or args.sweep or args.rates or args.feedback is not None:
            print(
                "bench: a pipeline scenario runs its own phases (no --compare, --rates,"
                " --sweep or --feedback)",
                file=sys.stderr,
            )
            return 2
        from bench import pipeline

        if args.rounds > 1:
            sc.pipeline.rounds = args.rounds
        pipeline.run_pipeline(sc, opts)
    elif args.feedback is not None:
        runner.run_feedback(sc, opts, args.feedback or None, pairs=1 if args.smoke else 3)
    elif args.sweep:
        sweep.run_sweep(sc, opts)
    elif args.rates:
        ramp.run_ramp(sc, opts)
    else:
        runner.run(sc, opts, compare=args.compare, rounds=args.rounds, bare=args.bare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
