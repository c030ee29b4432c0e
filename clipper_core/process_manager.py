"""Model-container replicas as local child processes, supervised and restarted.

:class:`LocalProcessManager` is the default ``ContainerManager``: it starts each
replica as a child process (see :class:`_Child` for how), learns its address from the
``CLIPPER_CONTAINER_READY <address>`` line the container prints on stdout, keeps the
last lines of its stderr for error messages, and restarts it with exponential
backoff when it dies without being asked to.  Interested parties (the data plane,
which reconnects a restarted replica) follow :class:`ReplicaEvent` s.

Clipper's most reported problem was a deploy that hung on a container that never
started; here nothing waits without a bound: :meth:`LocalProcessManager.wait_ready`
fails as soon as the process exits, or when its timeout passes, with the exit code
and the stderr tail in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from clipper_core.errors import BadInput, Conflict, ReplicaUnavailable

__all__ = [
    "READY_PREFIX",
    "THREAD_POOL_VARS",
    "ContainerManager",
    "EventKind",
    "LocalProcessManager",
    "ReplicaEvent",
    "ReplicaHandle",
    "ReplicaSpec",
    "ReplicaState",
    "thread_pool_env",
]

logger = logging.getLogger(__name__)

#: A container announces that it serves by printing this, a space and its address.
READY_PREFIX = "CLIPPER_CONTAINER_READY"

ReplicaState = Literal["starting", "running", "restarting", "stopped", "failed"]
EventKind = Literal["started", "ready", "exited", "restarting", "stopped", "failed"]

# After a process exits, how long its pipes may still be read for the last lines
# (a grandchild holding them open must not stall the supervisor).
_DRAIN_TIMEOUT = 0.5
# How long to wait for the exit of a process sent SIGKILL before giving up on it.
_KILL_TIMEOUT = 10.0
# Longer stdout/stderr lines are truncated.
_MAX_LINE = 64 * 1024
# What a failed spawn raises: no such executable, fork refused, a NUL byte in argv.
_SPAWN_ERRORS = (OSError, subprocess.SubprocessError, ValueError)

#: The thread-pool sizes of the math libraries (OpenMP, OpenBLAS, MKL, Accelerate,
#: numexpr; PyTorch's intra-op pool follows OpenMP's).  Each replica gets them,
#: unless its environment already sets them: see :func:`thread_pool_env`.
THREAD_POOL_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_pool_env(cpus: list[int] | None, env: dict[str, str]) -> dict[str, str]:
    """The thread-pool variables to add to a replica's environment ``env``.

    A replica's math libraries get one thread per CPU it is pinned to, and one when
    it is not pinned: replicas are the unit of parallelism, and a library that
    sizes its pool to the whole machine in every replica oversubscribes the cores
    that the frontend and the other replicas need.  Measured on the 2-core VM:
    x @ W (W 256x256) for 16 rows took 24 us with an idle core and stalled up to
    3.5-4.3 ms next to one busy core with OpenBLAS's 2 threads, 0.2 ms at most with
    one; the matmul benchmark's highest rate within its SLO went from 2,750 to
    3,750 req/s.  Variables already in ``env`` (the frontend's environment or the
    replica's own) are left alone, so ``OMP_NUM_THREADS=8 clipper serve`` wins.
    """
    threads = str(len(set(cpus))) if cpus else "1"
    return {var: threads for var in THREAD_POOL_VARS if var not in env}


#: Set in every replica's environment: the pid of the frontend that started it.  A
#: container watches it and exits when its parent is gone (the portable
#: counterpart of PR_SET_PDEATHSIG, which the launcher below also sets).
PARENT_PID_ENV = "CLIPPER_PARENT_PID"


@dataclass
class ReplicaSpec:
    """How to run one replica of a model version.

    Attributes:
        model_name: The model's name.
        model_version: The model's version.
        replica_id: The replica's index (0, 1, ...); a restart keeps it.
        argv: The full command line, e.g. ``[sys.executable, "-m", "model_containers", ...]``.
        env: Variables set on top of this process's environment (None: just inherit).
            ``PYTHONUNBUFFERED=1`` is set unless given here, so that a Python
            container's READY line is not stuck in a buffer; the math libraries'
            thread pools get one thread per CPU in ``cpus`` (one when unpinned)
            unless set here or in this process's environment
            (:func:`thread_pool_env`); ``CLIPPER_PARENT_PID`` is always set to
            this process's pid.
        cwd: The working directory, or None for ours.
        cpus: CPUs to pin the process to (``sched_setaffinity``), or None.
        memory_limit_mb: Address-space limit (``RLIMIT_AS``) in MiB, or None.  It
            bounds virtual memory, which some runtimes reserve generously.
    """

    model_name: str
    model_version: str
    replica_id: int
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None
    cpus: list[int] | None = None
    memory_limit_mb: int | None = None

    @property
    def key(self) -> str:
        """``"name:version:replica_id"``, as Clipper's ``get_all_containers`` lists it."""
        return f"{self.model_name}:{self.model_version}:{self.replica_id}"


class ReplicaHandle:
    """A supervised replica: its spec and the state of its current process.

    Attributes:
        spec: What it runs.
        pid: The current (or last) process id; None before the first spawn.
        address: What the current process announced with its READY line; None
            until then and after it exits.
        ready: Set while the current process is up and has announced its address.
        state: ``"starting"``, ``"running"``, ``"restarting"``, ``"stopped"`` or
            ``"failed"``.
        restarts: How many times the replica was restarted after an exit.
        exit_code: The last process's exit status (negative: killed by that signal),
            None while none has exited.
        started_at: When the current process was spawned (UNIX time).
    """

    def __init__(self, spec: ReplicaSpec, stderr_tail_lines: int) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.address: str | None = None
        self.ready = asyncio.Event()
        self.state: ReplicaState = "starting"
        self.restarts = 0
        self.exit_code: int | None = None
        self.started_at: float | None = None
        self._stderr: deque[str] = deque(maxlen=stderr_tail_lines)
        self._stop_requested = asyncio.Event()
        self._grace = 3.0
        # Replaced and set on every state change: a pulse that waiters follow.
        self._changed = asyncio.Event()
        # Counts spawned processes, so that a waiter can tell which one it watched.
        self._generation = 0
        self._ready_this_run = False
        # "exit code 3; stderr tail: ..." of the last exit, for error messages.
        self._last_exit = ""
        self._supervisor: asyncio.Task[None] | None = None
        self._child: _Child | None = None  # the current process, while it runs

    @property
    def key(self) -> str:
        """``"name:version:replica_id"``."""
        return self.spec.key

    def stderr_tail(self) -> str:
        """The last lines the current (or last) process wrote to stderr."""
        return "\n".join(self._stderr)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def __repr__(self) -> str:
        return (
            f"<ReplicaHandle {self.key} state={self.state} pid={self.pid}"
            f" address={self.address} restarts={self.restarts}>"
        )


@dataclass(frozen=True)
class ReplicaEvent:
    """Something that happened to a replica.

    Attributes:
        kind: ``"started"`` (a process was spawned), ``"ready"`` (it announced its
            address; again after every restart), ``"exited"`` (it died without being
            asked to), ``"restarting"`` (a restart is scheduled), ``"stopped"`` (it
            was stopped on request) or ``"failed"`` (it kept dying before becoming
            ready and will not be restarted).
        handle: The replica.
        detail: The address for ``"ready"``; the exit status and stderr tail for
            ``"exited"`` and ``"failed"``; the delay for ``"restarting"``.
    """

    kind: EventKind
    handle: ReplicaHandle
    detail: str = ""


class ContainerManager(Protocol):
    """What the control plane needs from a container manager."""

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle: ...

    async def stop(self, handle: ReplicaHandle, grace: float = 3.0) -> None: ...

    async def scale(
        self,
        model_name: str,
        model_version: str,
        n: int,
        make_spec: Callable[[int], ReplicaSpec],
    ) -> list[ReplicaHandle]: ...

    def list(
        self, model_name: str | None = None, model_version: str | None = None
    ) -> list[ReplicaHandle]: ...


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def _with_tail(message: str, tail: str) -> str:
    return f"{message}; stderr tail:\n{tail}" if tail else f"{message}; stderr was empty"


def _check_spec(spec: ReplicaSpec) -> None:
    if not isinstance(spec, ReplicaSpec):
        raise BadInput(f"expected a ReplicaSpec, got {type(spec).__name__}")
    if not spec.argv or not all(isinstance(arg, str) for arg in spec.argv):
        raise BadInput(f"replica {spec.key}: argv must be a non-empty list of strings")
    if not isinstance(spec.replica_id, int) or spec.replica_id < 0:
        raise BadInput(f"replica {spec.key}: replica_id must be an integer >= 0")
    if spec.cpus is not None:
        available = os.sched_getaffinity(0)
        if not spec.cpus:
            raise BadInput(f"replica {spec.key}: cpus must be None or a non-empty list")
        missing = sorted(set(spec.cpus) - available)
        if missing:
            raise BadInput(
                f"replica {spec.key}: cpus {missing} are not available"
                f" (this process may use {sorted(available)})"
            )
    if spec.memory_limit_mb is not None and spec.memory_limit_mb <= 0:
        raise BadInput(f"replica {spec.key}: memory_limit_mb must be > 0")


# Runs in the child, between our fork and the container's exec, as a separate
# interpreter.  A preexec_fn would do the same in the forked copy of this process,
# but CPython then also runs the os.register_at_fork hooks there (threading's and
# grpc's), which was seen to spin for ever in a child of the threaded server; and a
# parent-side sched_setaffinity/prlimit would race with the container's start.
# Same pid and session after exec.  argv: parent pid, cpus ("0,2" or ""), RLIMIT_AS
# bytes (or -1), program, then the container's argv.
_LAUNCHER = """\
import os, sys
parent, cpus, limit, program = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the manager
except Exception:
    pass
if os.getppid() != parent:
    sys.exit("clipper launcher: the process manager exited before the replica started")
try:
    if cpus:
        os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])
    if limit >= 0:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (OSError, ValueError) as exc:
    sys.exit(f"clipper launcher: cannot apply cpus={cpus or '-'} limit={limit}: {exc}")
try:
    os.execv(program, sys.argv[5:])
except OSError as exc:
    print(f"clipper launcher: cannot run {program}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
"""


def _resolve_program(program: str, env: dict[str, str], cwd: str | None) -> str:
    """The executable ``program`` names, found as exec would; raises FileNotFoundError
    here, so that a typo fails the start at once rather than as an exit code."""
    if os.sep in program:
        path = os.path.join(cwd or os.getcwd(), program)
        found: str | None = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is not None and cwd is not None:
            found = os.path.join(cwd, found)  # a relative PATH entry
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "no such executable", program)
    return os.path.abspath(found)


def _launch_argv(spec: ReplicaSpec, env: dict[str, str]) -> list[str]:
    """The command line that runs ``spec.argv`` through the launcher."""
    if not sys.executable:
        raise BadInput("cannot start replicas: sys.executable is unknown")
    limit = -1
    if spec.memory_limit_mb is not None:
        limit = spec.memory_limit_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
    cpus = ",".join(str(c) for c in sorted(set(spec.cpus))) if spec.cpus else ""
    program = _resolve_program(spec.argv[0], env, spec.cwd)
    return [
        sys.executable,
        "-I",  # ignore PYTHON* variables and user site-packages: only the launcher
        "-S",
        "-c",
        _LAUNCHER,
        str(os.getpid()),
        cpus,
        str(limit),
        program,
        *spec.argv,
    ]


class LocalProcessManager:
    """Runs replicas as supervised child processes of this one.

    Each replica gets its own session (so its process group can be signalled as a
    whole), its stdout and stderr captured, and a supervisor task that restarts it
    when it dies without being asked to: after ``restart_backoff[0]`` seconds,
    doubling up to ``restart_backoff[1]``; the delay starts over once a process
    stays up ``stable_after`` seconds.  A replica whose processes exit before
    becoming ready ``max_start_failures`` times in a row is marked ``"failed"`` and
    left alone.

    Only processes this manager started are ever signalled.  Call :meth:`stop_all`
    before the event loop closes (or use the manager as an async context manager).

    Args:
        restart_backoff: First and largest delay before a restart, in seconds.
        stderr_tail_lines: How many stderr lines each replica keeps.
        on_event: Called (on the loop, synchronously) with every
            :class:`ReplicaEvent`; it must not block.  Errors it raises are logged.
        max_start_failures: Consecutive exits before READY that mark a replica failed.
        stable_after: Uptime in seconds after which the restart delay starts over.
    """

    def __init__(
        self,
        *,
        restart_backoff: tuple[float, float] = (0.2, 5.0),
        stderr_tail_lines: int = 50,
        on_event: Callable[[ReplicaEvent], None] | None = None,
        max_start_failures: int = 5,
        stable_after: float = 30.0,
    ) -> None:
        first, largest = restart_backoff
        if not 0 <= first <= largest:
            raise BadInput("restart_backoff must be (first, largest) with 0 <= first <= largest")
        if stderr_tail_lines < 0 or max_start_failures < 1 or stable_after < 0:
            raise BadInput("stderr_tail_lines >= 0, max_start_failures >= 1, stable_after >= 0")
        self._backoff = (float(first), float(largest))
        self._tail_lines = stderr_tail_lines
        self._on_event = on_event
        self._max_start_failures = max_start_failures
        self._stable_after = stable_after
        self._replicas: dict[str, ReplicaHandle] = {}
        self._scale_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __aenter__(self) -> LocalProcessManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()

    # -- the ContainerManager interface -----------------------------------------

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
        _check_spec(spec)
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
                    _with_tail(
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
            self._on_event(ReplicaEvent(kind, handle, detail))
        except Exception:
            logger.exception("on_event callback failed on a %r event of %s", kind, handle.key)

    @staticmethod
    def _exited_before_ready(handle: ReplicaHandle) -> ReplicaUnavailable:
        return ReplicaUnavailable(
            f"replica {handle.key} exited before it was ready: {handle._last_exit}"
        )

    async def _spawn(self, handle: ReplicaHandle) -> _Child:
        spec = handle.spec
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if spec.env:
            env.update(spec.env)
        env.update(thread_pool_env(spec.cpus, env))
        env[PARENT_PID_ENV] = str(os.getpid())
        generation = handle._generation + 1
        handle._stderr.clear()
        child = await _Child.spawn(_launch_argv(spec, env), env, spec.cwd)
        handle._generation = generation
        handle._child = child
        handle.pid = child.pid
        handle.address = None
        handle.started_at = time.time()
        handle._ready_this_run = False
        handle.state = "starting"
        handle._notify()
        self._emit("started", handle, f"pid {child.pid}")
        # Only now: output that arrived while the pipes were being connected (a fast
        # child, a busy loop) must not be read before the handle knows this process.
        child.output.attach(lambda fd, line: self._on_line(handle, generation, fd, line))
        return child

    async def _supervise(self, handle: ReplicaHandle, first_spawn: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive exits (or failed spawns) before READY
        backoff_step = 0
        child: _Child | None = None
        try:
            while True:
                spawned_at = loop.time()
                handle._ready_this_run = False
                try:
                    child = await self._spawn(handle)
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
                    handle.exit_code = await self._watch(handle, child)
                    handle._last_exit = _with_tail(
                        _describe_exit(handle.exit_code), handle.stderr_tail()
                    )
                handle.ready.clear()
                handle.address = None
                if handle._stop_requested.is_set():
                    self._set_stopped(handle)
                    return
                failures = 0 if handle._ready_this_run else failures + 1
                if loop.time() - spawned_at >= self._stable_after:
                    backoff_step = 0
                if failures >= self._max_start_failures:
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
                delay = min(self._backoff[0] * 2**backoff_step, self._backoff[1])
                backoff_step += 1
                handle.state = "restarting"
                handle._notify()
                self._emit("exited", handle, handle._last_exit)
                self._emit("restarting", handle, f"restart {handle.restarts + 1} in {delay:g} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(handle._stop_requested.wait(), delay)
                if handle._stop_requested.is_set():
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

    async def _watch(self, handle: ReplicaHandle, child: _Child) -> int | None:
        """Follow one process until it exits (terminating it if a stop is
        requested), then drain its pipes briefly.  Returns its exit status."""
        stop = asyncio.create_task(handle._stop_requested.wait())
        try:
            either: set[asyncio.Future[Any]] = {child.exited, stop}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not child.exited.done():
                await self._terminate(handle, child)
            # The last lines may still be in the pipes; a helper the container
            # spawned may hold them open for ever, hence the bound.
            await asyncio.wait({child.pipes_closed}, timeout=_DRAIN_TIMEOUT)
        finally:
            stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)
            # Releases the pipes (and kills the process if, being cancelled, we got
            # here before it exited).
            child.close()
            if handle._child is child:
                handle._child = None
        return child.returncode

    async def _terminate(self, handle: ReplicaHandle, child: _Child) -> None:
        child.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(child.exited), handle._grace)
            return
        logger.warning(
            "replica %s (pid %s) ignored SIGTERM for %g s; sending SIGKILL",
            handle.key,
            child.pid,
            handle._grace,
        )
        child.signal(signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), _KILL_TIMEOUT)
        except TimeoutError:
            logger.error("replica %s (pid %s) survived SIGKILL", handle.key, child.pid)

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
            handle.address = address
            handle._ready_this_run = True
            handle.state = "running"
            handle.ready.set()
            handle._notify()
            self._emit("ready", handle, address)


class _ChildOutput:
    """Splits a child's stdout and stderr into lines and reports its exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._on_line: Callable[[int, str], None] | None = None
        self._early: list[tuple[int, bytes]] = []  # lines read before attach()
        self._buffers = {1: bytearray(), 2: bytearray()}
        self._skipping = {1: False, 2: False}  # inside an over-long line
        self._open = {1, 2}

    def attach(self, on_line: Callable[[int, str], None]) -> None:
        """Start delivering lines (those read so far first) to ``on_line(fd, line)``."""
        self._on_line = on_line
        early, self._early = self._early, []
        for fd, raw in early:
            self._deliver(fd, raw)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self._buffers[fd]
        buf += data
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[: end + 1]
            if self._skipping[fd]:
                self._skipping[fd] = False
            else:
                self._deliver(fd, line)
        if len(buf) > _MAX_LINE:
            if not self._skipping[fd]:
                self._deliver(fd, bytes(buf[:_MAX_LINE]) + b" [line truncated]")
                self._skipping[fd] = True
            buf.clear()

    def pipe_connection_lost(self, fd: int) -> None:
        if fd not in self._open:
            return
        buf = self._buffers[fd]
        if buf and not self._skipping[fd]:
            self._deliver(fd, bytes(buf))
        buf.clear()
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def _deliver(self, fd: int, raw: bytes) -> None:
        if self._on_line is None:
            self._early.append((fd, raw))
            return
        try:
            self._on_line(fd, raw.decode(errors="replace").rstrip("\r"))
        except Exception:
            logger.exception("handling a line of a replica's output failed")


class _PipeReader(asyncio.Protocol):
    """Feeds one of a child's pipes to its :class:`_ChildOutput`."""

    def __init__(self, output: _ChildOutput, fd: int) -> None:
        self._output = output
        self._fd = fd

    def data_received(self, data: bytes) -> None:
        self._output.pipe_data_received(self._fd, data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._output.pipe_connection_lost(self._fd)


def _popen(argv: list[str], env: dict[str, str], cwd: str | None) -> subprocess.Popen[bytes]:
    # Called on the loop on purpose: it blocks only for a vfork and the exec of the
    # launcher, and a thread would be worse (PR_SET_PDEATHSIG fires when the thread
    # that forked exits).
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )


class _Child:
    """One spawned process: the Popen, its pipes on the loop, and exit detection.

    Spawned with :class:`subprocess.Popen` rather than the loop's subprocess support:
    without a preexec_fn CPython forks (vfork) and execs without running any Python
    in the child, whereas uvloop runs the interpreter's at-fork hooks there (grpc's
    and threading's: observed to spin for ever in a child of a threaded server).
    The exit is seen through a pidfd on the loop (a thread where there is none), not
    through the pipes, which a helper process may keep open; and since only we reap
    the process, its pid cannot be reused while ``returncode`` is None.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid: int = popen.pid
        self.output = _ChildOutput(loop)
        self.exited = self.output.exited
        self.pipes_closed = self.output.pipes_closed
        self._loop = loop
        self._pipes: list[asyncio.BaseTransport] = []
        self._pidfd: int | None = None

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str], cwd: str | None) -> _Child:
        """Start ``argv`` in a new session with stdout and stderr piped to us.

        Raises:
            OSError, subprocess.SubprocessError, ValueError: It could not start.
        """
        loop = asyncio.get_running_loop()
        popen = _popen(argv, env, cwd)
        child = cls(loop, popen)
        try:
            child._watch_exit()
            for fd, pipe in ((1, popen.stdout), (2, popen.stderr)):
                assert pipe is not None
                transport, _ = await loop.connect_read_pipe(
                    functools.partial(_PipeReader, child.output, fd), pipe
                )
                child._pipes.append(transport)
        except BaseException:
            child.close()
            raise
        return child

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal)."""
        return self.popen.returncode

    def signal(self, sig: signal.Signals) -> None:
        """Signal the process group the replica leads (its own session), so that
        helpers it spawned go too; only while the leader is not reaped, so that the
        id cannot belong to anyone else."""
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def close(self) -> None:
        """Release the pipes and the pidfd; a process that still runs is killed
        and reaped by a thread.  Safe to call twice."""
        for transport in self._pipes:
            transport.close()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None and not pipe.closed and not self._pipes:
                pipe.close()  # never handed to the loop
        self._stop_watching_pidfd()
        if self.returncode is None:
            self.signal(signal.SIGKILL)
            threading.Thread(target=self.popen.wait, name=f"reap {self.pid}", daemon=True).start()

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (Linux < 5.3): a thread waits
            threading.Thread(
                target=self._wait_in_thread, name=f"wait {self.pid}", daemon=True
            ).start()
            return
        self._loop.add_reader(self._pidfd, self._on_pidfd_readable)

    def _on_pidfd_readable(self) -> None:
        self._stop_watching_pidfd()
        self.popen.poll()  # reaps it
        self.output.process_exited()

    def _stop_watching_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _wait_in_thread(self) -> None:
        self.popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self.output.process_exited)
