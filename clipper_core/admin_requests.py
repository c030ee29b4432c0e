"""The management API's JSON: request bodies checked into records, records
shaped into Clipper's replies.

Field names and reply shapes follow Clipper's ``clipper_admin`` (model versions
are strings, an unknown name answers ``{}``); each bad field gets a ``BadInput``
that names it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from clipper_core.clipper_api import validate_input_type
from clipper_core.dataplane import QueryView
from clipper_core.errors import BadInput
from clipper_core.http import Request
from clipper_core.model_bundle import check_payload_filename
from clipper_core.store.records import (
    MAX_SLO_MICROS,
    AppRecord,
    ModelRecord,
    PipelineRecord,
    check_int,
)

Body = dict[str, Any]

#: What Clipper's ``register_model`` sends as ``container_name`` for a model
#: whose containers are started by hand.
NO_CONTAINER = "NO_CONTAINER"


def parse_body(request: Request) -> Body:
    if not request.body.strip():
        return {}
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    return body


def field_str(body: Body, key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if value is None:
        raise BadInput(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInput(f"field {key!r} must be a string")
    return str(value)


def field_int(body: Body, key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise BadInput(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"field {key!r} must be an integer")
    return value


def field_bool(value: object, key: str) -> bool:
    """A boolean field (absent: False)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadInput(f"field {key!r} must be true or false")
    return value


def field_str_list(body: Body, key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"field {key!r} must be a list of strings")
    return list(value)


def policy_config(body: Body) -> dict[str, Any]:
    config = body.get("policy_config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise BadInput("field 'policy_config' must be an object")
    return config


def app_record(body: Body) -> AppRecord:
    """The application an ``add_app`` body describes."""
    slo = field_int(body, "latency_slo_micros", 100_000)
    # The record checks it too, as slo_micros: name the field this call has.
    check_int("latency_slo_micros", slo, 1, MAX_SLO_MICROS)
    name = field_str(body, "name")
    if not name or "/" in name:
        raise BadInput(f"invalid application name {name!r}")
    return AppRecord(
        name=name,
        input_type=validate_input_type(field_str(body, "input_type")),
        default_output=field_str(body, "default_output", "None"),
        slo_micros=slo,
        policy=field_str(body, "policy", "single"),
        policy_config=policy_config(body),
    )


def pipeline_record(body: Body, input_type: str | None = None) -> PipelineRecord:
    """The pipeline an ``add_pipeline``/``update_pipeline`` body describes
    (``input_type``: the one to use when the body names none)."""
    given = body.get("input_type")
    chosen = input_type if given is None else validate_input_type(field_str(body, "input_type"))
    if chosen is None:
        raise BadInput("missing field 'input_type'")
    for key in ("stages", "edges"):
        if not isinstance(body.get(key, []), list):
            raise BadInput(f"field {key!r} must be a list")
    return PipelineRecord(
        name=field_str(body, "name"),
        input_type=chosen,
        stages=body.get("stages") or [],
        edges=body.get("edges") or [],
        slo_micros=field_int(body, "slo_micros", 100_000),
        default_output=field_str(body, "default_output", "None"),
    )


def entry_model(body: Body) -> tuple[str, str | None] | None:
    """The (model, version) of the stage of ``body`` that no edge leads to, when
    there is exactly one and it names a model: the pipeline's input type is that
    model's when the body names none."""
    stages, edges = body.get("stages"), body.get("edges") or []
    if not isinstance(stages, list) or not isinstance(edges, list):
        return None
    # A list: a malformed edge's "to" may be unhashable (the graph's check names it).
    targets = [e.get("to") for e in edges if isinstance(e, dict)]
    entries = [s for s in stages if isinstance(s, dict) and s.get("name") not in targets]
    if len(entries) != 1 or not isinstance(entries[0].get("model"), str):
        return None
    version = entries[0].get("version")
    return entries[0]["model"], None if version is None else str(version)


def _optional_positive_int(body: Body, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise BadInput(f"field {key!r} must be a positive integer")
    return value


def model_record(body: Body) -> ModelRecord:
    """The model version an ``add_model`` body describes (its payload aside)."""
    container = body.get("container") or {"kind": "external"}
    if not isinstance(container, dict):
        raise BadInput("field 'container' must be an object")
    container = dict(container)
    if "filename" in container:
        check_payload_filename(container["filename"])
    image = body.get("container_name")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise BadInput("field 'container_name' must be a non-empty string")
        container.setdefault("image", image)  # echoed back by get_model, as Clipper does
    python_path = body.get("python_path")
    if python_path is not None:
        if not isinstance(python_path, list):
            raise BadInput("field 'python_path' must be a list of folders")
        container["python_path"] = [str(p) for p in python_path]
    if (
        container.get("kind") == "closure"
        and "path" not in container
        and body.get("payload_b64") is None
    ):
        raise BadInput("a closure model needs its pickled payload ('payload_b64')")
    cpus = body.get("cpus")
    if cpus is not None and (
        not isinstance(cpus, list) or not all(isinstance(c, int) and c >= 0 for c in cpus)
    ):
        raise BadInput("field 'cpus' must be a list of CPU numbers")
    replicas = field_int(body, "num_replicas", 1)
    if replicas < 0:
        raise BadInput("num_replicas must be >= 0")
    wait = field_int(body, "batch_wait_micros", 0)
    if wait < 0:
        raise BadInput("batch_wait_micros must be >= 0")
    name = field_str(body, "model_name")
    if not name or ":" in name or "/" in name:
        raise BadInput(f"invalid model name {name!r}")
    batch_timeout = body.get("batch_timeout")
    if batch_timeout is not None and (
        isinstance(batch_timeout, bool)
        or not isinstance(batch_timeout, int | float)
        or not math.isfinite(batch_timeout)
        or batch_timeout <= 0
    ):
        raise BadInput("field 'batch_timeout' must be a number of seconds > 0")
    controller = body.get("controller")
    if controller is not None and not isinstance(controller, str):
        raise BadInput("field 'controller' must be 'aimd', 'quantile' or 'fixed'")
    payload = body.get("payload_b64")
    if payload is not None and not isinstance(payload, str):
        raise BadInput("field 'payload_b64' must be a base64 string")
    return ModelRecord(
        name=name,
        version=field_str(body, "model_version"),
        input_type=validate_input_type(field_str(body, "input_type")),
        labels=field_str_list(body, "labels"),
        container=container,
        batch_size=field_int(body, "batch_size", -1),
        num_replicas=replicas,
        cpus=cpus,
        memory_limit_mb=_optional_positive_int(body, "memory_limit_mb"),
        cache_enabled=body.get("cache_enabled") is None
        or field_bool(body.get("cache_enabled"), "cache_enabled"),
        batch_wait_micros=wait,
        created_at=time.time(),
        queue_capacity=_optional_positive_int(body, "queue_capacity"),
        batch_timeout=batch_timeout,
        controller=controller,
    )


def app_reply(rec: AppRecord, linked: list[str]) -> dict[str, Any]:
    return {
        "name": rec.name,
        "input_type": rec.input_type,
        "default_output": rec.default_output,
        "latency_slo_micros": rec.slo_micros,
        "linked_models": linked,
        "policy": rec.policy,
        "policy_config": rec.policy_config,
    }


def answering_model(dataplane: QueryView, app_name: str) -> str | None:
    """The ``"model:version"`` that answers an app's queries: under policy
    ``single`` its first linked model (in the order the data plane holds the
    links) at its current version; None when no model can answer, or when a
    policy chooses among the linked models per query."""
    app = dataplane.apps.get(app_name)
    if app is None or app.routes_queries or not app.linked_models:
        return None
    model = dataplane.models.get(app.linked_models[0])
    if model is None or model.current is None:
        return None
    return f"{model.name}:{model.current}"


def model_reply(rec: ModelRecord, current: str | None) -> dict[str, Any]:
    container = rec.container
    return {
        "model_name": rec.name,
        "model_version": rec.version,
        "input_type": rec.input_type,
        "labels": rec.labels,
        "container_name": container.get("image") or container.get("kind", "external"),
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
        "controller": rec.controller,
    }
