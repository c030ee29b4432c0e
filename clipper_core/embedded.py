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

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it serves.

        Raises:
            TimeoutError: It did not start within ``timeout`` seconds.
            Exception: Whatever the server's own start raised.
        """
        import uvloop

        started = threading.Event()
        failure: list[BaseException] = []
        loop = uvloop.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_until_complete(self.server.wait_stopped())

        self._thread = threading.Thread(target=run, name="clipper-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("the embedded server did not start in time")
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
