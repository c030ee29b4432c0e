"""A local replica process as the supervisor sees it: its spec, its handle, its events.

:class:`ReplicaSpec` says how to run one replica (an argv and its limits);
:class:`ReplicaHandle` holds the state of its current process; a
:class:`ProcessEvent` reports what happened to it.  These are the local manager's
own, process-level types; the control plane sees the manager-neutral
:class:`~clipper_core.managers.base.ReplicaStatus` and
:class:`~clipper_core.managers.base.ReplicaEvent` instead (:func:`to_replica_event`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipper_core.errors import BadInput
from clipper_core.managers.base import EventKind, ReplicaEvent, ReplicaState, ReplicaStatus

if TYPE_CHECKING:
    from clipper_core.managers._child import _Child

__all__ = [
    "PARENT_PID_ENV",
    "READY_PREFIX",
    "THREAD_POOL_VARS",
    "ProcessEvent",
    "ReplicaHandle",
    "ReplicaSpec",
    "spawn_env",
    "thread_pool_env",
    "to_replica_event",
    "to_replica_status",
]

#: A container announces that it serves by printing this, a space and its address.
READY_PREFIX = "CLIPPER_CONTAINER_READY"

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


#: A replica's token, set by the local manager: the container refuses calls on its
#: plaintext port without ``authorization: Bearer <token>``, so that other users
#: of the host cannot call the model (model_containers.grpc_auth reads it).
LOCAL_TOKEN_ENV = "CLIPPER_REPLICA_TOKEN"


#: Our secrets, never passed on to a replica: model code runs there, and the
#: management token would let it deploy code of its own to every replica.
WITHHELD_ENV = ("CLIPPER_ADMIN_TOKEN",)


def spawn_env(spec: ReplicaSpec) -> dict[str, str]:
    """The environment a replica's process starts with: ours less ``WITHHELD_ENV``,
    ``PYTHONUNBUFFERED=1``, the spec's own variables, the thread-pool sizes and
    ``CLIPPER_PARENT_PID``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if spec.env:
        env.update(spec.env)
    env.update(thread_pool_env(spec.cpus, env))
    env[PARENT_PID_ENV] = str(os.getpid())
    for var in WITHHELD_ENV:
        env.pop(var, None)
    return env


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
        memory_limit_mb: Memory limit in MiB, or None: ``memory.max`` of ``cgroup``
            when there is one, else an address-space limit (``RLIMIT_AS``), which
            bounds virtual memory, which some runtimes reserve generously.
        gpu: The GPU device id(s) it may use (``CUDA_VISIBLE_DEVICES``), or None
            to leave that variable as it is.
        cgroup: A cgroup v2 folder with the memory limit that the process joins
            before the container starts
            (:class:`~clipper_core.managers.memory_cgroup.MemoryCgroups`), or None.
    """

    model_name: str
    model_version: str
    replica_id: int
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None
    cpus: list[int] | None = None
    memory_limit_mb: int | None = None
    gpu: str | None = None
    cgroup: str | None = None

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
class ProcessEvent:
    """Something that happened to a supervised process (the supervisor's event).

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


def to_replica_event(event: ProcessEvent) -> ReplicaEvent:
    """The manager-neutral event of a supervisor's event (read at once: the handle
    changes as the replica lives on)."""
    handle = event.handle
    spec = handle.spec
    crashed = event.kind in ("exited", "failed")
    return ReplicaEvent(
        kind=event.kind,
        model=spec.model_name,
        version=spec.model_version,
        replica_id=str(spec.replica_id),
        address=event.detail if event.kind == "ready" else handle.address,
        pid=handle.pid,
        detail=event.detail,
        exit_code=handle.exit_code,
        restarts=handle.restarts,
        stderr_tail=handle.stderr_tail() if crashed else "",
    )


def to_replica_status(handle: ReplicaHandle) -> ReplicaStatus:
    """The manager-neutral status of a supervised replica."""
    spec = handle.spec
    return ReplicaStatus(
        model=spec.model_name,
        version=spec.model_version,
        replica_id=str(spec.replica_id),
        state=handle.state,
        address=handle.address,
        pid=handle.pid,
        restarts=handle.restarts,
        detail=handle._last_exit,
    )


def describe_exit(code: int | None) -> str:
    """``"exit code -9 (killed by SIGKILL)"``."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def with_stderr_tail(message: str, tail: str) -> str:
    """``message`` followed by the stderr tail (or a note that stderr was empty)."""
    return f"{message}; stderr tail:\n{tail}" if tail else f"{message}; stderr was empty"


def check_spec(spec: ReplicaSpec) -> None:
    """Raises BadInput unless ``spec`` can be started here."""
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
    if spec.gpu is not None and (not isinstance(spec.gpu, str) or not spec.gpu.strip()):
        raise BadInput(f"replica {spec.key}: gpu must be None or a device id")
