"""The whole server in one object: query frontend, management API, process manager.

``ClipperServer`` is an async context manager (or ``await start()`` / ``await
stop()``) that runs inside any asyncio loop; ``ClipperServer.run_forever`` is what
the CLI runs, and ``BackgroundServer`` runs one in a thread for synchronous code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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

from clipper_core import admin_api, query_api
from clipper_core.clipper_api import parse_default_output
from clipper_core.config import ServerConfig
from clipper_core.dataplane import Application, DataPlane, ModelVersion
from clipper_core.errors import BadInput, ClipperError, NotFound
from clipper_core.http import HttpServer, Router
from clipper_core.process_manager import (
    LocalProcessManager,
    ReplicaEvent,
    ReplicaHandle,
    ReplicaSpec,
)
from clipper_core.state import AppRecord, ModelRecord, StateStore

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
        self.dataplane = DataPlane(cache_bytes=cfg.cache_bytes)
        self.manager = LocalProcessManager(on_event=self._on_replica_event)
        self._query_http: HttpServer | None = None
        self._admin_http: HttpServer | None = None
        self._connecting: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
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
    def query_url(self) -> str:
        return f"http://{self.config.host}:{self.query_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.config.host}:{self.management_port}"

    async def start(self) -> None:
        """Open the store, bind both ports, and bring back every app and model."""
        cfg = self.config
        state_path = cfg.resolved_state_path()
        if state_path != ":memory:":
            Path(state_path).parent.mkdir(parents=True, exist_ok=True)
        cfg.models_dir().mkdir(parents=True, exist_ok=True)
        self.store = StateStore(state_path)
        query_router = Router()
        query_api.install(query_router, self)
        admin_router = Router()
        admin_api.install(admin_router, self)
        self._query_http = HttpServer(
            query_router, host=cfg.host, port=cfg.query_port, max_body_size=cfg.max_body_size
        )
        self._admin_http = HttpServer(
            admin_router, host=cfg.host, port=cfg.management_port, max_body_size=1 << 30
        )
        await self._query_http.start()
        await self._admin_http.start()
        self.started_at = time.time()
        await self._restore()
        log.info(
            "clipper_core serving: query %s, management %s", self.query_url, self.management_url
        )

    async def stop(self) -> None:
        """Stop accepting, drain, stop every container, close the store."""
        if self._query_http is not None:
            await self._query_http.stop()
        if self._admin_http is not None:
            await self._admin_http.stop()
        for task in list(self._connecting.values()) + list(self._background):
            task.cancel()
        await self.manager.stop_all()
        await self.dataplane.close()
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
        """Ask ``run_forever`` to stop (safe from signal handlers)."""
        self._background_task(self.stop())

    async def run_forever(self) -> None:
        """Start, serve until SIGTERM/SIGINT or a shutdown request, then stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_shutdown)
        await self.start()
        await self._stopped.wait()

    # -- state ------------------------------------------------------------------

    def _store(self) -> StateStore:
        if self.store is None:
            raise ClipperError("the server is not running")
        return self.store

    async def _restore(self) -> None:
        store = self._store()
        for rec in store.list_apps():
            self._add_app_to_dataplane(rec)
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
        self.dataplane.add_app(
            Application(
                name=rec.name,
                input_type=rec.input_type,
                default_output=parse_default_output(rec.default_output),
                slo=rec.slo_micros / 1e6,
                policy=rec.policy,
            )
        )

    def _add_model_to_dataplane(self, rec: ModelRecord) -> ModelVersion:
        cfg = self.config
        mv = ModelVersion(
            rec.name,
            rec.version,
            rec.input_type,
            queue_capacity=cfg.queue_capacity,
            max_batch_size=cfg.max_batch_size,
            batch_size=rec.batch_size,
            batch_wait=rec.batch_wait_micros / 1e6,
            batch_timeout=cfg.batch_timeout,
            cache=self.dataplane.cache if rec.cache_enabled else None,
        )
        self.dataplane.add_model_version(mv)
        return mv

    # -- operations used by the management API ------------------------------------

    def add_app(self, rec: AppRecord) -> None:
        self._store().add_app(rec)
        self._add_app_to_dataplane(rec)

    def delete_app(self, name: str) -> None:
        store = self._store()
        if store.get_app(name) is None:
            raise NotFound(f"application {name!r} is not registered")
        store.delete_app(name)
        self.dataplane.remove_app(name)

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

    def unlink(self, app: str, model: str) -> None:
        self._store().unlink_model(app, model)
        self.dataplane.unlink(app, model)

    def save_model_payload(self, name: str, version: str, filename: str, data: bytes) -> str:
        """Write a deployed model's file (e.g. a pickled closure) into the state dir."""
        folder = self.config.models_dir() / name / version
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        path.write_bytes(data)
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
        rec = ModelRecord(**{**rec.to_dict(), "container": container})
        store.add_model(rec)
        self._add_model_to_dataplane(rec)
        first = store.get_current_version(rec.name) is None
        try:
            await self._scale(rec.name, rec.version, rec.num_replicas)
        except BaseException:
            await self._forget_model(rec.name, rec.version)
            raise
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
        self._store().set_current_version(name, version)
        self.dataplane.set_current_version(name, version)

    async def delete_model_version(self, name: str, version: str) -> None:
        if self._store().get_model(name, version) is None:
            raise NotFound(f"model {name}:{version} is not registered")
        await self._forget_model(name, version)

    async def set_num_replicas(self, name: str, version: str, n: int) -> None:
        store = self._store()
        if store.get_model(name, version) is None:
            raise NotFound(f"model {name}:{version} is not registered")
        if n < 0:
            raise BadInput("num_replicas must be >= 0")
        store.set_num_replicas(name, version, n)
        await self._scale(name, version, n)

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
        else:
            raise BadInput(f"model {name}:{version} has no container to start (kind {kind!r})")
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
        task = self._connecting.get(key)
        if task is None or task.done():
            mv = self.dataplane.get_model_version(name, version)
            if replica_id in mv.replicas and mv.replicas[replica_id].address == address:
                return
            task = asyncio.get_running_loop().create_task(
                mv.add_replica(replica_id, address, ready_timeout=self.config.replica_start_timeout)
            )
            self._connecting[key] = task
            task.add_done_callback(lambda _t: self._connecting.pop(key, None))
        await asyncio.shield(task)

    def _on_replica_event(self, event: ReplicaEvent) -> None:
        handle: ReplicaHandle = event.handle
        spec = handle.spec
        rid = str(spec.replica_id)
        if event.kind == "ready" and handle.address:
            self._background_task(
                self._connect_replica(spec.model_name, spec.model_version, rid, handle.address)
            )
        elif event.kind in ("exited", "stopped", "failed"):
            if event.kind != "stopped":
                log.warning(
                    "replica %s of %s:%s %s: %s",
                    rid,
                    spec.model_name,
                    spec.model_version,
                    event.kind,
                    event.detail,
                )
            model = self.dataplane.models.get(spec.model_name)
            mv = None if model is None else model.versions.get(spec.model_version)
            if mv is not None:
                self._background_task(mv.remove_replica(rid))

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

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout)
        self._thread.join(timeout)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
