"""``ClipperServer``: wires the server together and runs its lifecycle.

It builds the data plane, the control plane (the store, the reconcilers, the
container manager) and the frontends (Clipper REST, the Open Inference Protocol
over HTTP and gRPC, the management API and its dashboard), binds the listeners,
and stops everything in order.  What each piece does lives in its own module;
this one only connects them.  ``ClipperServer`` is an async context manager (or
``await start()`` / ``await stop()``) that runs inside any asyncio loop;
``run_forever`` is what the CLI runs, and ``BackgroundServer`` runs one on a
thread of its own for synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from clipper_core import admin_api, dashboard, frontend_workers, gc_freeze, query_api
from clipper_core.admin_guard import admin_guard
from clipper_core.admission import ClientLimiter, QueryGate
from clipper_core.auth import ApiKeys
from clipper_core.config import ServerConfig, default_state_dir
from clipper_core.control import (
    BackgroundTasks,
    ControlPlane,
    DataPlaneReconciler,
    ModelDefaults,
    ReplicaReconciler,
)
from clipper_core.control.artifacts import LocalArtifactStore
from clipper_core.control.follow import FeedFollower
from clipper_core.control.lease import AlwaysHeld, Lease, LeaseKeeper
from clipper_core.control.replicas import EndpointSink, StoreEndpointSink
from clipper_core.dataplane import DataPlane
from clipper_core.embedded import ServerThread
from clipper_core.errors import BadInput, ClipperError
from clipper_core.http import HttpServer, Router
from clipper_core.http.same_origin import SameOriginPolicy
from clipper_core.listeners import Listeners
from clipper_core.logs import log_event
from clipper_core.managers.base import ContainerManager
from clipper_core.managers.local import LocalProcessManager
from clipper_core.oip import InferenceService
from clipper_core.oip import http as oip_http
from clipper_core.planning import budgets
from clipper_core.query_refusal import header_refusal
from clipper_core.replica_tls import server_connector
from clipper_core.replica_tokens import ReplicaTokens
from clipper_core.selection import api as selection_api
from clipper_core.selection.runtime import SelectionService
from clipper_core.server_metrics import ServerMetrics
from clipper_core.state_dir import StateLock, lock_state_dir, prepare_state_dir, resolve_admin_token
from clipper_core.store.base import StateStore
from clipper_core.store.sqlite import SqliteStateStore

log = logging.getLogger("clipper_core.server")


def _configured_manager(cfg: ServerConfig, tokens: Callable[[], ReplicaTokens]) -> ContainerManager:
    """The container manager ``cfg.container_manager`` names; its replicas fetch
    bundles with, or require, tokens of ``tokens()``."""
    if cfg.container_manager == "kubernetes":
        from clipper_core.managers.kubernetes import KubernetesContainerManager  # optional extra

        return KubernetesContainerManager.from_config(
            cfg, token_for=lambda r: tokens().bundle_token(r.name, r.version)
        )
    if cfg.container_manager != "local":
        raise BadInput(f"unknown container manager {cfg.container_manager!r}: local or kubernetes")
    return LocalProcessManager(
        python=cfg.python or sys.executable,
        envs_dir=Path(cfg.state_dir) / "envs",
        start_timeout=cfg.replica_start_timeout,
        standby=cfg.replica_standby,
        token_for=(lambda n, v: tokens().local_token(n, v)) if cfg.local_replica_tokens() else None,
    )


class ClipperServer:
    """Frontends, control plane and container manager on one event loop.

    Args:
        config: The settings (default: ``ServerConfig()``); keyword arguments
            override its fields.
        manager: The container manager (default: local processes, each model in
            its own environment when it asks for one).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        manager: ContainerManager | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config or ServerConfig()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"unknown server setting {key!r}")
            setattr(cfg, key, value)
        cfg.workers = frontend_workers.resolve_workers(cfg.workers)
        self.config = cfg
        # A script or test on ephemeral ports that names no state folder gets a
        # fresh one, removed at stop: a second run starts from nothing.
        self._temporary_state: weakref.finalize[Any, ClipperServer] | None = None
        if cfg.wants_temporary_state():
            cfg.state_dir = tempfile.mkdtemp(prefix="clipper-state-")
            self._temporary_state = weakref.finalize(
                self, shutil.rmtree, cfg.state_dir, ignore_errors=True
            )
        elif not cfg.state_dir:
            cfg.state_dir = default_state_dir()
        self.store: StateStore | None = None
        self.control: ControlPlane | None = None
        # Many frontends share the store (state_url): the replica lease decides
        # which one starts containers; the others follow its endpoint records.
        self.shared_state = cfg.state_url is not None
        # A query worker follows the primary's store and replicas (frontend_workers).
        self.lease: Lease = frontend_workers.NeverHeld() if cfg.is_query_worker() else AlwaysHeld()
        self.workers = frontend_workers.FrontendWorkers(cfg)  # started by the primary
        self._sink: StoreEndpointSink | None = None
        self._froze = False  # gc_freeze at start: thaw at stop
        self._follower: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        # Set once the state is restored, cleared when stopping: OIP readiness.
        self.ready = False
        self.started_at = 0.0
        self.dataplane = DataPlane(cache_bytes=cfg.cache_bytes, batch_slo_rule=budgets.batch_slos)
        self.selection = SelectionService()
        self.manager: ContainerManager = manager or (
            frontend_workers.NoContainers()
            if cfg.is_query_worker()
            else _configured_manager(cfg, self._tokens)
        )
        self.metrics = ServerMetrics(self.dataplane, self.manager.list, lambda: self.started_at)
        self.api_keys = ApiKeys()
        self.gate = QueryGate(
            ClientLimiter(
                max_concurrency=cfg.client_max_concurrency,
                rate=cfg.client_rate_limit,
                burst=cfg.client_burst,
            ),
            self.api_keys,
            cfg.max_json_depth,
        )
        self.oip = InferenceService(
            self.dataplane, self.gate, default_timeout=cfg.batch_timeout, ready=lambda: self.ready
        )
        self.tasks = BackgroundTasks()
        #: The per-model replica tokens (read at start, from the secret file).
        self.replica_tokens: ReplicaTokens | None = None
        self._apply: DataPlaneReconciler | None = None
        self.listeners: Listeners | None = None
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._state_lock: StateLock | None = None

    # -- addresses --------------------------------------------------------------

    @property
    def _query_http(self) -> HttpServer:
        assert self.listeners is not None, "server not started"
        return self.listeners.query

    @property
    def query_port(self) -> int:
        return self._query_http.port

    @property
    def management_port(self) -> int:
        assert self.listeners is not None, "server not started"
        assert self.listeners.admin is not None, "a query worker has no management port"
        return self.listeners.admin.port

    @property
    def grpc_port(self) -> int | None:
        """The OIP gRPC port bound; None when it serves no gRPC or has not bound it yet."""
        grpc = None if self.listeners is None else self.listeners.grpc
        return None if grpc is None else grpc.bound_port

    @property
    def scheme(self) -> str:
        """``"https"`` when the HTTP ports speak TLS, else ``"http"``."""
        return "https" if self.config.tls_cert else "http"

    @property
    def query_url(self) -> str:
        return f"{self.scheme}://{self.config.host}:{self.query_port}"

    @property
    def management_url(self) -> str:
        return f"{self.scheme}://{self.config.host}:{self.management_port}"

    # -- wiring -------------------------------------------------------------------

    def _open_store(self) -> StateStore:
        """The store of ``config.state_url`` (and the replica lease on it), or
        the SQLite file in the state folder."""
        cfg = self.config
        if cfg.state_url is None:
            return SqliteStateStore(cfg.resolved_state_path())
        if not cfg.state_url.startswith(("redis://", "rediss://", "unix://")):
            raise BadInput(f"unsupported state URL {cfg.state_url!r}: use redis://host:port/db")
        # Imported here: the redis client is an optional extra (clipper_core[redis]).
        from clipper_core.store.redis import RedisStateStore
        from clipper_core.store.redis_lease import RedisLease

        store = RedisStateStore(cfg.state_url)
        if cfg.is_query_worker():
            return store
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = RedisLease(store.client, store.keys.lease, owner, cfg.lease_ttl)
        return store

    def _build_control(self, store: StateStore) -> tuple[DataPlaneReconciler, ReplicaReconciler]:
        cfg = self.config
        self.selection.open(store)
        replicas: ReplicaReconciler | None = None

        def on_replica_hung(name: str, version: str, replica_id: str) -> None:
            if replicas is not None:
                replicas.recycle(name, version, replica_id)

        apply = DataPlaneReconciler(
            self.dataplane,
            self.selection,
            self.api_keys,
            store,
            ModelDefaults(
                queue_capacity=cfg.queue_capacity,
                max_batch_size=cfg.max_batch_size,
                batch_timeout=cfg.batch_timeout,
                admission=cfg.admission_control,
                replica_start_timeout=cfg.replica_start_timeout,
            ),
            connector=server_connector(cfg, self._tokens()),
            on_replica_hung=on_replica_hung,
            supervised=lambda *key: replicas is not None and replicas.supervises(*key),
        )
        sink: EndpointSink = apply
        if cfg.publishes_endpoints():
            sink = self._sink = StoreEndpointSink(store, apply, self.lease)
        replicas = ReplicaReconciler(
            self.manager,
            store,
            sink,
            self.tasks,
            start_timeout=cfg.replica_start_timeout,
            lease=self.lease,
        )
        self.control = ControlPlane(store, apply, replicas, LocalArtifactStore(cfg.models_dir()))
        return apply, replicas

    def _tokens(self) -> ReplicaTokens:
        if self.replica_tokens is None:  # a manager used before start (tests, tools)
            prepare_state_dir(self.config)
            secret_file = self.config.resolved_replica_secret_file()
            self.replica_tokens = ReplicaTokens.load_or_create(secret_file)
        return self.replica_tokens

    def _routers(self, control: ControlPlane, admin_token: str | None) -> tuple[Router, Router]:
        query = Router()
        query_api.install(query, self.dataplane, self.gate, self.metrics, self.inspect)
        oip_http.install(query, self.oip)
        selection_api.install(query, self.dataplane, self.gate)
        frontend_workers.install_identity(query, self.workers, lambda: self.listeners)
        admin = Router()
        assert self.replica_tokens is not None
        admin_api.install(
            admin,
            control,
            self.dataplane,
            self.selection,
            envs=getattr(self.manager, "envs", None),
            inspect=self.inspect,
            shutdown=self.request_shutdown,
            tokens=self.replica_tokens,
            admin_token=admin_token,
        )
        dashboard.install(admin, self.metrics, self.dataplane, self)
        return query, admin

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, bind the listeners, and bring back every app and model."""
        if self._stopped.is_set():  # its data plane and manager are closed for good
            raise ClipperError("this server was stopped (a failed start stops it): make a new one")
        cfg = self.config
        prepare_state_dir(cfg)
        self._state_lock = lock_state_dir(cfg)  # one server per state folder
        admin_token = None if cfg.is_query_worker() else resolve_admin_token(cfg)
        self.replica_tokens = await asyncio.to_thread(
            ReplicaTokens.load_or_create, cfg.resolved_replica_secret_file()
        )
        self.store = store = await asyncio.to_thread(self._open_store)
        apply, replicas = self._build_control(store)
        self._apply = apply
        assert self.control is not None
        query_router, admin_router = self._routers(self.control, admin_token)
        policy = SameOriginPolicy(
            cfg.host, lambda: self.management_port, self.scheme, cfg.allowed_hosts
        )
        self.listeners = Listeners(
            cfg,
            query=query_router,
            admin=None if cfg.is_query_worker() else admin_router,
            admin_guard=admin_guard(admin_token, policy),
            header_guard=header_refusal(self.dataplane, self.gate),
            oip=self.oip,
        )
        worker = cfg.is_query_worker()
        if not worker:  # a query worker joins the shared ports once it can answer
            await self.listeners.start()
        self.started_at = time.time()
        self.metrics.start()
        if not (worker or self.shared_state):  # replicas of an earlier run's workers
            await asyncio.to_thread(frontend_workers.forget_published_endpoints, store)
        # The restore: the same reconcile that applies every later change, then
        # every change after the revision it started from, as it commits.
        since = await asyncio.to_thread(store.revision)
        await apply.sync_all()
        follower = FeedFollower(
            frontend_workers.query_feed(cfg, store),
            store,
            apply,
            replicas=replicas if self.shared_state else None,
            tasks=self.tasks,
        )
        self._follower = asyncio.get_running_loop().create_task(follower.run(since))
        if worker:
            await frontend_workers.replicas_connected(store, apply, cfg.replica_start_timeout)
            await self.listeners.start()
        held = await self.lease.acquire()
        if held:
            await replicas.ensure_all()
        if self.shared_state:
            keeper = LeaseKeeper(
                self.lease,
                interval=cfg.lease_ttl / 3,
                on_acquired=lambda: self.tasks.spawn(replicas.ensure_all(), "taking over replicas"),
                on_lost=lambda: self.tasks.spawn(replicas.release_all(), "giving up replicas"),
            )
            self._keeper = asyncio.get_running_loop().create_task(keeper.run(held))
        self.ready = True
        if cfg.workers > 1 and not worker:
            try:
                await self.workers.start(self.query_port, self.grpc_port)
            except BaseException:
                await self.stop()  # the listeners, replicas and store started above
                raise
        if cfg.gc_freeze:
            gc_freeze.freeze_long_lived()
            self._froze = True
        admin_url = None if worker else self.management_url
        log_event(
            log,
            "server_started",
            f"clipper_core serving: query {self.query_url}, management {admin_url}"
            + ("" if self.grpc_port is None else f", OIP gRPC {cfg.host}:{self.grpc_port}")
            + f", worker {cfg.worker_id} of {cfg.workers}",
            query_url=self.query_url,
            management_url=admin_url,
            worker=cfg.worker_id,
            pid=os.getpid(),
            state=cfg.state_url or cfg.resolved_state_path(),
            replica_lease=held,
        )

    async def stop(self) -> None:
        """Stop accepting, drain, stop every container, close the store.

        In-flight requests get up to ``config.shutdown_grace`` seconds to finish;
        those still running then are answered 503.  Safe to call more than once
        (later calls wait for the first).
        """
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        try:
            await self._shutdown()
        finally:
            self._stopped.set()  # run_forever returns whatever happened

    async def _shutdown(self) -> None:
        self.ready = False
        grace = self.config.shutdown_grace
        draining = [self.workers.stop(grace)]
        if self.listeners is not None:
            draining.append(self.listeners.stop(grace))
        await asyncio.gather(*draining)  # the workers drain too, while the replicas run
        # Dispatchers first, then processes: a replica killed under a running
        # dispatcher would hand its batch back for nothing.  Each step runs even
        # if one before it failed, so containers are always stopped.
        steps: list[Callable[[], Awaitable[Any]]] = [self._stop_following, self.tasks.cancel_all]
        if self._apply is not None:
            steps.append(self._apply.close)
        steps += [self.dataplane.close, self.manager.close]
        if self._sink is not None:
            steps.append(self._sink.drain)  # the stopped replicas' records go
        steps += [self.lease.release, self.metrics.stop, self.selection.close]
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("shutdown step %s failed", getattr(step, "__qualname__", step))
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._froze:
            gc_freeze.thaw()
            self._froze = False
        if self._state_lock is not None:
            self._state_lock.release()
        if self._temporary_state is not None:
            self._temporary_state()  # the containers are stopped: nothing writes there

    async def _stop_following(self) -> None:
        tasks = [t for t in (self._follower, self._keeper) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ClipperServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def request_shutdown(self) -> None:
        """Ask ``run_forever`` to stop gracefully (safe from signal handlers)."""
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())

    async def wait_stopped(self) -> None:
        """Return once the server has stopped."""
        await self._stopped.wait()

    async def run_forever(self, on_started: Callable[[ClipperServer], None] | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT or a shutdown request, then stop.

        Args:
            on_started: Called once the listeners are bound and the state restored.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_shutdown)
        await self.start()
        if on_started is not None:
            on_started(self)
        await self._stopped.wait()
        if self._stop_task is not None:
            await self._stop_task  # surfaces an error of the stop itself

    def inspect(self) -> dict[str, Any]:
        """The figures of ``inspect_instance()`` (``GET /metrics`` as JSON)."""
        return query_api.inspect_instance(self.dataplane, self.metrics, self.manager.list())


class BackgroundServer(ServerThread[ClipperServer]):
    """A ``ClipperServer`` running on its own uvloop thread, for synchronous code.

    >>> with BackgroundServer(query_port=0, management_port=0) as srv:
    ...     print(srv.query_url)
    """

    def __init__(self, config: ServerConfig | None = None, **overrides: Any) -> None:
        super().__init__(ClipperServer(config, **overrides))

    @property
    def query_url(self) -> str:
        return self.server.query_url

    @property
    def management_url(self) -> str:
        return self.server.management_url

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self
