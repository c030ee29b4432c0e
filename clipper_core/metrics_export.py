"""Prometheus rendering of a server's metrics snapshot, and ``GET /metrics``.

:class:`SnapshotCollector` turns :meth:`ServerMetrics.snapshot
<clipper_core.server_metrics.ServerMetrics.snapshot>` into metric families;
:func:`metrics_response` answers ``GET /metrics`` with JSON or the Prometheus
exposition, by content negotiation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from clipper_core.http import Request, Response


class PrometheusSource(Protocol):
    """What renders the Prometheus exposition (``ServerMetrics`` is one)."""

    async def prometheus_off_loop(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format ``accept`` prefers, and its content type,
        rendered without holding the event loop."""
        ...


# -- Prometheus ------------------------------------------------------------------------


def _hist_buckets(h: dict[str, Any]) -> list[tuple[str, float]]:
    return [("+Inf" if b == "+Inf" else repr(float(b)), float(c)) for b, c in h["buckets"]]


class SnapshotCollector:
    """Renders a metrics snapshot (:meth:`ServerMetrics.snapshot
    <clipper_core.server_metrics.ServerMetrics.snapshot>`) as Prometheus metric
    families.

    Args:
        snapshot: Reads the snapshot at each scrape.
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        # Names are fixed but label sets come and go with apps and models; nothing
        # to check at registration.
        return ()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield from _app_families(snap["apps"])
        yield from _model_families(snap["models"])
        yield from _pipeline_families(snap["pipelines"])
        cache = snap["cache"]
        if cache is not None:
            for key, kind, doc in (
                ("hits", "counter", "Prediction cache lookups answered from the cache."),
                ("misses", "counter", "Prediction cache lookups that missed."),
                ("evictions", "counter", "Entries evicted from the prediction cache."),
                ("entries", "gauge", "Entries in the prediction cache."),
                ("bytes", "gauge", "Bytes held by the prediction cache."),
                ("capacity_bytes", "gauge", "Byte budget of the prediction cache."),
            ):
                fam: Metric
                if kind == "counter":
                    fam = CounterMetricFamily(f"clipper_cache_{key}", doc, value=cache[key])
                else:
                    fam = GaugeMetricFamily(f"clipper_cache_{key}", doc, value=cache[key])
                yield fam
        yield GaugeMetricFamily(
            "clipper_metrics_window_seconds",
            "Seconds covered by the sliding-window gauges (throughput, goodput, attainment).",
            value=snap["window_seconds"],
        )


def _app_families(apps: dict[str, Any]) -> Iterator[Metric]:
    lab = ["app"]
    requests = CounterMetricFamily(
        "clipper_app_requests", "Inputs received by the app (a batch of N counts N).", labels=lab
    )
    within = CounterMetricFamily(
        "clipper_app_answers_within_slo",
        "Inputs answered with a model's output within the app's latency SLO.",
        labels=lab,
    )
    errors = CounterMetricFamily(
        "clipper_app_errors", "Inputs that failed, by error kind.", labels=["app", "kind"]
    )
    defaults = CounterMetricFamily(
        "clipper_app_default_outputs",
        "Inputs answered with the app's default output, by reason (slo, expired, error, no_model).",
        labels=["app", "reason"],
    )
    latency = HistogramMetricFamily(
        "clipper_app_latency_seconds", "Latency of each predict request.", labels=lab
    )
    slo = GaugeMetricFamily("clipper_app_slo_seconds", "The app's latency SLO.", labels=lab)
    attainment = GaugeMetricFamily(
        "clipper_app_slo_attainment_ratio",
        "Share of inputs answered within the SLO over the sliding window (client errors excluded).",
        labels=lab,
    )
    goodput = GaugeMetricFamily(
        "clipper_app_goodput_per_second",
        "Inputs answered within the SLO per second over the sliding window.",
        labels=lab,
    )
    throughput = GaugeMetricFamily(
        "clipper_app_throughput_per_second",
        "Inputs received per second over the sliding window.",
        labels=lab,
    )
    quantiles = GaugeMetricFamily(
        "clipper_app_latency_window_seconds",
        "Latency quantiles over the sliding window, estimated from the histogram.",
        labels=["app", "quantile"],
    )
    for name, a in apps.items():
        requests.add_metric([name], a["requests"])
        within.add_metric([name], a["answers_within_slo"])
        for kind, n in a["errors"].items():
            errors.add_metric([name, kind], n)
        for reason, n in a["default_outputs"].items():
            defaults.add_metric([name, reason], n)
        h = a["latency_seconds"]
        latency.add_metric([name], _hist_buckets(h), h["sum"])
        slo.add_metric([name], a["slo_seconds"])
        w = a["window"]
        if w["slo_attainment"] is not None:
            attainment.add_metric([name], w["slo_attainment"])
        goodput.add_metric([name], w["goodput"])
        throughput.add_metric([name], w["throughput"])
        for q, key in (("0.5", "p50_seconds"), ("0.99", "p99_seconds")):
            if w[key] is not None:
                quantiles.add_metric([name, q], w[key])
    yield from (requests, within, errors, defaults, latency, slo)
    yield from (attainment, goodput, throughput, quantiles)


def _model_families(models: dict[str, Any]) -> Iterator[Metric]:
    lab = ["model", "version"]

    def counter(name: str, doc: str, labels: list[str] = lab) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=labels)

    def gauge(name: str, doc: str, labels: list[str] = lab) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    requests = counter("clipper_model_requests", "Inputs submitted to the model version.")
    batches = counter("clipper_model_batches", "Batches a replica answered.")
    errors = counter(
        "clipper_model_errors", "Inputs that failed in the model version, by kind.", [*lab, "kind"]
    )
    defaults = counter(
        "clipper_model_default_outputs",
        "Inputs sent to the model version that got the app's default output.",
    )
    retried = counter(
        "clipper_model_retried",
        "Inputs sent again: their replica went away with them, or their batch failed with"
        " the model's error (each then goes alone).",
    )
    judged = counter(
        "clipper_model_slo_judged",
        "Inputs sent to the model version for an app, judged by the app's objective.",
    )
    within = counter(
        "clipper_model_answers_within_slo",
        "Of those, inputs the model version answered within the app's objective.",
    )
    attainment = gauge(
        "clipper_model_slo_attainment_ratio",
        "Answers within the apps' objectives / inputs judged, over the sliding window.",
    )
    goodput = gauge(
        "clipper_model_goodput_per_second",
        "Answers within the apps' objectives per second, over the sliding window.",
    )
    hits = counter("clipper_model_cache_hits", "Inputs answered from the prediction cache.")
    misses = counter("clipper_model_cache_misses", "Inputs not found in the prediction cache.")
    rejected = counter("clipper_model_queue_rejected", "Inputs rejected by a full queue.")
    expired = counter(
        "clipper_model_queue_expired", "Inputs dropped from the queue past their deadline."
    )
    qlen = gauge("clipper_model_queue_length", "Inputs waiting in the model version's queue.")
    qcap = gauge("clipper_model_queue_capacity", "Capacity of the model version's queue.")
    limit = gauge(
        "clipper_model_batch_size_limit",
        "The controller's current maximum batch size (what the next batch may take).",
    )
    max_bs = gauge("clipper_model_max_batch_size", "Upper bound of the adaptive batch size.")
    current = gauge(
        "clipper_model_version_current", "1 for the version queries go to, 0 for the others."
    )
    replicas = gauge("clipper_model_replicas", "Replicas connected to the frontend.")
    healthy = gauge(
        "clipper_model_replicas_healthy", "Connected replicas whose last batch did not fail."
    )
    rlab = ["model", "version", "replica"]
    up = gauge("clipper_replica_up", "1 when the replica is connected and healthy.", rlab)
    restarts = counter(
        "clipper_replica_restarts", "Times the replica's process was restarted.", rlab
    )
    batch_size = HistogramMetricFamily(
        "clipper_model_batch_size", "Inputs per batch sent to a replica.", labels=lab
    )
    batch_latency = HistogramMetricFamily(
        "clipper_model_batch_latency_seconds",
        "Seconds per batch measured by the frontend (gRPC round trip).",
        labels=lab,
    )
    container_latency = HistogramMetricFamily(
        "clipper_model_container_latency_seconds",
        "Seconds the model's predict() call took per batch, measured in the container.",
        labels=lab,
    )
    for m in models.values():
        key = [m["model"], m["version"]]
        requests.add_metric(key, m["requests"])
        batches.add_metric(key, m["batches"])
        for kind, n in m["errors"].items():
            errors.add_metric([*key, kind], n)
        defaults.add_metric(key, m["default_outputs"])
        retried.add_metric(key, m["retried"])
        judged.add_metric(key, m["slo_judged"])
        within.add_metric(key, m["answers_within_slo"])
        w = m["window"]
        if w["slo_attainment"] is not None:
            attainment.add_metric(key, w["slo_attainment"])
        goodput.add_metric(key, w["goodput"])
        if m["cache_enabled"]:
            hits.add_metric(key, m["cache_hits"])
            misses.add_metric(key, m["cache_misses"])
        rejected.add_metric(key, m["queue_rejected"])
        expired.add_metric(key, m["queue_expired"])
        qlen.add_metric(key, m["queue_length"])
        qcap.add_metric(key, m["queue_capacity"])
        limit.add_metric(key, m["batch_size_limit"])
        max_bs.add_metric(key, m["max_batch_size"])
        current.add_metric(key, 1 if m["current"] else 0)
        replicas.add_metric(key, m["replicas"])
        healthy.add_metric(key, m["replicas_healthy"])
        for r in m["replica_list"]:
            rkey = [*key, r["replica_id"]]
            up.add_metric(rkey, 1 if r["healthy"] else 0)
            restarts.add_metric(rkey, r["restarts"])
        for fam, field in (
            (batch_size, "batch_size"),
            (batch_latency, "batch_latency_seconds"),
            (container_latency, "container_latency_seconds"),
        ):
            h = m[field]
            fam.add_metric(key, _hist_buckets(h), h["sum"])
    yield from (requests, batches, errors, defaults, retried, hits, misses, rejected, expired)
    yield from (judged, within, attainment, goodput)
    yield from (qlen, qcap, limit, max_bs, current, replicas, healthy, up, restarts)
    yield from (batch_size, batch_latency, container_latency)


def _pipeline_families(pipelines: dict[str, Any]) -> Iterator[Metric]:
    lab = ["pipeline", "stage"]
    requests = CounterMetricFamily(
        "clipper_pipeline_stage_requests", "Inputs that reached the pipeline stage.", labels=lab
    )
    answered = CounterMetricFamily(
        "clipper_pipeline_stage_answered", "Inputs the pipeline stage answered.", labels=lab
    )
    misses = CounterMetricFamily(
        "clipper_pipeline_stage_deadline_misses",
        "Queries answered with the pipeline's default output because this stage could not"
        " answer within the remaining latency budget.",
        labels=lab,
    )
    errors = CounterMetricFamily(
        "clipper_pipeline_stage_errors", "Queries that failed at the pipeline stage.", labels=lab
    )
    skipped = CounterMetricFamily(
        "clipper_pipeline_stage_skipped",
        "Queries that did not reach the stage (a conditional edge was not taken).",
        labels=lab,
    )
    latency = HistogramMetricFamily(
        "clipper_pipeline_stage_latency_seconds",
        "Seconds from sending an input to the stage until its answer (queueing included).",
        labels=lab,
    )
    elab = ["pipeline", "source", "target"]
    evaluated = CounterMetricFamily(
        "clipper_pipeline_edge_evaluated", "Times the pipeline edge was reached.", labels=elab
    )
    taken = CounterMetricFamily(
        "clipper_pipeline_edge_taken",
        "Times the pipeline edge was taken (its condition held).",
        labels=elab,
    )
    for name, p in pipelines.items():
        for stage, c in p["stages"].items():
            key = [name, stage]
            requests.add_metric(key, c["requests"])
            answered.add_metric(key, c["answered"])
            misses.add_metric(key, c["deadline_misses"])
            errors.add_metric(key, c["errors"])
            skipped.add_metric(key, c["skipped"])
            h = c["latency_seconds"]
            latency.add_metric(key, _hist_buckets(h), h["sum"])
        for e in p["edges"]:
            ekey = [name, e["from"], e["to"]]
            evaluated.add_metric(ekey, e["evaluated"])
            taken.add_metric(ekey, e["taken"])
    yield from (requests, answered, misses, errors, skipped, latency, evaluated, taken)


# -- HTTP -----------------------------------------------------------------------------


def wants_json(request: Request) -> bool:
    """Content negotiation for ``GET /metrics``.

    JSON when asked for (``Accept: application/json`` or ``?format=json``), and when
    the client names no format at all (no Accept, or ``*/*``): that is what Clipper's
    ``clipper_admin.inspect_instance()`` sends (``requests.get``) before parsing
    JSON.  Prometheus text when ``text/plain`` or OpenMetrics is accepted (every
    Prometheus scraper says so) or ``?format=prometheus``.
    """
    fmt = request.query.get("format")
    if fmt:
        return fmt.lower() == "json"
    accept = request.headers.get("accept", "").lower()
    if "application/json" in accept:
        return False if _prefers_text(accept) else True
    return not ("text/plain" in accept or "openmetrics" in accept)


def _prefers_text(accept: str) -> bool:
    # Both named: honour the q-values; JSON wins ties.
    def q_of(token: str) -> float:
        for part in accept.split(","):
            if token in part:
                for param in part.split(";")[1:]:
                    k, _, v = param.strip().partition("=")
                    if k == "q":
                        with contextlib.suppress(ValueError):
                            return float(v)
                return 1.0
        return -1.0

    text = max(q_of("text/plain"), q_of("openmetrics"))
    return text > q_of("application/json")


async def metrics_response(
    metrics: PrometheusSource, request: Request, json_body: Callable[[], Any]
) -> Response:
    """Answer ``GET /metrics``: ``json_body()`` as JSON, or ``metrics``' Prometheus
    exposition."""
    from clipper_core.http import Response, json_response

    if wants_json(request):
        return json_response(json_body())
    body, content_type = await metrics.prometheus_off_loop(request.headers.get("accept", ""))
    return Response(200, body, content_type)
