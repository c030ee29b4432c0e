"""Shared fixtures: both implementations of the core structures, both event loops."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

# Before anything imports grpc: the heavy Spark tests start a Java gateway (a fork
# with a preexec_fn) in this process while its gRPC server threads run, and gRPC's
# fork handlers then race the child's pipes (see model_containers/__main__.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest
import uvloop

from clipper_core.structures import load

if TYPE_CHECKING:
    from tests.containers.container_harness import Launcher

# Servers started by tests (in this process or as children) bind an ephemeral
# OIP gRPC port instead of 8001, so that test runs never collide on it.
os.environ.setdefault("CLIPPER_GRPC_PORT", "0")

IMPLEMENTATIONS = ["cython", "python"]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """The Cython extensions and their pure-Python twins, one after the other."""
    return load(request.param == "cython")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop of each kind; the test fails if anything reaches the
    loop's exception handler (an unretrieved future exception, a callback error)."""
    lp = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    asyncio.set_event_loop(lp)
    try:
        yield lp
        # Let pending callbacks run so that late errors are seen.
        lp.run_until_complete(asyncio.sleep(0))
    finally:
        asyncio.set_event_loop(None)
        lp.close()
    import gc

    gc.collect()
    assert not errors, f"errors reached the loop's exception handler: {errors}"


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Containers started by hand (``launcher.start(...)``), as an operator starts
    a replica to register it; all are stopped afterwards."""
    from tests.containers.container_harness import Launcher

    started = Launcher(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
