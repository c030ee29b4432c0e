"""Per-model virtual environments: built once by the server, cached by requirements.

A model deployed with ``pkgs_to_install`` (or a requirements file) runs in a
virtual environment of its own, cached under ``<state_dir>/envs/<env_id>/``, where
``env_id`` hashes the requirements, the interpreter's version and the container's
own dependencies.  The environment is isolated (no system site-packages): it gets
the container's dependencies (grpcio, protobuf, numpy, cloudpickle; pinned to the
server's versions unless the requirements name them), the requirements, and a
``.pth`` file that makes ``model_containers`` importable.
A finished environment holds ``clipper-env.json`` (requirements, interpreter, what
pip installed); a folder without it is an interrupted build and is built again.

Building streams pip's output, line by line, to ``<state_dir>/envs/<env_id>.log``
and to the server's log; deployers follow it through the management API
(:func:`clipper_core.runtime_env.build_runtime_env`).

Environments are a local-manager feature: :class:`RuntimeEnvManager` belongs to
:class:`~clipper_core.managers.local.LocalProcessManager` (``manager.envs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from clipper_core.errors import BadInput, ClipperError
from clipper_core.managers.replica import WITHHELD_ENV
from clipper_core.requirements import (
    BUILDING,
    FAILED,
    READY,
    canonical_name,
    check_requirements,
    requirement_name,
)

__all__ = [
    "BUILDING",
    "BUILD_TIMEOUT",
    "CONTAINER_DEPENDENCIES",
    "ENV_FORMAT",
    "FAILED",
    "MARKER",
    "READY",
    "RuntimeEnvManager",
    "canonical_name",
    "check_requirements",
    "requirement_name",
]

log = logging.getLogger("clipper_core.runtime_env")

#: Bumped when the layout of an environment changes, so that old ones are rebuilt.
ENV_FORMAT = 1
#: The file that marks a finished environment.
MARKER = "clipper-env.json"
#: What ``model_containers`` imports, installed in every environment.
CONTAINER_DEPENDENCIES = ("grpcio", "protobuf", "numpy", "cloudpickle")
#: Seconds a build may take by default (big wheels on a slow index take minutes).
BUILD_TIMEOUT = 1800.0

_LOG_CHUNK = 64 * 1024


# -- server side: build and cache environments ----------------------------------------


@dataclass
class _Build:
    env_id: str
    requirements: list[str]
    status: str = BUILDING
    error: str = ""
    task: asyncio.Task[None] | None = None
    # Where this build's lines start in the (appended) log file.
    log_start: int = 0
    started: float = field(default_factory=time.monotonic)


class RuntimeEnvManager:
    """Builds per-model virtual environments under ``root`` and hands out their
    interpreters.  One build per environment at a time (an in-process task, and a
    lock file against other servers sharing the state dir).

    Args:
        root: ``<state_dir>/envs``.
        python: The interpreter the environments are made from.
        pip_args: Extra arguments for ``pip install`` (e.g. an index URL).
        build_timeout: Seconds a build may take, waiting for another process's
            build of the same environment included; then its processes are
            killed and it fails (a build step that hangs held up every deploy
            and every start that needed the environment).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        python: str,
        pip_args: Sequence[str] = (),
        build_timeout: float = BUILD_TIMEOUT,
    ):
        self.root = Path(root)
        self.python = python
        self.pip_args = list(pip_args)
        self.build_timeout = build_timeout
        self._builds: dict[str, _Build] = {}

    # -- naming -------------------------------------------------------------------

    @cached_property
    def python_version(self) -> str:
        """``sys.version`` of the interpreter the environments are made from."""
        if os.path.realpath(self.python) == os.path.realpath(sys.executable):
            return sys.version
        out = subprocess.run(
            [self.python, "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    @cached_property
    def base_requirements(self) -> list[str]:
        """The container's dependencies, pinned to this server's versions."""
        reqs: list[str] = []
        for dist in CONTAINER_DEPENDENCIES:
            try:
                reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                reqs.append(dist)
        return reqs

    def full_requirements(self, requirements: Sequence[str]) -> list[str]:
        """The user's requirements plus the container's dependencies they do not name."""
        named = {n for n in map(requirement_name, requirements) if n}
        base = [r for r in self.base_requirements if requirement_name(r) not in named]
        return [*requirements, *base]

    def env_id(self, requirements: Sequence[str]) -> str:
        """The cache key of an environment: a hash of what goes into it."""
        doc = {
            "format": ENV_FORMAT,
            "python": self.python_version,
            "requirements": sorted(dict.fromkeys(r.strip() for r in requirements)),
            "base": self.base_requirements,
            "pip_args": self.pip_args,
        }
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        return digest[:20]

    def env_dir(self, env_id: str) -> Path:
        return self.root / env_id

    def log_path(self, env_id: str) -> Path:
        return self.root / f"{env_id}.log"

    def interpreter(self, env_id: str) -> str:
        """The environment's ``python`` (it need not exist yet)."""
        return str(self.env_dir(env_id) / "bin" / "python")

    def python_for(self, container: dict[str, Any]) -> str | None:
        """The interpreter of a container spec's ``runtime_env``, or None."""
        spec = container.get("runtime_env")
        if not spec:
            return None
        return self.interpreter(self.env_id(check_requirements(spec.get("requirements"))))

    def is_ready(self, env_id: str) -> bool:
        """Built, and its interpreter still runs: a venv links to the Python it
        was made with, and one upgraded or removed since left a cached
        environment whose replicas failed to start with a bare ENOENT; such a
        one is built again (the build removes what is there)."""
        return (self.env_dir(env_id) / MARKER).is_file() and os.access(
            self.interpreter(env_id), os.X_OK
        )

    # -- building -------------------------------------------------------------------

    def _log_size(self, env_id: str) -> int:
        try:
            return self.log_path(env_id).stat().st_size
        except OSError:
            return 0

    def start_build(self, requirements: Sequence[str]) -> str:
        """Start building an environment unless it is ready or building; its id."""
        reqs = check_requirements(list(requirements))
        env_id = self.env_id(reqs)
        build = self._builds.get(env_id)
        if build is not None and build.status == BUILDING:
            return env_id
        if self.is_ready(env_id):
            self._builds[env_id] = _Build(
                env_id, reqs, status=READY, log_start=self._log_size(env_id)
            )
            return env_id
        build = _Build(env_id, reqs, log_start=self._log_size(env_id))
        self._builds[env_id] = build
        build.task = asyncio.get_running_loop().create_task(
            self._run_build(build), name=f"runtime env {env_id}"
        )
        # Retrieved here, so that a failed build does not reach the loop's handler.
        build.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return env_id

    async def ensure(self, spec: dict[str, Any]) -> str:
        """Build (or wait for) the environment of a ``runtime_env`` spec; its python.

        Raises:
            BadInput: The build failed; the message ends with pip's last lines.
        """
        env_id = self.start_build(check_requirements(spec.get("requirements")))
        build = self._builds[env_id]
        if build.task is not None:
            await asyncio.shield(build.task)
        if build.status != READY:
            raise BadInput(f"building the model's environment {env_id} failed: {build.error}")
        return self.interpreter(env_id)

    def build_log_start(self, env_id: str) -> int:
        """Where the current (or last) build of ``env_id`` starts in its log."""
        build = self._builds.get(env_id)
        return build.log_start if build is not None else self._log_size(env_id)

    def status(self, env_id: str, offset: int = 0) -> dict[str, Any]:
        """The state of a build and its log from ``offset``; ``{}`` when unknown."""
        build = self._builds.get(env_id)
        if build is None:
            if not self.is_ready(env_id):
                return {}
            status, error = READY, ""
        else:
            status, error = build.status, build.error
        text, new_offset = "", offset
        try:
            with open(self.log_path(env_id), "rb") as f:
                f.seek(max(0, offset))
                chunk = f.read(_LOG_CHUNK)
            text = chunk.decode("utf-8", "replace")
            new_offset = max(0, offset) + len(chunk)
        except OSError:
            pass
        return {
            "env_id": env_id,
            "status": status,
            "error": error,
            "log": text,
            "offset": new_offset,
            "python": self.interpreter(env_id),
        }

    async def close(self) -> None:
        """Cancel builds in progress (their pip is killed; the folder is rebuilt later)."""
        tasks = [b.task for b in self._builds.values() if b.task is not None and not b.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _run_build(self, build: _Build) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(build.env_id)
        try:
            file = await asyncio.to_thread(open, log_path, "ab", buffering=0)
            with file:
                out = _BuildLog(build.env_id, file)
                async with asyncio.timeout(self.build_timeout):  # its processes killed
                    lock = await self._lock(build.env_id, out)
                    try:
                        if self.is_ready(build.env_id):
                            out.write(f"environment {build.env_id} is ready\n")
                        else:
                            await self._build(build, out)
                    finally:
                        os.close(lock)
        except asyncio.CancelledError:
            build.status, build.error = FAILED, "the build was cancelled"
            raise
        except Exception as exc:
            tail = _tail(log_path)
            build.status = FAILED
            why = str(exc)
            if isinstance(exc, TimeoutError):
                why = f"the build took longer than {self.build_timeout:g} s and was stopped"
            build.error = why + (f"; last lines of {log_path}:\n{tail}" if tail else "")
            log.error("runtime environment %s: %s", build.env_id, build.error)
        else:
            build.status = READY

    async def _lock(self, env_id: str, out: _BuildLog) -> int:
        fd = os.open(self.root / f"{env_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not told:
                    out.write("waiting for another process building this environment\n")
                    told = True
                await asyncio.sleep(0.5)
            except BaseException:
                os.close(fd)
                raise

    async def _build(self, build: _Build, out: _BuildLog) -> None:
        env_dir = self.env_dir(build.env_id)
        started = time.monotonic()
        if env_dir.exists():
            out.write(f"removing the unfinished environment {env_dir}\n")
            await asyncio.to_thread(shutil.rmtree, env_dir)
        requirements = self.full_requirements(build.requirements)
        out.write(
            f"building environment {build.env_id} in {env_dir}\n"
            f"python: {self.python_version.splitlines()[0]}\n"
            f"requirements: {' '.join(requirements)}\n",
        )
        await self._run(out, [self.python, "-m", "venv", str(env_dir)])
        req_file = env_dir / "clipper-requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        python = self.interpreter(build.env_id)
        await self._run(
            out,
            [
                python,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
                *self.pip_args,
                "-r",
                str(req_file),
            ],
        )
        self._link_model_containers(env_dir, python)
        installed = await self._capture([python, "-m", "pip", "freeze", "--all"])
        marker = {
            "env_id": build.env_id,
            "format": ENV_FORMAT,
            "python": self.python_version,
            "requirements": requirements,
            "installed": installed.splitlines(),
            "built_at": time.time(),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (env_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        out.write(f"environment {build.env_id} ready in {marker['build_seconds']} s\n")

    def _link_model_containers(self, env_dir: Path, python: str) -> None:
        """Make ``model_containers`` (only it) importable through a ``.pth`` file."""
        import model_containers

        source = Path(model_containers.__file__).resolve().parent
        shim = env_dir / "clipper-path"
        shim.mkdir(exist_ok=True)
        link = shim / "model_containers"
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)
        site = next((env_dir / "lib").glob("python*/site-packages"), None)
        if site is None:
            raise ClipperError(f"no site-packages folder in {env_dir}")
        (site / "clipper_model_containers.pth").write_text(f"{shim}\n")

    async def _run(self, out: _BuildLog, argv: list[str]) -> None:
        out.write(f"$ {' '.join(argv)}\n")
        env = dict(os.environ)
        # Not our secrets either: a package's build runs code of its own.
        for var in (
            "PYTHONPATH",
            "PYTHONHOME",
            "VIRTUAL_ENV",
            "PIP_REQUIRE_VIRTUALENV",
            *WITHHELD_ENV,
        ):
            env.pop(var, None)
        env["PYTHONUNBUFFERED"] = "1"
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                out.write(raw.decode("utf-8", "replace").rstrip("\r\n") + "\n")
            code = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            raise
        if code != 0:
            raise ClipperError(f"`{' '.join(argv[:4])} ...` exited with code {code}")

    async def _capture(self, argv: list[str]) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        stdout, _ = await proc.communicate()
        return stdout.decode("utf-8", "replace")


class _BuildLog:
    """The build's log file; every line also goes to the server's log."""

    def __init__(self, env_id: str, file: Any) -> None:
        self.env_id = env_id
        self.file = file

    def write(self, text: str) -> None:
        self.file.write(text.encode())
        for line in text.splitlines():
            log.info("env %s: %s", self.env_id[:8], line)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
