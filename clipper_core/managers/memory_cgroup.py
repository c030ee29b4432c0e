"""A replica's memory limit as a cgroup v2 child of this process's cgroup.

``RLIMIT_AS`` bounds a process's address space, which runtimes reserve far beyond
what they use (a JIT, a thread's stack, an allocator's arenas), so a limit that
fits the model's real use can stop it from starting; a cgroup's ``memory.max``
bounds the memory actually used, by the process and its children, and the
kernel's OOM killer enforces it.  :class:`MemoryCgroups` makes one child cgroup per
replica under this process's own cgroup when the unified hierarchy is there and
writable and the memory controller can be delegated to the child; the launcher
moves the replica into it before the container starts.  Otherwise it says why, in
one warning per replica, and the launcher falls back to ``RLIMIT_AS``.

A child's name carries this process's PID (``clipper-<pid>-<replica>-<hash>``):
two servers under one cgroup (two frontends on a host, a test run beside a server)
then never share, rewrite or remove each other's children.  ``<replica>`` is the
replica's ``name:version:id`` made safe for a file name, and ``<hash>`` a digest of
the exact key: names and versions may hold ``-``, so ``a-1:2:0`` and ``a:1-2:0``
read alike and only the digest tells them apart.  The first child made sweeps the
empty ones of servers that are gone (a server killed with SIGKILL).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from pathlib import Path

__all__ = ["MemoryCgroups"]

logger = logging.getLogger("clipper_core.process_manager")

_MOUNTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


class MemoryCgroups:
    """Child cgroups with ``memory.max``, one per replica.

    Args:
        mounts: Where the unified (v2) hierarchy may be mounted, tried in order.
        proc_cgroup: This process's cgroup membership (``/proc/self/cgroup``).
    """

    def __init__(
        self,
        mounts: tuple[Path, ...] = _MOUNTS,
        proc_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> None:
        self._mounts = mounts
        self._proc_cgroup = proc_cgroup
        self._warned: set[str] = set()
        self._prefix = f"clipper-{os.getpid()}-"
        self._swept = False

    def own_cgroup(self) -> tuple[Path | None, str]:
        """This process's cgroup folder in the unified hierarchy, or None and why."""
        try:
            lines = self._proc_cgroup.read_text().splitlines()
        except OSError as exc:
            return None, f"cannot read {self._proc_cgroup}: {exc.strerror}"
        unified = [line[3:] for line in lines if line.startswith("0::")]
        if not unified:
            return None, "this process is in no cgroup v2 (unified) hierarchy"
        for mount in self._mounts:
            own = mount / unified[0].lstrip("/")
            if (own / "cgroup.controllers").is_file():
                return own, ""
        return None, "no cgroup v2 hierarchy is mounted at " + " or ".join(map(str, self._mounts))

    def prepare(self, key: str, limit_mb: int) -> Path | None:
        """The cgroup of replica ``key`` with ``memory.max`` = ``limit_mb`` MiB
        (made, or updated), or None when the limit must fall back to
        ``RLIMIT_AS`` (logged once per replica, with the reason)."""
        own, reason = self.own_cgroup()
        if own is not None:
            try:
                return self._make(own, key, limit_mb)
            except _Unavailable as exc:
                reason = str(exc)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(
                "replica %s: memory limit %d MiB enforced with RLIMIT_AS (its address space,"
                " not its memory use) because no cgroup can hold it: %s",
                key,
                limit_mb,
                reason,
            )
        return None

    def remove(self, path: Path) -> None:
        """Remove a replica's cgroup once its processes are gone (a cgroup that
        still holds one stays)."""
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove cgroup %s: %s", path, exc.strerror)

    def _make(self, own: Path, key: str, limit_mb: int) -> Path:
        try:
            controllers = (own / "cgroup.controllers").read_text().split()
            subtree = own / "cgroup.subtree_control"
            delegated = subtree.read_text().split()
        except OSError as exc:
            raise _Unavailable(f"cannot read {own}: {exc.strerror}") from None
        if "memory" not in controllers:
            raise _Unavailable(f"the memory controller is not available in {own}")
        if "memory" not in delegated:
            try:
                subtree.write_text("+memory")
            except OSError as exc:
                why = (
                    "it holds processes itself (cgroup v2 lets only leaves hold them)"
                    if exc.errno == errno.EBUSY
                    else exc.strerror
                )
                raise _Unavailable(
                    f"cannot delegate the memory controller of {own}: {why}"
                ) from None
        if not self._swept:
            self._swept = True
            _sweep_dead_servers(own)
        child = own / (self._prefix + child_name(key))
        try:
            child.mkdir(exist_ok=True)
            (child / "memory.max").write_text(str(limit_mb * 1024 * 1024))
        except OSError as exc:
            raise _Unavailable(f"cannot set up {child}: {exc.strerror}") from None
        return child


_CHILD = re.compile(r"clipper-(\d+)-")
# Keeps a child's name well under NAME_MAX (255) however long the model's name.
_READABLE_CHARS = 100
_HASH_CHARS = 12


def child_name(key: str) -> str:
    """The part of a replica's child cgroup name after ``clipper-<pid>-``: readable,
    and distinct for distinct keys (see the module docstring)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "-", key)[:_READABLE_CHARS]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:_HASH_CHARS]}"


def _sweep_dead_servers(own: Path) -> None:
    """Remove the children of servers that no longer run (a child that still holds
    a process, such as a replica another server adopted, refuses and stays)."""
    try:
        children = list(own.iterdir())
    except OSError:
        return
    for child in children:
        match = _CHILD.match(child.name)
        if match is None or not child.is_dir() or Path(f"/proc/{match.group(1)}").exists():
            continue
        try:
            child.rmdir()
        except OSError:
            pass


class _Unavailable(Exception):
    """No cgroup can hold the limit (the message says why)."""
