"""The live dashboard on the management port.

``GET /dashboard`` serves one static page (``index.html``, with the hand-written
canvas charts of ``dashboard.js``; no build step, no third-party JavaScript).  The
page polls ``GET /dashboard/data`` every second: apps, pipelines (their stages and
edges), models, versions, replicas, and the per-second series that
:class:`clipper_core.server_metrics.MetricsSampler` keeps.

When the server has a management token, ``/dashboard/data`` needs it like every
management call (``Authorization: Bearer``, or ``?token=`` — the page passes on
the ``token`` parameter of its own address): the management port's guard
(``admin_guard.admin_guard``) checks it, reading the headers through
:func:`auth_headers`, and lets only :func:`is_public` requests through without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from clipper_core.http import Request, Response, Router, json_response

if TYPE_CHECKING:
    from clipper_core.dataplane import QueryView
    from clipper_core.server_metrics import ServerMetrics


class ServerInfo(Protocol):
    """Where the server listens, read when the page asks (``ClipperServer`` is one)."""

    @property
    def query_url(self) -> str: ...

    @property
    def management_url(self) -> str: ...


_STATIC = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}

#: Per-app series the page draws (keys of a sampler point's app entry).
APP_SERIES = ("throughput", "goodput", "p50_seconds", "p99_seconds", "slo_attainment")
#: Per-model-version series.
MODEL_SERIES = ("mean_batch_size", "batch_size_limit", "cache_hit_ratio", "queue_length")


@cache
def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def is_public(request: Request) -> bool:
    """The page and its script hold no data: the management guard lets them through,
    so that a browser can load them without an ``Authorization`` header."""
    return request.method in ("GET", "HEAD") and request.path in _STATIC


def auth_headers(request: Request) -> Mapping[str, str]:
    """The request's headers, with ``?token=`` of ``/dashboard/data`` as a bearer
    token (the page cannot make the browser send a header of its own on load)."""
    token = request.query.get("token")
    if request.path != "/dashboard/data" or not token or "authorization" in request.headers:
        return request.headers
    return {**request.headers, "authorization": f"Bearer {token}"}


def _series(metrics: ServerMetrics) -> dict[str, Any]:
    points = metrics.series()
    n = len(points)
    apps: dict[str, dict[str, list[Any]]] = {}
    models: dict[str, dict[str, list[Any]]] = {}
    for i, point in enumerate(points):
        for name, rates in point["apps"].items():
            per = apps.setdefault(name, {k: [None] * n for k in APP_SERIES})
            for k in APP_SERIES:
                per[k][i] = rates.get(k)
        for key, rates in point["models"].items():
            per = models.setdefault(key, {k: [None] * n for k in MODEL_SERIES})
            for k in MODEL_SERIES:
                per[k][i] = rates.get(k)
    return {"t": [p["t"] for p in points], "apps": apps, "models": models}


def dashboard_data(metrics: ServerMetrics, dp: QueryView, info: ServerInfo) -> dict[str, Any]:
    """What the page shows: the snapshot without histograms, plus the series."""
    snap = metrics.snapshot()
    apps = []
    for name, a in snap["apps"].items():
        linked = a["linked_models"]
        model = dp.models.get(linked[0]) if linked else None
        current = None if model is None or model.current is None else model.current
        apps.append(
            {
                "name": name,
                "input_type": a["input_type"],
                "slo_seconds": a["slo_seconds"],
                "linked_models": linked,
                "model_key": None if current is None else f"{linked[0]}:{current}",
                "requests": a["requests"],
                "answers_within_slo": a["answers_within_slo"],
                "errors": a["errors"],
                "default_outputs": a["default_outputs"],
                "window": a["window"],
            }
        )
    models = []
    for key, m in snap["models"].items():
        models.append(
            {
                "key": key,
                **{
                    k: v
                    for k, v in m.items()
                    if k not in ("batch_size", "batch_latency_seconds", "container_latency_seconds")
                },
                "container_latency_mean_seconds": _mean(m["container_latency_seconds"]),
            }
        )
    return {
        "pipelines": _pipelines(snap),
        "server": {
            "query_url": info.query_url,
            "management_url": info.management_url,
            "pid": os.getpid(),
            "uptime_seconds": snap["uptime_seconds"],
            "window_seconds": snap["window_seconds"],
            "interval_seconds": metrics.sampler.interval,
        },
        "apps": apps,
        "models": models,
        "cache": snap["cache"],
        "series": _series(metrics),
    }


def _pipelines(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """Each pipeline: its figures as an app, its stages' and edges' counters."""
    out = []
    for name, p in snap["pipelines"].items():
        a = snap["apps"].get(name, {})
        stages = [
            {
                "name": stage,
                **{k: v for k, v in c.items() if k != "latency_seconds"},
                "latency_mean_seconds": _mean(c["latency_seconds"]),
            }
            for stage, c in p["stages"].items()
        ]
        out.append(
            {
                "name": name,
                "input_type": a.get("input_type"),
                "slo_seconds": a.get("slo_seconds"),
                "requests": a.get("requests", 0),
                "answers_within_slo": a.get("answers_within_slo", 0),
                "default_outputs": a.get("default_outputs", {}),
                "window": a.get("window"),
                "entry": p["entry"],
                "stages": stages,
                "edges": p["edges"],
            }
        )
    return out


def _mean(h: dict[str, Any]) -> float | None:
    return h["sum"] / h["count"] if h["count"] else None


#: The page may not be framed by another site (clickjacking), nor its files sniffed
#: into another type.
_STATIC_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def install(router: Router, metrics: ServerMetrics, dataplane: QueryView, info: ServerInfo) -> None:
    """Add ``/dashboard``, its script and ``/dashboard/data`` to ``router``.

    The routes check no token themselves: the management port's guard does, for
    ``/dashboard/data`` as for every management call.
    """

    def static(request: Request, params: dict[str, str]) -> Response:
        name, content_type = _STATIC[request.path]
        return Response(200, _static(name), content_type, _STATIC_HEADERS)

    def data(request: Request, params: dict[str, str]) -> Response:
        body = dashboard_data(metrics, dataplane, info)
        return json_response(body, headers={"Cache-Control": "no-store"})

    for path in _STATIC:
        router.add("GET", path, static)
    router.add("GET", "/dashboard/data", data)
