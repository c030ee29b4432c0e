"""The schemas of what the management calls store and answer: applications,
model versions, replicas, pipelines (their stages and edges), the entries of a
declarative file, the changes ``apply`` makes.  Field lists and value sets come
from the modules that check them (``store.records``, ``control.desired``)."""

from __future__ import annotations

from clipper_core.control.desired import APP_FIELDS, MODEL_FIELDS, PIPELINE_FIELDS
from clipper_core.openapi.schemas import NAME, VERSION, Schema, arr, obj, ref, text
from clipper_core.store.records import (
    COMBINATORS,
    CONTROLLERS,
    MAX_EDGES,
    MAX_SLO_MICROS,
    MAX_STAGES,
    OUTPUT_TYPES,
    PREDICATE_OPS,
)

#: What a lookup of an unknown name answers.
EMPTY = {"type": "object", "maxProperties": 0, "description": "Nothing by that name: ``{}``."}
_STRINGS = arr({"type": "string"})

_STAGE = obj(
    {
        "name": NAME,
        "model": NAME,
        "version": {"anyOf": [VERSION, {"type": "null"}]},
        "output_type": {"enum": [*sorted(OUTPUT_TYPES), None]},
        "combine": {"enum": [*sorted(COMBINATORS), None]},
    },
    ("name",),
    description="A model stage names a deployed ``model`` (``version``: null for its current"
    " one); a stage with several parents ``combine``s their outputs.",
)
_EDGE = obj(
    {
        "from": NAME,
        "to": NAME,
        "when": {
            "anyOf": [
                obj(
                    {
                        "op": {"enum": list(PREDICATE_OPS)},
                        "value": {},
                        "field": {"type": ["integer", "string", "null"], "minimum": 0},
                    },
                    ("op",),
                ),
                {"type": "null"},
            ],
            "description": "A predicate on ``from``'s output (null: always).",
        },
    },
    ("from", "to"),
)

SCHEMAS: dict[str, Schema] = {
    "PipelineStage": _STAGE,
    "PipelineEdge": _EDGE,
    "AppInfo": obj(
        {
            "name": text(),
            "input_type": text(),
            "default_output": text(),
            "latency_slo_micros": {"type": "integer"},
            "linked_models": _STRINGS,
            "policy": text(),
            "policy_config": {"type": "object"},
            "answering_model": {
                "type": ["string", "null"],
                "description": "The ``model:version`` that answers the app's queries under"
                " policy ``single``; null when none can, or a policy chooses per query.",
            },
        },
        ("name", "input_type", "default_output", "latency_slo_micros", "linked_models"),
    ),
    "ModelInfo": obj(
        {
            "model_name": text(),
            "model_version": text(),
            "input_type": text(),
            "labels": _STRINGS,
            "container_name": text(),
            "model_data_path": text(),
            "is_current_version": {"type": "boolean"},
            "batch_size": {"type": "integer"},
            "num_replicas": {"type": "integer", "minimum": 0},
            "cpus": {"type": ["array", "null"], "items": {"type": "integer"}},
            "memory_limit_mb": {"type": ["integer", "null"]},
            "cache_enabled": {"type": "boolean"},
            "batch_wait_micros": {"type": "integer"},
            "queue_capacity": {"type": ["integer", "null"]},
            "batch_timeout": {"type": ["number", "null"]},
            "controller": {"enum": [*CONTROLLERS, None]},
        },
        ("model_name", "model_version", "input_type", "is_current_version", "num_replicas"),
    ),
    "ContainerInfo": obj(
        {
            "model_name": text(),
            "model_version": text(),
            "replica_id": {"type": ["string", "integer"]},
            "address": text(),
            "batches": {"type": "integer"},
            "failures": {"type": "integer"},
            "busy": {"type": "boolean"},
        },
        ("model_name", "model_version", "replica_id"),
        extra=True,
    ),
    "Pipeline": obj(
        {
            "name": text(),
            "input_type": text(),
            "stages": arr(ref("PipelineStage")),
            "edges": arr(ref("PipelineEdge"), maxItems=MAX_EDGES),
            "slo_micros": {"type": "integer"},
            "default_output": text(),
        },
        ("name", "input_type", "stages", "edges", "slo_micros", "default_output"),
    ),
    "PipelineRequest": obj(
        {
            "name": NAME,
            "input_type": ref("InputType"),
            "stages": arr(ref("PipelineStage"), minItems=1, maxItems=MAX_STAGES),
            "edges": arr(ref("PipelineEdge"), maxItems=MAX_EDGES),
            "slo_micros": {"type": "integer", "minimum": 1, "maximum": MAX_SLO_MICROS},
            "default_output": text(),
            "api_keys": {"type": ["array", "null"], "items": ref("ApiKey")},
        },
        ("name", "stages"),
        extra=True,
        description="``input_type`` defaults to the entry stage's model's; ``api_keys``"
        " (absent: unchanged) requires one of them on the pipeline's queries.",
    ),
    # The entries of a declarative file (``clipper apply -f``), as
    # ``control.desired.DesiredState.from_dict`` checks their keys.
    "ApplyModel": obj(
        {f: {} for f in (*MODEL_FIELDS, "payload_b64", "source_sha256", "container")}
        | {"name": NAME, "version": VERSION, "input_type": ref("InputType")},
        ("name", "version", "input_type"),
    ),
    "ApplyApp": obj(
        {f: {} for f in APP_FIELDS} | {"name": NAME, "input_type": ref("InputType")},
        ("name", "input_type"),
    ),
    "ApplyPipeline": obj(
        {f: {} for f in PIPELINE_FIELDS}
        | {"name": NAME, "input_type": ref("InputType"), "stages": arr(ref("PipelineStage"))},
        ("name", "input_type", "stages"),
    ),
    "Change": obj(
        {
            "kind": text(),
            "what": text(),
            "name": text(),
            "detail": text(),
            "fields": _STRINGS,
            "text": text(),
        },
        ("kind", "what", "name", "text"),
    ),
    "RuntimeEnv": {
        "anyOf": [
            obj(
                {
                    "env_id": text(),
                    "status": text(),
                    "error": text(),
                    "log": text(),
                    "offset": {"type": "integer", "minimum": 0},
                    "python": text(),
                },
                ("env_id", "status", "log", "offset"),
            ),
            EMPTY,
        ]
    },
}

__all__ = ["EMPTY", "SCHEMAS"]
