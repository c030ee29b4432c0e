"""MkDocs hook: writes reference/metrics.md at build time from the metric
families ``clipper_core.metrics_export.SnapshotCollector`` exports (name, type,
labels, help), so the page lists every metric name the code can expose."""

from __future__ import annotations

from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/metrics.md"

SUFFIXES = {
    "counter": "(`_total`)",
    "histogram": "(`_bucket`, `_sum`, `_count`)",
    "gauge": "",
}


def families() -> list[Any]:
    """Every family, from a snapshot with no apps, models or pipelines (the
    families are emitted whether or not they have samples)."""
    from clipper_core.metrics_export import SnapshotCollector

    cache = dict.fromkeys(("hits", "misses", "evictions", "entries", "bytes", "capacity_bytes"), 0)
    snap = {"apps": {}, "models": {}, "pipelines": {}, "cache": cache, "window_seconds": 10.0}
    return list(SnapshotCollector(lambda: snap).collect())


def render() -> str:
    rows = []
    for fam in families():
        labels = ", ".join(getattr(fam, "_labelnames", ()) or ())
        rows.append(
            f"| `{fam.name}` | {fam.type} {SUFFIXES.get(fam.type, '')} | {labels} |"
            f" {fam.documentation} |"
        )
    return "\n".join([
        "# Metrics reference",
        "",
        "<!-- Generated at build time by docs/hooks/metrics_reference.py from"
        " clipper_core.metrics_export.SnapshotCollector. -->",
        "",
        "`GET /metrics` on the query port exposes these families (Prometheus text for"
        " scrapers, JSON otherwise: see [Observability](../guides/observability.md))."
        " A counter's samples are named with `_total`, a histogram's with `_bucket`,"
        " `_sum` and `_count`.  Families with labels have one sample per app, model"
        " version, replica, pipeline stage or edge; `clipper_cache_*` is absent when"
        " the cache is off.  The process collector of `prometheus_client` adds the"
        " `process_*` families (CPU, memory, file descriptors of the server process).",
        "",
        "| family | type | labels | help |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files
