"""What ``python -m bench`` runs: a scenario once, against a bare server
(``--compare``), up a ladder of rates (``--rates``), or over a grid of static
batching configurations (``--sweep``).  Each starts its own server, deploys the
scenario's model, and tears everything down at the end.
"""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load, payloads, profiles, report, targets
from bench.scenario import Scenario, batch_slo_share
from bench.serverproc import BareProcess, ClipperProcess, Poller


@dataclass
class Options:
    out: Path = Path("build/bench")
    name: str | None = None
    plots: bool = True
    profile: str | None = None  # "cprofile" | "py-spy"
    spin: bool | None = None  # None: spin when the machine has >= 4 CPUs
    poll_s: float = 0.5
    pure_python: bool = False
    argv: list[str] = field(default_factory=list)
    quiet: bool = False
    profile_name: str = "bench"  # file prefix of the profiles (the report's name)

    def spin_enabled(self) -> bool:
        return self.spin if self.spin is not None else (os.cpu_count() or 1) >= 4


@dataclass
class Target:
    host: str
    port: int
    protocol: str
    app: str
    model: str


# -- one load run ---------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def worker_specs(
    sc: Scenario,
    target: Target,
    request_bytes: list[bytes],
    *,
    mode: str,
    rate: float,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    spin: bool,
) -> list[dict[str, Any]]:
    ld = sc.load
    workers = max(1, ld.workers if mode != "closed" else min(ld.workers, concurrency))
    conc = _split(concurrency, workers)
    per_worker_max = math.ceil(ld.max_requests / workers) if ld.max_requests else 0
    horizon = warmup_s + duration_s
    specs = []
    for w in range(workers):
        seed = ld.seed + 1009 * w
        spec: dict[str, Any] = {
            "protocol": target.protocol,
            "host": target.host,
            "port": target.port,
            "mode": mode,
            "concurrency": conc[w],
            "payloads": request_bytes,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "max_requests": per_worker_max,
            "timeout_s": ld.timeout_s,
            "max_connections": max(1, ld.max_connections // workers),
            "grpc_channels": ld.grpc_channels,
            "grpc_method": payloads.GRPC_MODEL_INFER,
            "spin": spin,
        }
        if mode == "closed":
            count = 1 << 16
        else:
            r = rate / workers
            sched = load.arrival_times(mode, r, horizon, burst_size=ld.burst_size, seed=seed)
            spec["schedule"] = sched
            count = max(1, len(sched))
            initial = max(8, math.ceil(r * sc.slo_s * 1.5) + 4)
            if mode == "burst":
                initial = max(initial, ld.burst_size + 4)
            spec["initial_connections"] = min(initial, spec["max_connections"])
        spec["order"] = load.payload_order(
            sc.inputs.distribution,
            len(request_bytes),
            count,
            zipf_s=sc.inputs.zipf_s,
            seed=sc.inputs.seed + 7919 * (w + 1),
        )
        specs.append(spec)
    return specs


def measure(
    sc: Scenario,
    target: Target,
    request_bytes: list[bytes],
    opts: Options,
    *,
    server: ClipperProcess | None = None,
    mode: str | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    duration_s: float | None = None,
    warmup_s: float | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Run the load once (worker processes), return summary, timeline, workers."""
    ld = sc.load
    mode = mode or ld.mode
    rate = rate if rate is not None else ld.rate
    concurrency = concurrency or ld.concurrency
    duration_s = duration_s if duration_s is not None else ld.duration_s
    warmup_s = warmup_s if warmup_s is not None else ld.warmup_s
    specs = worker_specs(
        sc,
        target,
        request_bytes,
        mode=mode,
        rate=rate,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        spin=opts.spin_enabled(),
    )
    model_key = f"{target.model}:1"
    timeout = warmup_s + duration_s + ld.timeout_s + 120
    bucket_s = 1.0 if duration_s >= 8 else 0.25
    poll_s = min(opts.poll_s, bucket_s)
    poller = Poller(server, poll_s) if server is not None else None
    profiler = None
    if opts.profile and server is not None:
        profiler = profiles.WindowProfiler(opts.profile, server.pid, opts.out / opts.profile_name)

    def on_start(start_at: float) -> None:
        if profiler is not None:
            profiler.schedule(start_at + warmup_s, duration_s)

    if poller is not None:
        poller.__enter__()
    try:
        results = load.run_workers(specs, timeout=timeout, on_start=on_start)
    finally:
        if poller is not None:
            poller.__exit__(None, None, None)
        profile_files = profiler.finish() if profiler is not None else []
    rec = load.merge(results)
    samples = poller.samples if poller is not None else []
    origin = rec["start"] + warmup_s
    t_to = rec["start"] + warmup_s + duration_s
    summary = report.summarize(
        rec,
        t_from=origin,
        t_to=t_to,
        slo_s=sc.slo_s,
        samples=samples,
        model_key=model_key if server is not None else None,
    )
    out: dict[str, Any] = {
        "label": label or target.protocol,
        "target": "clipper_core" if server is not None else "bare",
        "protocol": target.protocol,
        "mode": mode,
        "load": {
            "concurrency": concurrency if mode == "closed" else None,
            "rate": rate if mode != "closed" else None,
            "burst_size": ld.burst_size if mode == "burst" else None,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "max_requests": ld.max_requests or None,
            "workers": len(specs),
            "spin": opts.spin_enabled(),
        },
        "summary": summary,
        "timeline": report.timeline(
            rec,
            origin=origin,
            t_end=t_to,
            samples=samples,
            model_key=model_key if server is not None else None,
            bucket_s=bucket_s,
        ),
        "workers": rec["workers"],
    }
    if profile_files:
        out["profile"] = profile_files
    busy = [w for w in rec["workers"] if w["cpu_util"] > 0.9]
    if busy:
        out["warnings"] = [
            f"load worker {w['pid']} used {w['cpu_util']:.0%} of a CPU: the generator may be"
            " the bottleneck (add --workers)"
            for w in busy
        ]
    optimum = sc.optimum_batch_size()
    if optimum is not None and server is not None:
        out["controller"] = report.controller_check(
            samples,
            model_key,
            optimum,
            origin,
            t_to,
            a_ms=sc.model.a_ms,
            b_ms=sc.model.b_ms,
            batch_slo_ms=sc.app.slo_ms * batch_slo_share(),
        )
        if not opts.quiet:
            c = out["controller"]
            print(
                f"  controller: settled batch size {c['settled_controller_batch_size']}"
                f" (mean observed {c['settled_mean_batch_size']}) vs formula"
                f" {c['formula']} = {optimum}: ratio {c.get('ratio')}"
                + (
                    f"; with the measured {c['overhead_ms']:.2f} ms overhead per batch the"
                    f" optimum is {c['optimum_with_overhead']}:"
                    f" ratio {c.get('ratio_with_overhead')}"
                    if "overhead_ms" in c
                    else ""
                ),
                flush=True,
            )
    if not opts.quiet:
        print(report.format_run(out["label"], summary), flush=True)
        for w in out.get("warnings", []):
            print("  warning: " + w, flush=True)
    return out


# -- setting up ----------------------------------------------------------------------


def _probe_http(host: str, port: int, data: bytes) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        conn = await load.http_connect(host, port)
        try:
            return await load.http_exchange(conn, data, wait_s=60)
        finally:
            conn.close()

    import uvloop

    return uvloop.run(go())


def _probe_grpc(host: str, port: int, data: bytes) -> bytes:
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        method = ch.unary_unary(payloads.GRPC_MODEL_INFER)
        return bytes(method(data, timeout=60))


def probe(target: Target, data: bytes) -> bytes:
    """Send one request; fail loudly unless it succeeds; return the reply body."""
    if target.protocol == "oip-grpc":
        return _probe_grpc(target.host, target.port, data)
    status, body = _probe_http(target.host, target.port, data)
    if status != 200:
        raise RuntimeError(
            f"{target.protocol} probe answered {status}: {body[:500]!r}"
            + (
                " (is the OIP frontend installed in this tree?)"
                if target.protocol.startswith("oip") and status == 404
                else ""
            )
        )
    return body


def _check_oip_http(srv: ClipperProcess) -> None:
    url = f"http://{srv.host}:{srv.query_port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            if resp.status == 200:
                return
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise RuntimeError(
                "OIP HTTP is not available: GET /v2/health/ready answered 404 (the OIP"
                " frontend has not landed in this tree yet)"
            ) from None
        raise


def start_server(sc: Scenario, opts: Options, name: str) -> ClipperProcess:
    env = dict(sc.server.env)
    if opts.pure_python:
        env["CLIPPER_NO_EXTENSIONS"] = "1"
    profile = opts.out / f"{name}-server.prof" if opts.profile == "cprofile" else None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
    srv = ClipperProcess(
        grpc=sc.load.protocol == "oip-grpc",
        profile=profile,
        env=env,
        admission=sc.server.admission,
        extra_args=sc.server.args,
    )
    try:
        srv.start()
    except BaseException:
        srv.stop()
        raise
    return srv


def target_for(sc: Scenario, srv: ClipperProcess, app: str) -> tuple[Target, list[bytes]]:
    protocol = sc.load.protocol
    if protocol == "oip-grpc":
        assert srv.grpc_port is not None
        port = srv.grpc_port
    else:
        port = srv.query_port
        if protocol.startswith("oip"):
            _check_oip_http(srv)
    target = Target(srv.host, port, protocol, app, srv.model_name(app))
    vectors = payloads.make_vectors(
        sc.model.input_type, sc.model.dim, sc.inputs.distinct, sc.inputs.seed
    )
    data = payloads.build_payloads(
        protocol,
        host=srv.host,
        port=port,
        app=app,
        model=app,  # OIP: /v2/models/<app>/infer, the app (SLO, default output)
        input_type=sc.model.input_type,
        vectors=vectors,
        shape=sc.load.oip_shape,
    )
    return target, data


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


def run(sc: Scenario, opts: Options, *, compare: bool = False) -> dict[str, Any]:
    """The scenario once (and the bare server under the same load with ``--compare``)."""
    kind = "compare" if compare else "run"
    name = opts.name or default_name(sc, kind)
    opts.profile_name = name
    data = _base_report(kind, sc, opts)
    timings = data["timings_s"] = {}
    t = time.monotonic()
    srv = start_server(sc, opts, name)
    try:
        timings["server_start"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        srv.deploy(sc, sc.name)
        timings["deploy"] = round(time.monotonic() - t, 2)
        target, reqs = target_for(sc, srv, sc.name)
        reply = probe(target, reqs[0])
        t = time.monotonic()
        data["runs"].append(measure(sc, target, reqs, opts, server=srv, label="clipper_core"))
        timings["load"] = round(time.monotonic() - t, 2)
        data["server_log_tail"] = srv.log_tail(10)
    finally:
        t = time.monotonic()
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
        grpc = sc.load.protocol == "oip-grpc"
        ctype = (
            "application/octet-stream" if sc.load.protocol == "oip-binary" else ("application/json")
        )
        with BareProcess("grpc" if grpc else "http", reply, content_type=ctype) as bare:
            bare_target = Target("127.0.0.1", bare.port, sc.load.protocol, sc.name, sc.name)
            label = "bare grpc.aio" if grpc else "bare uvloop"
            data["runs"].append(measure(sc, bare_target, reqs, opts, label=label))
        ours, floor = data["runs"][0]["summary"], data["runs"][1]["summary"]
        frac = ours["throughput_rps"] / floor["throughput_rps"] if floor["throughput_rps"] else None
        data["comparison"] = {
            "throughput_fraction_of_bare": None if frac is None else round(frac, 4),
            "p50_ms": [ours["latency_ms"]["p50"], floor["latency_ms"]["p50"]],
            "p99_ms": [ours["latency_ms"]["p99"], floor["latency_ms"]["p99"]],
        }
        if not opts.quiet and frac is not None:
            print(f"clipper_core throughput = {frac:.1%} of the bare server's")
    return _finish(data, name, opts, sc)


def _ramp_rates(sc: Scenario) -> list[float] | None:
    return [float(r) for r in sc.ramp.rates] or None


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
    rp = sc.ramp
    mode = sc.load.mode if sc.load.mode != "closed" else "open"
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> bool:
        r = measure(
            sc,
            target,
            reqs,
            opts,
            server=srv,
            mode=mode,
            rate=rate,
            duration_s=rp.step_duration_s,
            warmup_s=rp.step_warmup_s,
            label=f"{label}{rate:g} req/s",
        )
        r.pop("timeline", None)
        att = r["summary"]["slo_attainment"] or 0.0
        steps.append({"rate": rate, "passed": att >= rp.attainment, **r})
        srv.wait_idle()
        return att >= rp.attainment

    explicit = _ramp_rates(sc)
    if explicit is not None:
        for rate in explicit:
            step(rate)
    else:
        rate, last_pass, first_fail = rp.start, None, None
        while rate <= rp.max_rate:
            if step(rate):
                last_pass = rate
                rate = rate * rp.factor
            else:
                first_fail = rate
                break
        # The start was already too fast: come down until a rate passes.
        floor = rp.start / rp.factor**6
        while last_pass is None and first_fail is not None and first_fail / rp.factor >= floor:
            rate = round(first_fail / rp.factor, 1)
            if step(rate):
                last_pass = rate
            else:
                first_fail = rate
        if last_pass is not None and first_fail is not None:
            lo, hi = last_pass, first_fail
            for _ in range(rp.refine):
                mid = round((lo + hi) / 2, 1)
                if step(mid):
                    lo = mid
                else:
                    hi = mid
    passed = [s["rate"] for s in steps if s["passed"]]
    return {
        "mode": mode,
        "attainment": rp.attainment,
        "best_rate": max(passed) if passed else None,
        "steps": sorted(steps, key=lambda s: s["rate"]),
    }


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
    """Static (batch size, wait) grid, each with a rate ramp; plus the adaptive
    controller at each wait, for comparison."""
    name = opts.name or default_name(sc, "sweep")
    data = _base_report("sweep", sc, opts)
    waits = sc.sweep.batch_wait_micros
    # A batch of one is full at once: no wait applies, so it runs once.
    grid = [(b, w) for w in waits for b in sc.sweep.batch_sizes if b != 1 or w == min(waits)]
    if sc.sweep.adaptive:
        grid += [(-1, w) for w in sc.sweep.batch_wait_micros]
    configs: list[dict[str, Any]] = []
    srv = start_server(sc, opts, name)
    try:
        for i, (bs, wait) in enumerate(grid):
            cfg = sc.copy()
            cfg.model.batch_size = bs
            cfg.model.batch_wait_micros = wait
            app = f"{sc.name}-sweep{i}"
            what = f"batch {'adaptive' if bs <= 0 else bs}, wait {wait} us"
            if not opts.quiet:
                print(f"-- {what}", flush=True)
            t0 = time.monotonic()
            srv.deploy(cfg, app)
            try:
                target, reqs = target_for(cfg, srv, app)
                probe(target, reqs[0])
                result = ramp(cfg, opts, srv, target, reqs, label=f"{what}: ")
            finally:
                srv.undeploy(app)
            configs.append(
                {
                    "batch_size": bs,
                    "batch_wait_micros": wait,
                    "best_rate": result["best_rate"],
                    "seconds": round(time.monotonic() - t0, 1),
                    "ramp": result,
                }
            )
    finally:
        srv.stop()
    static = [c for c in configs if c["batch_size"] > 0 and c["best_rate"] is not None]
    adaptive = [c for c in configs if c["batch_size"] <= 0 and c["best_rate"] is not None]
    best_static = max(static, key=lambda c: c["best_rate"]) if static else None
    best_adaptive = max(adaptive, key=lambda c: c["best_rate"]) if adaptive else None
    summary: dict[str, Any] = {
        "best_static": None
        if best_static is None
        else {k: best_static[k] for k in ("batch_size", "batch_wait_micros", "best_rate")},
        "adaptive": None
        if best_adaptive is None
        else {k: best_adaptive[k] for k in ("batch_size", "batch_wait_micros", "best_rate")},
    }
    if best_static and best_adaptive:
        summary["adaptive_over_best_static"] = round(
            best_adaptive["best_rate"] / best_static["best_rate"], 4
        )
    data["sweep"] = {"configs": configs, "summary": summary}
    if not opts.quiet:
        print("sweep:", summary)
    return _finish(data, name, opts, sc)


def replot(path: Path, out: Path | None = None) -> list[str]:
    import json

    data = json.loads(path.read_text())
    return draw(data, out or path.parent, path.stem)
