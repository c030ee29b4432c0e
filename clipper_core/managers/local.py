"""The local container manager: each replica is a supervised child process.

:class:`LocalProcessManager` implements
:class:`~clipper_core.managers.base.ContainerManager` on this host.  It builds each
replica's command line from the model record (:func:`~.local_spec.replica_spec`),
builds the model's virtual environment first when the record asks for one
(:class:`~.envs.RuntimeEnvManager`, exposed as ``manager.envs``), and hands the
process to a :class:`~.supervisor.ProcessSupervisor`, which restarts it with
backoff when it dies and gives up on one that keeps dying before it is ready.
It can also keep one warm standby process per model version
(:class:`~.standby.StandbyPool`), which takes the place of a replica whose
process dies, so that a crash costs a connect, not a cold start: from a model
version's first crash on (``standby="after-crash"``, the default: a model that
never crashes costs no extra process), from the start (``"always"``) or never
(``"off"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clipper_core.errors import BadInput, ReplicaUnavailable
from clipper_core.managers.base import ContainerManager, ReplicaEvent, ReplicaStatus
from clipper_core.managers.envs import RuntimeEnvManager
from clipper_core.managers.local_spec import replica_spec, startable
from clipper_core.managers.memory_cgroup import MemoryCgroups
from clipper_core.managers.replica import (
    ProcessEvent,
    ReplicaHandle,
    ReplicaSpec,
    to_replica_event,
    to_replica_status,
)
from clipper_core.managers.standby import STANDBY_POLICIES, Standby, StandbyPool
from clipper_core.managers.supervisor import ProcessSupervisor
from clipper_core.store.records import ModelRecord

__all__ = ["LocalProcessManager"]

logger = logging.getLogger("clipper_core.process_manager")


class LocalProcessManager:
    """Runs the replicas of model versions as child processes of this one.

    Only processes this manager started are ever signalled.  Call :meth:`close`
    before the event loop closes (or use the manager as an async context manager):
    it stops every replica and cancels environment builds in progress.

    Args:
        python: The interpreter that runs model containers, and that their
            virtual environments are made from.
        envs_dir: Where the per-model virtual environments are cached
            (``<state_dir>/envs``).
        replica_host: The address replicas listen on (at a port they pick).
        start_timeout: The default ``timeout`` of :meth:`wait_ready`, in seconds.
        pip_args: Extra arguments for ``pip install`` in environment builds.
        restart_backoff: First and largest delay before a restart, in seconds.
        stderr_tail_lines: How many stderr lines each replica keeps.
        max_start_failures: Consecutive exits before ready that mark a replica failed.
        stable_after: Uptime in seconds after which the restart delay starts over.
        standby: When to keep one warm standby process per model version with
            replicas (one more process of the model, under the same per-replica
            memory limit and on replica 0's CPUs, idle until it is promoted):
            ``"after-crash"`` from the version's first replica crash on,
            ``"always"``, or ``"off"`` (``True``/``False``: always/off).
        token_for: ``(model, version) -> token`` that the replicas of a version
            require on their gRPC port (``authorization: Bearer``) and repeat on
            their local socket; None: they require none.

    Attributes:
        envs: The per-model virtual environments (the management API's
            ``build_runtime_env`` and ``get_runtime_env`` use it).
        supervisor: The process-level supervisor (argv specs and handles).
        cgroups: The replicas' memory cgroups, where the system has them (else
            the memory limit is ``RLIMIT_AS``, said once per replica in the log).
        standbys: The warm standby processes (None without ``standby``).
    """

    def __init__(
        self,
        *,
        python: str,
        envs_dir: str | Path,
        replica_host: str = "127.0.0.1",
        start_timeout: float = 60.0,
        pip_args: Sequence[str] = (),
        restart_backoff: tuple[float, float] = (0.2, 5.0),
        stderr_tail_lines: int = 50,
        max_start_failures: int = 5,
        stable_after: float = 30.0,
        standby: bool | str = "after-crash",
        token_for: Callable[[str, str], str] | None = None,
    ) -> None:
        if start_timeout <= 0:
            raise BadInput("start_timeout must be > 0")
        policy = "always" if standby is True else "off" if standby is False else standby
        if policy not in STANDBY_POLICIES:
            raise BadInput(f"standby must be one of {', '.join(STANDBY_POLICIES)}, got {standby!r}")
        self.standby_policy: str = policy
        self.python = python
        self.replica_host = replica_host
        self._token_for = token_for
        self.start_timeout = start_timeout
        self.envs = RuntimeEnvManager(envs_dir, python=python, pip_args=pip_args)
        keeps = policy != "off"
        self.standbys = StandbyPool(on_gone=self._standby_gone) if keeps else None
        self.supervisor = ProcessSupervisor(
            restart_backoff=restart_backoff,
            stderr_tail_lines=stderr_tail_lines,
            on_event=self._on_process_event,
            max_start_failures=max_start_failures,
            stable_after=stable_after,
            take_standby=self._take_standby if keeps else None,
        )
        self._subscribers: list[Callable[[ReplicaEvent], None]] = []
        self.cgroups = MemoryCgroups()
        self._cgroups: dict[str, Path] = {}  # replica key -> its memory cgroup
        self._standby_serial = 0  # names the standbys' cgroups
        # "after-crash": each scaled-up version's standby maker, used at its first crash.
        self._standby_makers: dict[tuple[str, str], Callable[[], ReplicaSpec]] = {}

    async def __aenter__(self) -> LocalProcessManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ContainerManager ---------------------------------------------------------

    async def scale(self, model: ModelRecord, n: int) -> None:
        """Start or stop replicas of ``model`` until ``n`` are supervised.

        Builds (or waits for) the record's ``runtime_env`` first when replicas are
        to run.  Returns once the processes exist, not once they are ready.  A
        record with container kind ``"external"`` (or no container) is left alone.

        Raises:
            BadInput: ``n`` < 0, the container kind is unknown, or the environment
                build failed (with pip's last lines).
            ReplicaUnavailable: A replica could not be spawned (the others stay).
        """
        if n < 0:
            raise BadInput(f"replica count must be >= 0, got {n}")
        if not startable(model):
            return
        runtime_env = model.container.get("runtime_env")
        if n > 0 and runtime_env:
            await self.envs.ensure(runtime_env)
        await self.supervisor.scale(model.name, model.version, n, self._spec_maker(model))
        if self.standbys is not None:
            if n == 0:
                self._standby_makers.pop((model.name, model.version), None)
                await self.standbys.drop(model.name, model.version)
            elif self.standby_policy == "always":
                self.standbys.keep(model.name, model.version, self._standby_maker(model))
            elif not self.standbys.keeps(model.name, model.version):
                # Only until the first crash: a re-scale (reconcile, set_num_replicas)
                # after it must not arm the maker again, or the next crash would
                # take the maker instead of the kept standby and restart cold.
                self._standby_makers[(model.name, model.version)] = self._standby_maker(model)

    # The timeout is part of the contract (and of the error message), so it is a
    # parameter rather than left to the caller's asyncio.timeout().
    async def wait_ready(
        self,
        name: str,
        version: str,
        replica_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Wait until a replica announces its address (``start_timeout`` by default).

        Follows the current process or, while a restart is pending, the next one.

        Raises:
            ReplicaUnavailable: The process exited first (exit code and stderr tail
                in the message), the replica is stopped, failed or unknown, or the
                timeout passed.
        """
        handle = self._handle(name, version, replica_id)
        if handle is None:
            raise ReplicaUnavailable(f"replica {name}:{version}:{replica_id} is not running")
        return await self.supervisor.wait_ready(
            handle, self.start_timeout if timeout is None else timeout
        )

    async def restart(self, name: str, version: str, replica_id: str) -> None:
        """Restart a replica's process now: SIGTERM to its process group, SIGKILL
        after a second; the supervisor starts a new one as after a crash.  An
        unknown, stopping or stopped replica is left alone."""
        handle = self._handle(name, version, replica_id)
        if handle is not None:
            await self.supervisor.restart(handle)

    def list(self, name: str | None = None, version: str | None = None) -> list[ReplicaStatus]:
        """The supervised replicas (failed ones included until the next scale)."""
        return [to_replica_status(h) for h in self.supervisor.list(name, version)]

    def subscribe(self, callback: Callable[[ReplicaEvent], None]) -> None:
        """Call ``callback`` with every :class:`ReplicaEvent` from now on (on the
        loop, synchronously; it must not block).  Errors it raises are logged."""
        self._subscribers.append(callback)

    async def close(self) -> None:
        """Stop every replica (and wait until each is reaped), then cancel
        environment builds in progress.  Safe to call more than once."""
        if self.standbys is not None:
            await self.standbys.close()
        await self.supervisor.stop_all()
        await self.envs.close()

    # -- helpers ------------------------------------------------------------------

    def _replica_spec(self, model: ModelRecord, replica_id: int) -> ReplicaSpec:
        token = None if self._token_for is None else self._token_for(model.name, model.version)
        return replica_spec(
            model, replica_id, self.python, self.envs, host=self.replica_host, token=token
        )

    def _spec_maker(self, model: ModelRecord) -> Callable[[int], ReplicaSpec]:
        def make(replica_id: int) -> ReplicaSpec:
            spec = self._replica_spec(model, replica_id)
            if spec.memory_limit_mb is not None:
                cgroup = self.cgroups.prepare(spec.key, spec.memory_limit_mb)
                if cgroup is not None:
                    spec.cgroup = str(cgroup)
                    self._cgroups[spec.key] = cgroup
            return spec

        return make

    def _standby_maker(self, model: ModelRecord) -> Callable[[], ReplicaSpec]:
        """Specs of standbys: replica 0's, each in a memory cgroup of its own."""

        def make() -> ReplicaSpec:
            spec = self._replica_spec(model, 0)
            self._standby_serial += 1
            if spec.memory_limit_mb is not None:
                key = f"{spec.model_name}:{spec.model_version}:standby-{self._standby_serial}"
                cgroup = self.cgroups.prepare(key, spec.memory_limit_mb)
                spec.cgroup = None if cgroup is None else str(cgroup)
            return spec

        return make

    def _take_standby(self, spec: ReplicaSpec) -> Standby | None:
        """A replica's process died: its standby, if any, whose cgroup becomes the
        replica's (the dead process's one is removed)."""
        if self.standbys is None:
            return None
        maker = self._standby_makers.pop((spec.model_name, spec.model_version), None)
        kept = self.standbys.keeps(spec.model_name, spec.model_version)
        if maker is not None and not kept:  # "after-crash": its first crash; a standby from now on
            self.standbys.keep(spec.model_name, spec.model_version, maker)
            return None
        standby = self.standbys.take(spec)
        if standby is not None and standby.spec.cgroup:
            old = self._cgroups.pop(spec.key, None)
            if old is not None:
                self.cgroups.remove(old)
            self._cgroups[spec.key] = Path(standby.spec.cgroup)
            spec.cgroup = standby.spec.cgroup  # where its next cold start goes too
        return standby

    def _standby_gone(self, spec: ReplicaSpec) -> None:
        if spec.cgroup:
            self.cgroups.remove(Path(spec.cgroup))

    def _handle(self, name: str, version: str, replica_id: str) -> ReplicaHandle | None:
        for handle in self.supervisor.list(name, version):
            if str(handle.spec.replica_id) == replica_id:
                return handle
        return None

    def _on_process_event(self, event: ProcessEvent) -> None:
        if event.kind in ("stopped", "failed") and event.handle.key in self._cgroups:
            self.cgroups.remove(self._cgroups.pop(event.handle.key))
        if not self._subscribers:
            return
        neutral = to_replica_event(event)
        for callback in list(self._subscribers):
            try:
                callback(neutral)
            except Exception:
                logger.exception(
                    "a subscriber failed on a %r event of %s", event.kind, event.handle.key
                )


if TYPE_CHECKING:  # mypy checks that the class keeps the interface
    _implements: type[ContainerManager] = LocalProcessManager
