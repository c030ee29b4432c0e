"""The query port's paths: Clipper's ``/<app>/predict`` and ``/<app>/update``
(bodies as ``clipper_api.parse_predict`` and ``selection.api`` check them), the
Open Inference Protocol's ``/v2/...`` (``oip.tensors``), metrics, health and
this document."""

from __future__ import annotations

from typing import Any

from clipper_core.clipper_api import MAX_BATCH
from clipper_core.openapi.schemas import (
    DEADLINE_PARAMETER,
    NAME,
    Schema,
    arr,
    errors,
    json_content,
    obj,
    ref,
    reply,
    text,
)
from model_containers.tensors import DATATYPES

#: Queries need an API key only for apps that have some: none, or one of the two.
QUERY_SECURITY: list[dict[str, list[str]]] = [{}, {"appApiKey": []}, {"appBearer": []}]
#: What a query may answer besides 200.
QUERY_ERRORS = (400, 401, 403, 404, 413, 429, 500, 503, 504)

_PARAMETERS = {"type": "object", "description": "Free-form parameters."}
#: An input whose bytes follow the JSON part (the binary tensor extension).
_BINARY_INPUT = {
    "required": ["parameters"],
    "properties": {"parameters": {"required": ["binary_data_size"]}},
}
_SHAPE = arr({"type": "integer", "minimum": 0})
_TENSOR_META = obj(
    {"name": text(), "datatype": text(), "shape": arr({"type": "integer"})},
    ("name", "datatype", "shape"),
)
_UID = {"type": "integer", "minimum": 0, "description": "Whose selection state (0: the app's)."}
_VERSION = {
    "anyOf": [text(minLength=1), {"type": "integer"}],
    "description": "Pin a model version.",
}

SCHEMAS: dict[str, Schema] = {
    "PredictRequest": {
        "oneOf": [
            obj(
                {"input": ref("Input"), "version": _VERSION, "uid": _UID},
                ("input",),
                extra=True,
            ),
            obj(
                {
                    "input_batch": arr(ref("Input"), minItems=1, maxItems=MAX_BATCH),
                    "version": _VERSION,
                    "uid": _UID,
                },
                ("input_batch",),
                extra=True,
            ),
        ],
        "description": "Exactly one of ``input`` and ``input_batch``; each input follows"
        " the application's input type.",
    },
    "Prediction": obj(
        {
            "query_id": {"type": "integer"},
            "output": {"description": "The model's output (any JSON)."},
            "default": {"type": "boolean"},
            "default_explanation": text(),
            "model": text("The ``name:version`` whose output this is."),
            "models": arr({"type": "string"}),
            "confidence": {"type": "number"},
            "missing": arr({"type": "string"}),
        },
        ("query_id", "output", "default"),
    ),
    "BatchPrediction": obj({"batch_predictions": arr(ref("Prediction"))}, ("batch_predictions",)),
    "UpdateRequest": obj(
        {
            "input": ref("Input"),
            "label": {
                "anyOf": [
                    {"type": ["number", "string", "boolean"]},
                    arr({"type": "number"}),
                ],
                "description": "The true output for ``input``.",
            },
            "uid": _UID,
        },
        ("input", "label"),
        extra=True,
    ),
    "UpdateReply": obj(
        {
            "success": {"type": "boolean"},
            "uid": {"type": "integer"},
            "state_uid": {
                "type": "integer",
                "description": "The uid whose policy state learned: 0 when the input was"
                " queried without a uid and not with this one.",
            },
            "models": arr(text("A ``name:version`` whose output was scored.")),
        },
        ("success", "uid", "state_uid", "models"),
    ),
    "ServerMetadata": obj(
        {"name": text(), "version": text(), "extensions": arr(text())},
        ("name", "version", "extensions"),
    ),
    "TensorMetadata": _TENSOR_META,
    "ModelMetadata": obj(
        {
            "name": text(),
            "versions": arr(text()),
            "platform": text(),
            "inputs": arr(ref("TensorMetadata")),
            "outputs": arr(ref("TensorMetadata")),
        },
        ("name", "platform", "inputs", "outputs"),
    ),
    "InferenceRequest": obj(
        {
            "id": text(),
            "parameters": _PARAMETERS,
            "inputs": arr(
                obj(
                    {
                        "name": text(minLength=1),
                        "datatype": {"type": "string", "enum": list(DATATYPES)},
                        "shape": _SHAPE,
                        "parameters": _PARAMETERS,
                        "data": {"description": "The elements, flat or nested (row-major)."},
                    },
                    ("name", "datatype", "shape"),
                    extra=True,
                )
                | {"anyOf": [{"required": ["data"]}, _BINARY_INPUT]},
                minItems=1,
            ),
            "outputs": arr(
                obj({"name": text(minLength=1), "parameters": _PARAMETERS}, ("name",), extra=True)
            ),
        },
        ("inputs",),
        extra=True,
    ),
    "InferenceResponse": obj(
        {
            "model_name": text(),
            "model_version": text(),
            "id": text(),
            "parameters": _PARAMETERS,
            "outputs": arr(
                obj(
                    {
                        "name": text(),
                        "datatype": text(),
                        "shape": arr({"type": "integer"}),
                        "parameters": _PARAMETERS,
                        "data": arr({}),
                    },
                    ("name", "datatype", "shape"),
                )
            ),
        },
        ("model_name", "outputs"),
    ),
}


def _path_param(name: str, example: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": NAME, "example": example}


def _clipper_paths() -> dict[str, Any]:
    app = _path_param("app", "hello")
    predict = {
        "operationId": "predict",
        "tags": ["query"],
        "summary": "Ask an application for predictions (Clipper's wire format).",
        "security": QUERY_SECURITY,
        "parameters": [app, DEADLINE_PARAMETER],
        "requestBody": {
            "required": True,
            "content": json_content(ref("PredictRequest"), {"input": [1.0, 2.0, 3.0]}),
        },
        "responses": {
            "200": reply(
                "One prediction, or ``batch_predictions`` for an ``input_batch``.",
                {"anyOf": [ref("Prediction"), ref("BatchPrediction")]},
                {"query_id": 0, "output": 6.0, "default": False, "model": "sum:1"},
            ),
            **errors(*QUERY_ERRORS),
        },
    }
    update = {
        "operationId": "update",
        "tags": ["query"],
        "summary": "Feedback: the true label of an input, for the app's selection policy.",
        "security": QUERY_SECURITY,
        "parameters": [app],
        "requestBody": {
            "required": True,
            "content": json_content(ref("UpdateRequest"), {"input": [1.0, 2.0], "label": 3.0}),
        },
        "responses": {
            "200": reply("The policy state is stored.", ref("UpdateReply")),
            **errors(400, 401, 403, 404, 413, 429, 500, 503),
        },
    }
    return {"/{app}/predict": {"post": predict}, "/{app}/update": {"post": update}}


def _get(operation_id: str, summary: str, responses: dict[str, Any], **more: Any) -> Any:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["query"],
            "summary": summary,
            "security": [],
            "responses": responses,
            **more,
        }
    }


def _oip_paths() -> dict[str, Any]:
    model = _path_param("model", "sum")
    version = _path_param("version", "1")
    out: dict[str, Any] = {
        "/v2": _get(
            "oip_server_metadata",
            "OIP server metadata.",
            {"200": reply("Name, version, extensions.", ref("ServerMetadata"))},
        ),
        "/v2/health/live": _get(
            "oip_live", "OIP liveness.", {"200": reply("Live.", obj({"live": {"const": True}}))}
        ),
        "/v2/health/ready": _get(
            "oip_ready",
            "OIP readiness: 503 until every model can serve.",
            {
                "200": reply("Ready.", obj({"ready": {"const": True}})),
                "503": {
                    "description": "Not ready.",
                    "content": json_content(obj({"ready": {"const": False}})),
                },
            },
        ),
    }
    ready = obj({"name": text(), "ready": {"type": "boolean"}}, ("name", "ready"))
    for suffix, params in (("", [model]), ("/versions/{version}", [model, version])):
        base = "/v2/models/{model}" + suffix
        tag = "_version" if suffix else ""
        out[base] = _get(
            f"oip_model_metadata{tag}",
            "A model's (or pipeline's) inputs and outputs.",
            {"200": reply("Metadata.", ref("ModelMetadata")), **errors(400, 404, oip=True)},
            parameters=params,
        )
        out[base + "/ready"] = _get(
            f"oip_model_ready{tag}",
            "Whether the model can serve now (400 when not: tritonclient reads any"
            " non-200 as not ready).",
            {
                "200": reply("Ready.", ready),
                "400": {
                    "description": "Not ready (or a bad name).",
                    "content": json_content({"anyOf": [ready, ref("OipError")]}),
                },
                **errors(404, oip=True),
            },
            parameters=params,
        )
        out[base + "/infer"] = {"post": _infer(f"oip_infer{tag}", params)}
    return out


def _infer(operation_id: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    header = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "Binary tensor extension: the byte length of the JSON part;"
        " the tensors' bytes follow it.",
        "schema": {"type": "integer", "minimum": 0},
    }
    example = {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]
    }
    return {
        "operationId": operation_id,
        "tags": ["query"],
        "summary": "OIP inference (JSON, or JSON + binary tensor data).",
        "security": QUERY_SECURITY,
        "parameters": [*params, header],
        "requestBody": {
            "required": True,
            "content": {
                **json_content(ref("InferenceRequest"), example),
                "application/octet-stream": {"schema": {}},
            },
        },
        "responses": {
            "200": {
                "description": "The outputs (binary when asked for binary data).",
                "headers": {"Inference-Header-Content-Length": {"schema": {"type": "string"}}},
                "content": {
                    **json_content(ref("InferenceResponse")),
                    "application/octet-stream": {"schema": {}},
                },
            },
            **errors(*QUERY_ERRORS, oip=True),
        },
    }


def paths(document_path: str) -> dict[str, Any]:
    """The query port's path items (``document_path``: where it serves this document)."""
    out = {**_clipper_paths(), **_oip_paths()}
    out["/health"] = _get(
        "health",
        "Liveness of the query port.",
        {"200": reply("Alive.", obj({"status": {"const": "ok"}}, ("status",)))},
    )
    out["/metrics"] = _get(
        "metrics",
        "JSON (Clipper's ``inspect_instance``) when the client names no format or"
        " asks for it; Prometheus text when it accepts ``text/plain`` or OpenMetrics"
        " (every scraper does) or asks ``?format=prometheus``.",
        {
            "200": {
                "description": "The metrics.",
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
        parameters=[
            {
                "name": "format",
                "in": "query",
                "required": False,
                "description": "Overrides ``Accept``.",
                "schema": {"enum": ["json", "prometheus"]},
            }
        ],
    )
    url: Schema = {"type": ["string", "null"], "description": "That process's own query port."}
    process: dict[str, Schema] = {
        "worker": {"type": "integer", "minimum": 0, "description": "0: the primary."},
        "pid": {"type": "integer"},
        "direct_url": url,
    }
    out["/frontend"] = _get(
        "frontend",
        "Which frontend process answered on this connection (``clipper serve"
        " --workers N``); on the primary, also its query workers.",
        {
            "200": reply(
                "The process.",
                obj(
                    {
                        **process,
                        "workers": arr(
                            obj(
                                {**process, "restarts": {"type": "integer", "minimum": 0}},
                                ("worker", "pid", "restarts", "direct_url"),
                            ),
                            description="The primary's query workers (only on the primary).",
                        ),
                    },
                    ("worker", "pid", "direct_url"),
                ),
            )
        },
    )
    out[document_path] = _get(
        "query_openapi",
        "This document.",
        {"200": {"description": "OpenAPI 3.1", "content": json_content({"type": "object"})}},
    )
    return out


__all__ = ["QUERY_SECURITY", "SCHEMAS", "paths"]
