"""Clipper's query REST API on the query port: ``POST /<app>/predict``, and
``GET /metrics``, ``GET /health`` and ``GET /openapi.json`` (both ports' OpenAPI
document).

The routes see the data plane through :class:`~clipper_core.dataplane.QueryView`
and pass the :class:`~clipper_core.admission.QueryGate` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from clipper_core.admission import QueryGate, deadline_from_headers
from clipper_core.clipper_api import (
    InputKeys,
    format_batch_reply,
    format_reply,
    parse_predict,
    reply_fields,
)
from clipper_core.errors import ClipperError
from clipper_core.http import Request, Response, Router, json_response
from clipper_core.metrics_export import metrics_response
from clipper_core.openapi import QUERY_DOCUMENT_PATH, document_route
from model_containers import hop_trace

if TYPE_CHECKING:
    from clipper_core.dataplane import Application, Outcome, QueryView
    from clipper_core.managers.base import ReplicaStatus
    from clipper_core.server_metrics import ServerMetrics

__all__ = ["inspect_instance", "install"]


def install(
    router: Router,
    dataplane: QueryView,
    gate: QueryGate,
    metrics: ServerMetrics,
    inspect: Callable[[], dict[str, Any]],
) -> None:
    """Add the query routes to ``router``.

    Args:
        router: The query port's routes.
        dataplane: What answers the queries.
        gate: The checks before any work.
        metrics: For the Prometheus exposition of ``GET /metrics``.
        inspect: The JSON of ``GET /metrics`` (``inspect_instance()``).
    """

    async def predict(request: Request, params: dict[str, str]) -> Response:
        # Cheap refusals first: per-client limit (429), then the app's API keys
        # (401/403), then the client's deadline header (400 when malformed).
        if hop_trace.ENABLED:
            hop_trace.mark("handler_started")
        try:
            client = gate.admit(request.headers, request.remote)
        except ClipperError as exc:  # 429: counted for the app it was meant for
            if (app := dataplane.apps.get(params["app"])) is not None:
                app.metrics.error(exc.kind, received=True)
            raise
        try:
            app = dataplane.app(params["app"])
            try:
                gate.check(app.name, request.headers)
                deadline = deadline_from_headers(request.headers)
            except ClipperError as exc:  # 401, 403, a malformed deadline header
                app.metrics.error(exc.kind, received=True)
                raise
            if hop_trace.ENABLED:
                hop_trace.mark("admitted")
            return await _predict(request, app, deadline)
        finally:
            gate.release(client)

    async def _predict(request: Request, app: Application, deadline: float | None) -> Response:
        try:
            gate.check_body(request.body)
            query = parse_predict(request.body, app.input_type)
        except ClipperError as exc:
            app.metrics.error(exc.kind, received=True)
            raise
        keys = InputKeys(query.inputs, app.input_type)
        if hop_trace.ENABLED:
            hop_trace.mark("request_decoded")
        outcomes = await dataplane.predict(
            app.name,
            query.inputs,
            keys,
            version=query.version,
            deadline=deadline,
            raise_errors=not query.batch,
            uid=query.uid,
        )
        if hop_trace.ENABLED:
            hop_trace.mark("handler_resumed")
        if not query.batch:  # one input, one outcome
            return json_response(_reply(outcomes[0]))
        return json_response(format_batch_reply([_reply(o) for o in outcomes]))

    def _reply(o: Outcome) -> dict[str, Any]:
        return format_reply(
            dataplane.next_query_id(),
            o.output,
            o.default,
            o.explanation,
            reply_fields(o),
            native_arrays=True,
        )

    async def metrics_route(request: Request, params: dict[str, str]) -> Response:
        # Prometheus text for scrapers; JSON for Clipper's inspect_instance() (see
        # clipper_core.metrics_export.wants_json).
        return await metrics_response(metrics, request, inspect)

    async def health(request: Request, params: dict[str, str]) -> Response:
        return json_response({"status": "ok"})

    router.add("POST", "/{app}/predict", predict)
    router.add("GET", "/metrics", metrics_route)
    router.add("GET", "/health", health)
    router.add("GET", QUERY_DOCUMENT_PATH, document_route)


def inspect_instance(
    dataplane: QueryView, metrics: ServerMetrics, replicas: Iterable[ReplicaStatus]
) -> dict[str, Any]:
    """The figures that ``inspect_instance()`` returns.

    Args:
        dataplane: Its apps, model versions and cache.
        metrics: The server's metrics (their snapshot goes under ``"metrics"``).
        replicas: Every replica the container manager runs.
    """
    stats = dataplane.stats()
    stats["replicas"] = [
        {
            "model": h.model,
            "version": h.version,
            # An int, as before replica ids were strings (clients parse it).
            "replica_id": int(h.replica_id) if h.replica_id.isdigit() else h.replica_id,
            "pid": h.pid,
            "state": h.state,
            "restarts": h.restarts,
        }
        for h in replicas
    ]
    stats["metrics"] = metrics.snapshot()
    return stats
