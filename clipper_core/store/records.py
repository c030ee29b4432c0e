"""The records of the desired state: applications, model versions, replica
endpoints registered by hand and pipelines, with the checks every record passes
on creation.

Records are frozen dataclasses that copy their containers, so a record read from a
store can be handed around without the store changing under the reader.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from clipper_core.errors import BadInput

__all__ = [
    "COMBINATORS",
    "CONTROLLERS",
    "INPUT_TYPES",
    "LEARNED_STATE_PREFIX",
    "MAX_EDGES",
    "OUTPUT_TYPES",
    "PREDICATE_OPS",
    "AppRecord",
    "EndpointRecord",
    "ModelRecord",
    "PipelineRecord",
    "check_input_type",
    "check_int",
    "check_name",
    "learned_state_namespace",
]

#: Container kind of a model whose replicas are started by hand.
EXTERNAL_KIND = "external"

INPUT_TYPES = frozenset({"ints", "floats", "doubles", "strings", "bytes"})

#: Batch-size controller modes (``clipper_core.structures.SloController``; the
#: data plane's ``dataplane.batch_controller`` has the same list).
CONTROLLERS = ("aimd", "quantile", "fixed")

# Names appear in URL paths (/<app>/predict) and in "name:version:replica" ids, so
# they may not contain '/' or ':'.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_R = TypeVar("_R", "AppRecord", "ModelRecord", "EndpointRecord", "PipelineRecord")


def check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise BadInput(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


def check_int(what: str, value: object, minimum: int) -> None:
    # bool is an int subclass; True as a replica count is a caller bug.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadInput(f"{what} must be an integer >= {minimum}, got {value!r}")


def check_input_type(value: object) -> None:
    if not isinstance(value, str) or value not in INPUT_TYPES:
        raise BadInput(f"unknown input type {value!r}; expected one of {sorted(INPUT_TYPES)}")


def json_copy(what: str, value: Any) -> Any:
    """A deep copy through JSON, which also proves that ``value`` can be stored."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what} is not JSON-serialisable: {exc}") from None


def _from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
    if not isinstance(data, Mapping):
        raise BadInput(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInput(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a missing required field
        raise BadInput(f"invalid {cls.__name__}: {exc}") from None


@dataclass(frozen=True)
class AppRecord:
    """An application: the endpoint clients query.

    Attributes:
        name: The application name (the ``/<name>/predict`` path).
        input_type: One of :data:`INPUT_TYPES`.
        default_output: Returned when the SLO is missed or no model is linked.
        slo_micros: The latency objective in microseconds.
        policy: The selection policy's name.
        policy_config: The policy's options (JSON).
    """

    name: str
    input_type: str
    default_output: str
    slo_micros: int
    policy: str = "single"
    policy_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("application name", self.name)
        check_input_type(self.input_type)
        if not isinstance(self.default_output, str):
            raise BadInput(f"default_output must be a string, got {self.default_output!r}")
        check_int("slo_micros", self.slo_micros, 1)
        if not isinstance(self.policy, str) or not self.policy:
            raise BadInput(f"policy must be a non-empty string, got {self.policy!r}")
        if not isinstance(self.policy_config, dict):
            raise BadInput(f"policy_config must be an object, got {self.policy_config!r}")
        object.__setattr__(self, "policy_config", json_copy("policy_config", self.policy_config))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a deep copy) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppRecord:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        return _from_dict(cls, data)


#: The fields of a :class:`ModelRecord` that make its tunable *spec*, as opposed to
#: its identity (name, version, input type, container): what an in-place update
#: (``update_model_spec``) may write.  Whether a running version can take a
#: change of each without a restart is the control plane's business.
MODEL_SPEC_FIELDS = (
    "num_replicas",
    "batch_size",
    "controller",
    "batch_wait_micros",
    "queue_capacity",
    "batch_timeout",
    "cache_enabled",
    "labels",
    "cpus",
    "memory_limit_mb",
)


@dataclass(frozen=True)
class ModelRecord:
    """One version of a model and how to run it.

    Attributes:
        name: The model name.
        version: The version, always a string (``"1"``).
        input_type: One of :data:`INPUT_TYPES`.
        labels: Free-form labels.
        container: How to start a replica (opaque JSON for the container manager,
            e.g. ``{"kind": "closure", "path": ...}``).
        batch_size: Maximum batch size; ``-1`` lets the SLO controller choose.
        num_replicas: Desired number of replicas.
        cpus: CPUs to pin the replicas to, or None.
        memory_limit_mb: Memory limit per replica (a cgroup's, else an address
            space limit), or None.
        cache_enabled: Whether predictions of this version are cached.
        batch_wait_micros: Delayed-batching wait after a batch's first request.
        created_at: When the version was registered (UNIX time).
        queue_capacity: Bound of the version's queue, or None for the server's
            default (``ServerConfig.queue_capacity``).
        batch_timeout: Seconds one batch may take before the replica is deemed hung
            and recycled, or None for the server's default.
        controller: The batch-size controller, one of :data:`CONTROLLERS`:
            ``"aimd"`` (Clipper's additive increase, multiplicative decrease),
            ``"quantile"`` (the largest size whose fitted p99 batch latency meets
            the SLO) or ``"fixed"`` (always ``batch_size``, which must be > 0).
            With an adaptive mode a ``batch_size`` > 0 caps the batch.  None:
            ``"fixed"`` when ``batch_size`` > 0, else ``"aimd"``.
    """

    name: str
    version: str
    input_type: str
    labels: list[str]
    container: dict[str, Any]
    batch_size: int = -1
    num_replicas: int = 1
    cpus: list[int] | None = None
    memory_limit_mb: int | None = None
    cache_enabled: bool = True
    batch_wait_micros: int = 0
    created_at: float = field(default_factory=time.time)
    queue_capacity: int | None = None
    batch_timeout: float | None = None
    controller: str | None = None

    def __post_init__(self) -> None:
        check_name("model name", self.name)
        check_name("model version", self.version)
        check_input_type(self.input_type)
        if not isinstance(self.labels, list | tuple) or not all(
            isinstance(label, str) for label in self.labels
        ):
            raise BadInput(f"labels must be a list of strings, got {self.labels!r}")
        object.__setattr__(self, "labels", list(self.labels))
        if not isinstance(self.container, dict):
            raise BadInput(f"container must be an object, got {self.container!r}")
        object.__setattr__(self, "container", json_copy("container", self.container))
        if self.batch_size != -1:
            check_int("batch_size (or -1 for adaptive)", self.batch_size, 1)
        check_int("num_replicas", self.num_replicas, 0)
        if self.cpus is not None:
            if not isinstance(self.cpus, list | tuple) or not self.cpus:
                raise BadInput(f"cpus must be a non-empty list or None, got {self.cpus!r}")
            for cpu in self.cpus:
                check_int("a cpu index", cpu, 0)
            object.__setattr__(self, "cpus", list(self.cpus))
        if self.memory_limit_mb is not None:
            check_int("memory_limit_mb", self.memory_limit_mb, 1)
        if not isinstance(self.cache_enabled, bool):
            raise BadInput(f"cache_enabled must be a boolean, got {self.cache_enabled!r}")
        check_int("batch_wait_micros", self.batch_wait_micros, 0)
        if (
            not isinstance(self.created_at, int | float)
            or isinstance(self.created_at, bool)
            or not math.isfinite(self.created_at)
        ):
            raise BadInput(f"created_at must be a number, got {self.created_at!r}")
        object.__setattr__(self, "created_at", float(self.created_at))
        if self.queue_capacity is not None:
            check_int("queue_capacity", self.queue_capacity, 1)
        if self.batch_timeout is not None:
            if (
                not isinstance(self.batch_timeout, int | float)
                or isinstance(self.batch_timeout, bool)
                or not math.isfinite(self.batch_timeout)
                or self.batch_timeout <= 0
            ):
                raise BadInput(f"batch_timeout must be a number > 0, got {self.batch_timeout!r}")
            object.__setattr__(self, "batch_timeout", float(self.batch_timeout))
        if self.controller is not None:
            if self.controller not in CONTROLLERS:
                raise BadInput(
                    f"controller must be one of {', '.join(CONTROLLERS)} (or None),"
                    f" got {self.controller!r}"
                )
            if self.controller == "fixed" and self.batch_size <= 0:
                raise BadInput("controller 'fixed' needs a batch_size > 0")

    @property
    def key(self) -> str:
        """``"name:version"``, as Clipper's ``get_all_models`` lists it."""
        return f"{self.name}:{self.version}"

    @property
    def registered_by_hand(self) -> bool:
        """Whether its replicas are started by hand and join by themselves
        (container kind ``"external"``, or no container), not by the server."""
        return not self.container or self.container.get("kind") == EXTERNAL_KIND

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a deep copy) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRecord:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        return _from_dict(cls, data)


@dataclass(frozen=True)
class EndpointRecord:
    """A replica of a model version that serves at a known address: one started by
    hand and registered (``register_replica``), or, later, one published by the
    process that owns the replicas.

    Attributes:
        model: The model name.
        version: The model version.
        replica_id: The replica's id, unique within the version (any non-empty
            string: ``"external-127.0.0.1:7000"`` is one).
        address: Where the replica listens (``host:port``).
    """

    model: str
    version: str
    replica_id: str
    address: str

    def __post_init__(self) -> None:
        check_name("model name", self.model)
        check_name("model version", self.version)
        for what, value in (("replica_id", self.replica_id), ("address", self.address)):
            if not isinstance(value, str) or not value or len(value) > 512:
                raise BadInput(f"{what} must be a non-empty string, got {value!r}")

    @property
    def key(self) -> str:
        """``"name:version"`` of the model version this replica serves."""
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointRecord:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        return _from_dict(cls, data)


#: Prefix of the kv namespaces of learned selection state, one per application
#: (``selection.runtime.kv_namespace``): runtime state, not desired state, but it
#: goes when its application goes.
LEARNED_STATE_PREFIX = "selection:"


def learned_state_namespace(app_name: str) -> str:
    """The kv namespace of ``app_name``'s learned selection state (key: the uid)."""
    return f"{LEARNED_STATE_PREFIX}{app_name}"


#: What a pipeline stage may declare it answers: an input type, or ``"json"`` (any
#: JSON value; it feeds no model directly).
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
class PipelineRecord:
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
        check_int("slo_micros", self.slo_micros, 1)
        if not isinstance(self.default_output, str):
            raise BadInput(f"default_output must be a string, got {self.default_output!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a deep copy) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineRecord:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        return _from_dict(cls, data)
