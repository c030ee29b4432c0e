"""Clipper's query REST API on the query port: ``POST /<app>/predict``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipper_core.admission import client_key, deadline_from_headers
from clipper_core.clipper_api import (
    InputKeys,
    check_json_depth,
    format_batch_reply,
    format_reply,
    parse_predict,
)
from clipper_core.errors import ClipperError
from clipper_core.http import Request, Response, Router, json_response
from clipper_core.metrics_export import metrics_response
from clipper_core.selection.api import reply_fields

if TYPE_CHECKING:
    from clipper_core.dataplane import Application
    from clipper_core.server import ClipperServer


def install(router: Router, server: ClipperServer) -> None:
    """Add the query routes of ``server`` to ``router``."""
    dataplane = server.dataplane
    limiter = server.client_limiter
    api_keys = server.api_keys
    max_depth = server.config.max_json_depth

    async def predict(request: Request, params: dict[str, str]) -> Response:
        # Cheap refusals first: per-client limit (429), then the app's API keys
        # (401/403), then the client's deadline header (400 when malformed).
        client = (
            client_key(request.headers, request.remote, api_keys.known) if limiter.enabled else ""
        )
        limiter.acquire(client)
        try:
            app = dataplane.app(params["app"])
            api_keys.check(app.name, request.headers)
            deadline = deadline_from_headers(request.headers)
            return await _predict(request, app, deadline)
        finally:
            limiter.release(client)

    async def _predict(request: Request, app: Application, deadline: float | None) -> Response:
        try:
            check_json_depth(request.body, max_depth)
            query = parse_predict(request.body, app.input_type)
        except ClipperError as exc:
            app.metrics.error(exc.kind, received=True)
            raise
        keys = InputKeys(query.inputs, app.input_type)
        outcomes = await dataplane.predict(
            app.name,
            query.inputs,
            keys,
            version=query.version,
            deadline=deadline,
            raise_errors=not query.batch,
            uid=query.uid,
        )
        replies = [
            format_reply(
                dataplane.next_query_id(), o.output, o.default, o.explanation, reply_fields(o)
            )
            for o in outcomes
        ]
        if query.batch:
            return json_response(format_batch_reply(replies))
        return json_response(replies[0])

    async def metrics(request: Request, params: dict[str, str]) -> Response:
        # Prometheus text for scrapers; JSON for Clipper's inspect_instance() (see
        # clipper_core.metrics_export.wants_json).
        return metrics_response(server, request, lambda: server_metrics(server))

    async def health(request: Request, params: dict[str, str]) -> Response:
        return json_response({"status": "ok"})

    router.add("POST", "/{app}/predict", predict)
    router.add("GET", "/metrics", metrics)
    router.add("GET", "/health", health)


def server_metrics(server: ClipperServer) -> dict[str, Any]:
    """The figures that ``inspect_instance()`` returns."""
    stats = server.dataplane.stats()
    stats["replicas"] = [
        {
            "model": h.spec.model_name,
            "version": h.spec.model_version,
            "replica_id": h.spec.replica_id,
            "pid": h.pid,
            "state": h.state,
            "restarts": h.restarts,
        }
        for h in server.manager.list()
    ]
    stats["metrics"] = server.metrics.snapshot()
    return stats
