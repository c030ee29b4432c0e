"""Helpers for the control-plane tests: child programs, an event recorder, and
checks that a process is gone."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from clipper_core.managers.replica import ProcessEvent as ReplicaEvent
from clipper_core.managers.replica import ReplicaSpec

Runner = Callable[..., Any]


def child(code: str) -> list[str]:
    """The argv of a Python child running ``code``."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def spec(
    code: str, *, name: str = "m", version: str = "1", replica_id: int = 0, **kw: Any
) -> ReplicaSpec:
    return ReplicaSpec(
        model_name=name, model_version=version, replica_id=replica_id, argv=child(code), **kw
    )


#: Announces an address naming its pid, then sleeps.
READY_CHILD = """
    import os, time
    print("CLIPPER_CONTAINER_READY 127.0.0.1:" + str(os.getpid()), flush=True)
    time.sleep(120)
"""


class Recorder:
    """Collects a manager's events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[ReplicaEvent] = []
        self.pids: set[int] = set()
        self._changed = asyncio.Event()

    def __call__(self, event: ReplicaEvent) -> None:
        self.events.append(event)
        if event.kind == "started" and event.handle.pid is not None:
            self.pids.add(event.handle.pid)
        self._changed.set()

    def kinds(self, key: str | None = None) -> list[str]:
        return [e.kind for e in self.events if key is None or e.handle.key == key]

    async def wait_for(
        self, predicate: Callable[[ReplicaEvent], bool], within: float = 10.0, start: int = 0
    ) -> ReplicaEvent:
        """The first event from index ``start`` on that matches ``predicate``."""
        async with asyncio.timeout(within):
            seen = start
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = max(seen, len(self.events))
                self._changed.clear()
                await self._changed.wait()


def is_our_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return int(fields[1]) == os.getpid()


def assert_reaped(pid: int) -> None:
    """The process is gone and reaped (no zombie left behind)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def assert_dead(pid: int) -> None:
    """The process no longer runs (a zombie awaiting a reaper that is not us counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return
    assert state in ("Z", "X"), f"pid {pid} still runs (state {state})"


async def wait_dead(pid: int, within: float = 5.0) -> None:
    """Wait until the process no longer runs (see :func:`assert_dead`)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            assert_dead(pid)
            return
        except AssertionError:
            await asyncio.sleep(0.05)
    assert_dead(pid)


async def poll_until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    """Wait until ``predicate()`` holds (for state no event announces)."""
    deadline = time.monotonic() + within
    for _ in itertools.count():
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)
