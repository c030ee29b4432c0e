"""From per-request records and server samples to a report: numbers, JSON, text.

A run's summary counts the requests whose latency origin (send, or scheduled send
in open loop) falls in the measurement window ``[start + warmup, end)``:

* ``throughput_rps``: successful answers completed in the window per second;
* ``latency_ms``: p50 / p90 / p99 / p99.9 / max / mean over successful answers
  (default outputs included: they are answers, just late ones);
* ``errors``: count by kind (``http_503``, ``timeout``, ``grpc_UNAVAILABLE``...);
* ``default_rate``: share of successful answers that were the app's default output;
* ``slo_attainment``: share of *all* requests answered successfully, not with the
  default output, within the SLO (errors and defaults are misses);
* ``lag_ms`` (open loop): how late the generator sent, against the schedule;
* ``server``: CPU seconds per request of the server process and of the model
  containers, mean batch size, cache hit rate, from the server's own counters.

The timeline has one row per second (negative seconds are the warm-up).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import error_kind

#: Percentiles kept in the JSON for the latency CDF plot (enough to redraw it).
CDF_PERCENTILES = [
    *np.linspace(0, 99, 100).tolist(),
    99.5,
    99.9,
    99.95,
    99.99,
    100.0,
]


def _ms(x: float) -> float:
    return round(float(x) * 1000.0, 4)


def latency_stats(lat_s: np.ndarray[Any, Any]) -> dict[str, float | None]:
    if lat_s.size == 0:
        return {k: None for k in ("p50", "p90", "p99", "p999", "max", "mean", "min")}
    p50, p90, p99, p999 = np.percentile(lat_s, [50, 90, 99, 99.9])
    return {
        "p50": _ms(p50),
        "p90": _ms(p90),
        "p99": _ms(p99),
        "p999": _ms(p999),
        "max": _ms(lat_s.max()),
        "mean": _ms(lat_s.mean()),
        "min": _ms(lat_s.min()),
    }


def _model_series(samples: list[dict[str, Any]], model_key: str) -> list[dict[str, Any]]:
    out = []
    for s in samples:
        m = s.get("models", {}).get(model_key)
        if m is not None:
            out.append(
                {
                    "t": s["t"],
                    **m,
                    "cpu_server_s": s.get("cpu_server_s"),
                    "cpu_replicas_s": s.get("cpu_replicas_s"),
                }
            )
    return out


def _at(series: list[dict[str, Any]], t: float) -> dict[str, Any] | None:
    """The last sample taken at or before ``t`` (else the first one)."""
    best = None
    for s in series:
        if s["t"] <= t:
            best = s
        else:
            break
    return best if best is not None else (series[0] if series else None)


def _delta(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return None
    return float(b[key]) - float(a[key])


def _mean_batch(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    taken, batches = _delta(a, b, "taken"), _delta(a, b, "batches")
    if taken is None or not batches:
        return None
    return round(taken / batches, 2)


def summarize(
    rec: dict[str, Any],
    *,
    t_from: float,
    t_to: float,
    slo_s: float,
    samples: list[dict[str, Any]] | None = None,
    model_key: str | None = None,
) -> dict[str, Any]:
    t0, t1, code, default = rec["t0"], rec["t1"], rec["code"], rec["default"]
    in_window = (t0 >= t_from) & (t0 < t_to)
    lat = t1 - t0
    ok = in_window & (code == 200)
    n = int(in_window.sum())
    n_ok = int(ok.sum())
    window = max(t_to - t_from, 1e-9)
    completed = int(((t1 >= t_from) & (t1 < t_to) & (code == 200)).sum())
    errors: dict[str, int] = {}
    bad = in_window & (code != 200)
    if bad.any():
        kinds, counts = np.unique(code[bad], return_counts=True)
        for k, c in zip(kinds.tolist(), counts.tolist(), strict=True):
            errors[error_kind(int(k))] = errors.get(error_kind(int(k)), 0) + int(c)
    n_default = int((ok & default).sum())
    good = ok & ~default & (lat <= slo_s)
    ok_lat = lat[ok]
    out: dict[str, Any] = {
        "requests": n,
        "ok": n_ok,
        "errors": errors,
        "error_count": n - n_ok,
        "window_s": round(window, 3),
        "throughput_rps": round(completed / window, 1),
        "offered_rps": round(n / window, 1),
        "latency_ms": latency_stats(ok_lat),
        "default_rate": round(n_default / n_ok, 6) if n_ok else None,
        "defaults": n_default,
        "slo_ms": round(slo_s * 1000, 3),
        "slo_attainment": round(int(good.sum()) / n, 6) if n else None,
        "cdf": {
            "percentiles": [round(p, 3) for p in CDF_PERCENTILES],
            "latency_ms": [_ms(v) for v in np.percentile(ok_lat, CDF_PERCENTILES)]
            if ok_lat.size
            else [],
        },
    }
    lag = rec.get("lag")
    if lag is not None and len(lag):
        p50, p99 = np.percentile(lag, [50, 99])
        out["lag_ms"] = {"p50": _ms(p50), "p99": _ms(p99), "max": _ms(lag.max())}
    if samples and model_key:
        out["server"] = server_summary(samples, model_key, t_from, t_to, completed)
    return out


def server_summary(
    samples: list[dict[str, Any]], model_key: str, t_from: float, t_to: float, completed: int
) -> dict[str, Any]:
    series = _model_series(samples, model_key)
    a, b = _at(series, t_from), _at(series, t_to)
    window = max(t_to - t_from, 1e-9)
    out: dict[str, Any] = {"model": model_key}
    srv, rep = _delta(a, b, "cpu_server_s"), _delta(a, b, "cpu_replicas_s")
    if srv is not None:
        out["cpu_server_util"] = round(srv / window, 3)
        out["cpu_server_us_per_req"] = round(srv / completed * 1e6, 1) if completed else None
    if rep is not None:
        out["cpu_replicas_util"] = round(rep / window, 3)
        out["cpu_replicas_us_per_req"] = round(rep / completed * 1e6, 1) if completed else None
    out["mean_batch_size"] = _mean_batch(a, b)
    # Where a query's time goes: the dispatcher's round trip per batch, and the
    # model's own call inside it (the difference is gRPC and encoding).
    for key in ("batch_latency", "model_latency"):
        lat_sum, lat_n = _delta(a, b, f"{key}_sum_s"), _delta(a, b, f"{key}_count")
        if lat_sum is not None and lat_n:
            out[f"mean_{key}_ms"] = round(lat_sum / lat_n * 1000, 3)
    if b is not None and b.get("controller_mode"):
        out["controller_mode"] = b["controller_mode"]
    queries, hits = _delta(a, b, "queries"), _delta(a, b, "cache_hits")
    if queries:
        out["cache_hit_rate"] = round((hits or 0) / queries, 4)
    inside = [s["batch_size"] for s in series if t_from <= s["t"] <= t_to]
    if inside:
        out["controller_batch_size"] = {
            "median": float(np.median(inside)),
            "min": int(min(inside)),
            "max": int(max(inside)),
        }
    for key in ("expired", "rejected"):
        d = _delta(a, b, key)
        if d is not None:
            out[f"queue_{key}"] = int(d)
    return out


def timeline(
    rec: dict[str, Any],
    *,
    origin: float,
    t_end: float,
    samples: list[dict[str, Any]] | None = None,
    model_key: str | None = None,
    bucket_s: float = 1.0,
) -> list[dict[str, Any]]:
    """One row per ``bucket_s`` by completion time; ``t`` is the bucket's start in
    seconds after ``origin`` (the end of the warm-up) and ``span_s`` the part of
    the bucket that the load covered (rates are per covered second)."""
    t1, code, default = rec["t1"], rec["code"], rec["default"]
    lat = t1 - rec["t0"]
    if t1.size == 0:
        return []
    load_from = float(rec.get("start", t1.min()))
    load_to = max(float(t1.max()), float(rec.get("end", t1.max())))
    load_to = min(load_to, t_end)
    first = math.floor((load_from - origin) / bucket_s)
    last = math.ceil((load_to - origin) / bucket_s)
    idx = np.floor((t1 - origin) / bucket_s).astype(np.int64)
    series = _model_series(samples or [], model_key) if model_key else []
    rows = []
    for k in range(first, last):
        lo = origin + k * bucket_s
        span = min(lo + bucket_s, load_to) - max(lo, load_from)
        if span <= bucket_s * 0.05:
            continue
        sel = idx == k
        oks = sel & (code == 200)
        lat_ok = lat[oks]
        row: dict[str, Any] = {
            "t": round(k * bucket_s, 3),
            "span_s": round(span, 3),
            "throughput_rps": round(int(oks.sum()) / span, 1),
            "errors": round(int((sel & (code != 200)).sum()) / span, 1),
            "defaults": round(int((oks & default).sum()) / span, 1),
            "p50_ms": _ms(np.percentile(lat_ok, 50)) if lat_ok.size else None,
            "p99_ms": _ms(np.percentile(lat_ok, 99)) if lat_ok.size else None,
        }
        if series:
            a = _at(series, origin + k * bucket_s)
            b = _at(series, origin + (k + 1) * bucket_s)
            row["batch_size"] = None if b is None else b.get("batch_size")
            row["mean_batch_size"] = _mean_batch(a, b)
            row["queue_len"] = None if b is None else b.get("queue_len")
        rows.append(row)
    return rows


def controller_check(
    samples: list[dict[str, Any]],
    model_key: str,
    optimum: int,
    t_from: float,
    t_to: float,
    *,
    a_ms: float,
    b_ms: float,
    batch_slo_ms: float,
) -> dict[str, Any]:
    """The sleep scenario: settled batch size (second half of the window) vs n*.

    ``optimum_formula`` is floor((batch SLO - b) / a).  The controller sees the
    batch latency at the dispatcher, which adds gRPC and encoding time ``c`` to
    a*n + b; where the server reports batch latencies, ``c`` is estimated from the
    settled batches and ``optimum_with_overhead`` = floor((batch SLO - b - c) / a)
    tells the controller's accuracy apart from that overhead.
    """
    series = _model_series(samples, model_key)
    mid = (t_from + t_to) / 2
    late = [s["batch_size"] for s in series if mid <= s["t"] <= t_to]
    settled = float(np.median(late)) if late else None
    a, b = _at(series, mid), _at(series, t_to)
    observed = _mean_batch(a, b)
    out: dict[str, Any] = {
        "formula": f"floor(({batch_slo_ms:g} - {b_ms:g}) / {a_ms:g})",
        "optimum_formula": optimum,
        "settled_controller_batch_size": settled,
        "settled_mean_batch_size": observed,
        "controller_samples": len(late),
    }
    lat_sum, lat_n = _delta(a, b, "batch_latency_sum_s"), _delta(a, b, "batch_latency_count")
    if lat_sum is not None and lat_n and observed is not None:
        mean_lat_ms = lat_sum / lat_n * 1000
        overhead = mean_lat_ms - (a_ms * observed + b_ms)
        out["settled_mean_batch_latency_ms"] = round(mean_lat_ms, 3)
        out["overhead_ms"] = round(overhead, 3)
        m_sum, m_n = _delta(a, b, "model_latency_sum_s"), _delta(a, b, "model_latency_count")
        if m_sum is not None and m_n:
            model_ms = m_sum / m_n * 1000
            out["settled_mean_model_latency_ms"] = round(model_ms, 3)
            out["overhead_rpc_ms"] = round(mean_lat_ms - model_ms, 3)  # gRPC, encoding
            out["overhead_model_ms"] = round(model_ms - (a_ms * observed + b_ms), 3)  # sleep
        best = max(1, math.floor((batch_slo_ms - b_ms - max(overhead, 0.0)) / a_ms))
        out["optimum_with_overhead"] = best
        if settled is not None:
            out["ratio_with_overhead"] = round(settled / best, 4)
    if settled is not None:
        out["ratio"] = round(settled / optimum, 4)
        out["within_10pct"] = abs(settled - optimum) <= 0.1 * optimum
    if observed is not None:
        out["observed_ratio"] = round(observed / optimum, 4)
    return out


# -- metadata and output --------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    from clipper_core.structures import EXTENSIONS_ACTIVE

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in load],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "extensions": EXTENSIONS_ACTIVE,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def meta(argv: list[str]) -> dict[str, Any]:
    return {
        "command": "python -m bench " + " ".join(argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_commit(),
        "machine": machine(),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def format_run(name: str, s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    line = (
        f"{name:<34} {s['throughput_rps']:>9.0f} req/s  p50 {_fmt(lat['p50'])}"
        f"  p90 {_fmt(lat['p90'])}  p99 {_fmt(lat['p99'])}  p99.9 {_fmt(lat['p999'])}"
        f"  max {_fmt(lat['max'])} ms"
    )
    extra = [f"n={s['requests']}"]
    if s["error_count"]:
        extra.append("errors " + ", ".join(f"{k}={v}" for k, v in s["errors"].items()))
    if s.get("default_rate"):
        extra.append(f"default {s['default_rate']:.2%}")
    if s.get("slo_attainment") is not None:
        extra.append(f"SLO({s['slo_ms']:g} ms) {s['slo_attainment']:.2%}")
    if "lag_ms" in s:
        extra.append(f"send lag p99 {s['lag_ms']['p99']:.2f} ms")
    srv = s.get("server") or {}
    if srv.get("mean_batch_size") is not None:
        extra.append(f"batch {srv['mean_batch_size']:g}")
    if srv.get("mean_batch_latency_ms") is not None:
        model = srv.get("mean_model_latency_ms")
        extra.append(
            f"batch RPC {srv['mean_batch_latency_ms']:.2f} ms"
            + (f" (model {model:.2f})" if model is not None else "")
        )
    if srv.get("cache_hit_rate") is not None:
        extra.append(f"cache hits {srv['cache_hit_rate']:.1%}")
    if srv.get("cpu_server_us_per_req") is not None:
        extra.append(f"server CPU {srv['cpu_server_us_per_req']:.0f} us/req")
    if len(name) > 34:
        line = name + "\n" + " " * 34 + line[34:]
    return line + "\n" + " " * 36 + "  ".join(extra)
