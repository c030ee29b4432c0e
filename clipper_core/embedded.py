"""Running an asyncio server on a thread of its own, for synchronous code.

``ServerThread`` gives a server object (``start``, ``stop``, ``wait_stopped`` and
a ``config.shutdown_grace``) a uvloop event loop on a daemon thread, so that a
script, a notebook or a test can start it, call into its loop, and stop it.
``clipper_core.server.BackgroundServer`` is this for a ``ClipperServer``.

Synchronous clients (``ClipperConnection``) block: they must not be called from
the server's own loop, where they would wait for an answer that loop can no
longer give.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar


class _Config(Protocol):
    shutdown_grace: float


class AsyncServer(Protocol):
    """What ``ServerThread`` runs."""

    @property
    def config(self) -> _Config: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_stopped(self) -> None: ...


S = TypeVar("S", bound=AsyncServer)

#: What a query worker may take to serve (``FrontendWorkers``' default).
WORKER_START_TIMEOUT = 120.0


def start_budget(config: object) -> float:
    """Seconds a server with ``config`` may take to start: 30 s, plus its
    container start timeout (a restore waits for its replicas), plus a query
    worker's start timeout when it runs query workers."""
    budget = 30.0 + float(getattr(config, "replica_start_timeout", 0.0))
    if int(getattr(config, "workers", 1)) > 1:
        budget += WORKER_START_TIMEOUT
    return budget


class ServerThread(Generic[S]):
    """Runs ``server`` on a uvloop loop in a daemon thread.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, server: S) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The server's event loop while it runs."""
        return self._loop

    def start(self, timeout: float | None = None) -> None:
        """Start the server and return once it serves.

        Args:
            timeout: Seconds to wait.  By default what the server's own start may
                take (its container start timeout and, with query workers, their
                start) plus 30 s.  On a timeout the start is cancelled and what it
                had started is stopped before the error is raised: nothing is left
                half-started behind it.

        Raises:
            TimeoutError: It did not start within ``timeout`` seconds.
            Exception: Whatever the server's own start raised.
        """
        import uvloop

        if timeout is None:
            timeout = start_budget(self.server.config)
        started = threading.Event()
        failure: list[BaseException] = []
        loop = uvloop.new_event_loop()
        self._loop = loop
        start_task: list[asyncio.Task[None]] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            task = loop.create_task(self.server.start())
            start_task.append(task)
            try:
                loop.run_until_complete(task)
            except BaseException as exc:
                # Failed, or given up by start(): undo whatever the start got to
                # (a failed start held the state folder's lock, so a second try
                # in this process was refused as "another server").
                try:
                    loop.run_until_complete(self.server.stop())
                except Exception:
                    pass
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_until_complete(self.server.wait_stopped())

        self._thread = threading.Thread(target=run, name="clipper-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            loop.call_soon_threadsafe(lambda: start_task and start_task[0].cancel())
            self._thread.join(self.server.config.shutdown_grace + 30.0)
            if not self._thread.is_alive():
                loop.close()
            self._loop = None
            raise TimeoutError(f"the embedded server did not start within {timeout:g}s")
        if failure:
            self._thread.join(timeout)
            loop.close()
            self._loop = None
            raise failure[0]

    def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
        """Run a coroutine function on the server's loop and return its result."""
        assert self._loop is not None

        async def wrapper() -> Any:
            return await fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server; ``timeout`` defaults to its shutdown grace period plus
        30 s for its containers."""
        if self._loop is None or self._thread is None:
            return
        if timeout is None:
            timeout = self.server.config.shutdown_grace + 30.0
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout)
        self._thread.join(timeout)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> ServerThread[S]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
