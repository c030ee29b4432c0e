"""Per-model runtime environments, and what a deployer records about its own.

A model deployed with ``pkgs_to_install`` (or a requirements file) runs in a
virtual environment of its own, built once by the server and cached under
``<state_dir>/envs/<env_id>/``, where ``env_id`` hashes the requirements, the
interpreter's version and the container's own dependencies.  The environment is
isolated (no system site-packages): it gets the container's dependencies (grpcio,
grpcio-health-checking, protobuf, numpy, cloudpickle; pinned to the server's
versions unless the requirements name them), the requirements, and a ``.pth``
file that makes ``model_containers`` importable.  A finished environment holds
``clipper-env.json`` (requirements, interpreter, what pip installed); a folder
without it is an interrupted build and is built again.

Building streams pip's output, line by line, to ``<state_dir>/envs/<env_id>.log``
and to the server's log; deployers follow it through the management API
(``build_runtime_env``, then ``get_runtime_env`` with an offset) and print it.

Deploy side, :func:`deploy_environment` records the Python version and the
versions of the packages a model depends on; the container compares them with its
own at start (``model_containers.environment``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipper_core.errors import BadInput, ClipperError

if TYPE_CHECKING:
    from clipper_core.connection import ClipperConnection
    from clipper_core.server import ClipperServer

log = logging.getLogger("clipper_core.runtime_env")

#: Bumped when the layout of an environment changes, so that old ones are rebuilt.
ENV_FORMAT = 1
#: The file that marks a finished environment.
MARKER = "clipper-env.json"
#: What ``model_containers`` imports, installed in every environment.
CONTAINER_DEPENDENCIES = ("grpcio", "grpcio-health-checking", "protobuf", "numpy", "cloudpickle")

# Build states reported by get_runtime_env.
READY, BUILDING, FAILED = "ready", "building", "failed"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LOG_CHUNK = 64 * 1024


# -- deploy side: what the model was made with --------------------------------------


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name: ``Scikit_Learn`` -> ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The distribution a requirement line names, or None (options, URLs, paths)."""
    text = line.strip()
    if not text or text.startswith(("-", "#", ".", "/")) or "://" in text:
        return None
    match = _NAME.match(text)
    return canonical_name(match.group(1)) if match else None


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    # Scans every installed distribution (most of a second in a big environment).
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> tuple[str, str] | None:
    """``(distribution, version)`` installed here that provides ``module``."""
    try:
        return module, importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in _packages_distributions().get(module, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def deploy_environment(
    packages: Iterable[tuple[str, str]], *, pickled_code: bool
) -> dict[str, Any]:
    """Record this interpreter and the packages a model depends on.

    Args:
        packages: ``(import name, match)`` pairs; match is ``"exact"`` (the saved
            model needs the same release), ``"present"`` (any version, but
            installed) or ``"any"`` (only reported).  Modules not installed here
            are left out.
        pickled_code: The payload holds pickled Python code (a closure, a
            ``func``), which needs the same Python minor version to load.

    Returns:
        The ``deploy_env`` of a container spec (see ``model_containers.environment``).
    """
    recorded: list[dict[str, str]] = []
    seen: set[str] = set()
    for module, match in packages:
        found = distribution_of(module)
        if found is None or module in seen:
            continue
        seen.add(module)
        dist, version = found
        recorded.append({"module": module, "dist": dist, "version": version, "match": match})
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python_full": sys.version,
        "python_match": "minor" if pickled_code else "any",
        "packages": recorded,
    }


def read_requirements_file(path: str | os.PathLike[str]) -> list[str]:
    """The requirement lines of a file (comments and blank lines dropped)."""
    lines: list[str] = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def requirements_for(
    pkgs_to_install: Sequence[str] | None,
    requirements_file: str | os.PathLike[str] | None,
    deploy_env: dict[str, Any],
) -> list[str]:
    """The requirements of a model's environment, or ``[]`` for none.

    The user's packages, plus a pin (``dist==version``) of every package the
    deploy record needs (``exact`` or ``present``) that the user did not name, so
    that the environment loads what was saved.
    """
    user = [str(p).strip() for p in pkgs_to_install or [] if str(p).strip()]
    if requirements_file is not None:
        user += read_requirements_file(requirements_file)
    if not user:
        return []
    named = {n for n in map(requirement_name, user) if n}
    pins: list[str] = []
    for pkg in deploy_env.get("packages", []):
        if pkg.get("match") not in ("exact", "present"):
            continue
        dist = canonical_name(str(pkg["dist"]))
        if dist not in named:
            named.add(dist)
            pins.append(f"{dist}=={str(pkg['version']).split('+', 1)[0]}")
    return user + pins


def _check_requirements(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise BadInput("requirements must be a list of strings")
    out = [r.strip() for r in value if r.strip()]
    for r in out:
        if "\n" in r or "\r" in r:
            raise BadInput(f"a requirement must be one line: {r!r}")
    if not out:
        raise BadInput("an environment needs at least one requirement")
    return out


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
    """

    def __init__(self, root: str | os.PathLike[str], python: str, pip_args: Sequence[str] = ()):
        self.root = Path(root)
        self.python = python
        self.pip_args = list(pip_args)
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
        return self.interpreter(self.env_id(_check_requirements(spec.get("requirements"))))

    def is_ready(self, env_id: str) -> bool:
        return (self.env_dir(env_id) / MARKER).is_file()

    # -- building -------------------------------------------------------------------

    def _log_size(self, env_id: str) -> int:
        try:
            return self.log_path(env_id).stat().st_size
        except OSError:
            return 0

    def start_build(self, requirements: Sequence[str]) -> str:
        """Start building an environment unless it is ready or building; its id."""
        reqs = _check_requirements(list(requirements))
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
        env_id = self.start_build(_check_requirements(spec.get("requirements")))
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
            build.error = f"{exc}" + (f"; last lines of {log_path}:\n{tail}" if tail else "")
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
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"):
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


# -- the management API's two calls -----------------------------------------------------


def admin_operations(
    server: ClipperServer,
) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """``build_runtime_env`` and ``get_runtime_env`` for the management API."""

    async def build_runtime_env(body: dict[str, Any]) -> Any:
        envs = server.runtime_envs
        env_id = envs.start_build(_check_requirements(body.get("requirements")))
        return envs.status(env_id, envs.build_log_start(env_id))

    async def get_runtime_env(body: dict[str, Any]) -> Any:
        env_id = body.get("env_id")
        if not isinstance(env_id, str) or not re.fullmatch(r"[0-9a-f]{1,64}", env_id):
            raise BadInput("field 'env_id' must be an environment id")
        offset = body.get("offset") or 0
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadInput("field 'offset' must be a non-negative integer")
        return server.runtime_envs.status(env_id, offset)

    return {"build_runtime_env": build_runtime_env, "get_runtime_env": get_runtime_env}


# -- client side: build with progress ------------------------------------------------------


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_runtime_env(
    conn: ClipperConnection,
    requirements: Sequence[str],
    *,
    progress: Callable[[str], None] | None = _print_progress,
    timeout: float = 3600.0,
    poll_interval: float = 0.5,
) -> dict[str, Any]:
    """Have the server build (or find cached) an environment, showing its progress.

    Args:
        conn: A connection to the server.
        requirements: pip requirement lines.
        progress: Called with each line of the build log, prefixed with the short
            environment id (stderr by default; None: silent).
        timeout: Seconds to wait for the build.
        poll_interval: Seconds between two looks at the log.

    Returns:
        The ``runtime_env`` of a container spec: ``{"requirements", "env_id"}``.

    Raises:
        ClipperError: The build failed (with pip's last lines) or took too long.
    """
    reqs = list(requirements)
    state = conn._call("build_runtime_env", {"requirements": reqs})
    env_id = str(state["env_id"])
    if progress is not None and state.get("status") == READY and not state.get("log"):
        progress(f"[env {env_id[:8]}] ready (built before, {state.get('python')})")
    offset = 0
    pending = ""
    deadline = time.monotonic() + timeout
    while True:
        text = str(state.get("log") or "")
        offset = int(state.get("offset") or offset)
        if progress is not None and text:
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                progress(f"[env {env_id[:8]}] {line}")
        status = state.get("status")
        if status == READY and not text:
            break
        if status == FAILED and not text:
            raise ClipperError(f"building the model's environment failed: {state.get('error')}")
        if time.monotonic() > deadline:
            raise ClipperError(
                f"the model's environment {env_id} was not built within {timeout:g} s"
            )
        if not text:
            time.sleep(poll_interval)
        state = conn._call("get_runtime_env", {"env_id": env_id, "offset": offset}) or {}
        if not state:
            raise ClipperError(f"the server forgot the environment {env_id}")
    if progress is not None and pending:
        progress(f"[env {env_id[:8]}] {pending}")
    return {"requirements": reqs, "env_id": env_id}
