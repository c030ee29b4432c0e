"""An in-process container manager, for tests that need replicas but no processes.

Each "replica" of :class:`FakeContainerManager` is a real
:class:`model_containers.server.ContainerServer` (gRPC model and health services)
running in this process on an ephemeral ``127.0.0.1`` port, so the data plane
connects to it exactly as to a child process.  It keeps the
:class:`~clipper_core.managers.base.ContainerManager` contract and emits the same
events; :meth:`FakeContainerManager.kill` simulates a crash, after which the
replica comes back (``exited``, ``restarting``, ``started``, ``ready``) at a new
address.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clipper_core.errors import BadInput, NotFound, ReplicaUnavailable
from clipper_core.managers.base import (
    ContainerManager,
    EventKind,
    ReplicaEvent,
    ReplicaState,
    ReplicaStatus,
)
from clipper_core.store.records import EXTERNAL_KIND, ModelRecord
from model_containers.model import Model
from model_containers.server import ContainerInfo, ContainerServer, exception_line

__all__ = ["FakeContainerManager", "load_container_model"]

logger = logging.getLogger("clipper_core.managers.fake")

# Seconds a stopping replica's calls in flight get.
_STOP_GRACE = 0.5


def load_container_model(record: ModelRecord) -> Model:
    """Load the model of ``record`` in this process, as ``python -m model_containers``
    would: a pickled closure (``"closure"``), a class (``"class"``, with its
    ``model_path``) or an adapter over a model folder; then ``load()`` it.

    The record's ``python_path``, ``runtime_env`` and ``deploy_env`` are ignored:
    the model runs on this interpreter.

    Raises:
        BadInput: The record describes no container kind to load.
        model_containers.cli.ModelLoadError: The model cannot be loaded.
    """
    from model_containers.cli import load_model

    container = record.container
    kind = container.get("kind")
    args = argparse.Namespace(adapter=None, closure=None, model_class=None, model_path=None)
    if kind == "closure":
        args.closure = str(container["path"])
    elif kind == "class":
        args.model_class = str(container["class"])
        args.model_path = container.get("model_path") or None
    elif container.get("adapter"):
        args.adapter = str(container["adapter"])
        args.model_path = str(container["path"])
    else:
        raise BadInput(f"model {record.name}:{record.version} has no container (kind {kind!r})")
    model = load_model(args)
    if args.model_path is not None:
        model.model_path = str(args.model_path)
    model.load()
    return model


@dataclass(eq=False)
class _Replica:
    record: ModelRecord
    replica_id: str
    state: ReplicaState = "starting"
    address: str | None = None
    restarts: int = 0
    detail: str = ""
    server: ContainerServer | None = None
    boot: asyncio.Task[None] | None = None
    stop_requested: bool = False
    stopping: asyncio.Task[None] | None = None
    # Replaced and set on every state change: a pulse that waiters follow.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return f"{self.record.name}:{self.record.version}:{self.replica_id}"

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class FakeContainerManager:
    """A :class:`~clipper_core.managers.base.ContainerManager` whose replicas are
    gRPC servers in this process.

    Records with container kind ``"external"`` are left alone, as by the local
    manager.  A replica whose model cannot be made ends ``failed`` at once (the
    local manager retries a few times first): ``exited`` then ``failed`` events,
    and :meth:`wait_ready` raises with the error.  Statuses carry no pid.

    Args:
        model_factory: Makes the model a replica serves, in a worker thread, each
            time the replica starts; it returns the model ready to serve.  The
            default, :func:`load_container_model`, loads the record's container
            (a pickled closure from ``container["path"]``, a class, an adapter).
        host: The address the servers listen on.
        start_timeout: The default ``timeout`` of :meth:`wait_ready`, in seconds.
    """

    def __init__(
        self,
        model_factory: Callable[[ModelRecord], Model] | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
    ) -> None:
        self._factory = model_factory or load_container_model
        self._host = host
        self.start_timeout = start_timeout
        self._replicas: dict[str, _Replica] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._subscribers: list[Callable[[ReplicaEvent], None]] = []

    async def __aenter__(self) -> FakeContainerManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ContainerManager ---------------------------------------------------------

    async def scale(self, model: ModelRecord, n: int) -> None:
        """Start or stop replicas of ``model`` until ``n`` are supervised, without
        waiting for readiness.  Failed replicas are replaced; new ones take the
        lowest free ids; a scale down stops the highest ids first."""
        if n < 0:
            raise BadInput(f"replica count must be >= 0, got {n}")
        if model.container.get("kind") == EXTERNAL_KIND:
            return
        lock = self._locks.setdefault((model.name, model.version), asyncio.Lock())
        async with lock:
            current = {int(r.replica_id): r for r in self._of(model.name, model.version)}
            for rid, replica in list(current.items()):
                if replica.state == "failed":
                    await self._stop(replica)
                    del current[rid]
            if len(current) > n:
                excess = sorted(current, reverse=True)[: len(current) - n]
                await asyncio.gather(*(self._stop(current[i]) for i in excess))
            rid = 0
            while len(current) < n:
                if rid not in current:
                    current[rid] = self._start(model, str(rid))
                rid += 1

    # The timeout is part of the contract (and of the error message), so it is a
    # parameter rather than left to the caller's asyncio.timeout().
    async def wait_ready(
        self,
        name: str,
        version: str,
        replica_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Wait until a replica serves; its address.

        Raises:
            ReplicaUnavailable: It failed to start (with the error), is stopped or
                unknown, or the timeout (``start_timeout`` by default) passed.
        """
        timeout = self.start_timeout if timeout is None else timeout
        key = f"{name}:{version}:{replica_id}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            replica = self._replicas.get(key)
            if replica is None:
                raise ReplicaUnavailable(f"replica {key} is not running")
            changed = replica.changed
            if replica.state == "running" and replica.address is not None:
                return replica.address
            if replica.state == "failed":
                raise ReplicaUnavailable(
                    f"replica {key} exited before it was ready: {replica.detail}"
                )
            if replica.state == "stopped":
                raise ReplicaUnavailable(f"replica {key} is stopped")
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise ReplicaUnavailable(
                    f"replica {key} did not become ready within {timeout:g} s"
                    f" (state {replica.state})"
                ) from None

    async def restart(self, name: str, version: str, replica_id: str) -> None:
        """Restart a running replica (``exited``, ``restarting``, then ``started``
        and ``ready`` at a new address); any other is left alone."""
        replica = self._replicas.get(f"{name}:{version}:{replica_id}")
        if replica is not None:
            await self._crash(replica, "restarted on request")

    def list(self, name: str | None = None, version: str | None = None) -> list[ReplicaStatus]:
        """The replicas (failed ones included until the next scale)."""
        replicas = [
            r
            for r in self._replicas.values()
            if (name is None or r.record.name == name)
            and (version is None or r.record.version == version)
        ]
        replicas.sort(key=lambda r: (r.record.name, r.record.version, int(r.replica_id)))
        return [
            ReplicaStatus(
                model=r.record.name,
                version=r.record.version,
                replica_id=r.replica_id,
                state=r.state,
                address=r.address,
                pid=None,
                restarts=r.restarts,
                detail=r.detail,
            )
            for r in replicas
        ]

    def subscribe(self, callback: Callable[[ReplicaEvent], None]) -> None:
        """Call ``callback`` with every event from now on (on the loop,
        synchronously).  Errors it raises are logged."""
        self._subscribers.append(callback)

    async def close(self) -> None:
        """Stop every replica's server.  Safe to call more than once."""
        while self._replicas:
            await asyncio.gather(*(self._stop(r) for r in list(self._replicas.values())))

    # -- test controls ------------------------------------------------------------

    async def kill(self, name: str, version: str, replica_id: str) -> None:
        """Simulate a crash of a running replica: its server stops at once
        (``exited``), and it restarts at a new address (``restarting``,
        ``started``, ``ready``).  Returns once the server is down.

        Raises:
            NotFound: No such replica.
        """
        replica = self._replicas.get(f"{name}:{version}:{replica_id}")
        if replica is None:
            raise NotFound(f"replica {name}:{version}:{replica_id} does not exist")
        await self._crash(replica, "killed (FakeContainerManager.kill)")

    # -- lifecycle of one replica ---------------------------------------------------

    def _of(self, name: str, version: str) -> builtins.list[_Replica]:
        return [
            r
            for r in self._replicas.values()
            if (r.record.name, r.record.version) == (name, version)
        ]

    def _start(self, record: ModelRecord, replica_id: str) -> _Replica:
        replica = _Replica(record, replica_id)
        self._replicas[replica.key] = replica
        replica.boot = asyncio.get_running_loop().create_task(
            self._boot(replica), name=f"fake replica {replica.key}"
        )
        return replica

    async def _boot(self, replica: _Replica) -> None:
        replica.state = "starting"
        replica.notify()
        self._emit("started", replica)
        try:
            server = await asyncio.to_thread(self._serve, replica.record, replica.replica_id)
        except Exception as exc:
            replica.state = "failed"
            replica.detail = f"the model could not be made: {exception_line(exc)}"
            replica.notify()
            self._emit("exited", replica, replica.detail)
            self._emit("failed", replica, replica.detail)
            return
        if replica.stop_requested:  # stopped while it started: _stop stops it
            replica.server = server
            return
        replica.server = server
        replica.address = server.address
        replica.state = "running"
        replica.notify()
        self._emit("ready", replica, server.address)

    def _serve(self, record: ModelRecord, replica_id: str) -> ContainerServer:
        """Make the model and a server answering for it (in a worker thread)."""
        model = self._factory(record)
        info = ContainerInfo(record.name, record.version, record.input_type, replica_id)
        server = ContainerServer(info, host=self._host, port=0, local_socket=None)
        server.start()
        server.serve(model)
        return server

    async def _crash(self, replica: _Replica, why: str) -> None:
        if replica.state != "running" or replica.stop_requested:
            return
        server, replica.server, replica.address = replica.server, None, None
        if server is not None:
            await asyncio.to_thread(server.stop, 0)
        if replica.stop_requested:  # stopped meanwhile: it stays down
            return
        replica.detail = why
        replica.state = "restarting"
        replica.notify()
        self._emit("exited", replica, why)
        self._emit("restarting", replica, f"restart {replica.restarts + 1} in 0 s")
        replica.restarts += 1
        replica.boot = asyncio.get_running_loop().create_task(
            self._boot(replica), name=f"fake replica {replica.key}"
        )

    async def _stop(self, replica: _Replica) -> None:
        if replica.stopping is None:
            replica.stop_requested = True
            replica.stopping = asyncio.get_running_loop().create_task(self._shut_down(replica))
        # shield: a cancelled caller must not leave the server half-stopped.
        await asyncio.shield(replica.stopping)

    async def _shut_down(self, replica: _Replica) -> None:
        if replica.boot is not None and not replica.boot.done():
            await asyncio.wait({replica.boot})  # the server it starts is stopped below
        server, replica.server, replica.address = replica.server, None, None
        if server is not None:
            await asyncio.to_thread(server.stop, _STOP_GRACE)
        replica.state = "stopped"
        replica.notify()
        if self._replicas.get(replica.key) is replica:
            del self._replicas[replica.key]
        self._emit("stopped", replica)

    def _emit(self, kind: EventKind, replica: _Replica, detail: str = "") -> None:
        logger.info("replica %s %s%s", replica.key, kind, f": {detail}" if detail else "")
        event = ReplicaEvent(
            kind=kind,
            model=replica.record.name,
            version=replica.record.version,
            replica_id=replica.replica_id,
            address=replica.address if kind == "ready" else None,
            detail=detail,
            restarts=replica.restarts,
        )
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("a subscriber failed on a %r event of %s", kind, replica.key)


if TYPE_CHECKING:  # mypy checks that the class keeps the interface
    _implements: type[ContainerManager] = FakeContainerManager
