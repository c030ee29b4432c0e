"""One load run: the options every run takes, the target it loads, the worker
processes' specs, and ``measure`` (load once, sample the server, summarise)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import load, payloads, profiles, report
from bench.scenario import Scenario, batch_slo_share
from bench.serverproc import ClipperProcess, Poller


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


def load_end(rec: dict[str, Any], origin: float, t_to: float) -> float:
    """The end of the measured window for a load with a request cap: the last
    completion when it came before ``t_to`` (at least a little after ``origin``,
    so that a cap spent in warm-up shows as no requests, not a division by 0)."""
    t1 = np.asarray(rec["t1"], dtype=float)
    finite = t1[np.isfinite(t1)]
    if finite.size == 0:
        return t_to
    return max(min(t_to, float(finite.max())), origin + 1e-3)


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
            "grpc_client": ld.grpc_client,
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
    figures: Callable[[list[dict[str, Any]], float, float], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the load once (worker processes), return summary, timeline, workers.

    ``figures(samples, t_from, t_to)``, when given, reads more from the server's
    samples over the measured window: its answer is the run's ``"figures"``."""
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
    if sc.load.max_requests:
        # A request cap may end the load before the window does: the rates are
        # over the time the load ran, not the whole window (20x too low before).
        t_to = load_end(rec, origin, t_to)
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
    if figures is not None and samples:
        out["figures"] = figures(samples, origin, t_to)
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
