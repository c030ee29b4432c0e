"""``python -m bench noop --feedback``: does ``/update`` at the query rate slow
``/predict``?

One server, one app with a learning policy (``exp3`` by default) over two copies
of the scenario's model.  Two runs of the same predict load (open loop by
default, at the scenario's rate): first alone, then with ``POST /<app>/update``
for the same inputs at ``--feedback RATE`` (default: the query rate: the open
loop's rate, or what the closed loop reached alone) from their own load worker.
The report gives the predict path's latency in both, the ratio of the p99s, and
the update path's own figures.  Each update's label
is the input moved by 0.05 (the noop model echoes its input, so every model
loses 0.05: a real loss, computed, learned and stored).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from bench import load, payloads, report
from bench.measure import Options, Target, worker_specs
from bench.prepare import probe, start_server, target_for
from bench.scenario import Scenario
from bench.serverproc import ClipperProcess, cpu_seconds

#: The p99 of /predict with feedback may be this much above the one without.
P99_TOLERANCE = 0.10


def update_payloads(sc: Scenario, target: Target) -> list[bytes]:
    """One ``/update`` request per input vector of the scenario."""
    vectors = payloads.make_vectors(
        sc.model.input_type, sc.model.dim, sc.inputs.distinct, sc.inputs.seed
    )
    out = []
    for vec in vectors:
        values = payloads._json_values(vec)
        label = [round(float(v) + 0.05, 4) for v in values]
        body = orjson.dumps({"uid": 0, "input": values, "label": label})
        out.append(
            payloads.http_request(
                "POST",
                f"/{target.app}/update",
                f"{target.host}:{target.port}",
                body,
                {"Content-Type": "application/json"},
            )
        )
    return out


def deploy_learning_app(
    srv: ClipperProcess, sc: Scenario, app: str, policy: str, config: dict[str, Any]
) -> None:
    """The scenario's app and model, a second copy of the model, and ``policy``."""
    import cloudpickle

    import bench.models
    from clipper_core.deployers import deploy_python_closure

    srv.deploy(sc, app)
    m = sc.model
    second = f"{srv.model_name(app)}-b"
    model = bench.models.build(
        m.kind, dim=m.dim, seed=m.seed, output=m.output, a_ms=m.a_ms, b_ms=m.b_ms
    )
    cloudpickle.register_pickle_by_value(bench.models)
    deploy_python_closure(
        srv.conn,
        second,
        1,
        m.input_type,
        model,
        num_replicas=m.num_replicas,
        batch_size=m.batch_size,
        cache_enabled=m.cache_enabled,
        batch_wait_micros=m.batch_wait_micros,
    )
    srv.conn.link_model_to_app(app, second)
    srv.conn.set_selection_policy(app, policy, config)
    srv.replica_pids()


def _specs(
    sc: Scenario, target: Target, reqs: list[bytes], opts: Options, rate: float
) -> list[dict[str, Any]]:
    ld = sc.load
    return worker_specs(
        sc,
        target,
        reqs,
        mode=ld.mode,
        rate=rate,
        concurrency=ld.concurrency,
        duration_s=ld.duration_s,
        warmup_s=ld.warmup_s,
        spin=opts.spin_enabled(),
    )


def _summary(sc: Scenario, results: list[dict[str, Any]]) -> dict[str, Any]:
    rec = load.merge(results)
    origin = rec["start"] + sc.load.warmup_s
    s = report.summarize(rec, t_from=origin, t_to=origin + sc.load.duration_s, slo_s=sc.slo_s)
    s.pop("cdf", None)
    s["workers"] = rec["workers"]
    return s


def _timed(srv: ClipperProcess, run: Any) -> tuple[list[dict[str, Any]], float | None]:
    """``run()``'s results, and the server's CPU seconds meanwhile."""
    cpu0 = cpu_seconds(srv.pid)
    results = run()
    cpu1 = cpu_seconds(srv.pid)
    return results, (None if cpu0 is None or cpu1 is None else cpu1 - cpu0)


def _cpu_us(cpu_s: float | None, requests: int) -> float | None:
    return None if cpu_s is None or not requests else round(cpu_s / requests * 1e6, 1)


def measure_feedback(
    sc: Scenario,
    srv: ClipperProcess,
    target: Target,
    reqs: list[bytes],
    updates: list[bytes],
    opts: Options,
    feedback_rate: float | None,
    *,
    pairs: int = 3,
) -> dict[str, Any]:
    """``pairs`` times: predict alone, then predict with updates.  Each pair's
    summaries and p99 ratio, the median ratio, and the server's CPU per request.

    Interleaved pairs, and the median of their ratios, because a p99 moves with
    whatever else the machine runs.  ``feedback_rate`` None: the predict rate
    (open loop), or the throughput the predict load reached alone (closed loop).
    The profile (``--profile``) covers the last window with feedback."""
    timeout = sc.load.warmup_s + sc.load.duration_s + sc.load.timeout_s + 120
    upd = sc.copy()
    upd.load.mode = "open"
    upd.load.workers = 1
    upd.load.seed += 7
    rows: list[dict[str, Any]] = []
    profile_files: list[str] = []
    for i in range(pairs):
        results, cpu_alone = _timed(
            srv,
            lambda: load.run_workers(_specs(sc, target, reqs, opts, sc.load.rate), timeout=timeout),
        )
        alone = _summary(sc, results)
        if feedback_rate is None:
            closed = sc.load.mode == "closed"
            feedback_rate = float(alone["throughput_rps"]) if closed else sc.load.rate
        srv.wait_idle()
        predict_specs = _specs(sc, target, reqs, opts, sc.load.rate)
        update_specs = _specs(upd, target, updates, opts, feedback_rate)
        profiler = None
        if opts.profile and i == pairs - 1:
            from bench import profiles

            profiler = profiles.WindowProfiler(opts.profile, srv.pid, opts.out / opts.profile_name)

        def on_start(start_at: float, profiler: Any = profiler) -> None:
            if profiler is not None:
                profiler.schedule(start_at + sc.load.warmup_s, sc.load.duration_s)

        both = predict_specs + update_specs
        try:
            results, cpu_with = _timed(
                srv,
                lambda both=both, on_start=on_start: load.run_workers(
                    both, timeout=timeout, on_start=on_start
                ),
            )
        finally:
            if profiler is not None:
                profile_files = profiler.finish()
        with_fb = _summary(sc, results[: len(predict_specs)])
        fb = _summary(sc, results[len(predict_specs) :])
        srv.wait_idle()
        p99_alone, p99_with = alone["latency_ms"]["p99"], with_fb["latency_ms"]["p99"]
        n_alone = sum(w["sent"] for w in alone["workers"])
        n_pred = sum(w["sent"] for w in with_fb["workers"])
        n_upd = sum(w["sent"] for w in fb["workers"])
        rows.append(
            {
                "predict_alone": alone,
                "predict_with_feedback": with_fb,
                "updates": fb,
                "p99_ratio": round(p99_with / p99_alone, 3) if p99_alone and p99_with else None,
                # Server CPU per predict alone, and what an update adds on top.
                "cpu_us_per_predict": _cpu_us(cpu_alone, n_alone),
                "cpu_us_per_update": None
                if cpu_alone is None or cpu_with is None or not n_alone
                else _cpu_us(cpu_with - cpu_alone * n_pred / n_alone, n_upd),
            }
        )
    ratios = sorted(r["p99_ratio"] for r in rows if r["p99_ratio"] is not None)
    median = ratios[len(ratios) // 2] if ratios else None
    return {
        "pairs": rows,
        "feedback_rate": feedback_rate,
        "p99_ratio_median": median,
        "p99_within_tolerance": None if median is None else median <= 1.0 + P99_TOLERANCE,
        "tolerance": P99_TOLERANCE,
        "profile": [str(p) for p in profile_files],
    }


def run_feedback(
    sc: Scenario,
    opts: Options,
    *,
    feedback_rate: float | None,
    pairs: int = 3,
    policy: str = "exp3",
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run: server up, app deployed, both measurements, server down."""
    config = {"eta": 0.05, "seed": 1} if config is None else config
    app = sc.name
    data: dict[str, Any] = {"kind": "feedback", "scenario": sc.to_dict(), "meta": {}}
    data["meta"] = report.meta(opts.argv)
    srv = start_server(sc, opts, opts.profile_name)
    try:
        t = time.monotonic()
        deploy_learning_app(srv, sc, app, policy, config)
        target, reqs = target_for(sc, srv, app)
        updates = update_payloads(sc, target)
        probe(target, reqs[0])
        probe(target, updates[0])
        data["deploy_s"] = round(time.monotonic() - t, 2)
        data["policy"] = {"name": policy, "config": config}
        data["feedback"] = measure_feedback(
            sc, srv, target, reqs, updates, opts, feedback_rate, pairs=pairs
        )
        state = srv.conn.get_selection_state(app)
        data["selection_state"] = {
            k: state.get(k) for k in ("updates", "feedback_cache_hits", "feedback_computed")
        }
        data["server_log_tail"] = srv.log_tail(10)
    finally:
        srv.stop()
    if opts.profile == "cprofile":
        from bench import profiles

        txt = profiles.pstats_summary(opts.out / f"{opts.profile_name}-server.prof")
        if txt is not None:
            data["feedback"]["profile"] = [str(txt)]
    if not opts.quiet:
        for p in data["feedback"]["profile"]:
            print(f"profile: {p}")
        print(format_feedback(data["feedback"]), flush=True)
    return data


def format_feedback(fb: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any]) -> str:
        lat = s["latency_ms"]
        return (
            f"  {name:<22} {s['throughput_rps']:>8.1f}/s  p50 {lat['p50']:.2f} ms"
            f"  p99 {lat['p99']:.2f} ms  errors {s['error_count']}"
        )

    lines = []
    for i, pair in enumerate(fb["pairs"], 1):
        lines += [
            f" pair {i}: server CPU {pair['cpu_us_per_predict']} us/predict,"
            f" {pair['cpu_us_per_update']} us/update",
            row("predict alone", pair["predict_alone"]),
            row("predict with /update", pair["predict_with_feedback"]),
            row(f"/update ({fb['feedback_rate']:g}/s)", pair["updates"]),
            f"  p99 ratio {pair['p99_ratio']}",
        ]
    verdict = "within" if fb["p99_within_tolerance"] else "NOT within"
    lines.append(
        f"predict p99 with feedback / without, median of {len(fb['pairs'])}:"
        f" {fb['p99_ratio_median']} ({verdict} {fb['tolerance']:.0%})"
    )
    return "\n".join(lines)
