"""``ControlPlane``: the one writer of desired state.

The management API, the CLI (through it), declarative files
(:meth:`ControlPlane.apply`), the planner and the tuner all change apps, pipelines,
models, links, versions, replica counts and API keys through this object, never
the store or the data plane directly.

Every write follows one pattern: validate, write the store (one transaction, in
a worker thread), reconcile this frontend's data plane inline so that the caller
reads its own write when the call returns, and, for operations that start
containers, wait until the replicas serve (rolling back a deploy that fails).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from clipper_core.auth import hash_api_key
from clipper_core.control.apply import Change, diff
from clipper_core.control.apply_steps import carry_out, read_current
from clipper_core.control.artifacts import ArtifactStore
from clipper_core.control.desired import DesiredState, decode_payload
from clipper_core.control.reconcile import IN_PLACE_SPEC, DataPlaneReconciler
from clipper_core.control.replicas import ReplicaReconciler
from clipper_core.errors import BadInput, Conflict, NotFound
from clipper_core.logs import log_event
from clipper_core.pipelines.model import new_version_refusal
from clipper_core.pipelines.model import validate as validate_pipeline
from clipper_core.replica_tls import remote_address
from clipper_core.selection import validate_policy
from clipper_core.store.base import StateEvent, StateStore
from clipper_core.store.records import AppRecord, EndpointRecord, ModelRecord, PipelineRecord

log = logging.getLogger("clipper_core.server")


#: How long a deleted model version may take to answer the inputs it holds.
DRAIN_SECONDS = 10.0


class ControlPlane:
    """Changes desired state and brings the data plane and the replicas along.

    Args:
        store: Desired state.
        apply: This frontend's data-plane reconciler.
        replicas: The replica reconciler (this process owns the containers).
        artifacts: Where deployed models' files go.
    """

    def __init__(
        self,
        store: StateStore,
        apply: DataPlaneReconciler,
        replicas: ReplicaReconciler,
        artifacts: ArtifactStore,
    ) -> None:
        self.store = store
        self._apply = apply
        self._replicas = replicas
        #: Where deployed models' files are (the bundle route reads them too).
        self.artifacts = artifacts
        # Versions being deployed: a second deploy of one would share its files.
        self._deploying: set[tuple[str, str]] = set()
        # One declarative apply at a time: each diffs against what the last one made.
        self._applying = asyncio.Lock()

    async def _write(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def _reconcile(self, kind: str, name: str) -> None:
        await self._apply.reconcile(StateEvent(0, kind, name))  # type: ignore[arg-type]

    # -- applications -------------------------------------------------------------

    async def register_app(self, rec: AppRecord, api_keys: list[str] | None = None) -> None:
        """Register an application (and the API keys its queries need, if any)."""
        validate_policy(rec.policy, rec.policy_config)
        digests = sorted({hash_api_key(k) for k in api_keys or ()})
        await self._write(self.store.add_app, rec, digests)
        await self._reconcile("app", rec.name)
        self._apply.restart_learning(rec.name)  # nothing learned survives from a namesake
        log_event(
            log,
            "app_registered",
            f"application {rec.name} registered",
            app=rec.name,
            input_type=rec.input_type,
            slo_micros=rec.slo_micros,
        )

    async def update_app(
        self, name: str, *, slo_micros: int | None = None, default_output: str | None = None
    ) -> None:
        """Change an app's latency objective and/or default output in place (its
        links, API keys and learned selection state stay)."""
        rec = await self._write(
            functools.partial(
                self.store.update_app, name, slo_micros=slo_micros, default_output=default_output
            )
        )
        await self._reconcile("app", name)
        log_event(
            log,
            "app_updated",
            f"application {name} updated",
            app=name,
            slo_micros=rec.slo_micros,
        )

    async def delete_app(self, name: str) -> None:
        if await self._write(self.store.get_app, name) is None:
            raise NotFound(f"application {name!r} is not registered")
        await self._write(self.store.delete_app, name)
        await self._reconcile("app", name)
        log_event(log, "app_deleted", f"application {name} deleted", app=name)

    async def set_app_api_keys(self, name: str, keys: list[str]) -> None:
        """Require one of ``keys`` on the app's queries (none: no key needed).

        Only SHA-256 digests are kept, in memory and in the store."""
        digests = sorted({hash_api_key(k) for k in keys})
        await self._write(self.store.set_app_api_keys, name, digests)
        await self._reconcile("app", name)
        log_event(log, "api_keys_set", f"application {name}: {len(digests)} API key(s)", app=name)

    async def set_selection_policy(
        self, name: str, policy: str, policy_config: dict[str, Any] | None = None
    ) -> None:
        """Switch an app's selection policy (or its options); learned state restarts."""
        validate_policy(policy, policy_config)
        await self._write(self.store.set_app_policy, name, policy, policy_config)
        await self._reconcile("app", name)
        self._apply.restart_learning(name)
        log_event(
            log,
            "selection_policy_set",
            f"application {name}: selection policy {policy}",
            app=name,
            policy=policy,
        )

    async def link(self, app: str, *models: str) -> None:
        """Link models to an app, all or none (404 when the app or one of them is
        missing, 400 when their input types differ)."""
        await self._write(self.store.link_models, app, models)
        await self._reconcile("app", app)
        for model in models:
            log_event(log, "model_linked", f"model {model} linked to {app}", app=app, model=model)

    async def unlink(self, app: str, model: str) -> None:
        await self._write(self.store.unlink_model, app, model)
        await self._reconcile("app", app)

    # -- pipelines ----------------------------------------------------------------

    def _check_pipeline(self, rec: PipelineRecord, new: bool) -> None:
        """Its graph against the deployed models and, when ``new``, its name
        against the apps (run in a worker thread: it reads the store)."""
        if new and self.store.get_app(rec.name) is not None:
            raise Conflict(
                f"an application named {rec.name} exists; a pipeline needs a name of its own"
            )
        validate_pipeline(rec, self._model_types())

    def _model_types(self) -> dict[str, dict[str, str]]:
        """Model name -> version -> input type, of every deployed version."""
        types: dict[str, dict[str, str]] = {}
        for m in self.store.list_models():
            types.setdefault(m.name, {})[m.version] = m.input_type
        return types

    def _check_pipelines_take(self, rec: ModelRecord) -> None:
        """A new version must keep the pipelines that use its model valid, as a
        linked app refuses it (run in a worker thread: it reads the store)."""
        users = [
            p for p in self.store.list_pipelines() if any(s["model"] == rec.name for s in p.stages)
        ]
        if not users:
            return  # no need to read every model's types
        refusal = new_version_refusal(rec, users, self._model_types())
        if refusal is not None:
            raise BadInput(refusal)

    async def register_pipeline(
        self, rec: PipelineRecord, api_keys: list[str] | None = None
    ) -> None:
        """Register a pipeline and serve it at ``/<name>/predict``, requiring one
        of ``api_keys`` on its queries when some are given (stored as digests,
        in the same transaction: it never answers without them).

        Raises:
            BadInput: Its graph is invalid (a cycle, no single entry, a type
                mismatch along an edge...).
            NotFound: A stage names a model or version that is not deployed.
            Conflict: A pipeline or an application has its name.
        """
        await self._write(self._check_pipeline, rec, True)
        digests = sorted({hash_api_key(k) for k in api_keys or ()})
        await self._write(self.store.add_pipeline, rec, digests)
        await self._reconcile("pipeline", rec.name)
        log_event(
            log,
            "pipeline_registered",
            f"pipeline {rec.name} registered with {len(rec.stages)} stage(s)",
            pipeline=rec.name,
            input_type=rec.input_type,
            slo_micros=rec.slo_micros,
        )

    async def update_pipeline(self, rec: PipelineRecord) -> bool:
        """Replace a pipeline's description (checked as :meth:`register_pipeline`
        checks a new one); queries already under way finish on the old one.

        Returns:
            Whether anything changed.

        Raises:
            NotFound: No pipeline has that name (or a stage's model is missing).
        """
        if await self._write(self.store.get_pipeline, rec.name) is None:
            raise NotFound(f"pipeline {rec.name!r} is not registered")
        await self._write(self._check_pipeline, rec, False)
        changed: bool = await self._write(self.store.update_pipeline, rec)
        if changed:
            await self._reconcile("pipeline", rec.name)
            log_event(log, "pipeline_updated", f"pipeline {rec.name} updated", pipeline=rec.name)
        return changed

    async def set_pipeline_api_keys(self, name: str, keys: list[str]) -> None:
        """Require one of ``keys`` on the pipeline's queries (none: no key
        needed), as :meth:`set_app_api_keys` does for an application."""
        digests = sorted({hash_api_key(k) for k in keys})
        await self._write(self.store.set_pipeline_api_keys, name, digests)
        await self._reconcile("pipeline", name)
        log_event(log, "api_keys_set", f"pipeline {name}: {len(digests)} API key(s)", pipeline=name)

    async def delete_pipeline(self, name: str) -> None:
        """Stop serving a pipeline and forget it (its models stay deployed)."""
        if await self._write(self.store.get_pipeline, name) is None:
            raise NotFound(f"pipeline {name!r} is not registered")
        await self._write(self.store.delete_pipeline, name)
        await self._reconcile("pipeline", name)
        log_event(log, "pipeline_deleted", f"pipeline {name} deleted", pipeline=name)

    # -- models -------------------------------------------------------------------

    async def deploy_model(
        self, rec: ModelRecord, *, payload_b64: str | None = None, make_current: bool = False
    ) -> None:
        """Register a model version, start its replicas, and make it current when
        it is the model's first version or ``make_current``.  Returns once the
        replicas serve; on a failure the version is removed again and the error
        raised."""
        key = (rec.name, rec.version)
        if key in self._deploying:
            raise BadInput(f"model {rec.name}:{rec.version} is being deployed already")
        self._deploying.add(key)
        try:
            await self._deploy(rec, payload_b64, make_current)
        finally:
            self._deploying.discard(key)

    async def _deploy(self, rec: ModelRecord, payload_b64: str | None, make_current: bool) -> None:
        if await self._write(self.store.get_model, rec.name, rec.version) is not None:
            raise BadInput(f"model {rec.name}:{rec.version} already exists")
        await self._write(self._check_pipelines_take, rec)
        if payload_b64 is not None:
            # The digest tells a declarative apply whether a file's code is this one.
            # Off the loop: a large model's payload takes a while to decode and hash.
            payload, digest = await asyncio.to_thread(decode_payload, payload_b64)
            spec = {**rec.container, "payload_sha256": digest}
            container = await self.artifacts.put(rec.name, rec.version, spec, payload)
            rec = ModelRecord(**{**rec.to_dict(), "container": container})
        first = await self._write(self.store.get_current_version, rec.name) is None
        try:
            await self._write(self.store.add_model, rec)
        except BaseException:
            if payload_b64 is not None:
                await self.artifacts.remove(rec.name, rec.version)
            raise
        await self._reconcile("model", rec.name)
        try:
            await self._replicas.ensure(rec.name, rec.version)
        except BaseException as exc:
            log_event(
                log,
                "model_deploy_failed",
                f"deploying {rec.name}:{rec.version} failed: {exc}",
                level=logging.ERROR,
                model=rec.name,
                version=rec.version,
                error=str(exc),
            )
            await self._forget_model(rec)
            raise
        log_event(
            log,
            "model_deployed",
            f"model {rec.name}:{rec.version} deployed with {rec.num_replicas} replica(s)",
            model=rec.name,
            version=rec.version,
            input_type=rec.input_type,
            replicas=rec.num_replicas,
            container=rec.container.get("kind", "external"),
        )
        if first or make_current:
            await self.set_model_version(rec.name, rec.version)

    async def _forget_model(self, rec: ModelRecord) -> None:
        # What its queue holds is answered first: stopping the replicas under it
        # failed those queries (503) although they had been accepted.
        dp = self._apply.dataplane
        if not await dp.drain_version(rec.name, rec.version, DRAIN_SECONDS):
            log.warning("model %s: still busy after %g s; stopping it", rec.key, DRAIN_SECONDS)
        try:
            await self._replicas.stop(rec)
            await self._write(self.store.delete_model_version, rec.name, rec.version)
        except BaseException:
            dp.undrain_version(rec.name, rec.version)  # still there: routable again
            raise
        await self._reconcile("model", rec.name)
        await self.artifacts.remove(rec.name, rec.version)

    async def set_model_version(self, name: str, version: str) -> None:
        """Send the model's queries to ``version`` (roll forward or back)."""
        previous = await self._write(self.store.get_current_version, name)
        await self._write(self.store.set_current_version, name, version)
        await self._reconcile("model", name)
        if previous != version:
            log_event(
                log,
                "version_switched",
                f"model {name}: queries now go to version {version} (was {previous})",
                model=name,
                version=version,
                previous=previous,
            )

    async def delete_model_version(self, name: str, version: str) -> None:
        rec = await self._write(self.store.get_model, name, version)
        if rec is None:
            raise NotFound(f"model {name}:{version} is not registered")
        await self._forget_model(rec)
        log_event(
            log,
            "model_version_removed",
            f"model {name}:{version} removed",
            model=name,
            version=version,
        )

    async def set_num_replicas(self, name: str, version: str, n: int) -> None:
        """Scale a model version and return once ``n`` replicas serve."""
        if n < 0:
            raise BadInput("num_replicas must be >= 0")
        if await self._write(self.store.get_model, name, version) is None:
            raise NotFound(f"model {name}:{version} is not registered")
        await self._write(self.store.set_num_replicas, name, version, n)
        await self._reconcile("model", name)
        await self._replicas.ensure(name, version)
        log_event(
            log,
            "replicas_scaled",
            f"model {name}:{version} scaled to {n} replica(s)",
            model=name,
            version=version,
            replicas=n,
        )

    async def update_model_spec(self, name: str, version: str, /, **spec: Any) -> None:
        """Change a model version's tunables in place: ``num_replicas`` scales
        (as :meth:`set_num_replicas`), the others
        (:data:`~clipper_core.control.reconcile.IN_PLACE_SPEC`) apply to its next
        batch and query.

        Raises:
            BadInput: A field a running version cannot take in place
                (``batch_size``, ``queue_capacity``, ``cpus``, ``memory_limit_mb``:
                deploy a new version), or an invalid value.
            NotFound: No such version.
        """
        fixed = sorted(set(spec) - set(IN_PLACE_SPEC))
        if fixed:
            raise BadInput(
                f"model {name}:{version}: {', '.join(fixed)} cannot change while it runs"
                f" (in place: {', '.join(IN_PLACE_SPEC)}); deploy a new version"
            )
        replicas = spec.pop("num_replicas", None)
        if spec:
            await self._write(
                functools.partial(self.store.update_model_spec, name, version, **spec)
            )
            await self._reconcile("model", name)
            log_event(
                log,
                "model_spec_updated",
                f"model {name}:{version}: {', '.join(f'{k}={v}' for k, v in spec.items())}",
                model=name,
                version=version,
                **spec,
            )
        if replicas is not None:
            await self.set_num_replicas(name, version, replicas)

    # -- declarative configuration ----------------------------------------------------

    async def plan(self, desired: DesiredState, *, prune: bool = False) -> list[Change]:
        """What :meth:`apply` would change (a dry run): nothing is written.

        Raises:
            BadInput: The file asks for what cannot be done in place (see
                :func:`~clipper_core.control.apply.diff`).
        """
        current = await self._write(read_current, self.store)
        return diff(desired, current, prune=prune)

    async def apply(self, desired: DesiredState, *, prune: bool = False) -> list[Change]:
        """Make the desired state of a declarative file true: model versions
        first, then current versions, apps, links and pipelines; with
        ``prune``, what the file does not describe is deleted too (in the order
        of :func:`~clipper_core.control.apply.diff`).  Applying the same file
        twice changes nothing the second time.

        Returns:
            Every change, ``unchanged`` ones included, in the order made.

        Raises:
            BadInput: As :meth:`plan` (then nothing changed); or the first
                change that failed (those before it stay made).
        """
        async with self._applying:
            changes = await self.plan(desired, prune=prune)
            await carry_out(self, desired, changes)
        made = sum(c.kind != "unchanged" for c in changes)
        log_event(
            log,
            "desired_state_applied",
            f"applied a desired state: {made} change(s)",
            changes=made,
            prune=prune,
        )
        return changes

    async def register_replica(
        self, name: str, version: str, replica_id: str, address: str, *, tls: bool = False
    ) -> None:
        """A container started by hand joins a model version's replicas; it is
        remembered in the store, so a restart connects to it again.  Returns once
        it is connected.  ``tls``: it is remote, reached over TLS with the
        version's replica token (its address is stored as ``grpcs://host:port``).

        The address is connected first and recorded only then: a replica id
        registered again at an address that does not serve its model fails, and
        the replica serves on at its old address, its record unchanged."""
        if tls:
            address = remote_address(address)
        record = EndpointRecord(name, version, replica_id, address)  # a typo: 400 now
        if await self._write(self.store.get_model, name, version) is None:
            raise NotFound(f"model {name}:{version} not found")
        recorded = await self._write(self.store.list_endpoints, name, version)
        await self._apply.connected(name, version, replica_id, address)
        try:
            await self._write(self.store.put_endpoint, record)
        except BaseException:
            # Not recorded: the call failed, so back to what the store holds.
            old = next((e.address for e in recorded if e.replica_id == replica_id), None)
            if old is None:
                self._apply.withdraw(name, version, replica_id)
            else:
                self._apply.publish(name, version, replica_id, old)
            raise
        await self._reconcile("endpoint", name)
