"""The launcher every replica is started through: a tiny separate interpreter that
applies the parent-death signal, forks the guard of the replica's process group,
applies CPU pinning and the memory limit, then execs the container (see
``_LAUNCHER``)."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import sys

from clipper_core.errors import BadInput
from clipper_core.managers.replica import ReplicaSpec

# Runs in the child, between our fork and the container's exec, as a separate
# interpreter.  A preexec_fn would do the same in the forked copy of this process,
# but CPython then also runs the os.register_at_fork hooks there (threading's and
# grpc's), which was seen to spin for ever in a child of the threaded server; and a
# parent-side sched_setaffinity/prlimit would race with the container's start.
# Same pid and session after exec.  argv: parent pid, cpus ("0,2" or ""), memory
# limit bytes (or -1), cgroup folder (or ""), GPU ids (or "-": leave
# CUDA_VISIBLE_DEVICES alone), program, then the container's argv.  The memory limit
# is the cgroup's when it can be joined, else RLIMIT_AS (said on stderr), with
# glibc's malloc arenas capped (MALLOC_ARENA_MAX=2, unless set) so that address
# space reserved but never used does not count against it.
_LAUNCHER = """\
import os, signal, sys
parent, cpus, limit, cgroup, gpu, program = (
    int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
)
# A signal mask survives fork and exec: whatever the forking thread blocked (an
# embedding program's SIGTERM) the replica would never receive.
signal.pthread_sigmask(signal.SIG_SETMASK, ())
prctl = None
try:
    import ctypes
    prctl = ctypes.CDLL(None).prctl
    prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the manager
except Exception:
    prctl = None
if os.getppid() != parent:
    sys.exit("clipper launcher: the process manager exited before the replica started")
# The group's guard: a forked copy of this interpreter in the replica's process
# group, the replica's child, that waits for the replica to die (its own
# parent-death signal) and then kills what is left of the group.  The manager does
# that when it sees a replica exit, but not once it is killed itself: the replica
# dies with it (above) and helpers the model started (a JVM gateway, a server)
# lived on under init.  Every signal is blocked in it (forked so: no window), so
# that none the replica or an operator sends the group (stop, "reopen logs",
# "reload") ends it early; it holds none of the replica's pipes and dies with
# the group.  None under a manager that is PID 1 (a container's entrypoint): its
# death ends the whole PID namespace anyway, and nobody would reap the guard.
replica = os.getpid()
guarded = prctl is not None and parent != 1
if guarded:
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
if guarded and os.fork() == 0:
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        prctl(1, signal.SIGUSR2)  # PR_SET_PDEATHSIG
        # Until the replica is gone (the guard is then re-parented): a SIGUSR2
        # sent to the group (a "reload" idiom) must not end the replica.
        while os.getppid() == replica:
            signal.sigwait((signal.SIGUSR2,))
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)
signal.pthread_sigmask(signal.SIG_SETMASK, ())
if cgroup:
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        limit = -1
    except OSError as exc:
        print(f"clipper launcher: cannot join cgroup {cgroup} ({exc}); the memory limit"
              " falls back to RLIMIT_AS", file=sys.stderr, flush=True)
if gpu != "-":
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
try:
    if cpus:
        os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])
    if limit >= 0:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # glibc reserves 64 MiB of address space per thread arena: a trivial
        # closure's dozen threads reserved ~950 MiB (55 MiB used), two arenas ~290.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
except (OSError, ValueError) as exc:
    sys.exit(f"clipper launcher: cannot apply cpus={cpus or '-'} limit={limit}: {exc}")
try:
    os.execv(program, sys.argv[7:])
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
        spec.cgroup or "",
        "-" if spec.gpu is None else spec.gpu,
        program,
        *spec.argv,
    ]
