"""Warm standby processes: a started-and-loaded spare container per model version.

A Python model container takes most of a second to start (the interpreter, the
model's imports, its weights); a replica that dies serves nothing meanwhile.  The
local manager therefore keeps, per model version, one extra container process
that has started, loaded the model and announced its address, but is not
published and gets no traffic.  When a replica's process dies, the
:class:`~clipper_core.managers.supervisor.ProcessSupervisor` *promotes* the
standby into that replica's place (:meth:`StandbyPool.take`): the replica's next
process is the standby, already listening, so the data plane's next step is a
connect, not a cold start.  The pool then starts a new standby in the
background.

A standby is built from replica 0's spec (same command line but its replica id,
same environment, CPUs, memory limit and GPU) and stands in only for a replica
whose spec matches that (:func:`interchangeable`); one with a placement of its
own is restarted as before.  It counts against the model's limits as one more
replica would: its own memory limit (the per-replica one, in its own cgroup),
pinned to replica 0's CPUs, where it sleeps in ``accept()`` until promoted.
Only processes this pool started are ever signalled; :meth:`StandbyPool.drop`
and :meth:`StandbyPool.close` stop them and wait until they are reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from clipper_core.managers._child import _Child
from clipper_core.managers._launcher import _launch_argv
from clipper_core.managers.replica import READY_PREFIX, ReplicaSpec, spawn_env

__all__ = ["STANDBY_POLICIES", "Standby", "StandbyPool", "interchangeable"]

logger = logging.getLogger("clipper_core.process_manager")

#: When a local manager keeps a standby per model version: from the version's
#: first replica crash on (the default), from the start, or never.
STANDBY_POLICIES = ("after-crash", "always", "off")

#: Consecutive standbys that exit before they are ready after which a model
#: version gets no more (its replicas restart cold, as without a standby).
MAX_STANDBY_FAILURES = 3
#: First delay before a standby that exited is replaced, doubling per failure.
RETRY_DELAY = 1.0
#: Seconds a stopped standby may take to exit on SIGTERM before SIGKILL.
STOP_GRACE = 2.0

#: The argv option whose value is the replica id (it differs between a standby
#: and the replica it stands in for; the container only reports it).
_REPLICA_ID_OPTION = "--replica-id"


def interchangeable(standby: ReplicaSpec, replica: ReplicaSpec) -> bool:
    """Whether a standby started from ``standby`` may become replica ``replica``:
    the same model version, command line (but the replica id), environment,
    working directory, CPUs, memory limit and GPU."""

    def argv(spec: ReplicaSpec) -> list[str]:
        out = list(spec.argv)
        if _REPLICA_ID_OPTION in out[:-1]:
            out[out.index(_REPLICA_ID_OPTION) + 1] = ""
        return out

    return (
        standby.model_name == replica.model_name
        and standby.model_version == replica.model_version
        and argv(standby) == argv(replica)
        and (standby.env, standby.cwd, standby.cpus) == (replica.env, replica.cwd, replica.cpus)
        and (standby.memory_limit_mb, standby.gpu) == (replica.memory_limit_mb, replica.gpu)
    )


@dataclass(eq=False)
class Standby:
    """One spare process.

    Attributes:
        spec: What it runs (replica 0's spec; its ``cgroup`` its own).
        child: The process.
        address: What it announced with its READY line (None until then).
        spawned_at: When it was spawned (loop time).
        stderr: Its last stderr lines (they become the replica's on promotion).
    """

    spec: ReplicaSpec
    child: _Child
    spawned_at: float
    address: str | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.child.pid

    def _on_line(self, fd: int, line: str) -> None:
        if fd == 2:
            self.stderr.append(line)
            return
        word, _, rest = line.partition(" ")
        if word == READY_PREFIX and rest.strip() and self.address is None:
            self.address = rest.strip()
            self.ready.set()


class _Slot:
    """The standby of one model version and the task that keeps it."""

    def __init__(self, make_spec: Callable[[], ReplicaSpec]) -> None:
        self.make_spec = make_spec
        self.standby: Standby | None = None
        self.wake = asyncio.Event()  # set when the standby was taken
        self.task: asyncio.Task[None] | None = None


class StandbyPool:
    """Keeps one warm standby process per model version (see the module's docstring).

    Args:
        on_gone: Called with a standby's spec when its process is gone without
            having been promoted (the manager removes its cgroup).
    """

    def __init__(self, on_gone: Callable[[ReplicaSpec], None] | None = None) -> None:
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._on_gone = on_gone

    def keep(self, name: str, version: str, make_spec: Callable[[], ReplicaSpec]) -> None:
        """Keep a standby of ``name:version`` from now on, built by ``make_spec``
        (started in the background; a second call changes nothing)."""
        if (name, version) in self._slots:
            return
        slot = self._slots[(name, version)] = _Slot(make_spec)
        slot.task = asyncio.get_running_loop().create_task(
            self._keep(slot), name=f"standby of {name}:{version}"
        )

    def keeps(self, name: str, version: str) -> bool:
        """Whether a standby of ``name:version`` is kept (ready or not)."""
        return (name, version) in self._slots

    def take(self, spec: ReplicaSpec) -> Standby | None:
        """The ready standby of ``spec``'s model version, handed over to become
        that replica (a new one is started), or None: there is none ready, or it
        cannot stand in for this replica (:func:`interchangeable`)."""
        slot = self._slots.get((spec.model_name, spec.model_version))
        if slot is None:
            return None
        standby = slot.standby
        if (
            standby is None
            or standby.address is None
            or standby.child.exited.done()
            or not interchangeable(standby.spec, spec)
        ):
            return None
        slot.standby = None
        slot.wake.set()
        logger.info(
            "standby %s (pid %s) promoted to replica %s", spec.model_name, standby.pid, spec.key
        )
        return standby

    def list(self) -> list[Standby]:
        """The standby processes that run now (ready or starting)."""
        return [s.standby for s in self._slots.values() if s.standby is not None]

    async def drop(self, name: str, version: str) -> None:
        """Stop keeping a standby of ``name:version``; stop and reap its process."""
        slot = self._slots.pop((name, version), None)
        if slot is not None and slot.task is not None:
            slot.task.cancel()
            # shield: a cancelled caller must not leave the process half-stopped.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(slot.task, return_exceptions=True))

    async def close(self) -> None:
        """Drop every standby.  Safe to call more than once."""
        for name, version in list(self._slots):
            await self.drop(name, version)

    # -- internals ----------------------------------------------------------------

    async def _keep(self, slot: _Slot) -> None:
        failures = 0
        while True:
            spec = slot.make_spec()
            try:
                standby = await self._spawn(spec)
            except (OSError, ValueError) as exc:
                logger.warning("cannot start a standby of %s: %s", spec.key, exc)
                standby = None
            if standby is not None:
                slot.standby = standby
                slot.wake.clear()
                try:
                    taken = await self._serve_standby(slot, standby)
                except BaseException:
                    if slot.standby is standby:
                        slot.standby = None
                        await self._stop(standby)
                    raise
                if taken:
                    failures = 0
                    continue
                failures = 0 if standby.address is not None else failures + 1
                slot.standby = None
                await self._stop(standby)
            if failures >= MAX_STANDBY_FAILURES:
                logger.warning(
                    "%d standbys of %s:%s exited before they were ready; none is kept",
                    failures,
                    spec.model_name,
                    spec.model_version,
                )
                return
            await asyncio.sleep(RETRY_DELAY * 2 ** max(failures - 1, 0))

    async def _serve_standby(self, slot: _Slot, standby: Standby) -> bool:
        """Wait until ``standby`` is taken (True) or its process exits (False)."""
        taken = asyncio.ensure_future(slot.wake.wait())
        either: set[asyncio.Future[Any]] = {taken, standby.child.exited}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            taken.cancel()
        if slot.standby is not standby:
            return True
        logger.warning(
            "standby of %s (pid %s) exited (code %s); stderr tail:\n%s",
            standby.spec.key,
            standby.pid,
            standby.child.returncode,
            "\n".join(standby.stderr),
        )
        return False

    async def _spawn(self, spec: ReplicaSpec) -> Standby:
        env = spawn_env(spec)
        child = await _Child.spawn(_launch_argv(spec, env), env, spec.cwd)
        standby = Standby(replace(spec), child, asyncio.get_running_loop().time())
        child.output.attach(standby._on_line)
        logger.info(
            "standby of %s:%s started (pid %s)", spec.model_name, spec.model_version, child.pid
        )
        return standby

    async def _stop(self, standby: Standby) -> None:
        child = standby.child
        child.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), STOP_GRACE)
        except TimeoutError:
            child.signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.exited), STOP_GRACE * 5)
        finally:
            child.close()  # SIGKILL and reap in a thread if it still runs
        if self._on_gone is not None:
            try:
                self._on_gone(standby.spec)
            except Exception:
                logger.exception("cleaning up after the standby of %s failed", standby.spec.key)
