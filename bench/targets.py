"""The performance targets a scenario names (``[[targets]]``), checked against a
report.  Informational: a run never fails on them; the report says, for each
target that applies to the run, the measured value and whether it was met.

    [[targets]]
    name = "noop: 32 clients, Clipper REST"
    when = { kind = "compare", protocol = "rest", mode = "closed", concurrency = 32 }
    throughput_rps_min = 10000
    fraction_of_bare_min = 0.15
    p99_ms_max = 10
"""

from __future__ import annotations

from typing import Any


def _context(report: dict[str, Any]) -> dict[str, Any]:
    load = report["scenario"]["load"]
    return {
        "kind": report["kind"],
        "protocol": load["protocol"],
        "mode": load["mode"],
        "concurrency": load["concurrency"],
    }


def _measured(report: dict[str, Any], key: str) -> float | None:
    runs = report.get("runs") or []
    main = runs[0]["summary"] if runs else {}
    lat = main.get("latency_ms", {})
    # With --compare the headline is the median over the rounds: so is the verdict
    # (it read round 1 alone).
    comparison = report.get("comparison") or {}
    if key == "throughput_rps_min":
        return comparison.get("ours_rps_median", main.get("throughput_rps"))
    if key == "fraction_of_bare_min":
        return comparison.get("throughput_fraction_of_bare")
    if key == "p50_ms_max":
        return (comparison.get("p50_ms") or [lat.get("p50")])[0]
    if key == "p99_ms_max":
        return (comparison.get("p99_ms") or [lat.get("p99")])[0]
    if key == "best_rate_min":
        return (report.get("ramp") or {}).get("best_rate")
    if key == "adaptive_over_best_static_min":
        return ((report.get("sweep") or {}).get("summary") or {}).get("adaptive_over_best_static")
    if key == "every_adaptive_over_best_static_min":
        modes = ((report.get("sweep") or {}).get("summary") or {}).get("adaptive_modes") or {}
        ratios = [m.get("over_best_static") for m in modes.values()]
        return None if not ratios or None in ratios else min(ratios)
    if key == "hop_overhead_us_max":
        return ((report.get("pipeline") or {}).get("latency") or {}).get("hop_overhead_us")
    if key == "fraction_of_single_min":
        return ((report.get("pipeline") or {}).get("throughput") or {}).get("fraction_of_single")
    if key == "controller_ratio_tolerance":
        ratio = (runs[0].get("controller") or {}).get("ratio") if runs else None
        return None if ratio is None else abs(ratio - 1.0)
    raise KeyError(key)


def evaluate(report: dict[str, Any], targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per applicable target: each bound, the measured value, met or not."""
    ctx = _context(report)
    out = []
    for t in targets:
        when = t.get("when", {})
        if any(ctx.get(k) != v for k, v in when.items()):
            continue
        checks = []
        for key, bound in t.items():
            if key in ("name", "when"):
                continue
            value = _measured(report, key)
            if value is None:
                met = None
            elif key.endswith("_min"):
                met = value >= bound
            else:  # _max, _tolerance
                met = value <= bound
            checks.append({"bound": key, "limit": bound, "measured": value, "met": met})
        out.append(
            {
                "name": t["name"],
                # A check not measured makes the target "not measured", not "NOT met".
                "met": (
                    None
                    if not checks or any(c["met"] is None for c in checks)
                    else all(c["met"] for c in checks)
                ),
                "checks": checks,
            }
        )
    return out


def format_targets(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        state = {True: "met", False: "NOT met", None: "not measured"}[r["met"]]
        parts = [
            f"{c['bound']} {c['limit']:g}: {c['measured'] if c['measured'] is not None else '-'}"
            for c in r["checks"]
        ]
        lines.append(f"target {r['name']}: {state} ({'; '.join(parts)})")
    return "\n".join(lines)
