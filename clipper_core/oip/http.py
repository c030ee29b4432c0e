"""The Open Inference Protocol's REST API on the query port (KServe v2 / Triton).

Routes (added to the query port's router, next to Clipper's ``/<app>/predict``)::

    GET  /v2                                        server metadata
    GET  /v2/health/live | /v2/health/ready         200 when live / ready
    GET  /v2/models/{m}[/versions/{v}]              model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready        200 when ready, else 400
    POST /v2/models/{m}[/versions/{v}]/infer        inference (JSON or binary)

Errors are ``{"error": "<message>"}`` with the error's status: 400 for anything
wrong with the request, 404 for an unknown model or version, 503 when the model
is overloaded or has no replica (no live replica: ``"models"`` names the model
versions), 504 when its deadline passes.
"""

from __future__ import annotations

import orjson

from clipper_core.admission import deadline_from_headers
from clipper_core.errors import BadInput, ClipperError, NoLiveReplica
from clipper_core.http import Request, Response, Router
from clipper_core.http.messages import error_headers
from clipper_core.oip.service import InferenceService
from clipper_core.oip.tensors import HEADER_LENGTH, encode_http_response, parse_http_request
from model_containers import hop_trace

__all__ = ["install"]

_JSON = "application/json"


def _json(obj: object, status: int = 200) -> Response:
    return Response(status, orjson.dumps(obj), _JSON)


def error_response(exc: ClipperError) -> Response:
    """An OIP error reply: ``{"error": message}`` with the error's HTTP status."""
    reply: dict[str, object] = {"error": str(exc) or exc.kind}
    if isinstance(exc, NoLiveReplica):
        reply["models"] = exc.models  # which ones to scale up or start
    body = orjson.dumps(reply)
    return Response(exc.http_status, body, _JSON, error_headers(exc))


def install(router: Router, service: InferenceService) -> None:
    """Add the OIP routes over ``service`` to the query port's ``router``; requests
    pass ``service.gate`` as Clipper's ``/predict`` does."""
    gate = service.gate

    def server_metadata(request: Request, params: dict[str, str]) -> Response:
        return _json(service.server_metadata())

    def live(request: Request, params: dict[str, str]) -> Response:
        return _json({"live": True})

    def ready(request: Request, params: dict[str, str]) -> Response:
        ok = service.server_ready()
        return _json({"ready": ok}, 200 if ok else 503)

    async def model_metadata(request: Request, params: dict[str, str]) -> Response:
        try:
            meta = await service.model_metadata(
                params["model"], params.get("version"), request.headers
            )
            return _json(meta)
        except ClipperError as exc:
            return error_response(exc)

    def model_ready(request: Request, params: dict[str, str]) -> Response:
        name, version = params["model"], params.get("version")
        try:
            service.resolve(name, version)
        except ClipperError as exc:
            return error_response(exc)
        ok = service.model_ready(name, version)
        # tritonclient (and KServe's probes) read any non-200 as "not ready".
        return _json({"name": name, "ready": ok}, 200 if ok else 400)

    async def infer(request: Request, params: dict[str, str]) -> Response:
        if hop_trace.ENABLED:
            hop_trace.mark("handler_started")
        try:
            client = gate.admit(request.headers, request.remote)
        except ClipperError as exc:
            return error_response(exc)
        try:
            target = service.resolve(params["model"], params.get("version"))
            service.check_access(target, request.headers)
            deadline = deadline_from_headers(request.headers)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise BadInput(f"Content-Encoding {encoding!r} is not supported; send identity")
            if hop_trace.ENABLED:
                hop_trace.mark("admitted")
            parsed = parse_http_request(request.body, request.headers.get(HEADER_LENGTH))
            if hop_trace.ENABLED:
                hop_trace.mark("request_decoded")
            reply = await service.infer(target, parsed, deadline=deadline)
            if hop_trace.ENABLED:
                hop_trace.mark("handler_resumed")
            body, header_length = encode_http_response(
                reply.model_name, reply.model_version, reply.id, reply.parameters, reply.outputs
            )
        except ClipperError as exc:
            return error_response(exc)
        finally:
            gate.release(client)
        if header_length is None:
            return Response(200, body, _JSON)
        return Response(
            200,
            body,
            "application/octet-stream",
            {"Inference-Header-Content-Length": str(header_length)},
        )

    router.add("GET", "/v2", server_metadata)
    router.add("GET", "/v2/health/live", live)
    router.add("GET", "/v2/health/ready", ready)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        router.add("GET", base, model_metadata)
        router.add("GET", f"{base}/ready", model_ready)
        router.add("POST", f"{base}/infer", infer)
