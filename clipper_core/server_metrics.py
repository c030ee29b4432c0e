"""A server's metrics: the per-second sampler, the sliding windows, the snapshot.

* :class:`MetricsSampler` copies the counters of :mod:`clipper_core.metrics` once
  a second; the differences give the sliding-window figures (throughput, goodput,
  SLO attainment, latency quantiles) and the dashboard's per-second series.
* :meth:`ServerMetrics.snapshot` reads those counters, the queues, the cache, the
  controllers and the replicas into one JSON-ready dict (``inspect_instance()``,
  ``ClipperConnection.get_metrics()``, ``clipper status``), which
  :mod:`clipper_core.metrics_export` renders for Prometheus, from a per-server
  ``CollectorRegistry`` (several servers in one process do not collide).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from clipper_core.metrics import (
    CLIENT_ERROR_KINDS,
    LATENCY_BUCKETS,
    SERIES_POINTS,
    WINDOW_SECONDS,
    histogram_quantile,
)
from clipper_core.metrics_export import SnapshotCollector
from clipper_core.pipelines.runtime import PipelineRouter

if TYPE_CHECKING:
    from clipper_core.dataplane import Application, ModelVersion, QueryView
    from clipper_core.managers.base import ReplicaStatus

#: The replicas the container manager runs for a (model, version).
ReplicaSource = Callable[[str, str], "list[ReplicaStatus]"]

log = logging.getLogger("clipper_core.metrics")


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

    def __init__(self, dataplane: QueryView, interval: float = 1.0) -> None:
        self.dataplane = dataplane
        self.interval = interval
        keep = math.ceil(WINDOW_SECONDS / interval) + 1
        self.samples: deque[_Sample] = deque(maxlen=keep)
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self._task: asyncio.Task[None] | None = None

    def take(self) -> _Sample:
        """Read every counter now."""
        dp = self.dataplane
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


def _replicas(replicas: ReplicaSource, mv: ModelVersion) -> list[dict[str, Any]]:
    """The connected replicas of ``mv`` merged with the process manager's view."""
    handles = {h.replica_id: h for h in replicas(mv.name, mv.version)}
    out: list[dict[str, Any]] = []
    for rid, slot in mv.replicas.items():
        h = handles.pop(rid, None)
        out.append(
            {
                "replica_id": rid,
                "address": slot.address,
                # A replica that fails its probes is not connected; one quarantined
                # after a batch timeout is, but not healthy (replica_watch).
                "connected": not slot.down,
                "healthy": slot.failures == 0 and slot.up,
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


def pipelines_snapshot(dp: QueryView) -> dict[str, Any]:
    """Each pipeline's stage and edge counters (the pipeline as a whole is under
    ``"apps"``: its requests, latency, SLO attainment...)."""
    out: dict[str, Any] = {}
    for name, app in sorted(dp.apps.items()):
        router = app.selector
        if not isinstance(router, PipelineRouter):
            continue
        graph, m = router.graph, router.metrics
        stages: dict[str, Any] = {}
        for stage in graph.stages.values():
            c = m.stages[stage.name]
            stages[stage.name] = {
                "model": stage.model,
                "version": stage.version,
                "combine": stage.combine,
                "requests": c.requests,
                "answered": c.answered,
                "deadline_misses": c.deadline_misses,
                "errors": c.errors,
                "skipped": c.skipped,
                "latency_seconds": c.latency.to_dict(),
            }
        edges = []
        for edge in graph.edges:
            e = m.edges[edge.label]
            edges.append(
                {
                    "from": edge.source,
                    "to": edge.target,
                    "when": None if edge.when is None else edge.when.describe(),
                    "evaluated": e.evaluated,
                    "taken": e.taken,
                    "taken_fraction": _ratio(e.taken, e.evaluated),
                }
            )
        out[name] = {"entry": graph.entry, "stages": stages, "edges": edges}
    return out


class ServerMetrics:
    """A server's metrics: the sampler, the snapshot and the Prometheus registry.

    Args:
        dataplane: Whose apps, model versions and cache are measured.
        replicas: The container manager's replicas of a (model, version): their
            ``replica_id``, ``pid``, ``state``, ``restarts`` and ``address`` are
            merged with the connected ones.
        started_at: When the server started (UNIX time; 0 while not started).
        interval: Seconds between samples.
    """

    def __init__(
        self,
        dataplane: QueryView,
        replicas: ReplicaSource,
        started_at: Callable[[], float],
        *,
        interval: float = 1.0,
    ) -> None:
        self.dataplane = dataplane
        self._replicas = replicas
        self._started_at = started_at
        self.sampler = MetricsSampler(dataplane, interval)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(self.snapshot))
        # process_cpu_seconds_total, process_resident_memory_bytes, ... of this
        # process, in this registry only (the global one is left alone).
        ProcessCollector(registry=self.registry)

    def start(self) -> None:
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    def snapshot(self) -> dict[str, Any]:
        """Every figure, as plain data (the JSON of ``/metrics`` under ``"metrics"``)."""
        dp = self.dataplane
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
                replicas = _replicas(self._replicas, mv)
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
        started_at = self._started_at()
        return {
            "uptime_seconds": max(time.time() - started_at, 0.0) if started_at else 0.0,
            "window_seconds": window,
            "apps": apps,
            "models": models,
            "pipelines": pipelines_snapshot(dp),
            "cache": cache,
        }

    def prometheus(self, accept: str = "") -> tuple[bytes, str]:
        """The Prometheus exposition (format chosen from ``accept``) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def prometheus_off_loop(self, accept: str = "") -> tuple[bytes, str]:
        """``prometheus``, with only the snapshot taken on the loop.

        The text is written in a thread: prometheus_client formats ~50 samples an
        app, about 1 ms of Python each (2.5 under load), which held the loop for
        0.6 s at 400 apps and for tens of ms at a few; queries waited behind it.
        In a thread it yields the interpreter every switch interval (5 ms).
        """
        snap = self.snapshot()  # the live objects are read on the loop only
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(lambda: snap))
        ProcessCollector(registry=registry)
        encoder, content_type = choose_encoder(accept)
        return await asyncio.to_thread(encoder, registry), content_type

    def series(self, points: int = SERIES_POINTS) -> list[dict[str, Any]]:
        """The last ``points`` per-second points (oldest first)."""
        data = list(self.sampler.series)
        return data[-points:]
