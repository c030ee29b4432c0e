"""The interfaces of the desired-state store and of its change feed.

Every store call is synchronous: the control plane runs them through
``asyncio.to_thread``, the CLI and tests call them directly, so an implementation
must be safe to call from several threads at once.  Only the change feed is async.

Every write that changes desired state bumps the store's *revision* once and
records which keys it touched as :class:`StateEvent` s, all with that revision.
Events are keys, not payloads: a consumer rereads the record named by the event
(level-triggered), so a duplicate event is harmless, and a lost one is reported
as :class:`ResyncNeeded`, after which the consumer rereads everything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from clipper_core.store.records import AppRecord, EndpointRecord, ModelRecord, PipelineRecord

__all__ = [
    "ChangeFeed",
    "DesiredStateReader",
    "EventKind",
    "KvStore",
    "ResyncNeeded",
    "StateEvent",
    "StateStore",
]

#: What an event names: an application (its record, links and API keys), a model
#: (all its versions and the current one), the hand-registered endpoints of a
#: model, or a pipeline (issue 14).
EventKind = Literal["app", "model", "endpoint", "pipeline"]


@dataclass(frozen=True)
class StateEvent:
    """One key changed by the write transaction that produced ``revision``.

    Attributes:
        revision: The store revision of the transaction (one transaction may
            produce several events, all with the same revision).
        kind: What changed.
        name: The application name for ``"app"``, the model name for ``"model"``
            and ``"endpoint"``, the pipeline name for ``"pipeline"``.
    """

    revision: int
    kind: EventKind
    name: str


class ResyncNeeded(Exception):
    """Events were lost (the change log was trimmed past the requested revision,
    the store was replaced, or a subscriber fell behind): reread everything."""


class DesiredStateReader(Protocol):
    """The reads of the desired state."""

    def get_app(self, name: str) -> AppRecord | None:
        """The application called ``name``, or None."""
        ...

    def list_apps(self) -> list[AppRecord]:
        """Every application, by name."""
        ...

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        """The model version, or None."""
        ...

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Every model version (or every version of ``name``)."""
        ...

    def get_current_version(self, name: str) -> str | None:
        """The model's current version, or None."""
        ...

    def linked_models(self, app: str) -> list[str]:
        """The names of the models linked to ``app``, in the order they were linked
        (the first answers under policy ``single``; NotFound: no app)."""
        ...

    def apps_linked_to(self, model_name: str) -> list[str]:
        """The names of the applications linked to ``model_name``, sorted."""
        ...

    def get_kv(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value stored under (namespace, key), or ``default``."""
        ...

    def list_kv(self, namespace: str) -> dict[str, Any]:
        """Every key of ``namespace`` and its value."""
        ...

    def list_endpoints(
        self, model: str | None = None, version: str | None = None
    ) -> list[EndpointRecord]:
        """The registered endpoints (of a model, or of one version of it)."""
        ...

    def get_pipeline(self, name: str) -> PipelineRecord | None:
        """The pipeline called ``name``, or None."""
        ...

    def list_pipelines(self) -> list[PipelineRecord]:
        """Every pipeline, by name."""
        ...

    def revision(self) -> int:
        """The revision of the last committed change (0: none yet)."""
        ...


class KvStore(Protocol):
    """The narrow face the selection-state writer needs."""

    def put_kv_many(
        self, items: Iterable[tuple[str, str, Any]], *, delete_namespaces: Iterable[str] = ()
    ) -> None:
        """In one transaction: delete whole namespaces, then store the items."""
        ...

    def list_kv(self, namespace: str) -> dict[str, Any]:
        """Every key of ``namespace`` and its value."""
        ...

    def get_kv(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value stored under (namespace, key), or ``default``."""
        ...


class ChangeFeed(Protocol):
    """Delivers the events of committed writes, in revision order."""

    def subscribe(self, since: int) -> AsyncIterator[StateEvent]:
        """Every event after revision ``since``, then live events as they commit.

        Raises:
            ResyncNeeded: Events after ``since`` are no longer known, or the
                subscriber fell too far behind (from the iterator).
        """
        ...


class StateStore(DesiredStateReader, KvStore, Protocol):
    """The desired state, its writes (each one transaction) and its change log."""

    def add_app(self, app: AppRecord, api_key_digests: list[str] | None = None) -> None:
        """Register an application (and its API-key digests)."""
        ...

    def delete_app(self, name: str) -> None:
        """Delete an application, its links, API keys and learned state."""
        ...

    def set_app_policy(
        self, name: str, policy: str, policy_config: Mapping[str, Any] | None = None
    ) -> AppRecord:
        """Set an application's selection policy; its learned state is dropped."""
        ...

    def set_app_api_keys(self, name: str, digests: list[str]) -> None:
        """Replace an application's API-key digests (empty: no key needed)."""
        ...

    def add_model(self, model: ModelRecord, *, make_current: bool = False) -> None:
        """Register a model version."""
        ...

    def delete_model_version(self, name: str, version: str) -> None:
        """Delete a model version and its endpoints."""
        ...

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current version."""
        ...

    def set_num_replicas(self, name: str, version: str, n: int) -> ModelRecord:
        """Set the desired replica count of a model version."""
        ...

    def update_app(
        self, name: str, *, slo_micros: int | None = None, default_output: str | None = None
    ) -> AppRecord:
        """Change an application's latency objective and/or default output."""
        ...

    def update_model_spec(self, name: str, version: str, /, **spec: Any) -> ModelRecord:
        """Change tunable fields (``records.MODEL_SPEC_FIELDS``) of a model version."""
        ...

    def link_model(self, app: str, model_name: str) -> None:
        """Link a model to an application, after the models linked already."""
        ...

    def link_models(self, app: str, model_names: Sequence[str]) -> None:
        """Link several models, in order, in one transaction: all of them or
        (NotFound, BadInput) none."""
        ...

    def unlink_model(self, app: str, model_name: str) -> bool:
        """Remove a link; whether there was one."""
        ...

    def put_endpoint(self, endpoint: EndpointRecord) -> None:
        """Register (or move) a replica endpoint."""
        ...

    def delete_endpoint(self, model: str, version: str, replica_id: str) -> bool:
        """Remove a replica endpoint; whether there was one."""
        ...

    def add_pipeline(
        self, pipeline: PipelineRecord, api_key_digests: list[str] | None = None
    ) -> None:
        """Register a pipeline and its API-key digests (Conflict: a pipeline or
        an app has its name)."""
        ...

    def set_pipeline_api_keys(self, name: str, digests: list[str]) -> None:
        """Replace a pipeline's API-key digests (empty: no key needed)."""
        ...

    def update_pipeline(self, pipeline: PipelineRecord) -> bool:
        """Replace a pipeline's description; whether anything changed."""
        ...

    def delete_pipeline(self, name: str) -> None:
        """Delete a pipeline (NotFound: none has that name)."""
        ...

    def put_kv(self, namespace: str, key: str, json_value: Any) -> None:
        """Store a JSON value under (namespace, key)."""
        ...

    def delete_kv(self, namespace: str, key: str | None = None) -> int:
        """Delete one key or a whole namespace; how many keys went."""
        ...

    def changes_since(self, revision: int) -> list[StateEvent]:
        """The events after ``revision`` (ResyncNeeded: no longer known)."""
        ...

    def feed(self) -> ChangeFeed:
        """The in-process feed of this store's committed writes."""
        ...

    def close(self) -> None:
        """Release the store; further calls fail."""
        ...
