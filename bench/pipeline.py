"""``python -m bench <pipeline scenario>``: a pipeline end to end, and the single
model beside it in the same server and the same run.

The scenario's ``[[pipeline.stages]]`` are deployed as models named
``<pipeline>-<stage>`` and registered as a pipeline through
``ClipperConnection.register_pipeline``; its ``[model]`` is deployed behind the
app ``<pipeline>-single``.  The load goes to ``POST /<pipeline>/predict`` (and
to ``/<pipeline>-single/predict``), with the same inputs:

1. latency: the pipeline, then the single model, at ``latency_concurrency``
   clients (1): end-to-end p50/p99, each stage's time, and what a hop costs the
   frontend (``bench.pipeline_figures``);
2. throughput: the pipeline and the single model alternated ``rounds`` times at
   the load's concurrency: the pipeline's rate as a fraction of the single
   model's (the median over rounds).

The report (``kind: "pipeline"``) keeps every run under ``runs`` and the figures
under ``pipeline``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import pipeline_figures
from bench.measure import Options, Target, measure
from bench.prepare import probe, start_server, target_for
from bench.scenario import Scenario
from bench.serverproc import ClipperProcess


def stage_model(pipeline: str, stage: str) -> str:
    """The model deployed for a stage."""
    return f"{pipeline}-{stage}"


def single_app(pipeline: str) -> str:
    """The app of the single-model baseline."""
    return f"{pipeline}-single"


def deploy_pipeline(srv: ClipperProcess, sc: Scenario, name: str) -> list[dict[str, Any]]:
    """Deploy each stage's model and register the pipeline; its stages."""
    import cloudpickle

    import bench.models
    from clipper_core.deployers import deploy_python_closure

    assert sc.pipeline is not None
    cloudpickle.register_pickle_by_value(bench.models)
    stages: list[dict[str, Any]] = []
    for st in sc.pipeline.stages:
        model = bench.models.build(
            st.kind, dim=st.dim or sc.model.dim, seed=st.seed, output=st.output,
            a_ms=st.a_ms, b_ms=st.b_ms,
        )  # fmt: skip
        model_name = stage_model(name, st.name)
        deploy_python_closure(
            srv.conn,
            model_name,
            1,
            st.input_type or sc.model.input_type,
            model,
            num_replicas=st.num_replicas,
            batch_size=st.batch_size,
            batch_wait_micros=st.batch_wait_micros,
            cache_enabled=False,  # each query crosses every stage
        )
        stage: dict[str, Any] = {"name": st.name, "model": model_name}
        if st.output_type is not None:
            stage["output_type"] = st.output_type
        stages.append(stage)
    srv.conn.register_pipeline(
        name,
        stages,
        [dict(e) for e in sc.pipeline.edges],
        round(sc.app.slo_ms * 1000),
        sc.app.default_output,
        input_type=sc.model.input_type,
    )
    srv.replica_pids()
    return stages


def run_pipeline(sc: Scenario, opts: Options) -> dict[str, Any]:
    """Both phases (see the module's docstring) against one server; the report."""
    from bench import runner

    assert sc.pipeline is not None
    p, ld = sc.pipeline, sc.load
    name = opts.name or f"{sc.name}-{ld.protocol}-c{ld.concurrency}"
    opts.profile_name = name
    data = runner.base_report("pipeline", sc, opts)
    timings = data["timings_s"] = {}
    t = time.monotonic()
    srv = start_server(sc, opts, name)
    try:
        timings["server_start"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        stages = deploy_pipeline(srv, sc, sc.name)
        srv.deploy(sc, single_app(sc.name))
        timings["deploy"] = round(time.monotonic() - t, 2)
        target, reqs = target_for(sc, srv, sc.name)
        # The entry stage's model: the run's server summary (CPU, batch size).
        target = Target(target.host, target.port, target.protocol, sc.name, stages[0]["model"])
        single, single_reqs = target_for(sc, srv, single_app(sc.name))
        probe(target, reqs[0])
        probe(single, single_reqs[0])

        def figures(samples: list[dict[str, Any]], t_from: float, t_to: float) -> dict[str, Any]:
            return pipeline_figures.stage_figures(samples, sc.name, t_from, t_to)

        def one(label: str, concurrency: int | None = None) -> dict[str, Any]:
            # --profile: one profile per run, named after it.
            opts.profile_name = f"{name}-{label.replace(' ', '').replace('#', '-')}"
            if label.startswith("pipeline"):
                return measure(
                    sc, target, reqs, opts, server=srv, concurrency=concurrency,
                    label=label, figures=figures,
                )  # fmt: skip
            return measure(
                sc, single, single_reqs, opts, server=srv, concurrency=concurrency, label=label
            )

        t = time.monotonic()
        lc = p.latency_concurrency
        lat_pipe = one(f"pipeline c={lc}", lc)
        lat_single = one(f"single c={lc}", lc)
        data["runs"] += [lat_pipe, lat_single]
        rounds = []
        for i in range(p.rounds):
            suffix = f" #{i + 1}" if p.rounds > 1 else ""
            pipe_run = one(f"pipeline c={ld.concurrency}{suffix}")
            single_run = one(f"single c={ld.concurrency}{suffix}")
            data["runs"] += [pipe_run, single_run]
            rounds.append((pipe_run, single_run))
        timings["load"] = round(time.monotonic() - t, 2)
        data["server_log_tail"] = srv.log_tail(10)
    finally:
        t = time.monotonic()
        srv.stop()
        timings["teardown"] = round(time.monotonic() - t, 2)
    data["pipeline"] = summarize(lat_pipe, lat_single, rounds)
    if not opts.quiet:
        print(format_summary(data["pipeline"], lat_pipe.get("figures")), flush=True)
    return runner.finish_report(data, name, opts, sc)


def _mean_ms(run: dict[str, Any]) -> float | None:
    mean = run["summary"]["latency_ms"].get("mean")
    return None if mean is None else float(mean)


def summarize(
    lat_pipe: dict[str, Any],
    lat_single: dict[str, Any],
    rounds: list[tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, Any]:
    """The report's ``pipeline`` section: the latency phase's figures and hop
    costs; the throughput phase's rates and the median fraction."""
    s = lat_pipe["summary"]
    latency: dict[str, Any] = {
        "concurrency": lat_pipe["load"]["concurrency"],
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "single_p50_ms": lat_single["summary"]["latency_ms"]["p50"],
        "single_p99_ms": lat_single["summary"]["latency_ms"]["p99"],
    }
    figures = lat_pipe.get("figures")
    e2e, single_e2e = _mean_ms(lat_pipe), _mean_ms(lat_single)
    single_rt = (lat_single["summary"].get("server") or {}).get("mean_batch_latency_ms")
    if figures is not None and e2e is not None:
        single = None if single_e2e is None or single_rt is None else (single_e2e, single_rt)
        latency.update(pipeline_figures.hop_overhead(figures, e2e, single))
        latency["stages"] = figures["stages"]
        latency["edges"] = figures["edges"]
        latency["cpu_server_us_per_query"] = figures["cpu_server_us_per_query"]
    per_round = []
    for pipe_run, single_run in rounds:
        ours, base = pipe_run["summary"], single_run["summary"]
        per_round.append(
            {
                "pipeline_rps": ours["throughput_rps"],
                "single_rps": base["throughput_rps"],
                "fraction": round(ours["throughput_rps"] / base["throughput_rps"], 4)
                if base["throughput_rps"]
                else None,
                "pipeline_p50_ms": ours["latency_ms"]["p50"],
                "pipeline_p99_ms": ours["latency_ms"]["p99"],
                "stages": (pipe_run.get("figures") or {}).get("stages"),
            }
        )
    fractions = [r["fraction"] for r in per_round if r["fraction"] is not None]
    throughput = {
        "concurrency": rounds[0][0]["load"]["concurrency"] if rounds else None,
        "pipeline_rps": statistics.median(r["pipeline_rps"] for r in per_round),
        "single_rps": statistics.median(r["single_rps"] for r in per_round),
        "fraction_of_single": round(statistics.median(fractions), 4) if fractions else None,
        "rounds": per_round,
    }
    return {"latency": latency, "throughput": throughput}


def format_summary(summary: dict[str, Any], figures: dict[str, Any] | None) -> str:
    lat, thr = summary["latency"], summary["throughput"]
    lines = [
        f"pipeline at {lat['concurrency']} client(s): p50 {lat['p50_ms']} ms, p99"
        f" {lat['p99_ms']} ms (single model: p50 {lat['single_p50_ms']} ms)",
    ]
    if figures is not None:
        lines.append(pipeline_figures.format_stages(figures))
    if "hops" in lat:
        lines.append(
            f"  {lat['hops']} hops/query; frontend overhead per hop: {lat['hop_overhead_us']} us"
            f" ({lat['hop_overhead_with_transport_us']} us with the container transport;"
            f" {lat['marginal_hop_overhead_us']} us per hop beyond the single model's)"
        )
    frac = thr["fraction_of_single"]
    lines.append(
        f"pipeline at {thr['concurrency']} clients: {thr['pipeline_rps']:,.0f} req/s ="
        f" {'-' if frac is None else f'{frac:.1%}'} of the single model's"
        f" {thr['single_rps']:,.0f} req/s"
    )
    return "\n".join(lines)
