"""``wait_until`` and ``resolve``: the query path's wait for its inputs' futures."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import uvloop

from clipper_core.dataplane import futures
from clipper_core.dataplane.futures import resolve, wait_until


def run(coro: Any) -> Any:
    return uvloop.run(coro)


def test_resolve_wakes_the_waiter_a_loop_turn_earlier() -> None:
    async def turns_until_woken(direct: bool) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        turns = 0
        woken = False

        async def waiting() -> None:
            nonlocal woken
            await wait_until([fut], time.monotonic() + 60)
            woken = True

        task = loop.create_task(waiting())
        await asyncio.sleep(0)  # the task now waits
        if direct:
            resolve(fut, 1)
        else:
            fut.set_result(1)
        while not woken:
            await asyncio.sleep(0)
            turns += 1
        await task
        assert fut.result() == 1
        assert not futures._WAITS
        return turns

    assert run(turns_until_woken(True)) + 1 == run(turns_until_woken(False))


def test_every_future_counts_once_however_it_is_resolved() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[int]] = [loop.create_future() for _ in range(4)]
        task = loop.create_task(wait_until(futs, time.monotonic() + 60))
        await asyncio.sleep(0)
        resolve(futs[0], 0)
        futs[1].set_result(1)
        resolve(futs[2], 2)
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()  # three of four: a future counted twice would end it
        futs[3].set_exception(ValueError("boom"))
        await task
        futs[3].exception()
        assert not futures._WAITS

    run(main())


def test_two_waits_on_one_shared_future() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        shared: asyncio.Future[int] = loop.create_future()
        other: asyncio.Future[int] = loop.create_future()
        end = time.monotonic() + 60
        first = loop.create_task(wait_until([shared], end))
        second = loop.create_task(wait_until([shared, other], end))
        await asyncio.sleep(0)
        resolve(shared, 7)
        await first
        for _ in range(5):
            await asyncio.sleep(0)
        assert not second.done()
        resolve(other, 8)
        await second
        assert not futures._WAITS

    run(main())


def test_the_deadline_ends_the_wait_and_leaves_the_future_pending() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        await wait_until([fut], time.monotonic() + 0.01)
        assert not fut.done() and not futures._WAITS
        resolve(fut, 1)  # late: nobody waits any more
        assert fut.result() == 1

    run(main())


def test_a_cancelled_wait_forgets_its_futures() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        task = loop.create_task(wait_until([fut], time.monotonic() + 60))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and not fut.done() and not futures._WAITS

    run(main())


def test_waits_share_one_timer_and_each_ends_at_its_own_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        futs = [loop.create_future() for _ in range(3)]
        ends: dict[int, float] = {}

        async def waiting(i: int, after: float) -> None:
            await wait_until([futs[i]], start + after)
            ends[i] = time.monotonic() - start

        # Added latest-first: each earlier deadline re-arms the one timer.
        tasks = [loop.create_task(waiting(i, d)) for i, d in ((2, 0.15), (1, 0.1), (0, 0.05))]
        await asyncio.sleep(0)
        resolve(futs[1], 1)  # ends at once; its entry goes stale
        await asyncio.gather(*tasks)
        assert ends[0] >= 0.05 - 0.002 and ends[2] >= 0.15 - 0.002
        assert ends[1] < 0.1 and ends[0] < ends[2]
        assert not futs[0].done() and not futs[2].done()
        assert not futures._DEADLINES[loop].heap

    run(main())


def test_finished_waits_do_not_pile_up_in_the_deadline_heap() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        end = time.monotonic() + 600
        for _ in range(3 * futures._COMPACT_AT):
            fut: asyncio.Future[int] = loop.create_future()
            task = loop.create_task(wait_until([fut], end))
            await asyncio.sleep(0)
            resolve(fut, 1)
            await task
        assert len(futures._DEADLINES[loop].heap) <= 2 * futures._COMPACT_AT

    run(main())


def test_a_wait_that_ends_early_is_freed_at_once() -> None:
    # The deadline heap keeps a stale entry per early-ended wait until a
    # compaction; an entry that held the wait kept its objects alive long enough
    # to reach the GC's oldest generation (full collections: the p99 at c=32).
    async def main() -> None:
        loop = asyncio.get_running_loop()
        end = time.monotonic() + 600
        for _ in range(100):
            fut: asyncio.Future[int] = loop.create_future()
            task = loop.create_task(wait_until([fut], end))
            await asyncio.sleep(0)
            resolve(fut, 1)
            await task
        deadlines = futures._DEADLINES[loop]
        assert len(deadlines.heap) == 100  # stale entries, not yet compacted
        assert not [o for o in gc.get_objects() if type(o) is futures._Wait]
        gc.collect(0)  # the GC stops tracking tuples of untracked items
        assert not any(gc.is_tracked(entry) for entry in deadlines.heap)

    run(main())
