"""``ServerThread``: a start that takes too long is undone, not left running."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from clipper_core.config import ServerConfig
from clipper_core.embedded import WORKER_START_TIMEOUT, ServerThread, start_budget


@dataclasses.dataclass
class _Config:
    shutdown_grace: float = 1.0


class SlowStartServer:
    """A server whose start never finishes on its own; it records what ran."""

    def __init__(self) -> None:
        self.config = _Config()
        self.began = threading.Event()
        self.start_cancelled = False
        self.stopped = False

    async def start(self) -> None:
        self.began.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.start_cancelled = True
            raise

    async def stop(self) -> None:
        self.stopped = True

    async def wait_stopped(self) -> None:
        await asyncio.sleep(3600)


def test_a_start_past_its_timeout_is_cancelled_and_stopped() -> None:
    server = SlowStartServer()
    thread = ServerThread(server)
    with pytest.raises(TimeoutError, match=r"did not start within 0\.5s"):
        thread.start(timeout=0.5)
    assert server.began.is_set()
    assert server.start_cancelled
    assert server.stopped
    assert thread.loop is None


def test_the_default_start_budget_covers_replicas_and_query_workers() -> None:
    one = ServerConfig(replica_start_timeout=60.0)
    assert start_budget(one) == 90.0
    workers = ServerConfig(replica_start_timeout=60.0, workers=3)
    assert start_budget(workers) == 90.0 + WORKER_START_TIMEOUT
