"""The management REST API (Clipper's ``/admin/...``) on the management port.

Wire rules that Clipper's own ``clipper_admin`` client depends on: every call is a
``POST /admin/<name>`` with a JSON body; success is exactly HTTP 200; errors are
400 with a JSON message; looking up something unknown answers 200 with ``{}``;
model versions are strings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from clipper_core import dashboard, runtime_env
from clipper_core.auth import WWW_AUTHENTICATE, check_admin, validate_api_keys
from clipper_core.clipper_api import validate_input_type
from clipper_core.errors import BadInput, ClipperError, Unauthorized
from clipper_core.http import Request, Response, Router, error_response, json_response
from clipper_core.http.same_origin import SameOriginPolicy
from clipper_core.state import AppRecord, ModelRecord

if TYPE_CHECKING:
    from clipper_core.server import ClipperServer

Body = dict[str, Any]
Handler = Callable[[Body], Awaitable[Any]]


def _body(request: Request) -> Body:
    if not request.body.strip():
        return {}
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    return body


def _str(body: Body, key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if value is None:
        raise BadInput(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInput(f"field {key!r} must be a string")
    return str(value)


def _int(body: Body, key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise BadInput(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"field {key!r} must be an integer")
    return value


def _str_list(body: Body, key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"field {key!r} must be a list of strings")
    return list(value)


def _app_dict(rec: AppRecord, linked: list[str]) -> dict[str, Any]:
    return {
        "name": rec.name,
        "input_type": rec.input_type,
        "default_output": rec.default_output,
        "latency_slo_micros": rec.slo_micros,
        "linked_models": linked,
        "policy": rec.policy,
        "policy_config": rec.policy_config,
    }


def _policy_config(body: Body) -> dict[str, Any]:
    config = body.get("policy_config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise BadInput("field 'policy_config' must be an object")
    return config


def admin_guard(
    token: str | None, policy: SameOriginPolicy
) -> Callable[[Request], Response | None]:
    """The management port's guard.

    First what a cross-site page could send is refused (see
    :mod:`clipper_core.http.same_origin`: foreign ``Host`` or ``Origin``, a body
    that is not JSON).  Then, when there is a token (always, unless the operator
    opted out), every request (every route, ping included) without
    ``Authorization: Bearer <token>`` gets a 401 JSON answer; the token is
    compared in constant time."""

    def guard(request: Request) -> Response | None:
        refused = policy.refusal(request)
        if refused is not None:
            return refused
        if not token or dashboard.is_public(request):
            return None
        try:
            check_admin(dashboard.auth_headers(request), token)
        except Unauthorized as exc:
            return error_response(401, exc.kind, str(exc), WWW_AUTHENTICATE)
        return None

    return guard


def install(router: Router, server: ClipperServer) -> None:
    """Add the management routes of ``server`` to ``router``."""

    def store() -> Any:
        return server._store()

    async def add_app(body: Body) -> Any:
        slo = _int(body, "latency_slo_micros", 100_000)
        if slo <= 0:
            raise BadInput("latency_slo_micros must be positive")
        name = _str(body, "name")
        if not name or "/" in name:
            raise BadInput(f"invalid application name {name!r}")
        api_keys = validate_api_keys(body.get("api_keys"))
        server.add_app(
            AppRecord(
                name=name,
                input_type=validate_input_type(_str(body, "input_type")),
                default_output=_str(body, "default_output", "None"),
                slo_micros=slo,
                policy=_str(body, "policy", "single"),
                policy_config=_policy_config(body),
            )
        )
        if api_keys:
            server.set_app_api_keys(name, api_keys)
        return "Success!"

    async def set_api_keys(body: Body) -> Any:
        # An empty list lets the app's queries through without a key again.
        server.set_app_api_keys(_str(body, "app_name"), validate_api_keys(body.get("api_keys")))
        return "Success!"

    async def delete_app(body: Body) -> Any:
        server.delete_app(_str(body, "name"))
        return "Success!"

    async def add_model(body: Body) -> Any:
        container = body.get("container") or {"kind": "external"}
        if not isinstance(container, dict):
            raise BadInput("field 'container' must be an object")
        python_path = body.get("python_path")
        if python_path is not None:
            if not isinstance(python_path, list):
                raise BadInput("field 'python_path' must be a list of folders")
            container["python_path"] = [str(p) for p in python_path]
        kind = container.get("kind")
        if kind == "closure" and "path" not in container and body.get("payload_b64") is None:
            raise BadInput("a closure model needs its pickled payload ('payload_b64')")
        cpus = body.get("cpus")
        if cpus is not None and (
            not isinstance(cpus, list) or not all(isinstance(c, int) and c >= 0 for c in cpus)
        ):
            raise BadInput("field 'cpus' must be a list of CPU numbers")
        mem = body.get("memory_limit_mb")
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int) or mem <= 0):
            raise BadInput("field 'memory_limit_mb' must be a positive integer")
        replicas = _int(body, "num_replicas", 1)
        if replicas < 0:
            raise BadInput("num_replicas must be >= 0")
        wait = _int(body, "batch_wait_micros", 0)
        if wait < 0:
            raise BadInput("batch_wait_micros must be >= 0")
        name = _str(body, "model_name")
        if not name or ":" in name or "/" in name:
            raise BadInput(f"invalid model name {name!r}")
        queue_capacity = body.get("queue_capacity")
        if queue_capacity is not None and (
            isinstance(queue_capacity, bool)
            or not isinstance(queue_capacity, int)
            or queue_capacity < 1
        ):
            raise BadInput("field 'queue_capacity' must be a positive integer")
        batch_timeout = body.get("batch_timeout")
        if batch_timeout is not None and (
            isinstance(batch_timeout, bool)
            or not isinstance(batch_timeout, int | float)
            or not math.isfinite(batch_timeout)
            or batch_timeout <= 0
        ):
            raise BadInput("field 'batch_timeout' must be a number of seconds > 0")
        rec = ModelRecord(
            name=name,
            version=_str(body, "model_version"),
            input_type=validate_input_type(_str(body, "input_type")),
            labels=_str_list(body, "labels"),
            container=container,
            batch_size=_int(body, "batch_size", -1),
            num_replicas=replicas,
            cpus=cpus,
            memory_limit_mb=mem,
            cache_enabled=bool(body.get("cache_enabled", True)),
            batch_wait_micros=wait,
            created_at=time.time(),
            queue_capacity=queue_capacity,
            batch_timeout=batch_timeout,
        )
        payload = body.get("payload_b64")
        if payload is not None and not isinstance(payload, str):
            raise BadInput("field 'payload_b64' must be a base64 string")
        await server.add_model(rec, payload_b64=payload)
        return "Success!"

    async def add_model_links(body: Body) -> Any:
        app = _str(body, "app_name")
        for model in _str_list(body, "model_names"):
            server.link(app, model)
        return "Success!"

    async def remove_model_links(body: Body) -> Any:
        app = _str(body, "app_name")
        for model in _str_list(body, "model_names"):
            server.unlink(app, model)
        return "Success!"

    async def set_model_version(body: Body) -> Any:
        server.set_model_version(_str(body, "model_name"), _str(body, "model_version"))
        return "Success!"

    async def get_all_applications(body: Body) -> Any:
        apps = store().list_apps()
        if body.get("verbose"):
            return [_app_dict(a, store().linked_models(a.name)) for a in apps]
        return [a.name for a in apps]

    async def get_application(body: Body) -> Any:
        rec = store().get_app(_str(body, "name"))
        return {} if rec is None else _app_dict(rec, store().linked_models(rec.name))

    async def get_linked_models(body: Body) -> Any:
        name = _str(body, "app_name")
        return [] if store().get_app(name) is None else store().linked_models(name)

    def model_dict(rec: ModelRecord) -> dict[str, Any]:
        current = store().get_current_version(rec.name)
        container = rec.container
        return {
            "model_name": rec.name,
            "model_version": rec.version,
            "input_type": rec.input_type,
            "labels": rec.labels,
            "container_name": container.get("kind", "external"),
            "model_data_path": container.get("path", ""),
            "is_current_version": current == rec.version,
            "batch_size": rec.batch_size,
            "num_replicas": rec.num_replicas,
            "cpus": rec.cpus,
            "memory_limit_mb": rec.memory_limit_mb,
            "cache_enabled": rec.cache_enabled,
            "batch_wait_micros": rec.batch_wait_micros,
            "queue_capacity": rec.queue_capacity,
            "batch_timeout": rec.batch_timeout,
        }

    async def get_model(body: Body) -> Any:
        rec = store().get_model(_str(body, "model_name"), _str(body, "model_version"))
        return {} if rec is None else model_dict(rec)

    async def get_all_models(body: Body) -> Any:
        models = store().list_models()
        if body.get("verbose"):
            return [model_dict(m) for m in models]
        return [f"{m.name}:{m.version}" for m in models]

    async def get_all_containers(body: Body) -> Any:
        out: list[Any] = []
        for model in server.dataplane.models.values():
            for mv in model.versions.values():
                for info in mv.replica_info():
                    if body.get("verbose"):
                        out.append({"model_name": mv.name, "model_version": mv.version, **info})
                    else:
                        out.append(f"{mv.name}:{mv.version}:{info['replica_id']}")
        return out

    async def delete_versioned_model(body: Body) -> Any:
        await server.delete_model_version(_str(body, "model_name"), _str(body, "model_version"))
        return "Success!"

    async def set_num_replicas(body: Body) -> Any:
        name = _str(body, "model_name")
        version = body.get("model_version") or store().get_current_version(name)
        if version is None:
            raise BadInput(f"model {name!r} has no current version")
        await server.set_num_replicas(name, str(version), _int(body, "num_replicas"))
        return "Success!"

    async def get_num_replicas(body: Body) -> Any:
        name = _str(body, "model_name")
        version = body.get("model_version") or store().get_current_version(name)
        rec = None if version is None else store().get_model(name, str(version))
        return {} if rec is None else {"num_replicas": rec.num_replicas, "version": rec.version}

    async def register_replica(body: Body) -> Any:
        address = _str(body, "address")
        replica = body.get("replica_id")
        replica_id = str(replica) if replica not in (None, "") else f"external-{address}"
        await server.register_replica(
            _str(body, "model_name"), _str(body, "model_version"), replica_id, address
        )
        return {"replica_id": replica_id}

    async def set_selection_policy(body: Body) -> Any:
        server.set_selection_policy(
            _str(body, "app_name"), _str(body, "policy"), _policy_config(body)
        )
        return "Success!"

    async def get_selection_state(body: Body) -> Any:
        name = _str(body, "app_name")
        app = server.dataplane.apps.get(name)
        if app is None:
            return {}
        uid = body.get("uid")
        if uid is not None and (isinstance(uid, bool) or not isinstance(uid, int) or uid < 0):
            raise BadInput("field 'uid' must be an integer >= 0")
        return server.selection.get(name).describe(app.linked_models, uid)

    async def get_state(body: Body) -> Any:
        return server.inspect()

    async def shutdown(body: Body) -> Any:
        server.request_shutdown()
        return "Shutting down"

    operations: dict[str, Handler] = {
        "add_app": add_app,
        "set_api_keys": set_api_keys,
        "delete_app": delete_app,
        "delete_application": delete_app,
        "add_model": add_model,
        "add_model_links": add_model_links,
        "remove_model_links": remove_model_links,
        "set_model_version": set_model_version,
        "get_all_applications": get_all_applications,
        "get_application": get_application,
        "get_linked_models": get_linked_models,
        "get_model": get_model,
        "get_all_models": get_all_models,
        "get_all_containers": get_all_containers,
        "delete_versioned_model": delete_versioned_model,
        "set_num_replicas": set_num_replicas,
        "get_num_replicas": get_num_replicas,
        "register_replica": register_replica,
        "get_state": get_state,
        "set_selection_policy": set_selection_policy,
        "get_selection_state": get_selection_state,
        "shutdown": shutdown,
    }
    # Per-model virtual environments: start a build, follow its log.
    operations.update(runtime_env.admin_operations(server))

    async def dispatch(request: Request, params: dict[str, str]) -> Response:
        handler = operations.get(params["op"])
        if handler is None:
            return error_response(404, "not_found", f"unknown management call {params['op']!r}")
        try:
            result = await handler(_body(request))
        except ClipperError as exc:
            status = 500 if exc.http_status >= 500 else 400
            return error_response(status, exc.kind, str(exc))
        return json_response(result)

    async def ping(request: Request, params: dict[str, str]) -> Response:
        return json_response("pong")

    router.add("POST", "/admin/{op}", dispatch)
    router.add("GET", "/admin/ping", ping)
