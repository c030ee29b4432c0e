"""The whole server in one object: query frontend, management API, process manager.

``ClipperServer`` is an async context manager (or ``await start()`` / ``await
stop()``) that runs inside any asyncio loop; ``ClipperServer.run_forever`` is what
the CLI runs, and ``BackgroundServer`` runs one in a thread for synchronous code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from clipper_core import admin_api, dashboard, query_api
from clipper_core.admission import ClientLimiter, QueryGate
from clipper_core.auth import API_KEYS_NAMESPACE, ApiKeys, hash_api_key
from clipper_core.clipper_api import parse_default_output
from clipper_core.config import ServerConfig
from clipper_core.dataplane import Application, DataPlane, ModelVersion
from clipper_core.errors import BadInput, ClipperError, NotFound, ReplicaUnavailable
from clipper_core.http import HttpServer, Router
from clipper_core.http.same_origin import SameOriginPolicy
from clipper_core.logs import log_event, log_replica_event
from clipper_core.model_bundle import TAR, unpack_archive
from clipper_core.oip import InferenceService
from clipper_core.oip import http as oip_http
from clipper_core.oip.grpc_service import GrpcInferenceServer, read_tls_files
from clipper_core.planning import budgets
from clipper_core.process_manager import (
    LocalProcessManager,
    ReplicaEvent,
    ReplicaHandle,
    ReplicaSpec,
)
from clipper_core.runtime_env import RuntimeEnvManager
from clipper_core.selection import api as selection_api
from clipper_core.selection import validate_policy
from clipper_core.selection.runtime import SelectionService
from clipper_core.server_metrics import ServerMetrics
from clipper_core.state import AppRecord, ModelRecord, StateStore
from clipper_core.state_dir import (
    make_private_dir,
    prepare_state_dir,
    resolve_admin_token,
    write_private_file,
)

log = logging.getLogger("clipper_core.server")


class ClipperServer:
    """Frontend + management API + local process manager, sharing one event loop."""

    def __init__(self, config: ServerConfig | None = None, **overrides: Any) -> None:
        cfg = config or ServerConfig()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"unknown server setting {key!r}")
            setattr(cfg, key, value)
        self.config = cfg
        self.store: StateStore | None = None
        # Set once the state is restored, cleared when stopping: OIP readiness.
        self.ready = False
        self.dataplane = DataPlane(cache_bytes=cfg.cache_bytes, batch_slo_rule=budgets.batch_slos)
        self.selection = SelectionService()
        self.manager = LocalProcessManager(on_event=self._on_replica_event)
        self.metrics = ServerMetrics(self.dataplane, self.manager.list, lambda: self.started_at)
        # Per-model virtual environments (pkgs_to_install), cached by requirements.
        self.runtime_envs = RuntimeEnvManager(
            Path(cfg.state_dir) / "envs", python=cfg.python or sys.executable
        )
        self.client_limiter = ClientLimiter(
            max_concurrency=cfg.client_max_concurrency,
            rate=cfg.client_rate_limit,
            burst=cfg.client_burst,
        )
        self.api_keys = ApiKeys()
        self.gate = QueryGate(self.client_limiter, self.api_keys, cfg.max_json_depth)
        # The Open Inference Protocol: REST on the query port, gRPC on grpc_port.
        self.oip = InferenceService(
            self.dataplane,
            self.gate,
            default_timeout=cfg.batch_timeout,
            ready=lambda: self.ready,
        )
        self._grpc: GrpcInferenceServer | None = None
        self._query_http: HttpServer | None = None
        self._admin_http: HttpServer | None = None
        # (model, version, replica id) -> (address, task connecting to it)
        self._connecting: dict[tuple[str, str, str], tuple[str, asyncio.Task[None]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self.started_at = 0.0

    # -- lifecycle --------------------------------------------------------------

    @property
    def query_port(self) -> int:
        assert self._query_http is not None, "server not started"
        return self._query_http.port

    @property
    def management_port(self) -> int:
        assert self._admin_http is not None, "server not started"
        return self._admin_http.port

    @property
    def grpc_port(self) -> int | None:
        """The OIP gRPC port bound, or None when ``config.grpc_port`` is None."""
        return None if self._grpc is None else self._grpc.port

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

    async def start(self) -> None:
        """Open the store, bind both ports, and bring back every app and model."""
        cfg = self.config
        prepare_state_dir(cfg)
        admin_token = resolve_admin_token(cfg)
        ssl_context = None
        if cfg.tls_cert or cfg.tls_key:
            if not (cfg.tls_cert and cfg.tls_key):
                raise BadInput("TLS needs both tls_cert and tls_key")
            from clipper_core.tls import server_ssl_context

            ssl_context = server_ssl_context(cfg.tls_cert, cfg.tls_key)
        state_path = cfg.resolved_state_path()
        self.store = StateStore(state_path)
        self.selection.open(self.store)
        query_router = Router()
        query_api.install(query_router, self.dataplane, self.gate, self.metrics, self.inspect)
        oip_http.install(query_router, self.oip)
        selection_api.install(query_router, self.dataplane, self.gate)
        admin_router = Router()
        admin_api.install(admin_router, self)
        dashboard.install(admin_router, self.metrics, self.dataplane, self)
        self._query_http = HttpServer(
            query_router,
            host=cfg.host,
            port=cfg.query_port,
            max_body_size=cfg.max_body_size,
            max_header_size=cfg.max_header_size,
            access_log=cfg.access_log,
            ssl=ssl_context,
        )
        self._admin_http = HttpServer(
            admin_router,
            host=cfg.host,
            port=cfg.management_port,
            max_body_size=1 << 30,
            access_log=cfg.access_log,
            ssl=ssl_context,
            guard=admin_api.admin_guard(
                admin_token,
                SameOriginPolicy(
                    cfg.host, lambda: self.management_port, self.scheme, cfg.allowed_hosts
                ),
            ),
        )
        await self._query_http.start()
        await self._admin_http.start()
        if cfg.grpc_port is not None:
            tls = read_tls_files(cfg.tls_cert, cfg.tls_key)
            grpc_server = GrpcInferenceServer(
                self.oip,
                host=cfg.host,
                port=cfg.grpc_port,
                tls=tls,
                max_message_bytes=cfg.max_body_size,
            )
            await grpc_server.start()
            self._grpc = grpc_server
        self.started_at = time.time()
        self.metrics.start()
        await self._restore()
        self.ready = True
        log_event(
            log,
            "server_started",
            f"clipper_core serving: query {self.query_url}, management {self.management_url}"
            + ("" if self._grpc is None else f", OIP gRPC {cfg.host}:{self._grpc.port}"),
            query_url=self.query_url,
            management_url=self.management_url,
            pid=os.getpid(),
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
        draining = [h.stop(grace) for h in (self._query_http, self._admin_http) if h is not None]
        if self._grpc is not None:
            draining.append(self._grpc.stop(grace))
        for result in await asyncio.gather(*draining, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("stopping a frontend failed: %r", result)
        tasks = [t for _, t in self._connecting.values()] + list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Dispatchers first, then processes: a replica killed under a running
        # dispatcher would hand its batch back for nothing.  Each step runs even
        # if one before it failed, so containers are always stopped.
        steps = (
            self.dataplane.close,
            self.manager.stop_all,
            self.runtime_envs.close,
            self.metrics.stop,
            self.selection.close,
        )
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("shutdown step %s failed", step.__qualname__)
        if self.store is not None:
            self.store.close()
            self.store = None
        self._stopped.set()

    async def __aenter__(self) -> ClipperServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def request_shutdown(self) -> None:
        """Ask ``run_forever`` to stop gracefully (safe from signal handlers)."""
        if self._stop_task is None:
            # Not a _background_task: stop() cancels those.
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())

    async def run_forever(self, on_started: Callable[[ClipperServer], None] | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT or a shutdown request, then stop.

        Args:
            on_started: Called once both ports are bound and the state restored.
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

    # -- state ------------------------------------------------------------------

    def _store(self) -> StateStore:
        if self.store is None:
            raise ClipperError("the server is not running")
        return self.store

    async def _restore(self) -> None:
        store = self._store()
        for rec in store.list_apps():
            self._add_app_to_dataplane(rec)
        for app_name, digests in store.list_kv(API_KEYS_NAMESPACE).items():
            self.api_keys.set_digests(app_name, digests)
        for mrec in store.list_models():
            self._add_model_to_dataplane(mrec)
        for mrec in store.list_models():
            if store.get_current_version(mrec.name) == mrec.version:
                self.dataplane.set_current_version(mrec.name, mrec.version)
        for rec in store.list_apps():
            for model_name in store.linked_models(rec.name):
                self.dataplane.link(rec.name, model_name)
        starts = [self._scale(m.name, m.version, m.num_replicas) for m in store.list_models()]
        results = await asyncio.gather(*starts, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                log.error("restoring a model failed: %s", res)

    def _add_app_to_dataplane(self, rec: AppRecord) -> None:
        app = Application(
            name=rec.name,
            input_type=rec.input_type,
            default_output=parse_default_output(rec.default_output),
            slo=rec.slo_micros / 1e6,
            policy=rec.policy,
        )
        self.dataplane.add_app(app)
        self.selection.attach(app, rec.policy_config)

    def _add_model_to_dataplane(self, rec: ModelRecord) -> ModelVersion:
        cfg = self.config
        mv = ModelVersion(
            rec.name,
            rec.version,
            rec.input_type,
            queue_capacity=rec.queue_capacity or cfg.queue_capacity,
            max_batch_size=cfg.max_batch_size,
            batch_size=rec.batch_size,
            batch_wait=rec.batch_wait_micros / 1e6,
            batch_timeout=rec.batch_timeout or cfg.batch_timeout,
            cache=self.dataplane.cache if rec.cache_enabled else None,
            admission=cfg.admission_control,
            on_replica_hung=lambda rid: self._recycle_replica(rec.name, rec.version, rid),
        )
        self.dataplane.add_model_version(mv)
        return mv

    # -- operations used by the management API ------------------------------------

    def add_app(self, rec: AppRecord) -> None:
        validate_policy(rec.policy, rec.policy_config)
        self._store().add_app(rec)
        self._add_app_to_dataplane(rec)
        self.selection.reset(rec.name)  # nothing learned survives from an older namesake
        log_event(
            log,
            "app_registered",
            f"application {rec.name} registered",
            app=rec.name,
            input_type=rec.input_type,
            slo_micros=rec.slo_micros,
        )

    def delete_app(self, name: str) -> None:
        store = self._store()
        if store.get_app(name) is None:
            raise NotFound(f"application {name!r} is not registered")
        store.delete_app(name)
        self.dataplane.remove_app(name)
        self.selection.forget(name)
        store.delete_kv(API_KEYS_NAMESPACE, name)
        self.api_keys.remove(name)
        log_event(log, "app_deleted", f"application {name} deleted", app=name)

    def set_app_api_keys(self, name: str, keys: list[str]) -> None:
        """Require one of ``keys`` on the app's queries (none: no key needed).

        Only SHA-256 digests are kept, in memory and in the store."""
        store = self._store()
        if store.get_app(name) is None:
            raise NotFound(f"application {name!r} is not registered")
        digests = sorted({hash_api_key(k) for k in keys})
        if digests:
            store.put_kv(API_KEYS_NAMESPACE, name, digests)
        else:
            store.delete_kv(API_KEYS_NAMESPACE, name)
        self.api_keys.set_digests(name, digests)
        log_event(log, "api_keys_set", f"application {name}: {len(digests)} API key(s)", app=name)

    def set_selection_policy(
        self, name: str, policy: str, policy_config: dict[str, Any] | None = None
    ) -> None:
        """Switch an app's selection policy (or its options); learned state restarts."""
        validate_policy(policy, policy_config)
        self._store().set_app_policy(name, policy, policy_config)
        self.selection.set_policy(self.dataplane.app(name), policy, policy_config)
        log_event(
            log,
            "selection_policy_set",
            f"application {name}: selection policy {policy}",
            app=name,
            policy=policy,
        )

    def link(self, app: str, model: str) -> None:
        store = self._store()
        app_rec = store.get_app(app)
        if app_rec is None:
            raise BadInput(f"application {app!r} is not registered")
        models = store.list_models(model)
        if not models:
            raise BadInput(f"model {model!r} is not registered")
        if models[0].input_type != app_rec.input_type:
            raise BadInput(
                f"model {model!r} takes {models[0].input_type!r} but app {app!r} sends"
                f" {app_rec.input_type!r}"
            )
        store.link_model(app, model)
        self.dataplane.link(app, model)
        log_event(log, "model_linked", f"model {model} linked to {app}", app=app, model=model)

    def unlink(self, app: str, model: str) -> None:
        self._store().unlink_model(app, model)
        self.dataplane.unlink(app, model)

    def save_model_payload(self, name: str, version: str, filename: str, data: bytes) -> str:
        """Write a deployed model's file (e.g. a pickled closure) into the state dir."""
        folder = self.config.models_dir() / name / version
        make_private_dir(folder)
        path = folder / filename
        write_private_file(path, data)
        return str(path)

    async def add_model(self, rec: ModelRecord, *, payload_b64: str | None = None) -> None:
        """Register a model version, start its replicas, and make it current when
        it is the model's first version.  Returns once the replicas serve."""
        store = self._store()
        if store.get_model(rec.name, rec.version) is not None:
            raise BadInput(f"model {rec.name}:{rec.version} already exists")
        container = dict(rec.container)
        if payload_b64 is not None:
            try:
                data = base64.b64decode(payload_b64, validate=True)
            except ValueError as exc:
                raise BadInput(f"model payload is not valid base64: {exc}") from None
            container["path"] = self.save_model_payload(
                rec.name, rec.version, container.get("filename", "model.pkl"), data
            )
            if container.get("archive") == TAR:
                # A framework model's directory: unpacked once, loaded by every replica.
                archive = Path(container["path"])
                container["path"] = await asyncio.to_thread(
                    unpack_archive, archive, archive.with_name("model"), remove_archive=True
                )
        rec = ModelRecord(**{**rec.to_dict(), "container": container})
        store.add_model(rec)
        self._add_model_to_dataplane(rec)
        first = store.get_current_version(rec.name) is None
        try:
            await self._scale(rec.name, rec.version, rec.num_replicas)
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
            await self._forget_model(rec.name, rec.version)
            raise
        log_event(
            log,
            "model_deployed",
            f"model {rec.name}:{rec.version} deployed with {rec.num_replicas} replica(s)",
            model=rec.name,
            version=rec.version,
            input_type=rec.input_type,
            replicas=rec.num_replicas,
            container=container.get("kind", "external"),
        )
        if first:
            self.set_model_version(rec.name, rec.version)

    async def _forget_model(self, name: str, version: str) -> None:
        await self.manager.scale(
            name, version, 0, lambda rid: self._replica_spec(name, version, rid)
        )
        await self.dataplane.remove_model_version(name, version)
        store = self._store()
        store.delete_model_version(name, version)

    def set_model_version(self, name: str, version: str) -> None:
        previous = self._store().get_current_version(name)
        self._store().set_current_version(name, version)
        self.dataplane.set_current_version(name, version)
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
        if self._store().get_model(name, version) is None:
            raise NotFound(f"model {name}:{version} is not registered")
        await self._forget_model(name, version)
        log_event(
            log,
            "model_version_removed",
            f"model {name}:{version} removed",
            model=name,
            version=version,
        )

    async def set_num_replicas(self, name: str, version: str, n: int) -> None:
        store = self._store()
        if store.get_model(name, version) is None:
            raise NotFound(f"model {name}:{version} is not registered")
        if n < 0:
            raise BadInput("num_replicas must be >= 0")
        store.set_num_replicas(name, version, n)
        await self._scale(name, version, n)
        log_event(
            log,
            "replicas_scaled",
            f"model {name}:{version} scaled to {n} replica(s)",
            model=name,
            version=version,
            replicas=n,
        )

    async def register_replica(
        self, name: str, version: str, replica_id: str, address: str
    ) -> None:
        """A container started by hand joins a model version's replicas."""
        self.dataplane.get_model_version(name, version)
        await self._connect_replica(name, version, replica_id, address)

    # -- replicas ---------------------------------------------------------------

    def _replica_spec(self, name: str, version: str, replica_id: int) -> ReplicaSpec:
        rec = self._store().get_model(name, version)
        if rec is None:
            raise NotFound(f"model {name}:{version} is not registered")
        container = rec.container
        argv = [
            self.config.python or sys.executable,
            "-m",
            "model_containers",
            "--model-name",
            name,
            "--model-version",
            version,
            "--input-type",
            rec.input_type,
            "--replica-id",
            str(replica_id),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        kind = container.get("kind")
        if kind == "closure":
            argv += ["--closure", str(container["path"])]
        elif kind == "class":
            argv += ["--model-class", str(container["class"])]
            if container.get("model_path"):
                argv += ["--model-path", str(container["model_path"])]
        elif container.get("adapter"):
            argv += ["--adapter", str(container["adapter"]), "--model-path", str(container["path"])]
        else:
            raise BadInput(f"model {name}:{version} has no container to start (kind {kind!r})")
        if container.get("deploy_env"):
            argv += ["--deploy-env", json.dumps(container["deploy_env"], separators=(",", ":"))]
        argv[0] = self.runtime_envs.python_for(container) or argv[0]
        env = dict(os.environ)
        extra_path = [str(p) for p in container.get("python_path", []) if p]
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join(
                extra_path + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            )
        return ReplicaSpec(
            model_name=name,
            model_version=version,
            replica_id=replica_id,
            argv=argv,
            env=env,
            cwd=None,
            cpus=rec.cpus,
            memory_limit_mb=rec.memory_limit_mb,
        )

    async def _scale(self, name: str, version: str, n: int) -> None:
        rec = self._store().get_model(name, version)
        if rec is None or rec.container.get("kind") == "external":
            return
        if n > 0 and rec.container.get("runtime_env"):
            await self.runtime_envs.ensure(rec.container["runtime_env"])
        handles = await self.manager.scale(
            name, version, n, lambda rid: self._replica_spec(name, version, rid)
        )
        for handle in handles:
            address = await self.manager.wait_ready(handle, self.config.replica_start_timeout)
            await self._connect_replica(name, version, str(handle.spec.replica_id), address)
        # Replicas beyond n were stopped by the manager; drop their dispatchers.
        mv = self.dataplane.get_model_version(name, version)
        for rid in list(mv.replicas):
            if rid.isdigit() and int(rid) >= n:
                await mv.remove_replica(rid)

    async def _connect_replica(
        self, name: str, version: str, replica_id: str, address: str
    ) -> None:
        key = (name, version, replica_id)
        current = self._connecting.get(key)
        if current is not None and not current[1].done() and current[0] != address:
            # A restarted replica announced a new address: the connect to the old
            # one can only fail (after replica_start_timeout), so drop it.
            current[1].cancel()
            current = None
        if current is None or current[1].done():
            mv = self.dataplane.get_model_version(name, version)
            if replica_id in mv.replicas and mv.replicas[replica_id].address == address:
                return
            task = asyncio.get_running_loop().create_task(
                mv.add_replica(replica_id, address, ready_timeout=self.config.replica_start_timeout)
            )
            current = (address, task)
            self._connecting[key] = current

            def forget(t: asyncio.Task[None], key: tuple[str, str, str] = key) -> None:
                entry = self._connecting.get(key)
                if entry is not None and entry[1] is t:
                    del self._connecting[key]

            task.add_done_callback(forget)
        task = current[1]
        while True:
            try:
                await asyncio.shield(task)
                return
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # our caller was cancelled
                # Replaced by a connect to the replica's new address, or the
                # replica went away: wait for the replacement if there is one.
                newer = self._connecting.get(key)
                if newer is None:
                    raise ReplicaUnavailable(
                        f"replica {replica_id} of {name}:{version} went away while connecting"
                    ) from None
                task = newer[1]

    def _cancel_connect(self, name: str, version: str, replica_id: str) -> None:
        entry = self._connecting.pop((name, version, replica_id), None)
        if entry is not None:
            entry[1].cancel()

    def _on_replica_event(self, event: ReplicaEvent) -> None:
        handle: ReplicaHandle = event.handle
        spec = handle.spec
        rid = str(spec.replica_id)
        log_replica_event(event)
        if event.kind == "ready" and handle.address:
            self._background_task(
                self._connect_replica(spec.model_name, spec.model_version, rid, handle.address)
            )
        elif event.kind in ("exited", "stopped", "failed"):
            self._cancel_connect(spec.model_name, spec.model_version, rid)
            model = self.dataplane.models.get(spec.model_name)
            mv = None if model is None else model.versions.get(spec.model_version)
            if mv is not None:
                self._background_task(mv.remove_replica(rid))

    def _recycle_replica(self, name: str, version: str, replica_id: str) -> None:
        """A replica's batch passed its batch timeout: restart its process.

        The process manager stops it (SIGTERM, SIGKILL after a second) and its
        supervisor starts a new one; the usual exited/ready events then replace the
        replica's dispatcher.  A replica started by hand cannot be restarted from
        here: its dispatcher waits until it answers health checks again."""
        for handle in self.manager.list(name, version):
            if str(handle.spec.replica_id) == replica_id:
                log_event(
                    log,
                    "replica_recycled",
                    f"replica {replica_id} of {name}:{version} hung; restarting it",
                    level=logging.WARNING,
                    model=name,
                    version=version,
                    replica=replica_id,
                )
                self._background_task(self.manager.restart(handle))
                return
        log.warning(
            "replica %s of %s:%s hung and was not started by this server; waiting for it",
            replica_id,
            name,
            version,
        )

    def _background_task(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class BackgroundServer:
    """A ``ClipperServer`` running on its own uvloop thread, for synchronous code.

    >>> with BackgroundServer(query_port=0, management_port=0) as srv:
    ...     print(srv.query_url)
    """

    def __init__(self, config: ServerConfig | None = None, **overrides: Any) -> None:
        self.server = ClipperServer(config, **overrides)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def query_url(self) -> str:
        return self.server.query_url

    @property
    def management_url(self) -> str:
        return self.server.management_url

    def start(self, timeout: float = 30.0) -> None:
        import uvloop

        started = threading.Event()
        failure: list[BaseException] = []
        loop = uvloop.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_until_complete(self.server._stopped.wait())

        self._thread = threading.Thread(target=run, name="clipper-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("the embedded server did not start in time")
        if failure:
            raise failure[0]

    def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
        """Run a coroutine function on the server's loop and return its result."""
        assert self._loop is not None

        async def wrapper() -> Any:
            return await fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server (see ``ClipperServer.stop``); ``timeout`` defaults to the
        shutdown grace period plus 30 s for the containers."""
        if self._loop is None or self._thread is None:
            return
        if timeout is None:
            timeout = self.server.config.shutdown_grace + 30.0
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout)
        self._thread.join(timeout)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
