"""The records of the desired state: applications, model versions, replica
endpoints registered by hand and pipelines, with the checks every record passes
on creation.

Records are frozen dataclasses that copy their containers, so a record read from a
store can be handed around without the store changing under the reader.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clipper_core.errors import BadInput
from clipper_core.store.pipeline_record import (
    COMBINATORS,
    MAX_EDGES,
    MAX_STAGES,
    OUTPUT_TYPES,
    PREDICATE_OPS,
    PipelineRecord,
)
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
    "CONTROLLERS",
    "INPUT_TYPES",
    "LEARNED_STATE_PREFIX",
    "MAX_BATCH_SIZE",
    "MAX_BATCH_WAIT_MICROS",
    "MAX_EDGES",
    "MAX_QUEUE_CAPACITY",
    "MAX_SLO_MICROS",
    "MAX_STAGES",
    "OUTPUT_TYPES",
    "PREDICATE_OPS",
    "AppRecord",
    "EndpointRecord",
    "ModelRecord",
    "PipelineRecord",
    "check_input_type",
    "check_int",
    "check_name",
    "json_copy",
    "learned_state_namespace",
]

#: The largest batch size a model version may be given: a batch is one message
#: of up to 64 MB to a container (and the controllers hold sizes as C ints).
MAX_BATCH_SIZE = 100_000
#: The longest batch wait: an hour (a wait is a timer; past it, a typo).
MAX_BATCH_WAIT_MICROS = 3_600_000_000
#: The largest queue of a model version (inputs held in memory).
MAX_QUEUE_CAPACITY = 100_000_000

#: Container kind of a model whose replicas are started by hand.
EXTERNAL_KIND = "external"
#: Batch-size controller modes (``clipper_core.structures.SloController``; the
#: data plane's ``dataplane.batch_controller`` has the same list).
CONTROLLERS = ("aimd", "quantile", "fixed")


@dataclass(frozen=True)
class AppRecord(DictRecord):
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
        check_int("slo_micros", self.slo_micros, 1, MAX_SLO_MICROS)
        if not isinstance(self.policy, str) or not self.policy:
            raise BadInput(f"policy must be a non-empty string, got {self.policy!r}")
        if not isinstance(self.policy_config, dict):
            raise BadInput(f"policy_config must be an object, got {self.policy_config!r}")
        object.__setattr__(self, "policy_config", json_copy("policy_config", self.policy_config))

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> AppRecord:
        """:meth:`from_dict` of a record read back from a store, its objective
        brought within today's bound first (:func:`within_slo_bound`)."""
        return cls.from_dict(within_slo_bound(data))


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
class ModelRecord(DictRecord):
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
            check_int("batch_size (or -1 for adaptive)", self.batch_size, 1, MAX_BATCH_SIZE)
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
        check_int("batch_wait_micros", self.batch_wait_micros, 0, MAX_BATCH_WAIT_MICROS)
        if (
            not isinstance(self.created_at, int | float)
            or isinstance(self.created_at, bool)
            or not math.isfinite(self.created_at)
        ):
            raise BadInput(f"created_at must be a number, got {self.created_at!r}")
        object.__setattr__(self, "created_at", float(self.created_at))
        if self.queue_capacity is not None:
            check_int("queue_capacity", self.queue_capacity, 1, MAX_QUEUE_CAPACITY)
            if self.batch_size > self.queue_capacity:
                # A queue never holds a batch of that size: every batch would
                # wait out the whole batch wait for inputs that cannot come.
                raise BadInput(
                    f"batch_size {self.batch_size} is larger than queue_capacity"
                    f" {self.queue_capacity}: a batch cannot outgrow the queue"
                )
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

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> ModelRecord:
        """:meth:`from_dict` of a record read back from a store, brought within
        today's bounds first: one written before a bound existed must not stop
        every read of the store (and so the server's start)."""
        d = dict(data)
        for key, most in (
            ("batch_size", MAX_BATCH_SIZE),
            ("batch_wait_micros", MAX_BATCH_WAIT_MICROS),
            ("queue_capacity", MAX_QUEUE_CAPACITY),
        ):
            if type(d.get(key)) is int and d[key] > most:
                d[key] = most
        size, capacity = d.get("batch_size"), d.get("queue_capacity")
        if type(size) is int and type(capacity) is int and 0 < capacity < size:
            d["batch_size"] = capacity
        return cls.from_dict(d)

    @property
    def registered_by_hand(self) -> bool:
        """Whether its replicas are started by hand and join by themselves
        (container kind ``"external"``, or no container), not by the server."""
        return not self.container or self.container.get("kind") == EXTERNAL_KIND


@dataclass(frozen=True)
class EndpointRecord(DictRecord):
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
        # host:port (or grpcs://host:port): a typo is refused now, not after the
        # frontend tried to connect for a minute.
        host, _, port = self.address.removeprefix("grpcs://").rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or " " in host:
            raise BadInput(
                f"address must be host:port (or grpcs://host:port) with a port of"
                f" 1-65535, got {self.address!r}"
            )

    @property
    def key(self) -> str:
        """``"name:version"`` of the model version this replica serves."""
        return f"{self.model}:{self.version}"


#: Prefix of the kv namespaces of learned selection state, one per application
#: (``selection.runtime.kv_namespace``): runtime state, not desired state, but it
#: goes when its application goes.
LEARNED_STATE_PREFIX = "selection:"


def learned_state_namespace(app_name: str) -> str:
    """The kv namespace of ``app_name``'s learned selection state (key: the uid)."""
    return f"{LEARNED_STATE_PREFIX}{app_name}"


#: The kv namespace of each application's learning restarts (key: the app; value:
#: a new random token each time ``set_app_policy`` drops its learned state), so
#: that every frontend restarts its in-memory learning too, not only the writer.
LEARNING_RESETS_NAMESPACE = "selection.resets"


def new_reset_token() -> str:
    return uuid.uuid4().hex


#: What a pipeline stage may declare it answers: an input type, or ``"json"`` (any
#: JSON value; it feeds no model directly).
