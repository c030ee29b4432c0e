"""Metrics counters, bumped on the query path.

The query path only bumps plain attributes of :class:`AppMetrics` and
:class:`ModelVersionMetrics` (ints, and a :class:`Histogram` observed once per
request or batch): no locks, no label lookups.  Everything else happens when
someone looks, in :mod:`clipper_core.server_metrics` (the per-second sampler, the
sliding windows and the snapshot) and :mod:`clipper_core.metrics_export` (the
Prometheus rendering of that snapshot and ``GET /metrics``).

What a request to an app counts, and for which model version, is decided in
:mod:`clipper_core.dataplane.accounting`; this module imports nothing of
clipper_core.

Metric names and labels are listed in docs/reference/metrics.md (generated from
metrics_export.py when the docs site is built).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

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

#: Error kinds that are the client's fault; they do not count against SLO attainment
#: (else anyone without a key, or one client over its own rate limit, could drive an
#: app's attainment down and set off its SLO alerts).
CLIENT_ERROR_KINDS = frozenset(
    {"bad_input", "payload_too_large", "unauthorized", "forbidden", "rate_limited"}
)

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
            ``error``: the model failed on it inside a batch request; ``no_model``:
            no model, or none with a live replica, could answer it).
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
        self,
        n: int,
        late: int,
        expired: int,
        errored: int,
        elapsed: float,
        slo: float,
        unavailable: int = 0,
    ) -> None:
        """Count one predict call of ``n`` inputs that returned a reply for each
        (``unavailable``: defaults answered at once, no replica being live)."""
        self.requests += n
        if elapsed <= slo:
            self.within_slo += n - late - expired - errored - unavailable
        if late:
            self.defaults["slo"] += late
        if unavailable:
            self.defaults["no_model"] += unavailable
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


class StageMetrics:
    """Counters of one pipeline stage, bumped by the pipeline's router.

    Attributes:
        requests: Inputs sent to the stage's model (or joined, for a join).
        answered: Of those, the ones it answered.
        deadline_misses: Queries answered with the pipeline's default output
            because this stage could not answer within the remaining budget.
        errors: Queries that failed at this stage.
        skipped: Queries that did not reach the stage (a conditional edge).
        latency: Seconds from sending an input to the stage until its answer
            (queueing and batching included).
    """

    __slots__ = ("answered", "deadline_misses", "errors", "latency", "requests", "skipped")

    def __init__(self) -> None:
        self.requests = 0
        self.answered = 0
        self.deadline_misses = 0
        self.errors = 0
        self.skipped = 0
        self.latency = Histogram(LATENCY_BUCKETS)


class EdgeMetrics:
    """How often a pipeline edge was reached and taken (its predicate held)."""

    __slots__ = ("evaluated", "taken")

    def __init__(self) -> None:
        self.evaluated = 0
        self.taken = 0


class PipelineMetrics:
    """The stage and edge counters of one pipeline (the pipeline as a whole is
    counted by its application's :class:`AppMetrics`).

    Args:
        stages: The stage names.
        edges: The edge labels (``"source->target"``).
    """

    __slots__ = ("edges", "stages")

    def __init__(self, stages: Sequence[str], edges: Sequence[str]) -> None:
        self.stages = {name: StageMetrics() for name in stages}
        self.edges = {label: EdgeMetrics() for label in edges}
