"""Pipeline records: a graph of model stages served as one endpoint, checked on
creation (stage and edge fields, predicates, limits)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clipper_core.errors import BadInput
from clipper_core.store.record_checks import (
    INPUT_TYPES,
    MAX_SLO_MICROS,
    DictRecord,
    check_input_type,
    check_int,
    check_name,
    json_copy,
    within_slo_bound,
)

__all__ = [
    "COMBINATORS",
    "MAX_EDGES",
    "MAX_STAGES",
    "OUTPUT_TYPES",
    "PREDICATE_OPS",
    "PipelineRecord",
]

OUTPUT_TYPES = INPUT_TYPES | {"json"}

#: How a stage with several parents joins their outputs into one value.
COMBINATORS = frozenset({"concat", "dict"})

#: The operators of a conditional edge's predicate.
PREDICATE_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")

#: Most stages one pipeline may have.
MAX_STAGES = 64
#: One edge per ordered pair of stages at most.
MAX_EDGES = MAX_STAGES * MAX_STAGES

_STAGE_KEYS = ("name", "model", "version", "output_type", "combine")
_EDGE_KEYS = ("from", "to", "when")
_WHEN_KEYS = ("op", "value", "field")


def _keys_of(what: str, value: object, known: tuple[str, ...], required: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise BadInput(f"{what} must be an object, got {value!r}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise BadInput(f"unknown {what} field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if value.get(required) is None:
        raise BadInput(f"{what} needs {required!r}")
    return {k: value.get(k) for k in known}


def _stage(i: int, raw: object) -> dict[str, Any]:
    stage = _keys_of(f"stages[{i}]", raw, _STAGE_KEYS, "name")
    name = stage["name"]
    check_name(f"stages[{i}] name", name)
    if stage["model"] is None and stage["combine"] is None:
        raise BadInput(f"stage {name!r} names no model and no combine; it needs one of them")
    if stage["model"] is not None:
        check_name(f"stage {name!r} model name", stage["model"])
    if stage["version"] is not None:
        if stage["model"] is None:
            raise BadInput(f"stage {name!r} has a version but no model")
        if isinstance(stage["version"], int) and not isinstance(stage["version"], bool):
            stage["version"] = str(stage["version"])
        check_name(f"stage {name!r} model version", stage["version"])
    # Tuples: a list or an object from a request is compared, not hashed (a TypeError).
    if stage["output_type"] not in (None, *OUTPUT_TYPES):
        raise BadInput(
            f"stage {name!r}: unknown output_type {stage['output_type']!r};"
            f" expected one of {sorted(OUTPUT_TYPES)}"
        )
    if stage["combine"] not in (None, *COMBINATORS):
        raise BadInput(
            f"stage {name!r}: unknown combine {stage['combine']!r};"
            f" expected one of {sorted(COMBINATORS)}"
        )
    return stage


def _predicate(edge: str, raw: object) -> dict[str, Any]:
    when = _keys_of(f"edge {edge} 'when'", raw, _WHEN_KEYS, "op")
    op, value, at = when["op"], when["value"], when["field"]
    if op not in PREDICATE_OPS:
        raise BadInput(f"edge {edge}: unknown op {op!r}; expected one of {list(PREDICATE_OPS)}")
    if op in ("in", "not in"):
        if not isinstance(value, list):
            raise BadInput(f"edge {edge}: op {op!r} needs a list value, got {value!r}")
    elif op not in ("==", "!=") and (
        isinstance(value, bool) or not isinstance(value, int | float | str)
    ):
        raise BadInput(f"edge {edge}: op {op!r} needs a number or a string, got {value!r}")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | str)):
        raise BadInput(f"edge {edge}: field must be a list index or an object key, got {at!r}")
    if isinstance(at, int) and at < 0:
        raise BadInput(f"edge {edge}: field must be an index >= 0, got {at}")
    when["value"] = json_copy(f"edge {edge} value", value)
    return when


def _edge(i: int, raw: object, stages: set[str]) -> dict[str, Any]:
    edge = _keys_of(f"edges[{i}]", raw, _EDGE_KEYS, "from")
    if edge["to"] is None:
        raise BadInput(f"edges[{i}] needs 'to'")
    for end in ("from", "to"):
        if not isinstance(edge[end], str) or edge[end] not in stages:
            raise BadInput(f"edges[{i}] {end!r} names no stage: {edge[end]!r}")
    label = f"{edge['from']}->{edge['to']}"
    if edge["when"] is not None:
        edge["when"] = _predicate(label, edge["when"])
    return edge


@dataclass(frozen=True)
class PipelineRecord(DictRecord):
    """A prediction pipeline: a DAG of stages served as one application.

    Only the record's own shape is checked here; the graph (one entry, no cycle,
    types that match along each edge, models that exist) is checked by
    ``clipper_core.pipelines.model.validate`` when the pipeline is registered.

    Attributes:
        name: The pipeline name (the ``/<name>/predict`` path; no application may
            have it).
        input_type: What queries send (one of :data:`INPUT_TYPES`).
        stages: Each ``{"name", "model", "version", "output_type", "combine"}``:
            a model stage names a deployed ``model`` (``version``: None for its
            current one); a stage with several parents joins their outputs with
            ``combine`` (``"concat"`` or ``"dict"``), and a stage with a combine
            but no model just joins.  ``output_type`` (one of
            :data:`OUTPUT_TYPES`) is what the stage answers (None: derived for
            joins, ``"json"`` for model stages).
        edges: Each ``{"from", "to", "when"}``: ``to`` takes ``from``'s output;
            ``when`` (None: always) is a predicate on that output,
            ``{"op", "value", "field"}`` with ``op`` in :data:`PREDICATE_OPS` and
            ``field`` (None, a list index or an object key) picking a part of it.
        slo_micros: The end-to-end latency objective in microseconds.
        default_output: Returned (flagged) when the objective cannot be met.
    """

    name: str
    input_type: str
    stages: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    slo_micros: int
    default_output: str

    def __post_init__(self) -> None:
        check_name("pipeline name", self.name)
        check_input_type(self.input_type)
        if not isinstance(self.stages, list | tuple) or not self.stages:
            raise BadInput(f"stages must be a non-empty list, got {self.stages!r}")
        if len(self.stages) > MAX_STAGES:
            raise BadInput(f"a pipeline has at most {MAX_STAGES} stages, got {len(self.stages)}")
        stages = [_stage(i, s) for i, s in enumerate(self.stages)]
        names: set[str] = set()
        for stage in stages:
            if stage["name"] in names:
                raise BadInput(f"duplicate stage name {stage['name']!r}")
            names.add(stage["name"])
        if not isinstance(self.edges, list | tuple):
            raise BadInput(f"edges must be a list, got {self.edges!r}")
        if len(self.edges) > MAX_EDGES:
            raise BadInput(f"a pipeline has at most {MAX_EDGES} edges, got {len(self.edges)}")
        edges = [_edge(i, e, names) for i, e in enumerate(self.edges)]
        pairs: set[tuple[str, str]] = set()
        for e in edges:
            pair = (e["from"], e["to"])
            if pair in pairs:
                raise BadInput(f"duplicate edge {pair[0]}->{pair[1]}")
            pairs.add(pair)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "edges", edges)
        check_int("slo_micros", self.slo_micros, 1, MAX_SLO_MICROS)
        if not isinstance(self.default_output, str):
            raise BadInput(f"default_output must be a string, got {self.default_output!r}")

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> PipelineRecord:
        """:meth:`from_dict` of a record read back from a store, its objective
        brought within today's bound first (:func:`within_slo_bound`)."""
        return cls.from_dict(within_slo_bound(data))
