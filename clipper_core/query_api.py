"""Clipper's query REST API on the query port: ``POST /<app>/predict``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipper_core.clipper_api import (
    format_batch_reply,
    format_reply,
    input_key,
    parse_predict,
)
from clipper_core.http import Request, Response, Router, json_response

if TYPE_CHECKING:
    from clipper_core.server import ClipperServer


def install(router: Router, server: ClipperServer) -> None:
    """Add the query routes of ``server`` to ``router``."""
    dataplane = server.dataplane

    async def predict(request: Request, params: dict[str, str]) -> Response:
        app = dataplane.app(params["app"])
        query = parse_predict(request.body, app.input_type)
        input_type = app.input_type
        keys = [input_key(x, input_type) for x in query.inputs]
        outcomes = await dataplane.predict(
            app.name, query.inputs, keys, version=query.version, raise_errors=not query.batch
        )
        replies = [
            format_reply(
                dataplane.next_query_id(),
                o.output,
                o.default,
                o.explanation,
                None if o.model is None else {"model": o.model},
            )
            for o in outcomes
        ]
        if query.batch:
            return json_response(format_batch_reply(replies))
        return json_response(replies[0])

    async def metrics(request: Request, params: dict[str, str]) -> Response:
        # Clipper's inspect_instance() GETs /metrics and parses JSON.
        return json_response(server_metrics(server))

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
    return stats
