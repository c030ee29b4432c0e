"""Supervision of local replica processes: spawn, watch, restart with backoff, stop.

:class:`ProcessSupervisor` works on argv-level
:class:`~clipper_core.managers.replica.ReplicaSpec` s and reports
:class:`~clipper_core.managers.replica.ProcessEvent` s;
:class:`~clipper_core.managers.local.LocalProcessManager` builds the specs from model
records and is what the control plane uses.  Nothing here waits without a bound
(Clipper's most reported problem was a deploy hung on a container that never
started): :meth:`ProcessSupervisor.wait_ready` fails as soon as the process exits,
or when its timeout passes, with the exit code and the stderr tail in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import subprocess
import time
from collections.abc import Callable

from clipper_core.errors import BadInput, Conflict, ReplicaUnavailable
from clipper_core.managers._child import _Child
from clipper_core.managers._launcher import _launch_argv
from clipper_core.managers._watch import watch
from clipper_core.managers.base import EventKind
from clipper_core.managers.replica import (
    READY_PREFIX,
    ProcessEvent,
    ReplicaHandle,
    ReplicaSpec,
    check_spec,
    describe_exit,
    spawn_env,
    with_stderr_tail,
)
from clipper_core.managers.restart_policy import RestartBackoff
from clipper_core.managers.standby import Standby

logger = logging.getLogger("clipper_core.process_manager")

# What a failed spawn raises: no such executable, fork refused, a NUL byte in argv.
_SPAWN_ERRORS = (OSError, subprocess.SubprocessError, ValueError)


class ProcessSupervisor:
    """Runs replicas as supervised child processes of this one.

    The manager learns a replica's address from the ``CLIPPER_CONTAINER_READY
    <address>`` line it prints on stdout and keeps its last stderr lines for error
    messages.  Each replica gets its own session (so its process group can be
    signalled as a whole) and a supervisor task that restarts it
    when it dies without being asked to: after ``restart_backoff[0]`` seconds,
    doubling up to ``restart_backoff[1]`` for a crash loop (see
    :class:`~clipper_core.managers.restart_policy.RestartBackoff`).  A replica
    whose processes exit before becoming ready ``max_start_failures`` times in a
    row is marked ``"failed"`` and left alone.  With ``take_standby``, a replica
    whose process died takes a warm standby process instead, at once (see
    :mod:`~clipper_core.managers.standby`), and restarts cold only without one.

    Only processes this manager started are ever signalled.  Call :meth:`stop_all`
    before the event loop closes (or use the manager as an async context manager).

    Args:
        restart_backoff: First and largest delay before a restart, in seconds.
        stderr_tail_lines: How many stderr lines each replica keeps.
        on_event: Called (on the loop, synchronously) with every
            :class:`ProcessEvent`; it must not block.  Errors it raises are logged.
        max_start_failures: Consecutive exits before READY that mark a replica failed.
        stable_after: Uptime in seconds after which the restart delay starts over.
        take_standby: Hands over a ready standby process to replace a replica's
            dead one (:meth:`~clipper_core.managers.standby.StandbyPool.take`),
            or None.
    """

    def __init__(
        self,
        *,
        restart_backoff: tuple[float, float] = (0.2, 5.0),
        stderr_tail_lines: int = 50,
        on_event: Callable[[ProcessEvent], None] | None = None,
        max_start_failures: int = 5,
        stable_after: float = 30.0,
        take_standby: Callable[[ReplicaSpec], Standby | None] | None = None,
    ) -> None:
        RestartBackoff(*restart_backoff, stable_after)  # checks the delays
        if stderr_tail_lines < 0 or max_start_failures < 1 or stable_after < 0:
            raise BadInput("stderr_tail_lines >= 0, max_start_failures >= 1, stable_after >= 0")
        self._backoff = restart_backoff
        self._tail_lines = stderr_tail_lines
        self._on_event = on_event
        self._max_start_failures = max_start_failures
        self._stable_after = stable_after
        self._take_standby = take_standby
        self._replicas: dict[str, ReplicaHandle] = {}
        # When each replica's current process became ready (loop time).
        self._ready_at: dict[str, float] = {}
        self._scale_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __aenter__(self) -> ProcessSupervisor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()

    # -- replicas ----------------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Spawn a replica and supervise it.

        Returns once the process exists (``handle.pid`` is set), not once it is
        ready: follow with :meth:`wait_ready`.

        Raises:
            BadInput: The spec is invalid (empty argv, unavailable cpus, ...).
            Conflict: A replica with the same name, version and id is running.
            ReplicaUnavailable: The process could not be spawned (no such
                executable, pinning refused, ...).
        """
        check_spec(spec)
        if spec.key in self._replicas:
            raise Conflict(f"replica {spec.key} already exists")
        handle = ReplicaHandle(spec, self._tail_lines)
        self._replicas[spec.key] = handle
        first_spawn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved even if our caller is cancelled, so that the loop does not log it.
        first_spawn.add_done_callback(lambda f: f.cancelled() or f.exception())
        handle._supervisor = asyncio.create_task(
            self._supervise(handle, first_spawn), name=f"supervise {spec.key}"
        )
        try:
            await asyncio.shield(first_spawn)
        except _SPAWN_ERRORS as exc:
            await handle._supervisor
            raise ReplicaUnavailable(f"cannot start replica {spec.key}: {exc}") from exc
        return handle

    # The timeout is part of the contract (and of the error message), so it is a
    # parameter rather than left to the caller's asyncio.timeout().
    async def wait_ready(self, handle: ReplicaHandle, timeout: float) -> str:  # noqa: ASYNC109
        """Wait until the replica announces its address.

        Watches the current process (or, while a restart is pending, the next one).
        The replica is left running or restarting when this raises: call
        :meth:`stop` to give up on it.

        Returns:
            The address from the READY line.

        Raises:
            ReplicaUnavailable: The watched process exited first, the replica is
                stopped or failed, or ``timeout`` seconds passed.  The message holds
                the exit code and the stderr tail.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        watched: int | None = None
        while True:
            changed = handle._changed
            if handle.ready.is_set() and handle.address is not None:
                return handle.address
            if handle.state in ("stopped", "failed"):
                message = f"replica {handle.key} is {handle.state}"
                if handle._last_exit:
                    message = f"{message}; its last process ended with {handle._last_exit}"
                raise ReplicaUnavailable(message)
            if handle.state == "starting":
                if watched is None:
                    watched = handle._generation
                elif watched != handle._generation:
                    raise self._exited_before_ready(handle)
            elif handle.state == "restarting" and watched is not None:
                raise self._exited_before_ready(handle)
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                raise ReplicaUnavailable(
                    with_stderr_tail(
                        f"replica {handle.key} did not become ready within {timeout:g} s"
                        f" (pid {handle.pid}, state {handle.state}; a container must print"
                        f" '{READY_PREFIX} <address>' on stdout)",
                        handle.stderr_tail(),
                    )
                ) from None

    async def stop(self, handle: ReplicaHandle, grace: float = 3.0) -> None:
        """Stop a replica for good: SIGTERM to its process group, SIGKILL after
        ``grace`` seconds; no restart.  Waits until the process is reaped.  Stopping
        a stopped or failed replica only forgets it."""
        if not handle._stop_requested.is_set():
            handle._grace = grace
            handle._stop_requested.set()
        task = handle._supervisor
        if task is not None:
            # shield: a cancelled caller must not leave the child half-stopped.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        self._forget(handle)

    async def restart(self, handle: ReplicaHandle, grace: float = 1.0) -> None:
        """Restart a replica's process now, for example because its model hangs.

        SIGTERM to its process group, SIGKILL after ``grace`` seconds; the
        supervisor then starts a new process, as after a crash (same backoff, same
        ``exited``/``restarting``/``ready`` events).  A replica that is stopping,
        stopped or between processes is left alone.
        """
        child = handle._child
        if child is None or handle._stop_requested.is_set() or child.exited.done():
            return
        logger.warning("restarting replica %s (pid %s) on request", handle.key, child.pid)
        child.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), grace)
        except TimeoutError:
            child.signal(signal.SIGKILL)

    async def scale(
        self,
        model_name: str,
        model_version: str,
        n: int,
        make_spec: Callable[[int], ReplicaSpec],
    ) -> list[ReplicaHandle]:
        """Start or stop replicas of a model version until ``n`` are supervised.

        Failed replicas are replaced (their ids are reused); new replicas take the
        lowest free ids; stopping takes the highest ids first.  Does not wait for
        readiness.

        Args:
            model_name: The model.
            model_version: Its version.
            n: The replica count wanted.
            make_spec: Builds the spec of replica ``replica_id``.

        Returns:
            The version's replicas, by id.

        Raises:
            BadInput: ``n`` < 0, or ``make_spec`` returned a spec for another replica.
            ReplicaUnavailable: A replica could not be spawned (the others stay).
        """
        if n < 0:
            raise BadInput(f"replica count must be >= 0, got {n}")
        lock = self._scale_locks.setdefault((model_name, model_version), asyncio.Lock())
        async with lock:
            current = {h.spec.replica_id: h for h in self.list(model_name, model_version)}
            for replica_id, handle in list(current.items()):
                if handle.state == "failed":
                    await self.stop(handle)
                    del current[replica_id]
            if len(current) > n:
                excess = sorted(current, reverse=True)[: len(current) - n]
                await asyncio.gather(*(self.stop(current[i]) for i in excess))
            elif len(current) < n:
                specs: list[ReplicaSpec] = []
                replica_id = 0
                while len(current) + len(specs) < n:
                    if replica_id not in current:
                        spec = make_spec(replica_id)
                        if (spec.model_name, spec.model_version, spec.replica_id) != (
                            model_name,
                            model_version,
                            replica_id,
                        ):
                            raise BadInput(
                                f"make_spec({replica_id}) returned a spec for {spec.key},"
                                f" not {model_name}:{model_version}:{replica_id}"
                            )
                        specs.append(spec)
                    replica_id += 1
                results = await asyncio.gather(
                    *(self.start(spec) for spec in specs), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
        return self.list(model_name, model_version)

    def list(
        self, model_name: str | None = None, model_version: str | None = None
    ) -> list[ReplicaHandle]:
        """The supervised replicas (failed ones included, until stopped), optionally
        of one model or model version, by name, version and id."""
        handles = [
            h
            for h in self._replicas.values()
            if (model_name is None or h.spec.model_name == model_name)
            and (model_version is None or h.spec.model_version == model_version)
        ]
        handles.sort(key=lambda h: (h.spec.model_name, h.spec.model_version, h.spec.replica_id))
        return handles

    async def stop_all(self, grace: float = 3.0) -> None:
        """Stop every replica (in parallel) and wait until each is reaped.  Safe to
        call more than once."""
        # A loop, because a start() running concurrently may add a replica.
        while self._replicas:
            handles = list(self._replicas.values())
            await asyncio.gather(*(self.stop(h, grace) for h in handles))

    # -- supervision -------------------------------------------------------------

    def _forget(self, handle: ReplicaHandle) -> None:
        if self._replicas.get(handle.key) is handle:
            del self._replicas[handle.key]

    def _emit(self, kind: EventKind, handle: ReplicaHandle, detail: str = "") -> None:
        log = logger.warning if kind in ("exited", "failed") else logger.info
        log("replica %s %s%s", handle.key, kind, f": {detail}" if detail else "")
        if self._on_event is None:
            return
        try:
            self._on_event(ProcessEvent(kind, handle, detail))
        except Exception:
            logger.exception("on_event callback failed on a %r event of %s", kind, handle.key)

    @staticmethod
    def _exited_before_ready(handle: ReplicaHandle) -> ReplicaUnavailable:
        return ReplicaUnavailable(
            f"replica {handle.key} exited before it was ready: {handle._last_exit}"
        )

    async def _spawn(self, handle: ReplicaHandle, standby: Standby | None = None) -> _Child:
        """Start the replica's next process, or make ``standby`` its next process."""
        spec = handle.spec
        generation = handle._generation + 1
        handle._stderr.clear()
        if standby is None:
            env = spawn_env(spec)
            child = await _Child.spawn(_launch_argv(spec, env), env, spec.cwd)
        else:
            child = standby.child
            handle._stderr.extend(standby.stderr)
        handle._generation = generation
        handle._child = child
        handle.pid = child.pid
        handle.address = None
        handle.started_at = time.time()
        handle._ready_this_run = False
        handle.state = "starting"
        handle._notify()
        self._emit("started", handle, f"pid {child.pid}" + (" (its standby)" if standby else ""))
        # Only now: output that arrived while the pipes were being connected (a fast
        # child, a busy loop) must not be read before the handle knows this process.
        child.output.attach(lambda fd, line: self._on_line(handle, generation, fd, line))
        if standby is not None and standby.address is not None:
            # It printed READY before, and has been ready since: a crash of it is
            # one while serving, never one of a start-up loop (restart policy).
            self._set_ready(handle, standby.address, since=-math.inf)
        return child

    async def _supervise(self, handle: ReplicaHandle, first_spawn: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive exits (or failed spawns) before READY
        backoff = RestartBackoff(*self._backoff, self._stable_after)
        child: _Child | None = None
        standby: Standby | None = None
        try:
            while True:
                spawned_at = loop.time() if standby is None else standby.spawned_at
                handle._ready_this_run = False
                try:
                    child = await self._spawn(handle, standby)
                except _SPAWN_ERRORS as exc:
                    if not first_spawn.done():
                        handle.state = "stopped"
                        handle._notify()
                        self._forget(handle)
                        first_spawn.set_exception(exc)
                        return
                    handle.exit_code = None
                    handle._last_exit = f"a failed spawn: {exc}"
                else:
                    if not first_spawn.done():
                        first_spawn.set_result(None)
                    handle.exit_code = await watch(handle, child)
                    handle._last_exit = with_stderr_tail(
                        describe_exit(handle.exit_code), handle.stderr_tail()
                    )
                handle.ready.clear()
                handle.address = None
                if handle._stop_requested.is_set():
                    self._set_stopped(handle)
                    return
                failures = 0 if handle._ready_this_run else failures + 1
                ready_at = self._ready_at.get(handle.key) if handle._ready_this_run else None
                now = loop.time()
                delay = backoff.next_delay(
                    now - spawned_at, None if ready_at is None else now - ready_at
                )
                standby = None if self._take_standby is None else self._take_standby(handle.spec)
                if standby is not None:
                    delay = 0.0  # promoted at once: its process is ready
                elif failures >= self._max_start_failures:
                    handle.state = "failed"
                    handle._notify()
                    self._emit("exited", handle, handle._last_exit)
                    self._emit(
                        "failed",
                        handle,
                        f"{failures} consecutive starts ended before it was ready;"
                        f" the last with {handle._last_exit}",
                    )
                    return
                handle.state = "restarting"
                handle._notify()
                self._emit("exited", handle, handle._last_exit)
                self._emit(
                    "restarting",
                    handle,
                    f"restart {handle.restarts + 1} "
                    + (
                        f"in {delay:g} s"
                        if standby is None
                        else f"by its standby (pid {standby.pid})"
                    ),
                )
                if standby is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(handle._stop_requested.wait(), delay)
                if handle._stop_requested.is_set():
                    if standby is not None:
                        standby.child.close()
                    self._set_stopped(handle)
                    return
                handle.restarts += 1
        except BaseException as exc:
            # Cancelled (the loop is going away) or a bug: never leave the child
            # running unsupervised.  It is reaped by the loop's child watcher.
            if child is not None:
                child.close()  # SIGKILL if it still runs
            if not first_spawn.done():
                # start() raises it; the replica never existed.
                self._forget(handle)
                if isinstance(exc, asyncio.CancelledError):
                    first_spawn.cancel()
                else:
                    first_spawn.set_exception(exc)
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("supervisor of replica %s failed", handle.key)
                handle.state = "failed"
                handle._notify()
                self._emit("failed", handle, f"supervisor error: {exc!r}")
                return
            raise

    def _set_stopped(self, handle: ReplicaHandle) -> None:
        handle.state = "stopped"
        handle._notify()
        self._forget(handle)
        self._emit("stopped", handle, handle._last_exit)

    def _on_line(self, handle: ReplicaHandle, generation: int, fd: int, line: str) -> None:
        if fd == 2:
            handle._stderr.append(line)
            logger.debug("replica %s stderr: %s", handle.key, line)
            return
        word, _, rest = line.partition(" ")
        if word != READY_PREFIX:
            logger.debug("replica %s stdout: %s", handle.key, line)
            return
        address = rest.strip()
        if not address:
            logger.warning("replica %s printed %s without an address", handle.key, word)
        elif (
            handle._generation == generation
            and not handle._ready_this_run
            and not handle._stop_requested.is_set()
        ):
            self._set_ready(handle, address)

    def _set_ready(self, handle: ReplicaHandle, address: str, since: float | None = None) -> None:
        handle.address = address
        handle._ready_this_run = True
        now = asyncio.get_running_loop().time()
        self._ready_at[handle.key] = now if since is None else since
        handle.state = "running"
        handle.ready.set()
        handle._notify()
        self._emit("ready", handle, address)
