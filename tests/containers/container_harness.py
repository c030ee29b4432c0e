"""Helpers of the container tests: start real ``python -m model_containers``
processes, wait for their READY line, run coroutines with a timeout.

Every process a ``Launcher`` starts is killed and reaped by PID in
``Launcher.stop_all`` (the ``containers`` fixture's finalizer); every wait has a
timeout.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
READY_MARKER = "CLIPPER_CONTAINER_READY"
START_TIMEOUT_S = 60.0  # two shared cores, several suites at once: be generous

# The repository's packages, not whatever an older editable install maps.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]], *, loop: str = "asyncio", timeout: float = 60.0) -> T:
    """Run ``fn()`` in a fresh event loop (stdlib or uvloop) with an overall timeout.

    Fails if anything reaches the loop's exception handler (an unretrieved
    future exception, a failing callback), as the repository's loop fixture does.
    """
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    errors: list[dict[str, Any]] = []

    def record(_loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        # grpc.aio keeps one process-wide completion-queue poller that wakes every
        # loop it was ever bound to; with a fresh loop per test it may call into
        # the previous test's closed loop (grpc/grpc#25364, #34139).  A server has
        # one loop for its life, so only tests see this: ignore exactly that.
        if "PollerCompletionQueue._handle_events" in str(ctx.get("message", "")):
            return
        errors.append(ctx)

    async def bounded() -> T:
        asyncio.get_running_loop().set_exception_handler(record)
        return await asyncio.wait_for(fn(), timeout)

    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(bounded())
    assert not errors, f"errors reached the loop's exception handler: {errors}"
    return result


def container_env() -> dict[str, str]:
    env = os.environ.copy()
    paths = [str(HERE), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CLIPPER_ADMIN_TOKEN", None)
    return env


@dataclass
class Container:
    """A running ``python -m model_containers`` process."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    address: str = ""
    stdout_lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)


class Launcher:
    """Starts containers and remembers them for the finalizer."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._started: list[Container] = []

    def start(
        self,
        *args: str,
        wait_ready: bool = True,
        timeout: float = START_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> Container:
        """Start a container with ``args`` (and ``env`` on top of the test
        environment); by default wait for its READY line."""
        n = len(self._started)
        stderr_path = self._tmp / f"container-{n}.stderr"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "model_containers", *args],
                cwd=REPO,
                env={**container_env(), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        container = Container(proc=proc, stderr_path=stderr_path)
        self._started.append(container)
        # Drain stdout in a thread, so that the child never blocks on a full pipe
        # and the test can wait for the READY line with a timeout.
        threading.Thread(target=_pump, args=(proc, container.stdout_lines), daemon=True).start()
        if wait_ready:
            container.address = self.wait_ready(container, timeout)
        return container

    def wait_ready(self, container: Container, timeout: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no READY line within {timeout} s; stderr:\n{container.stderr()}")
            try:
                line = container.stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = container.proc.wait(timeout=10)
                pytest.fail(
                    f"container exited ({code}) before READY; stderr:\n{container.stderr()}"
                )
            if line.startswith(READY_MARKER + " "):
                return line.split(" ", 1)[1].strip()

    def stop_all(self) -> None:
        for container in self._started:
            proc = container.proc
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover - last resort
                os.kill(proc.pid, 9)
                proc.wait(timeout=15)
            if proc.stdout is not None:
                proc.stdout.close()


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


def model_class_args(
    model: str, *, name: str = "m", version: str = "1", input_type: str | None = None
) -> list[str]:
    """Arguments for a container serving ``sample_models.<model>``."""
    args = [
        "--model-name",
        name,
        "--model-version",
        version,
        "--model-class",
        f"sample_models:{model}",
    ]
    if input_type:
        args += ["--input-type", input_type]
    return args


def closure_args(path: Path, input_type: str, *, name: str = "c", version: str = "1") -> list[str]:
    return [
        "--model-name",
        name,
        "--model-version",
        version,
        "--input-type",
        input_type,
        "--closure",
        str(path),
    ]


def pickle_closure(path: Path, func: Any) -> Path:
    import cloudpickle

    with open(path, "wb") as f:
        cloudpickle.dump(func, f)
    return path
