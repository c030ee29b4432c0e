"""PNG plots of a report (matplotlib, Agg backend: no display needed).

Everything is drawn from the JSON report alone, so ``python -m bench plot
REPORT.json`` redraws the figures of an earlier run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_cdf(runs: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> Path | None:
    """Latency CDF of each run (log latency axis), with the SLO marked."""
    runs = [(label, s) for label, s in runs if s.get("cdf", {}).get("latency_ms")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, s in runs:
        cdf = s["cdf"]
        ax.plot(cdf["latency_ms"], [p / 100 for p in cdf["percentiles"]], label=label)
    slo = runs[0][1].get("slo_ms")
    if slo:
        ax.axvline(slo, color="grey", ls="--", lw=1, label=f"SLO {slo:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of answers")
    ax.set_ylim(0, 1.005)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def timeline(
    rows: list[dict[str, Any]],
    path: Path,
    title: str,
    *,
    slo_ms: float | None = None,
    optimum: int | None = None,
) -> Path | None:
    """Throughput, latency (p50/p99) and batch size, one point per second."""
    if not rows:
        return None
    t = [r["t"] + r.get("span_s", 1.0) / 2 for r in rows]  # plotted mid-bucket
    has_batch = any(r.get("batch_size") is not None for r in rows)
    n = 3 if has_batch else 2
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.3 * n + 0.6), sharex=True)
    ax = axes[0]
    ax.plot(t, [r["throughput_rps"] for r in rows], label="answers/s")
    errs = [r["errors"] for r in rows]
    if any(errs):
        ax.plot(t, errs, color="red", label="errors/s")
    defaults = [r["defaults"] for r in rows]
    if any(defaults):
        ax.plot(t, defaults, color="orange", label="defaults/s")
    ax.set_ylabel("req/s")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    ax = axes[1]
    ax.plot(t, [r["p50_ms"] for r in rows], label="p50")
    ax.plot(t, [r["p99_ms"] for r in rows], label="p99")
    if slo_ms:
        ax.axhline(slo_ms, color="grey", ls="--", lw=1, label="SLO")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8, loc="upper right")
    if has_batch:
        ax = axes[2]
        ax.plot(t, [r.get("batch_size") for r in rows], drawstyle="steps-mid", label="controller")
        ax.plot(t, [r.get("mean_batch_size") for r in rows], ".-", label="mean observed")
        if optimum:
            ax.axhline(optimum, color="green", ls="--", lw=1, label=f"formula n* = {optimum}")
        ax.set_ylabel("batch size")
        ax.legend(fontsize=8, loc="lower right")
    for a in axes:
        a.grid(True, alpha=0.3)
        a.axvline(0, color="black", lw=0.5)
    axes[-1].set_xlabel("seconds (negative: warm-up)")
    return _save(fig, path)


def throughput_vs_batch(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Each second of a run as a point: mean batch size against answers per second."""
    pts = [
        (r["mean_batch_size"], r["throughput_rps"])
        for r in rows
        if r.get("mean_batch_size") is not None and r["t"] >= 0
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14)
    ax.set_xlabel("mean batch size (per second)")
    ax.set_ylabel("answers/s")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def ramp(steps: list[dict[str, Any]], path: Path, title: str, target: float) -> Path | None:
    """SLO attainment and p99 against the offered rate."""
    steps = sorted(steps, key=lambda s: s["rate"])
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [s["rate"] for s in steps]
    ax.plot(rates, [s["summary"]["slo_attainment"] or 0 for s in steps], "o-", label="attainment")
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(min(0.9, *[s["summary"]["slo_attainment"] or 0 for s in steps]) - 0.02, 1.01)
    ax2 = ax.twinx()
    ax2.plot(
        rates, [s["summary"]["latency_ms"]["p99"] for s in steps], "s:", color="C1", label="p99 ms"
    )
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    return _save(fig, path)


def sweep(configs: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Highest rate meeting the SLO target for each static (batch size, wait), with
    the adaptive controller's as a horizontal line."""
    static = [c for c in configs if c["batch_size"] > 0]
    adaptive = [c for c in configs if c["batch_size"] <= 0]
    if not configs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for wait in sorted({c["batch_wait_micros"] for c in static}):
        cs = sorted(
            (c for c in static if c["batch_wait_micros"] == wait), key=lambda c: c["batch_size"]
        )
        ax.plot(
            [c["batch_size"] for c in cs],
            [c["best_rate"] or 0 for c in cs],
            "o-",
            label=f"fixed, wait {wait} us",
        )
    styles = {"aimd": "--", "quantile": ":"}
    for c in adaptive:
        ax.axhline(
            c["best_rate"] or 0,
            color="black",
            ls=styles.get(c.get("controller") or "aimd", "-."),
            lw=1,
            label=f"{c.get('controller') or 'adaptive'}, wait {c['batch_wait_micros']} us",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("highest rate meeting the SLO (req/s)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)
