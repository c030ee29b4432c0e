"""The management port's paths: Clipper's ``POST /admin/<call>`` calls (their
bodies as ``admin_requests`` checks them, their replies as ``admin_api`` shapes
them), ping, the replicas' bundle route, the dashboard and this document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipper_core.openapi.records import EMPTY as _EMPTY
from clipper_core.openapi.schemas import (
    NAME,
    VERSION,
    Schema,
    arr,
    errors,
    json_content,
    obj,
    ref,
    reply,
    text,
)
from clipper_core.selection import policy_names
from clipper_core.store.records import CONTROLLERS, MAX_SLO_MICROS

#: The management calls' security: the admin token.
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
#: What every management call may answer besides 200.
CALL_ERRORS = (400, 401, 403, 404, 415, 500, 503)

_MESSAGE = text("``Success!``, or for a repeated registration ``unchanged: ...``/``updated: ...``.")
_SUCCESS = {"type": "string", "const": "Success!"}
_VERBOSE = {"type": "boolean", "description": "Objects instead of names."}
_STRINGS = arr({"type": "string"})
_NAMES = {"anyOf": [{"type": "string"}, _STRINGS], "description": "One name or a list."}
_POLICY = {"type": "string", "enum": policy_names(), "description": "A selection policy."}
_MODEL_KEY = {"model_name": NAME, "model_version": VERSION}


@dataclass(frozen=True)
class Call:
    """One ``POST /admin/<name>`` call: its body and its 200 reply."""

    summary: str
    body: Schema
    result: Schema
    example: dict[str, Any] | None = None
    answer: Any = None
    #: Who may call it, when not the management token alone.
    security: list[dict[str, list[str]]] | None = None


def _body(properties: dict[str, Schema], *required: str) -> Schema:
    # Unknown fields are ignored by the server.
    return obj(properties, required, extra=True)


_ADD_MODEL = _body(
    {
        **_MODEL_KEY,
        "input_type": ref("InputType"),
        "labels": _NAMES,
        "container": {"type": "object", "description": "How replicas start (``kind``...)."},
        "container_name": text(minLength=1),
        "python_path": _STRINGS,
        "payload_b64": text("The pickled closure or bundle, base64."),
        "cpus": arr({"type": "integer", "minimum": 0}),
        "num_replicas": {"type": "integer", "minimum": 0},
        "batch_size": {"type": "integer"},
        "batch_wait_micros": {"type": "integer", "minimum": 0},
        "memory_limit_mb": {"type": ["integer", "null"], "minimum": 1},
        "queue_capacity": {"type": ["integer", "null"], "minimum": 1},
        "batch_timeout": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "controller": {"enum": [*CONTROLLERS, None]},
        "cache_enabled": {"type": "boolean"},
        "make_current": {
            "type": "boolean",
            "description": "false: keep the current version (a canary).  Default true.",
        },
    },
    "model_name",
    "model_version",
    "input_type",
)
_LINKS = _body({"app_name": NAME, "model_names": _NAMES}, "app_name")
_REPLICAS = _body(
    {"model_name": NAME, "model_version": VERSION, "num_replicas": {"type": "integer"}},
    "model_name",
    "num_replicas",
)
_APPS = {"anyOf": [_STRINGS, arr(ref("AppInfo"))]}

CALLS: dict[str, Call] = {
    "add_app": Call(
        "Register an application (again: a no-op, an update, or a refusal naming the change).",
        _body(
            {
                "name": NAME,
                "input_type": ref("InputType"),
                "default_output": text(),
                "latency_slo_micros": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_SLO_MICROS,
                },
                "policy": _POLICY,
                "policy_config": {"type": "object"},
                "api_keys": {"type": ["array", "null"], "items": ref("ApiKey")},
            },
            "name",
            "input_type",
        ),
        _MESSAGE,
        {"name": "hello", "input_type": "doubles", "latency_slo_micros": 100000},
        "Success!",
    ),
    "set_api_keys": Call(
        "Replace an application's API keys (an empty list lifts the requirement).",
        _body({"app_name": NAME, "api_keys": arr(ref("ApiKey"))}, "app_name"),
        _SUCCESS,
        {"app_name": "hello", "api_keys": ["k3y-0f-at-least-16"]},
        "Success!",
    ),
    "delete_app": Call("Delete an application.", _body({"name": NAME}, "name"), _SUCCESS),
    "delete_application": Call(
        "Delete an application (Clipper's name for ``delete_app``).",
        _body({"name": NAME}, "name"),
        _SUCCESS,
    ),
    "add_model": Call(
        "Register a model version; it becomes current once its replicas serve.",
        _ADD_MODEL,
        _MESSAGE,
        {"model_name": "sum", "model_version": "1", "input_type": "doubles"},
        "Success!",
    ),
    "add_model_links": Call(
        "Link models to an application.",
        _LINKS,
        _MESSAGE,
        {"app_name": "hello", "model_names": ["sum"]},
        "Success!",
    ),
    "remove_model_links": Call("Unlink models from an application.", _LINKS, _SUCCESS),
    "set_model_version": Call(
        "Make a version current.",
        _body(_MODEL_KEY, "model_name", "model_version"),
        _SUCCESS,
        {"model_name": "sum", "model_version": "1"},
        "Success!",
    ),
    "get_all_applications": Call(
        "List the applications.", _body({"verbose": _VERBOSE}), _APPS, {"verbose": False}
    ),
    "get_application": Call(
        "One application, with the model that answers it.",
        _body({"name": NAME}, "name"),
        {"anyOf": [ref("AppInfo"), _EMPTY]},
        {"name": "hello"},
    ),
    "get_linked_models": Call(
        "The models linked to an application.",
        _body({"app_name": NAME}, "app_name"),
        _STRINGS,
        {"app_name": "hello"},
        ["sum"],
    ),
    "get_model": Call(
        "One model version.",
        _body(_MODEL_KEY, "model_name", "model_version"),
        {"anyOf": [ref("ModelInfo"), _EMPTY]},
        {"model_name": "sum", "model_version": "1"},
    ),
    "get_all_models": Call(
        "List the model versions (``name:version``).",
        _body({"verbose": _VERBOSE}),
        {"anyOf": [_STRINGS, arr(ref("ModelInfo"))]},
        {},
        ["sum:1"],
    ),
    "get_all_containers": Call(
        "List the connected replicas (``name:version:replica``).",
        _body({"verbose": _VERBOSE}),
        {"anyOf": [_STRINGS, arr(ref("ContainerInfo"))]},
    ),
    "delete_versioned_model": Call(
        "Delete a model version.", _body(_MODEL_KEY, "model_name", "model_version"), _SUCCESS
    ),
    "set_num_replicas": Call(
        "Scale a version (default: the current one).",
        _REPLICAS,
        _SUCCESS,
        {"model_name": "sum", "num_replicas": 2},
        "Success!",
    ),
    "get_num_replicas": Call(
        "A version's replica count (default: the current version).",
        _body({"model_name": NAME, "model_version": VERSION}, "model_name"),
        {
            "anyOf": [
                obj({"num_replicas": {"type": "integer"}, "version": text()}, ("num_replicas",)),
                _EMPTY,
            ]
        },
        {"model_name": "sum"},
        {"num_replicas": 1, "version": "1"},
    ),
    "register_replica": Call(
        "Connect a replica started elsewhere (``grpc://`` or ``grpcs://`` address)."
        " The version's registration token also opens it, for replica ids that are not"
        " numbers.",
        _body(
            {**_MODEL_KEY, "address": NAME, "replica_id": VERSION, "tls": {"type": "boolean"}},
            "model_name",
            "model_version",
            "address",
        ),
        obj({"replica_id": text()}, ("replica_id",)),
        security=[*ADMIN_SECURITY, {"registerToken": []}],
    ),
    "get_replica_token": Call(
        "The tokens and bundle path a remote replica of this version needs: token"
        " (its --token-file, what frontends call it with), bundle_token (its"
        " --bundle-token-file), register_token (its --register-token-file).",
        _body(_MODEL_KEY, "model_name", "model_version"),
        obj(
            {
                "token": text(),
                "bundle_token": text(),
                "register_token": text(),
                "bundle_path": text(),
            },
            ("token", "bundle_token", "register_token", "bundle_path"),
        ),
    ),
    "get_state": Call(
        "The server's figures (Clipper's ``inspect_instance``).",
        _body({}),
        {"type": "object"},
    ),
    "apply": Call(
        "Make the state what a declarative file says (the changes, or with dry_run those"
        " that would be made).",
        obj(
            {
                "models": arr(ref("ApplyModel")),
                "apps": arr(ref("ApplyApp")),
                "pipelines": arr(ref("ApplyPipeline")),
                "prune": {"type": "boolean"},
                "dry_run": {"type": "boolean"},
            }
        ),
        arr(ref("Change")),
        {"apps": [{"name": "hello", "input_type": "doubles"}], "dry_run": True},
    ),
    "set_selection_policy": Call(
        "Set an application's model-selection policy.",
        _body(
            {"app_name": NAME, "policy": _POLICY, "policy_config": {"type": "object"}},
            "app_name",
            "policy",
        ),
        _SUCCESS,
        {"app_name": "hello", "policy": "exp3"},
        "Success!",
    ),
    "get_selection_state": Call(
        "An application's learned selection state (``uid``: one user's).",
        _body({"app_name": NAME, "uid": {"type": ["integer", "null"], "minimum": 0}}, "app_name"),
        {"type": "object"},
    ),
    "add_pipeline": Call(
        "Register a pipeline (a DAG of stages served as one application).",
        ref("PipelineRequest"),
        _SUCCESS,
        {"name": "chain", "stages": [{"name": "a", "model": "sum"}], "edges": []},
        "Success!",
    ),
    "update_pipeline": Call(
        "Replace a pipeline's definition.",
        ref("PipelineRequest"),
        obj({"changed": {"type": "boolean"}}, ("changed",)),
    ),
    "set_pipeline_api_keys": Call(
        "Replace a pipeline's API keys (an empty list lifts the requirement).",
        _body({"name": NAME, "api_keys": arr(ref("ApiKey"))}, "name"),
        _SUCCESS,
        {"name": "chain", "api_keys": ["k3y-0f-at-least-16"]},
        "Success!",
    ),
    "delete_pipeline": Call("Delete a pipeline.", _body({"name": NAME}, "name"), _SUCCESS),
    "get_pipeline": Call(
        "One pipeline.", _body({"name": NAME}, "name"), {"anyOf": [ref("Pipeline"), _EMPTY]}
    ),
    "get_all_pipelines": Call(
        "List the pipelines.",
        _body({"verbose": _VERBOSE}),
        {"anyOf": [_STRINGS, arr(ref("Pipeline"))]},
    ),
    "shutdown": Call("Stop the server.", _body({}), {"type": "string", "const": "Shutting down"}),
    "build_runtime_env": Call(
        "Build a per-model virtual environment (the local container manager only).",
        _body({"requirements": arr({"type": "string"}, minItems=1)}, "requirements"),
        ref("RuntimeEnv"),
    ),
    "get_runtime_env": Call(
        "A runtime environment's build status and its log from ``offset``.",
        _body(
            {
                "env_id": text(pattern="^[0-9a-f]{1,64}$"),
                "offset": {"type": ["integer", "null"], "minimum": 0},
            },
            "env_id",
        ),
        ref("RuntimeEnv"),
    ),
}


def _call_operation(name: str, call: Call) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": call.body}
    if call.example is not None:
        body["example"] = call.example
    return {
        "post": {
            "operationId": name,
            "tags": ["management"],
            "summary": call.summary,
            "security": ADMIN_SECURITY if call.security is None else call.security,
            "requestBody": {"required": True, "content": {"application/json": body}},
            "responses": {
                "200": reply("The call's result.", call.result, call.answer),
                **errors(*CALL_ERRORS),
            },
        }
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["management"],
            "summary": summary,
            "security": ADMIN_SECURITY,
            "responses": responses,
            **more,
        }
    }


def paths(document_path: str) -> dict[str, Any]:
    """The management port's path items (``document_path``: where it serves this
    document)."""
    guard = errors(401, 403)
    out = {f"/admin/{name}": _call_operation(name, call) for name, call in CALLS.items()}
    out["/admin/ping"] = _get(
        "ping",
        "Liveness of the management port.",
        {"200": reply("Alive.", {"const": "pong"}), **guard},
    )
    out["/admin/bundle/{model}/{version}"] = _get(
        "get_bundle",
        "A deployed version's payload, for a replica on another host.",
        {
            "200": {
                "description": "The bundle's bytes.",
                "headers": {
                    "X-Clipper-Bundle-Kind": {"schema": {"type": "string"}},
                    "X-Clipper-Bundle-SHA256": {"schema": {"type": "string"}},
                },
                "content": {"application/octet-stream": {"schema": {}}},
            },
            **errors(401, 403, 404),
        },
        security=[{"replicaToken": []}],
        parameters=[
            {"name": "model", "in": "path", "required": True, "schema": NAME},
            {"name": "version", "in": "path", "required": True, "schema": NAME},
            {
                "name": "sha256",
                "in": "query",
                "required": False,
                "description": "The digest the replica expects (``get_replica_token``'s"
                " ``bundle_path`` carries it); the replica compares it with the"
                " ``X-Clipper-Bundle-SHA256`` of the answer.",
                "schema": {"type": "string"},
            },
        ],
    )
    for path, media, what in (
        ("/dashboard", "text/html", "The dashboard page"),
        ("/dashboard/dashboard.js", "text/javascript", "The dashboard's script"),
    ):
        out[path] = _get(
            "dashboard_js" if path.endswith(".js") else "dashboard",
            f"{what} (public: it holds no data).",
            {
                "200": {"description": what, "content": {media: {"schema": {"type": "string"}}}},
                **errors(403),
            },
            security=[],
        )
    out["/dashboard/data"] = _get(
        "dashboard_data",
        "What the dashboard draws (``?token=`` is accepted in place of the header).",
        {"200": reply("Apps, models, replicas and series.", {"type": "object"}), **guard},
    )
    out[document_path] = _get(
        "management_openapi",
        "This document.",
        {"200": {"description": "OpenAPI 3.1", "content": json_content({"type": "object"})}}
        | guard,
    )
    return out


__all__ = ["ADMIN_SECURITY", "CALLS", "Call", "paths"]
