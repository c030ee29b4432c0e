"""``DataPlaneReconciler``: makes this frontend's data plane match the store.

It runs on every frontend.  Reconciling is level-triggered: an event names a key
(an app, a model, a model's endpoints, a pipeline), and the reconciler rereads that key's
records and changes the data plane until it matches them.  A duplicate, late or
missed event is therefore harmless, and :meth:`DataPlaneReconciler.sync_all`, which
reconciles every key, is both the restore on start and the resync after a gap in
the change feed.

Replica endpoints reach it two ways: the replica reconciler publishes the ones its
container manager started (:meth:`publish` / :meth:`withdraw`), and the store holds
the ones registered by hand (``endpoint`` events).  Either way one connect per
(model, version, replica) runs at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipper_core.auth import API_KEYS_NAMESPACE, ApiKeys
from clipper_core.clipper_api import parse_default_output
from clipper_core.control.model_defaults import ModelDefaults
from clipper_core.dataplane import Application, DataPlane, ModelVersion
from clipper_core.errors import ClipperError, NotFound, ReplicaUnavailable
from clipper_core.pipelines.model import validate as validate_pipeline
from clipper_core.pipelines.runtime import PipelineRouter
from clipper_core.replica_client import ReplicaConnector
from clipper_core.selection.runtime import SelectionService
from clipper_core.store.base import DesiredStateReader, StateEvent
from clipper_core.store.records import (
    LEARNING_RESETS_NAMESPACE,
    AppRecord,
    EndpointRecord,
    ModelRecord,
    PipelineRecord,
)

log = logging.getLogger("clipper_core.control")

ReplicaKey = tuple[str, str, str]  # (model, version, replica id)

#: The spec fields a running model version takes in place: the replica count
#: (the replica reconciler scales), and what :meth:`DataPlaneReconciler.reconcile`
#: sets on its ``ModelVersion`` (read again for every batch or query).
IN_PLACE_SPEC = ("num_replicas", "batch_wait_micros", "batch_timeout", "cache_enabled", "labels")


@dataclass(frozen=True)
class _AppState:
    rec: AppRecord | None
    links: list[str]
    digests: list[str]
    learning: str | None = None  # the token of its last learning restart


class DataPlaneReconciler:
    """Applies desired state (the store) to one frontend's data plane.

    Args:
        dataplane: What queries see.
        selection: The apps' selectors (policies and their learned state).
        api_keys: The apps' API-key digests, checked on the query path.
        reader: The store, read from worker threads (it never blocks the loop).
        defaults: Server-wide model version settings.
        connector: Builds the client of a replica (the TLS slot for remote ones).
        on_replica_hung: Called with (model, version, replica id) when a replica's
            batch passes its batch timeout.
        supervised: Whether this server's manager runs (model, version, replica id).
    """

    def __init__(
        self,
        dataplane: DataPlane,
        selection: SelectionService,
        api_keys: ApiKeys,
        reader: DesiredStateReader,
        defaults: ModelDefaults,
        *,
        connector: ReplicaConnector,
        on_replica_hung: Callable[[str, str, str], None],
        supervised: Callable[[str, str, str], bool] = lambda *key: False,
    ) -> None:
        self._dataplane = self.dataplane = dataplane  # public: the control plane drains
        self._selection = selection
        self._api_keys = api_keys
        self._reader = reader
        self._defaults = defaults
        self._connector = connector
        self._on_replica_hung, self._supervised = on_replica_hung, supervised
        # The app records (and learning-restart tokens) last applied: a policy
        # change or a restart is told from a re-read.
        self._applied: dict[str, AppRecord] = {}
        self._learning: dict[str, str | None] = {}
        # The pipeline records last applied: an update is told from a re-read.
        self._pipelines: dict[str, PipelineRecord] = {}
        # One connect per replica at a time: key -> (address, task).
        self._connecting: dict[ReplicaKey, tuple[str, asyncio.Task[None]]] = {}
        # Replicas registered by hand (endpoint records), per model version.
        self._registered: dict[tuple[str, str], set[str]] = {}
        # When each running version was registered: the same name:version deleted
        # and registered again (read late, after a feed gap) is another version.
        self._registered_at: dict[tuple[str, str], float] = {}
        # One reconcile of a key at a time: two of the same key interleaving
        # across their awaits could apply an older read after a newer one.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- whole state --------------------------------------------------------------

    async def sync_all(self) -> None:
        """Reconcile every key the store holds and drop what it no longer holds:
        the restore on start, and the resync after a gap in the change feed.
        Connects to replicas registered by hand go on in the background."""
        apps, models, pipelines = await asyncio.to_thread(
            lambda: (
                [a.name for a in self._reader.list_apps()],
                self._reader.list_models(),
                [p.name for p in self._reader.list_pipelines()],
            )
        )
        model_names = sorted({m.name for m in models} | set(self._dataplane.models))
        for name in model_names:
            await self.reconcile(StateEvent(0, "model", name))
        served = {n for n, a in self._dataplane.apps.items() if _is_pipeline(a)}
        for app in sorted((set(apps) | set(self._dataplane.apps)) - served):
            await self.reconcile(StateEvent(0, "app", app))
        for name in sorted(set(pipelines) | served):
            await self.reconcile(StateEvent(0, "pipeline", name))

    async def reconcile(self, event: StateEvent) -> None:
        """Make the data plane match the store for the key ``event`` names (only
        its kind and name matter: the records are reread).  Connects to replicas
        registered by hand go on in the background; :meth:`connected` waits for one."""
        lock = self._locks.setdefault((event.kind, event.name), asyncio.Lock())
        async with lock:
            if event.kind == "app":
                await self._reconcile_app(event.name)
            elif event.kind == "model":
                await self._reconcile_model(event.name)
                await self._reconcile_endpoints(event.name)
            elif event.kind == "endpoint":
                await self._reconcile_endpoints(event.name)
            elif event.kind == "pipeline":
                await self._reconcile_pipeline(event.name)
            else:
                log.debug("no data-plane state for %s %s", event.kind, event.name)

    # -- applications -------------------------------------------------------------

    def _read_app(self, name: str) -> _AppState:
        rec = self._reader.get_app(name)
        if rec is None:
            return _AppState(None, [], [])
        digests = self._reader.get_kv(API_KEYS_NAMESPACE, name) or []
        try:
            linked = self._reader.linked_models(name)
        except NotFound:  # deleted between the reads (by another frontend): gone
            return _AppState(None, [], [])
        learning = self._reader.get_kv(LEARNING_RESETS_NAMESPACE, name)
        return _AppState(rec, linked, list(digests), learning)

    async def _reconcile_app(self, name: str) -> None:
        state = await asyncio.to_thread(self._read_app, name)
        rec = state.rec
        dp = self._dataplane
        app = dp.apps.get(name)
        if app is not None and _is_pipeline(app):
            if rec is not None:
                log.error("application %s: a pipeline has its name; it is not served", name)
            # A pipeline's; but API-key writes log an app change whatever the name.
            await self._apply_pipeline_keys(name)
            return
        if rec is None:
            if app is not None:
                dp.remove_app(name)
                self._selection.forget(name)
            self._api_keys.remove(name)
            self._applied.pop(name, None)
            self._learning.pop(name, None)
            return
        if app is None:
            app = Application(
                name=rec.name,
                input_type=rec.input_type,
                default_output=parse_default_output(rec.default_output),
                slo=rec.slo_micros / 1e6,
                policy=rec.policy,
            )
            # attach() reads the app's learned state from the store.
            await asyncio.to_thread(self._selection.attach, app, rec.policy_config)
            dp.add_app(app)
        else:
            app.input_type = rec.input_type
            app.default_output = parse_default_output(rec.default_output)
            app.slo = rec.slo_micros / 1e6
            before = self._applied.get(name)
            if (
                before is None
                or (before.policy, before.policy_config) != (rec.policy, rec.policy_config)
                or state.learning != self._learning.get(name)  # restarted on any frontend
            ):
                self._selection.set_policy(app, rec.policy, rec.policy_config)
        self._applied[name] = rec
        self._learning[name] = state.learning
        for model in [m for m in app.linked_models if m not in state.links]:
            dp.unlink(name, model)
        for model in state.links:
            dp.link(name, model)
        if app.linked_models != state.links:
            # The store's order is the link order (the first answers under
            # single): a frontend that saw the links come in another order follows it.
            app.linked_models[:] = state.links
        self._api_keys.set_digests(name, state.digests)

    def restart_learning(self, name: str) -> None:
        """Start an app's selection policy afresh (its learned state is dropped)."""
        app = self._dataplane.apps.get(name)
        rec = self._applied.get(name)
        if app is not None and rec is not None:
            self._selection.set_policy(app, rec.policy, rec.policy_config)

    # -- pipelines ----------------------------------------------------------------

    def _read_pipeline(self, name: str) -> tuple[PipelineRecord | None, list[str]]:
        rec = self._reader.get_pipeline(name)
        keys = [] if rec is None else self._reader.get_kv(API_KEYS_NAMESPACE, name)
        return rec, list(keys or [])

    async def _apply_pipeline_keys(self, name: str) -> None:
        """Only a pipeline's API keys (under its lock: no older read after a newer)."""
        async with self._locks.setdefault(("pipeline", name), asyncio.Lock()):
            rec, digests = await asyncio.to_thread(self._read_pipeline, name)
            app = self._dataplane.apps.get(name)
            if rec is not None and app is not None and _is_pipeline(app):
                self._api_keys.set_digests(name, digests, pipeline=True)

    async def _reconcile_pipeline(self, name: str) -> None:
        """Serve the pipeline as an application whose router walks its stages;
        its stage models count as linked to it (their batch objectives follow
        its latency objective)."""
        rec, digests = await asyncio.to_thread(self._read_pipeline, name)
        dp = self._dataplane
        app = dp.apps.get(name)
        if app is not None and not _is_pipeline(app):
            if rec is not None:
                log.error("pipeline %s: an application has its name; it is not served", name)
            return
        if rec is None:
            if app is not None:
                dp.remove_app(name)
            self._api_keys.remove(name)
            self._pipelines.pop(name, None)
            return
        # The keys first: a pipeline is never served without the keys it has.
        self._api_keys.set_digests(name, digests, pipeline=True)
        if app is not None and self._pipelines.get(name) == rec:
            return
        try:
            # The models are checked at registration and, as they come and go,
            # on the query path: here only the graph.
            graph = validate_pipeline(rec, None)
        except ClipperError as exc:
            log.error("pipeline %s cannot be served: %s", name, exc)
            return
        if app is None:
            # Filled in below, before anything can query it (no await between).
            app = Application(rec.name, rec.input_type, None, 0.0, policy="pipeline")
            dp.add_app(app)
        # An update keeps the app (and its figures); the router starts afresh.
        app.input_type = rec.input_type
        app.default_output = parse_default_output(rec.default_output)
        app.slo = rec.slo_micros / 1e6
        app.selector = PipelineRouter(graph)
        for model in [m for m in app.linked_models if m not in graph.models]:
            dp.unlink(name, model)
        for model in graph.models:
            dp.link(name, model)
        self._pipelines[name] = rec

    # -- models -------------------------------------------------------------------

    async def _reconcile_model(self, name: str) -> None:
        records, current = await asyncio.to_thread(
            lambda: (self._reader.list_models(name), self._reader.get_current_version(name))
        )
        wanted = {r.version: r for r in records}
        dp = self._dataplane
        model = dp.models.get(name)
        gone = [] if model is None else [v for v in model.versions if v not in wanted]
        # A version deleted and registered again since it was built (its code and
        # even its input type may differ): its queue and cached answers go too.
        gone += [
            v
            for v in ([] if model is None else model.versions)
            if v in wanted and self._registered_at.get((name, v)) != wanted[v].created_at
        ]
        for version in gone:
            for key in [k for k in self._connecting if k[:2] == (name, version)]:
                self._cancel_connect(key)
            self._registered.pop((name, version), None)
            self._registered_at.pop((name, version), None)
            await dp.remove_model_version(name, version)
        for version, rec in wanted.items():
            model = dp.models.get(name)
            if model is None or version not in model.versions:
                try:
                    mv = self._model_version(rec)
                except (ClipperError, ValueError, OverflowError) as exc:
                    # One record this release cannot serve: the others still serve.
                    log.error("model %s cannot be served: %s", rec.key, exc)
                    continue
                dp.add_model_version(mv)
                self._registered_at[(name, version)] = rec.created_at
            else:
                self._retune(model.versions[version], rec)
        model = dp.models.get(name)
        if model is not None:
            if current in wanted and model.current != current:
                dp.set_current_version(name, current)
            elif current is None:
                model.current = None

    def _model_version(self, rec: ModelRecord) -> ModelVersion:
        d = self._defaults
        name, version = rec.name, rec.version
        return ModelVersion(
            name,
            version,
            rec.input_type,
            queue_capacity=rec.queue_capacity or d.queue_capacity,
            max_batch_size=d.max_batch_size,
            batch_size=rec.batch_size,
            controller=rec.controller,
            batch_wait=rec.batch_wait_micros / 1e6,
            batch_timeout=rec.batch_timeout or d.batch_timeout,
            cache=self._dataplane.cache if rec.cache_enabled else None,
            admission=d.admission,
            on_replica_hung=lambda rid: self._on_replica_hung(name, version, rid),
            connector=self._connector,
            supervised=lambda rid: self._supervised(name, version, rid),
        )

    def _retune(self, mv: ModelVersion, rec: ModelRecord) -> None:
        """Apply the in-place spec (:data:`IN_PLACE_SPEC`) to a running version:
        its dispatchers read these again for every batch, and ``submit`` the
        cache for every query."""
        mv.batch_wait = rec.batch_wait_micros / 1e6
        mv.batch_timeout = rec.batch_timeout or self._defaults.batch_timeout
        mv.cache = self._dataplane.cache if rec.cache_enabled else None

    # -- replicas registered by hand ------------------------------------------------

    async def _reconcile_endpoints(self, model_name: str) -> None:
        endpoints: list[EndpointRecord] = await asyncio.to_thread(
            self._reader.list_endpoints, model_name
        )
        model = self._dataplane.models.get(model_name)
        if model is None:
            return
        for version in model.versions:
            wanted = {e.replica_id: e.address for e in endpoints if e.version == version}
            registered = self._registered.setdefault((model_name, version), set())
            for rid in registered - set(wanted):
                self.withdraw(model_name, version, rid)
            registered.clear()
            registered.update(wanted)
            for rid, address in wanted.items():
                self._connect((model_name, version, rid), address)

    # -- endpoints: where the replica reconciler reports to --------------------------

    def publish(self, name: str, version: str, replica_id: str, address: str) -> None:
        """A replica serves at ``address``: connect to it (in the background)."""
        self._connect((name, version, replica_id), address)

    def withdraw(self, name: str, version: str, replica_id: str) -> None:
        """A replica is gone: stop its connect and its dispatcher."""
        self._cancel_connect((name, version, replica_id))
        model = self._dataplane.models.get(name)
        mv = None if model is None else model.versions.get(version)
        if mv is not None and replica_id in mv.replicas:
            task = asyncio.get_running_loop().create_task(mv.remove_replica(replica_id))
            task.add_done_callback(_log_failure)

    async def connected(self, name: str, version: str, replica_id: str, address: str) -> None:
        """Wait until the replica at ``address`` is connected (connecting if needed).

        Raises:
            ReplicaUnavailable: It went away, or was replaced, before it connected.
        """
        key = (name, version, replica_id)
        while True:
            task = self._connect(key, address)
            if task is None:
                return  # connected already (or its model version is gone)
            try:
                await asyncio.shield(task)
                return
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # our caller was cancelled
                entry = self._connecting.get(key)
                if entry is None or entry[0] != address:
                    raise ReplicaUnavailable(
                        f"replica {replica_id} of {name}:{version} went away while connecting"
                    ) from None

    async def prune(self, name: str, version: str, n: int) -> None:
        """Drop the dispatchers of managed replicas numbered ``n`` and above."""
        model = self._dataplane.models.get(name)
        mv = None if model is None else model.versions.get(version)
        if mv is None:
            return
        for rid in list(mv.replicas):
            if rid.isdigit() and int(rid) >= n:
                self._cancel_connect((name, version, rid))
                await mv.remove_replica(rid)

    async def serving(self, name: str, version: str, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until this data plane dispatches to replicas ``0 .. n-1`` of
        ``name:version`` and to no other numbered one: what a frontend without
        the replica lease waits for after a deploy or a scale (the holder starts
        them, and their endpoint records arrive through the change feed).

        Raises:
            ReplicaUnavailable: Not so within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = {str(i) for i in range(n)}
        while True:
            model = self._dataplane.models.get(name)
            mv = None if model is None else model.versions.get(version)
            serving = set() if mv is None else {r for r in mv.replicas if r.isdigit()}
            if serving == wanted:
                return
            if loop.time() >= deadline:
                raise ReplicaUnavailable(
                    f"{name}:{version}: {len(serving & wanted)} of {n} replica(s) serve on this"
                    f" frontend after {timeout:g}s (the frontend holding the replica lease"
                    " starts them; see its log)"
                )
            await asyncio.sleep(0.05)

    def _connect(self, key: ReplicaKey, address: str) -> asyncio.Task[None] | None:
        entry = self._connecting.get(key)
        if entry is not None and not entry[1].done():
            if entry[0] == address:
                return entry[1]
            # A restarted replica announced a new address: the connect to the old
            # one can only fail (after the start timeout).
            entry[1].cancel()
        name, version, rid = key
        model = self._dataplane.models.get(name)
        mv = None if model is None else model.versions.get(version)
        if mv is None:
            return None
        slot = mv.replicas.get(rid)
        if slot is not None and slot.address == address:
            return None
        task = asyncio.get_running_loop().create_task(
            mv.add_replica(rid, address, ready_timeout=self._defaults.replica_start_timeout),
            name=f"connect {name}:{version} replica {rid}",
        )
        self._connecting[key] = (address, task)

        def done(t: asyncio.Task[None]) -> None:
            current = self._connecting.get(key)
            if current is not None and current[1] is t:
                del self._connecting[key]
            _log_failure(t)

        task.add_done_callback(done)
        return task

    def _cancel_connect(self, key: ReplicaKey) -> None:
        entry = self._connecting.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    async def close(self) -> None:
        """Cancel the connects still running."""
        tasks = [t for _, t in self._connecting.values()]
        self._connecting.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _is_pipeline(app: Application) -> bool:
    return isinstance(app.selector, PipelineRouter)


def _log_failure(task: asyncio.Task[Any]) -> None:
    # Retrieve the outcome so that it never reaches the loop's exception handler.
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s failed: %s", task.get_name(), task.exception())
