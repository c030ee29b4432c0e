"""BatchQueue throughput: put 32 items, then take_nowait(32), many batches a round.

This is the queue's share of serving one batch: every put() makes a future (the
frontend awaits it) and a QueueEntry; take_nowait() checks each entry's future and
deadline.  The batches are plain Python loops, as the frontend and dispatcher call
the queue; the loops cost a few tens of ns an item and are included.

Measured on both event loops, with the loop found as the running one (the default)
and given at construction (``loop=``).  For scale, the cost of making a future
alone is measured too: ``loop.create_future()`` and ``asyncio.Future(loop=loop)``.
Prints items per second for each.
"""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable, Iterator
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from clipper_core.structures import load

BATCH = 32
BATCHES = 100  # per round
N = BATCH * BATCHES
ITEMS = list(range(BATCH))


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    return load(request.param == "cython")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"


def report(benchmark: Any, what: str) -> None:
    per_s = N / benchmark.stats.stats.median
    benchmark.extra_info["items_per_s"] = per_s
    print(
        f"\n{what}: {per_s / 1e6:.2f} M items/s "
        f"(median of {benchmark.stats.stats.rounds} rounds of {N}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"Cython {version('Cython')}, uvloop {version('uvloop')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs)"
    )


def in_running_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Run ``fn`` (which calls the benchmark) while ``loop`` is the running loop."""

    async def main() -> None:
        fn()

    loop.run_until_complete(main())


def put_take_rounds(q: Any) -> Callable[[], None]:
    put = q.put
    take = q.take_nowait

    def rounds() -> None:
        for _ in range(BATCHES):
            for i in ITEMS:
                put(i)
            take(BATCH)

    return rounds


@pytest.mark.parametrize("given_loop", [False, True], ids=["running-loop", "loop-arg"])
def test_bench_put_take(
    benchmark: Any, impl: SimpleNamespace, loop: asyncio.AbstractEventLoop, given_loop: bool
) -> None:
    q = impl.BatchQueue(4 * BATCH, name="bench", loop=loop if given_loop else None)
    in_running_loop(loop, lambda: benchmark(put_take_rounds(q)))
    assert len(q) == 0 and q.taken >= N
    mode = "loop=" if given_loop else "running loop"
    report(
        benchmark, f"put x{BATCH} + take_nowait({BATCH}) [{impl.name}, {loop_name(loop)}, {mode}]"
    )


@pytest.mark.parametrize("factory", ["loop.create_future", "asyncio.Future(loop=)"])
def test_bench_future_alone(benchmark: Any, loop: asyncio.AbstractEventLoop, factory: str) -> None:
    """The floor under put(): one future per item, nothing else."""
    if factory == "loop.create_future":
        make: Callable[[], object] = loop.create_future
    else:
        future_type = asyncio.Future

        def make() -> object:
            return future_type(loop=loop)

    def rounds() -> None:
        for _ in range(BATCHES):
            batch = []
            for _ in ITEMS:
                batch.append(make())

    benchmark(rounds)
    report(benchmark, f"{factory} alone [{loop_name(loop)}]")
