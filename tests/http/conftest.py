"""Fixtures of the HTTP tests.

``loop`` repeats the suite-wide fixture of ``tests/conftest.py`` so that these tests
also run with ``--confcutdir=tests/http`` (without the Cython extensions built).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop of each kind; the test fails if anything reaches the
    loop's exception handler (an unretrieved task exception, a callback error)."""
    lp = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    asyncio.set_event_loop(lp)
    try:
        yield lp
        lp.run_until_complete(asyncio.sleep(0))
        lp.run_until_complete(lp.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        lp.close()
    gc.collect()
    assert not errors, f"errors reached the loop's exception handler: {errors}"
