"""Fixtures for the control-plane tests: a bounded runner on the ``loop`` fixture and
process managers that always stop (and, failing that, kill) every child they start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from control_helpers import Recorder, Runner, is_our_child

from clipper_core.managers.supervisor import ProcessSupervisor as LocalProcessManager

T = TypeVar("T")


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Runner:
    """Run a coroutine on the test's loop, failing (not hanging) after ``timeout``."""

    def run_(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    return run_


@pytest.fixture
def make_manager(
    run: Runner,
) -> Iterator[Callable[..., tuple[LocalProcessManager, Recorder]]]:
    """Build managers whose children are all stopped at teardown; a child still
    alive after that is killed (by pid, only if it is ours) and fails the test."""
    made: list[tuple[LocalProcessManager, Recorder]] = []

    def make(**kwargs: Any) -> tuple[LocalProcessManager, Recorder]:
        recorder = Recorder()
        manager = LocalProcessManager(on_event=recorder, **kwargs)
        made.append((manager, recorder))
        return manager, recorder

    yield make
    leaked: list[int] = []
    for manager, recorder in made:
        run(manager.stop_all(grace=1.0), timeout=30)
        for pid in recorder.pids:
            if is_our_child(pid):
                leaked.append(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert not leaked, f"children left running after stop_all: {leaked}"
