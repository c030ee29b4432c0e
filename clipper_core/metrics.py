"""Server metrics: counters on the hot path, one snapshot, two renderings.

The query path only bumps plain attributes of :class:`AppMetrics` and
:class:`ModelVersionMetrics` (ints, and a :class:`Histogram` observed once per
request or batch): no locks, no label lookups.  Everything else happens when
someone looks:

* :meth:`ServerMetrics.snapshot` reads those counters, the queues, the cache, the
  controllers and the replicas into one JSON-ready dict (``inspect_instance()``,
  ``ClipperConnection.get_metrics()``, ``clipper status``);
* :class:`SnapshotCollector` turns the same snapshot into Prometheus metric
  families, exposed from a per-server ``CollectorRegistry`` (several servers in one
  process do not collide);
* :class:`MetricsSampler` copies the counters once a second; the differences give
  the sliding-window figures (throughput, goodput, SLO attainment, latency
  quantiles) and the dashboard's per-second series.

Metric names and labels are listed in the README's "Observability" section.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from clipper_core.logs import RateLimiter, log_event

if TYPE_CHECKING:
    from clipper_core.dataplane import Application, ModelVersion
    from clipper_core.http import Request, Response
    from clipper_core.server import ClipperServer

log = logging.getLogger("clipper_core.metrics")

#: Upper bounds (seconds) of the latency histograms.  Fine-grained below 100 ms so
#: that p50/p99 estimated from bucket counts are close enough to draw.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015,
    0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3,
    0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip

#: Upper bounds of the batch size histogram.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Seconds covered by the sliding-window gauges (throughput, goodput, attainment).
WINDOW_SECONDS = 10.0

#: How many per-second points the dashboard's series keep.
SERIES_POINTS = 120

#: Error kinds that are the client's fault; they do not count against SLO attainment.
CLIENT_ERROR_KINDS = frozenset({"bad_input", "payload_too_large"})

#: Reasons an input got the app's default output.
DEFAULT_REASONS = ("slo", "expired", "error", "no_model")


class Histogram:
    """A fixed-bucket histogram: one ``bisect`` and three increments per observation."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # counts[i] holds observations v with bounds[i-1] < v <= bounds[i]; the
        # last slot is the +Inf bucket.
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def to_dict(self) -> dict[str, Any]:
        """``{"buckets": [[upper, cumulative], ..., ["+Inf", count]], "sum", "count"}``."""
        buckets: list[list[Any]] = []
        cum = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            cum += c
            buckets.append([bound, cum])
        buckets.append(["+Inf", cum + self.counts[-1]])
        return {"buckets": buckets, "sum": self.sum, "count": self.count}


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Estimate the ``q`` quantile from per-bucket counts (Prometheus' interpolation).

    ``counts`` are per bucket (not cumulative), ``len(bounds) + 1`` of them; a rank
    that falls in the +Inf bucket answers the highest finite bound.  None when empty.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0
    for i, c in enumerate(counts):
        if c > 0 and cum + c >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * max(rank - cum, 0.0) / c
        cum += c
    return float(bounds[-1])


def error_kind(exc: BaseException) -> str:
    """The metrics label of an exception: its ``ClipperError.kind``, else ``internal``."""
    kind = getattr(exc, "kind", None)
    return kind if isinstance(kind, str) else "internal"


class AppMetrics:
    """Counters of one application, bumped on the query path.

    Attributes:
        requests: Inputs received (a batch request of N inputs counts N), including
            those that failed.
        within_slo: Inputs answered with a model's output within the app's SLO.
        defaults: Inputs answered with the default output, by reason (``slo``: the
            SLO timer fired first; ``expired``: dropped before reaching the model;
            ``error``: the model failed on it inside a batch request; ``no_model``).
        errors: Inputs that failed (an error reply, or a default output because of
            an error), by error kind.
        latency: Seconds per predict call (one observation per request).
    """

    __slots__ = ("defaults", "errors", "latency", "requests", "within_slo")

    def __init__(self) -> None:
        self.requests = 0
        self.within_slo = 0
        self.defaults: dict[str, int] = dict.fromkeys(DEFAULT_REASONS, 0)
        self.errors: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)

    def answered(
        self, n: int, late: int, expired: int, errored: int, elapsed: float, slo: float
    ) -> None:
        """Count one predict call of ``n`` inputs that returned a reply for each."""
        self.requests += n
        if elapsed <= slo:
            self.within_slo += n - late - expired - errored
        if late:
            self.defaults["slo"] += late
        if expired:
            self.defaults["expired"] += expired
        if errored:
            self.defaults["error"] += errored
        self.latency.observe(elapsed)

    def unanswered(self, n: int, reason: str) -> None:
        """``n`` inputs got the default output without reaching a model."""
        self.requests += n
        self.defaults[reason] += n

    def error(self, kind: str, n: int = 1, *, received: bool = False) -> None:
        """Count ``n`` failed inputs; ``received`` also counts them as requests."""
        self.errors[kind] = self.errors.get(kind, 0) + n
        if received:
            self.requests += n


class ModelVersionMetrics:
    """Counters of one model version, bumped by ``submit`` and the dispatchers.

    Attributes:
        cache_misses: Inputs not answered from the prediction cache (a query that
            joins an identical pending one counts here too).
        batches: Batches a replica answered.
        errors: Inputs that failed in this model version, by error kind.
        defaults: Inputs sent to this version that got the app's default output.
        slo_judged: Inputs sent to this version on behalf of an app, whose answer
            the app's latency objective judged (not those refused at submission).
        within_slo: Of those, the ones this version answered within the objective:
            its share of its apps' SLO attainment and goodput.
        batch_size: Inputs per answered batch.
        batch_latency: Seconds per batch as the dispatcher sees it (gRPC round trip).
        model_latency: Seconds the model's own call took per batch, as the
            container measured it (``PredictResponse.model_seconds``).
    """

    __slots__ = (
        "batch_latency",
        "batch_size",
        "batches",
        "cache_misses",
        "defaults",
        "errors",
        "model_latency",
        "slo_judged",
        "within_slo",
    )

    def __init__(self) -> None:
        self.cache_misses = 0
        self.batches = 0
        self.errors: dict[str, int] = {}
        self.defaults = 0
        self.slo_judged = 0
        self.within_slo = 0
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.batch_latency = Histogram(LATENCY_BUCKETS)
        self.model_latency = Histogram(LATENCY_BUCKETS)

    def batch_done(self, n: int, latency: float, model_seconds: float) -> None:
        """Count one answered batch of ``n`` inputs."""
        self.batches += 1
        self.batch_size.observe(n)
        self.batch_latency.observe(latency)
        if model_seconds > 0.0:
            self.model_latency.observe(model_seconds)

    def error(self, kind: str, n: int) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    def judged(self, n: int, within: int) -> None:
        """``n`` inputs an app's objective judged; ``within`` answered in time."""
        self.slo_judged += n
        self.within_slo += within


_overload_limiter = RateLimiter(5.0)


#: Error kinds that mean "too much load": logged as an ``overload`` event.
OVERLOAD_KINDS = frozenset({"queue_full", "overloaded"})


def record_failure(
    app: Application, mv: ModelVersion, exc: BaseException, n: int, *, rejected: bool = False
) -> None:
    """A predict call of ``n`` inputs to ``app`` (model ``mv``) raised ``exc``.

    ``rejected``: ``mv`` refused the inputs when they were submitted (errors of a
    batch that ran are counted for ``mv`` by its dispatcher).  An overloaded model
    is also logged, at most every 5 s per app.
    """
    kind = error_kind(exc)
    app.metrics.error(kind, n, received=True)
    if rejected:
        mv.metrics.error(kind, n)
    if kind in OVERLOAD_KINDS and _overload_limiter.allow(app.name):
        q = mv.queue.stats()
        log_event(
            log,
            "overload",
            f"{mv.key} is overloaded ({kind}): queries to {app.name} are refused",
            level=logging.WARNING,
            app=app.name,
            model=mv.name,
            version=mv.version,
            queue_length=q.get("len"),
            queue_capacity=q.get("capacity"),
            rejected_total=q.get("rejected"),
            kind=kind,
        )


# -- sampling ------------------------------------------------------------------------


class _AppPoint(NamedTuple):
    requests: int
    within_slo: int
    client_errors: int
    defaults: int
    errors: int
    latency_counts: tuple[int, ...]


class _ModelPoint(NamedTuple):
    queries: int
    batches: int
    batch_size_sum: float
    cache_hits: int
    cache_misses: int
    model_latency_sum: float
    model_latency_count: int
    queue_length: int
    batch_size_limit: int
    within_slo: int
    slo_judged: int


class _Sample(NamedTuple):
    t: float  # time.monotonic()
    wall: float  # time.time()
    apps: dict[str, _AppPoint]
    models: dict[str, _ModelPoint]


def _app_point(app: Application) -> _AppPoint:
    m = app.metrics
    errors = m.errors
    return _AppPoint(
        m.requests,
        m.within_slo,
        sum(errors.get(k, 0) for k in CLIENT_ERROR_KINDS),
        sum(m.defaults.values()),
        sum(errors.values()),
        tuple(m.latency.counts),
    )


def _model_point(mv: ModelVersion) -> _ModelPoint:
    m = mv.metrics
    return _ModelPoint(
        mv.queries,
        m.batches,
        m.batch_size.sum,
        mv.cache_hits,
        m.cache_misses,
        m.model_latency.sum,
        m.model_latency.count,
        int(mv.queue.stats().get("len", 0)),
        int(mv.controller.batch_size),
        m.within_slo,
        m.slo_judged,
    )


def _delta(new: float, old: float) -> float:
    # A counter that went down was reset (the app or model was re-created).
    return new - old if new >= old else new


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _app_rates(new: _AppPoint, old: _AppPoint | None, dt: float) -> dict[str, Any]:
    if old is None:
        old = _AppPoint(0, 0, 0, 0, 0, (0,) * len(new.latency_counts))
    requests = _delta(new.requests, old.requests)
    within = _delta(new.within_slo, old.within_slo)
    judged = requests - _delta(new.client_errors, old.client_errors)
    if new.requests >= old.requests:
        counts = [a - b for a, b in zip(new.latency_counts, old.latency_counts, strict=True)]
    else:
        counts = list(new.latency_counts)
    p50 = histogram_quantile(0.5, LATENCY_BUCKETS, counts)
    p99 = histogram_quantile(0.99, LATENCY_BUCKETS, counts)
    return {
        "throughput": requests / dt,
        "goodput": within / dt,
        "slo_attainment": _ratio(within, judged),
        "p50_seconds": p50,
        "p99_seconds": p99,
        "defaults_per_second": _delta(new.defaults, old.defaults) / dt,
        "errors_per_second": _delta(new.errors, old.errors) / dt,
    }


def _model_rates(new: _ModelPoint, old: _ModelPoint | None, dt: float) -> dict[str, Any]:
    if old is None:
        old = _ModelPoint(0, 0, 0.0, 0, 0, 0.0, 0, 0, 0, 0, 0)
    batches = _delta(new.batches, old.batches)
    hits = _delta(new.cache_hits, old.cache_hits)
    misses = _delta(new.cache_misses, old.cache_misses)
    model_n = _delta(new.model_latency_count, old.model_latency_count)
    within = _delta(new.within_slo, old.within_slo)
    return {
        "throughput": _delta(new.queries, old.queries) / dt,
        "goodput": within / dt,
        "slo_attainment": _ratio(within, _delta(new.slo_judged, old.slo_judged)),
        "batches_per_second": batches / dt,
        "mean_batch_size": _ratio(_delta(new.batch_size_sum, old.batch_size_sum), batches),
        "cache_hit_ratio": _ratio(hits, hits + misses),
        "model_latency_mean_seconds": _ratio(
            _delta(new.model_latency_sum, old.model_latency_sum), model_n
        ),
        "queue_length": new.queue_length,
        "batch_size_limit": new.batch_size_limit,
    }


class MetricsSampler:
    """Copies the counters every ``interval`` seconds (a task on the server's loop).

    Keeps enough raw samples for the sliding window and ``SERIES_POINTS`` derived
    per-interval points for the dashboard.
    """

    def __init__(self, server: ClipperServer, interval: float = 1.0) -> None:
        self.server = server
        self.interval = interval
        keep = math.ceil(WINDOW_SECONDS / interval) + 1
        self.samples: deque[_Sample] = deque(maxlen=keep)
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self._task: asyncio.Task[None] | None = None

    def take(self) -> _Sample:
        """Read every counter now."""
        dp = self.server.dataplane
        return _Sample(
            time.monotonic(),
            time.time(),
            {name: _app_point(app) for name, app in dp.apps.items()},
            {
                mv.key: _model_point(mv)
                for model in dp.models.values()
                for mv in model.versions.values()
            },
        )

    def tick(self) -> None:
        """Take a sample and append the point derived from the previous one."""
        new = self.take()
        prev = self.samples[-1] if self.samples else None
        self.samples.append(new)
        if prev is None:
            return
        dt = max(new.t - prev.t, 1e-6)
        self.series.append(
            {
                "t": new.wall,
                "apps": {
                    name: _app_rates(p, prev.apps.get(name), dt) for name, p in new.apps.items()
                },
                "models": {
                    key: _model_rates(p, prev.models.get(key), dt) for key, p in new.models.items()
                },
            }
        )

    def window(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], float]:
        """Rates over the last ``WINDOW_SECONDS`` (less right after start), up to now."""
        now = self.take()
        old = self.samples[0] if self.samples else None
        if old is None:
            return {}, {}, 0.0
        dt = now.t - old.t
        if dt <= 0:
            return {}, {}, 0.0
        apps = {name: _app_rates(p, old.apps.get(name), dt) for name, p in now.apps.items()}
        models = {key: _model_rates(p, old.models.get(key), dt) for key, p in now.models.items()}
        return apps, models, dt

    def start(self) -> None:
        if self._task is None:
            self.tick()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="clipper metrics sampler"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.tick()
            except Exception:  # never let a metrics bug stop the sampling
                log.exception("metrics sampling failed")


# -- the snapshot ---------------------------------------------------------------------


def _replicas(server: ClipperServer, mv: ModelVersion) -> list[dict[str, Any]]:
    """The connected replicas of ``mv`` merged with the process manager's view."""
    handles = {str(h.spec.replica_id): h for h in server.manager.list(mv.name, mv.version)}
    out: list[dict[str, Any]] = []
    for rid, slot in mv.replicas.items():
        h = handles.pop(rid, None)
        out.append(
            {
                "replica_id": rid,
                "address": slot.address,
                "connected": True,
                "healthy": slot.failures == 0,
                "batches": slot.batches,
                "busy": bool(slot.in_flight),
                "pid": None if h is None else h.pid,
                "state": "running" if h is None else h.state,
                "restarts": 0 if h is None else h.restarts,
            }
        )
    for rid, h in handles.items():  # started by the manager, not (or no longer) connected
        out.append(
            {
                "replica_id": rid,
                "address": h.address,
                "connected": False,
                "healthy": False,
                "batches": 0,
                "busy": False,
                "pid": h.pid,
                "state": h.state,
                "restarts": h.restarts,
            }
        )
    out.sort(key=lambda r: (len(r["replica_id"]), r["replica_id"]))
    return out


class ServerMetrics:
    """A server's metrics: the sampler, the snapshot and the Prometheus registry."""

    def __init__(self, server: ClipperServer, *, interval: float = 1.0) -> None:
        self.server = server
        self.sampler = MetricsSampler(server, interval)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(self))
        # process_cpu_seconds_total, process_resident_memory_bytes, ... of this
        # process, in this registry only (the global one is left alone).
        ProcessCollector(registry=self.registry)

    def start(self) -> None:
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    def snapshot(self) -> dict[str, Any]:
        """Every figure, as plain data (the JSON of ``/metrics`` under ``"metrics"``)."""
        server = self.server
        dp = server.dataplane
        app_rates, model_rates, window = self.sampler.window()
        apps: dict[str, Any] = {}
        for name, app in sorted(dp.apps.items()):
            m = app.metrics
            apps[name] = {
                "slo_seconds": app.slo,
                "input_type": app.input_type,
                "linked_models": list(app.linked_models),
                "requests": m.requests,
                "answers_within_slo": m.within_slo,
                "errors": dict(sorted(m.errors.items())),
                "default_outputs": dict(m.defaults),
                "latency_seconds": m.latency.to_dict(),
                "window": app_rates.get(name) or _app_rates(_app_point(app), _app_point(app), 1),
            }
        models: dict[str, Any] = {}
        for model in sorted(dp.models.values(), key=lambda m: m.name):
            for version, mv in sorted(model.versions.items()):
                m2 = mv.metrics
                q = mv.queue.stats()
                replicas = _replicas(server, mv)
                ctl = mv.controller
                models[mv.key] = {
                    "model": mv.name,
                    "version": version,
                    "current": model.current == version,
                    "requests": mv.queries,
                    "batches": m2.batches,
                    "errors": dict(sorted(m2.errors.items())),
                    "default_outputs": m2.defaults,
                    "answers_within_slo": m2.within_slo,
                    "slo_judged": m2.slo_judged,
                    "retried": mv.retried,
                    "cache_enabled": mv.cache is not None,
                    "cache_hits": mv.cache_hits,
                    "cache_misses": m2.cache_misses,
                    "queue_length": int(q.get("len", 0)),
                    "queue_capacity": int(q.get("capacity", 0)),
                    "queue_rejected": int(q.get("rejected", 0)),
                    "queue_expired": int(q.get("expired", 0)),
                    "batch_size_limit": int(ctl.batch_size),
                    "max_batch_size": int(ctl.max_batch_size),
                    "controller_mode": str(ctl.mode),
                    "batch_slo_seconds": float(ctl.slo),
                    "batch_size": m2.batch_size.to_dict(),
                    "batch_latency_seconds": m2.batch_latency.to_dict(),
                    "container_latency_seconds": m2.model_latency.to_dict(),
                    "replicas": sum(1 for r in replicas if r["connected"]),
                    "replicas_healthy": sum(1 for r in replicas if r["healthy"]),
                    "replica_list": replicas,
                    "window": model_rates.get(mv.key)
                    or _model_rates(_model_point(mv), _model_point(mv), 1),
                }
        cache = None
        if dp.cache is not None:
            cs = dp.cache.stats()
            cache = {
                "hits": int(cs["hits"]),
                "misses": int(cs["misses"]),
                "evictions": int(cs["evictions"]),
                "entries": int(cs["entries"]),
                "bytes": int(cs["nbytes"]),
                "capacity_bytes": int(cs["max_bytes"]),
            }
        return {
            "uptime_seconds": max(time.time() - server.started_at, 0.0)
            if server.started_at
            else 0.0,
            "window_seconds": window,
            "apps": apps,
            "models": models,
            "cache": cache,
        }

    def prometheus(self, accept: str = "") -> tuple[bytes, str]:
        """The Prometheus exposition (format chosen from ``accept``) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def series(self, points: int = SERIES_POINTS) -> list[dict[str, Any]]:
        """The last ``points`` per-second points (oldest first)."""
        data = list(self.sampler.series)
        return data[-points:]


# -- Prometheus ------------------------------------------------------------------------


def _hist_buckets(h: dict[str, Any]) -> list[tuple[str, float]]:
    return [("+Inf" if b == "+Inf" else repr(float(b)), float(c)) for b, c in h["buckets"]]


class SnapshotCollector:
    """Renders :meth:`ServerMetrics.snapshot` as Prometheus metric families."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Names are fixed but label sets come and go with apps and models; nothing
        # to check at registration.
        return ()

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot()
        yield from _app_families(snap["apps"])
        yield from _model_families(snap["models"])
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
        "clipper_model_retried", "Inputs handed to another replica after a replica failed."
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


def metrics_response(
    server: ClipperServer, request: Request, json_body: Callable[[], Any]
) -> Response:
    """Answer ``GET /metrics``: ``json_body()`` as JSON, or the Prometheus exposition."""
    from clipper_core.http import Response, json_response

    if wants_json(request):
        return json_response(json_body())
    body, content_type = server.metrics.prometheus(request.headers.get("accept", ""))
    return Response(200, body, content_type)
