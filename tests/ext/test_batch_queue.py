"""BatchQueue: the Cython extension and its pure-Python twin, side by side.

Async tests run on both loops (the ``loop`` fixture fails a test if anything
reaches the loop's exception handler, such as a failed future nobody retrieved).
Timing tests use generous upper bounds: the machine is small and shared.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
import weakref
from collections.abc import Awaitable, Iterable
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipper_core.errors import ClipperError, DeadlineExceeded, QueueClosed, QueueFull

T = TypeVar("T")
SLACK = 1.0  # upper-bound slack for a loaded machine, seconds


def run(loop: asyncio.AbstractEventLoop, aw: Awaitable[T]) -> T:
    return loop.run_until_complete(aw)


def items(batch: Iterable[Any]) -> list[Any]:
    return [e.item for e in batch]


def resolve(batch: Iterable[Any]) -> None:
    """Act as the dispatcher: answer every entry with its own item."""
    for e in batch:
        e.future.set_result(e.item)


def retrieve(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Mark failed futures as seen, so that none is reported as never retrieved."""
    for f in futures:
        if f.done() and not f.cancelled():
            f.exception()


# -- put, entries, capacity ---------------------------------------------------------


def test_put_returns_future_and_entry_fields(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(4, name="m")
        t0 = time.monotonic()
        f = q.put("x", t0 + 10.0, 3)
        t1 = time.monotonic()
        assert isinstance(f, asyncio.Future)
        assert f.get_loop() is loop and not f.done()
        assert len(q) == 1
        [e] = q.take_nowait(5)
        assert isinstance(e, impl.QueueEntry)
        assert (e.item, e.future, e.deadline, e.priority) == ("x", f, t0 + 10.0, 3)
        assert t0 <= e.enqueued_at <= t1
        g = q.put("y")
        [e] = q.take_nowait(1)
        assert e.future is g and e.deadline == math.inf and e.priority == 0
        assert (len(q), q.taken) == (0, 2)
        assert "'y'" in repr(e)
        resolve([e])
        f.set_result(None)

    run(loop, main())


def test_entry_fields_are_read_only(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    if impl.name != "cython":
        pytest.skip("the twin's QueueEntry uses plain slots")
    q = impl.BatchQueue(1, loop=loop)
    q.put(1)
    [e] = q.take_nowait(1)
    with pytest.raises(AttributeError):
        e.item = 2
    with pytest.raises(AttributeError):
        q.taken = 5
    e.future.cancel()


def test_loop_argument_and_running_loop(impl: SimpleNamespace) -> None:
    q = impl.BatchQueue(8)
    with pytest.raises(RuntimeError):
        q.put(1)  # no loop given, none running
    loops = [asyncio.new_event_loop(), uvloop.new_event_loop(), asyncio.new_event_loop()]
    try:
        for lp in loops:
            # The same queue follows whichever loop is running at each put().
            async def main(lp: asyncio.AbstractEventLoop = lp) -> None:
                f = q.put(1)
                assert f.get_loop() is lp
                resolve(q.take_nowait(1))
                assert await f == 1

            lp.run_until_complete(main())
            with pytest.raises(RuntimeError):
                q.put(2)  # that loop stopped: none is running again
        fixed = impl.BatchQueue(2, loop=loops[1])
        assert fixed.put(1).get_loop() is loops[1]  # no running loop needed
        fixed.take_nowait(1)[0].future.cancel()
    finally:
        for lp in loops:
            lp.close()


def test_custom_create_future_is_used(impl: SimpleNamespace) -> None:
    class CountingLoop(asyncio.SelectorEventLoop):
        made = 0

        def create_future(self) -> asyncio.Future[Any]:
            self.made += 1
            return super().create_future()

    lp = CountingLoop()
    try:
        q = impl.BatchQueue(4, loop=lp)
        futs = [q.put(i) for i in range(3)]
        assert lp.made == 3
        for f in futs:
            f.cancel()
    finally:
        lp.close()


def test_capacity_and_queue_full(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    q = impl.BatchQueue(3, name="resnet:1", loop=loop)
    futs = [q.put(i) for i in range(3)]
    with pytest.raises(QueueFull) as info:
        q.put(3)
    assert "resnet:1" in str(info.value) and "3" in str(info.value)
    assert isinstance(info.value, ClipperError) and info.value.http_status == 503
    assert (len(q), q.rejected) == (3, 1)
    # A dead entry at the head makes room before a put is rejected.
    futs[0].cancel()
    futs.append(q.put(3))
    assert (len(q), q.cancelled, q.rejected) == (3, 1, 1)
    with pytest.raises(QueueFull):
        q.put(4)
    # Accepted work handed back (a positive priority) is never refused for capacity.
    handed_back = q.put("again", priority=1)
    assert (len(q), q.rejected) == (4, 2)
    taken = q.take_nowait(1)
    assert items(taken) == ["again"] and taken[0].future is handed_back
    resolve(taken)
    resolve(q.take_nowait(1))
    futs.append(q.put(4))
    assert len(q) == 3 and q.capacity == 3
    assert items(q.take_nowait(10)) == [2, 3, 4]
    assert (q.taken, q.rejected) == (5, 2)


def test_bad_arguments(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            impl.BatchQueue(bad)
    with pytest.raises(TypeError):
        impl.BatchQueue("3")
    with pytest.raises(TypeError):
        impl.BatchQueue(3, name=None)
    q = impl.BatchQueue(3, loop=loop)
    with pytest.raises(TypeError):
        q.put(1, "soon")
    with pytest.raises(TypeError):
        q.put(1, math.inf, 1.5)
    with pytest.raises(ValueError):
        q.take_nowait(0)
    with pytest.raises(ValueError):
        run(loop, q.take(0, 0.1))
    with pytest.raises(TypeError):
        q.close("not an exception")
    assert len(q) == 0 and q.take_nowait(3) == []
    f = q.put(1, 10**12, True)  # ints and bools convert as in C
    [e] = q.take_nowait(1)
    assert (e.deadline, e.priority) == (1e12, 1)
    f.cancel()


# -- ordering -------------------------------------------------------------------------


def test_priority_then_fifo(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    rng = random.Random(7)
    prios = [rng.choice([-3, -1, 0, 0, 0, 1, 2, 5]) for _ in range(60)]
    expected = [i for _, i in sorted((-p, i) for i, p in enumerate(prios))]
    q = impl.BatchQueue(100, loop=loop)
    for i, p in enumerate(prios):
        q.put(i, priority=p)
    got: list[int] = []
    while len(q):
        batch = q.take_nowait(7)
        assert 0 < len(batch) <= 7
        assert [e.priority for e in batch] == sorted((e.priority for e in batch), reverse=True)
        got += items(batch)
        resolve(batch)
    assert got == expected


def test_priority_levels_come_and_go(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    q = impl.BatchQueue(100, loop=loop)
    for round_ in range(3):
        q.put(("low", round_), priority=-2)
        q.put(("zero", round_))
        q.put(("high", round_), priority=4)
        batch = q.take_nowait(2)
        assert items(batch) == [("high", round_), ("zero", round_)]
        resolve(batch)
        q.put(("higher", round_), priority=9)
        batch = q.take_nowait(5)
        assert items(batch) == [("higher", round_), ("low", round_)]
        resolve(batch)
    assert len(q) == 0


def test_taken_entries_are_not_kept_alive(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    class Item:
        pass

    q = impl.BatchQueue(4, loop=loop)
    refs = []
    for p in (0, 1):
        it = Item()
        refs.append(weakref.ref(it))
        q.put(it, priority=p)
    del it
    batch = q.take_nowait(2)
    resolve(batch)
    del batch
    gc.collect()
    assert [r() for r in refs] == [None, None]


# -- delayed batching -----------------------------------------------------------------


def test_batch_waits_max_wait_from_first_arrival(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(100)
        taker = asyncio.ensure_future(q.take(10, 0.15))
        await asyncio.sleep(0.02)
        assert not taker.done()  # nothing queued: waits without limit
        f1 = q.put(1)
        await asyncio.sleep(0.05)
        assert not taker.done()  # 1 < max_n entries, max_wait not over
        f2 = q.put(2)
        batch = await taker
        waited = time.monotonic() - batch[0].enqueued_at
        assert items(batch) == [1, 2]
        assert 0.15 <= waited < 0.15 + SLACK
        resolve(batch)
        assert [await f1, await f2] == [1, 2]

    run(loop, main())


def test_a_batch_stops_waiting_slack_before_its_heads_deadline(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    # A batch wait longer than the deadline allows made nearly every light-load
    # query miss its objective: the taker waited out max_wait regardless.
    async def main() -> None:
        q = impl.BatchQueue(100)
        t0 = time.monotonic()
        q.put(1, t0 + 0.4)  # due in 400 ms; the model needs 300 of them
        batch = await q.take(10, 30.0, 0.3)
        waited = time.monotonic() - t0
        assert items(batch) == [1]
        assert 0.09 <= waited < 0.1 + SLACK
        resolve(batch)
        # Already past deadline - slack: at once.  No deadline: max_wait decides.
        q.put(2, time.monotonic() + 0.2)
        t1 = time.monotonic()
        batch = await q.take(10, 30.0, 0.3)
        assert items(batch) == [2] and time.monotonic() - t1 < 0.15
        resolve(batch)
        q.put(3)
        batch = await q.take(10, 0.05, 0.3)
        assert items(batch) == [3]
        resolve(batch)
        # take_for passes the controller's batch objective as the slack.
        ctl = impl.SloController(0.3, mode="fixed", max_batch_size=16, fixed_batch_size=8)
        t2 = time.monotonic()
        q.put(4, t2 + 0.4)
        batch = await q.take_for(ctl, 30.0)
        assert items(batch) == [4] and 0.09 <= time.monotonic() - t2 < 0.1 + SLACK
        resolve(batch)

    run(loop, main())


def test_batch_fills_early(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        q = impl.BatchQueue(100)
        taker = asyncio.ensure_future(q.take(4, 30.0))
        for i in range(6):
            q.put(i)
            await asyncio.sleep(0)
        batch = await asyncio.wait_for(taker, SLACK)
        assert items(batch) == [0, 1, 2, 3]
        resolve(batch)
        # Already enough waiting: no wait at all.
        q.put(6)
        q.put(7)
        batch = await asyncio.wait_for(q.take(4, 30.0), SLACK)
        assert items(batch) == [4, 5, 6, 7]
        resolve(batch)

    run(loop, main())


def test_batch_returns_at_once_when_first_entry_is_old(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(100)
        q.put(1)
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        batch = await q.take(10, 0.25)
        # Not the 250 ms wait (the margin: a loaded 2-core host stalls a loop a while).
        assert time.monotonic() - t0 < 0.15
        assert items(batch) == [1]
        resolve(batch)
        # max_wait 0: whatever is there, now.
        q.put(2)
        q.put(3)
        batch = await q.take(10, 0)
        assert items(batch) == [2, 3]
        resolve(batch)

    run(loop, main())


def test_concurrent_takers_split_a_burst(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(100)
        takers = [asyncio.ensure_future(q.take(4, 30.0)) for _ in range(3)]
        await asyncio.sleep(0)
        for i in range(8):
            q.put(i)
        done: set[asyncio.Future[Any]] = set()
        pending: set[asyncio.Future[Any]] = set(takers)
        while len(done) < 2:
            more, pending = await asyncio.wait(
                pending, timeout=SLACK, return_when=asyncio.FIRST_COMPLETED
            )
            assert more
            done |= more
        await asyncio.sleep(0.01)
        assert len(done) == 2 and len(pending) == 1  # the third taker still waits
        batches = sorted(items(t.result()) for t in done)
        assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
        for t in done:
            resolve(t.result())
        [last] = pending
        for i in range(8, 12):
            q.put(i)
        batch = await asyncio.wait_for(last, SLACK)
        assert items(batch) == [8, 9, 10, 11]
        resolve(batch)

    run(loop, main())


def test_taker_waits_again_after_another_took(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10)
        taker = asyncio.ensure_future(q.take(5, 0.03))
        await asyncio.sleep(0)
        q.put(1)
        await asyncio.sleep(0)  # the taker is now collecting entry 1
        stolen = q.take_nowait(5)
        assert items(stolen) == [1]
        resolve(stolen)
        await asyncio.sleep(0.1)
        assert not taker.done()  # found nothing: waits again, never returns []
        q.put(2)
        assert items(await asyncio.wait_for(taker, SLACK)) == [2]
        assert q.stats()["takers"] == 0

    run(loop, main())


def test_cancelled_taker_passes_its_wakeup_on(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10)
        first = asyncio.ensure_future(q.take(1, 0))
        second = asyncio.ensure_future(q.take(1, 0))
        await asyncio.sleep(0)
        assert q.stats()["takers"] == 2
        f = q.put("x")  # wakes the first taker...
        first.cancel()  # ...which is cancelled before it runs
        batch = await asyncio.wait_for(second, SLACK)
        assert items(batch) == ["x"]
        with pytest.raises(asyncio.CancelledError):
            await first
        resolve(batch)
        assert await f == "x"
        assert q.stats()["takers"] == 0

    run(loop, main())


def test_concurrent_takers_lose_and_duplicate_nothing(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    n_items = 600

    async def dispatcher(q: Any, seen: list[int], sizes: list[int]) -> None:
        rng = random.Random(id(seen))
        while True:
            try:
                batch = await q.take(8, 0.002)
            except QueueClosed:
                return
            assert 0 < len(batch) <= 8
            sizes.append(len(batch))
            for e in batch:
                assert not e.future.done()
                seen.append(e.item)
            if rng.random() < 0.3:
                await asyncio.sleep(0)  # the "model" takes a moment
            resolve(batch)

    async def main() -> None:
        q = impl.BatchQueue(64, name="burst")
        seen: list[int] = []
        sizes: list[int] = []
        workers = [asyncio.ensure_future(dispatcher(q, seen, sizes)) for _ in range(4)]
        rng = random.Random(1)
        futures: dict[int, asyncio.Future[Any]] = {}
        cancelled: set[int] = set()
        i = 0
        while i < n_items:
            try:
                futures[i] = q.put(i, priority=rng.choice([0, 0, 0, 1, -1]))
            except QueueFull:
                await asyncio.sleep(0.001)
                continue
            if rng.random() < 0.05:
                futures[i].cancel()
                cancelled.add(i)
            i += 1
            if rng.random() < 0.2:
                await asyncio.sleep(0 if rng.random() < 0.8 else 0.001)
        results = await asyncio.wait_for(
            asyncio.gather(*futures.values(), return_exceptions=True), 10 * SLACK
        )
        q.close()
        await asyncio.wait_for(asyncio.gather(*workers), SLACK)
        for k, r in zip(futures, results, strict=True):
            if k in cancelled:
                assert isinstance(r, asyncio.CancelledError)
            else:
                assert r == k
        assert sorted(seen) == sorted(set(seen))  # no duplicate
        assert set(seen) | cancelled == set(range(n_items))  # no loss
        assert sum(sizes) == len(seen) == q.taken
        assert q.taken + q.cancelled == n_items

    run(loop, main())


# -- dead entries ---------------------------------------------------------------------


def test_past_deadline_fails_at_once(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    q = impl.BatchQueue(1, name="m", loop=loop)
    q.put("fills the queue")
    f = q.put("late", time.monotonic() - 1.0)  # not rejected: it is not queued
    assert f.done() and isinstance(f.exception(), DeadlineExceeded)
    assert (len(q), q.expired, q.rejected) == (1, 1, 0)
    q.take_nowait(1)[0].future.cancel()


def test_deadline_expires_in_queue(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10)
        now = time.monotonic()
        f1 = q.put(1, now + 0.02)
        f2 = q.put(2, now + 30.0, priority=-1)
        f3 = q.put(3)
        await asyncio.sleep(0.05)
        batch = q.take_nowait(10)
        assert items(batch) == [3, 2]
        assert isinstance(f1.exception(), DeadlineExceeded)
        assert (q.expired, q.taken, len(q)) == (1, 2, 0)
        resolve(batch)
        assert [await f2, await f3] == [2, 3]

    run(loop, main())


def test_deadline_expires_while_batch_collects(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10)
        taker = asyncio.ensure_future(q.take(10, 0.1))
        await asyncio.sleep(0)
        f1 = q.put(1, time.monotonic() + 0.03)
        f2 = q.put(2)
        batch = await asyncio.wait_for(taker, SLACK)
        assert items(batch) == [2]
        assert isinstance(f1.exception(), DeadlineExceeded)
        assert q.expired == 1
        resolve(batch)
        assert await f2 == 2

    run(loop, main())


def test_cancelled_and_done_entries_are_skipped(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10)
        futs = [q.put(i) for i in range(4)]
        futs[1].cancel()
        futs[2].set_result("answered elsewhere")
        batch = q.take_nowait(10)
        assert items(batch) == [0, 3]
        assert (q.cancelled, q.taken, len(q)) == (2, 2, 0)
        resolve(batch)
        # A taker never returns a batch of only dead entries.
        taker = asyncio.ensure_future(q.take(5, 0.01))
        q.put("gone").cancel()
        await asyncio.sleep(0.05)
        assert not taker.done()
        q.put("live")
        batch = await asyncio.wait_for(taker, SLACK)
        assert items(batch) == ["live"]
        assert q.cancelled == 3
        resolve(batch)

    run(loop, main())


# -- close ----------------------------------------------------------------------------


def test_close_fails_pending_and_wakes_takers(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10, name="m")
        takers = [asyncio.ensure_future(q.take(10, 30.0)) for _ in range(2)]
        await asyncio.sleep(0)
        futs = [q.put(i) for i in range(3)]
        await asyncio.sleep(0)  # one taker collects, the other is idle
        q.close()
        assert q.closed and len(q) == 0
        for f in futs:
            exc = f.exception()
            assert isinstance(exc, QueueClosed) and str(exc) == "queue m closed"
        for t in takers:
            with pytest.raises(QueueClosed):
                await asyncio.wait_for(t, SLACK)
        with pytest.raises(QueueClosed):
            q.put(4)
        with pytest.raises(QueueClosed):
            q.take_nowait(1)
        with pytest.raises(QueueClosed):
            await q.take(1, 0)
        q.close()  # idempotent
        q.close(RuntimeError("ignored"))
        assert q.stats()["takers"] == 0

    run(loop, main())


def test_close_with_exception(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        q = impl.BatchQueue(10)
        f = q.put(1)
        done = q.put(2)
        done.cancel()
        taker = asyncio.ensure_future(q.take(1, 0))
        await asyncio.sleep(0)  # took entry 1...
        resolve(await taker)
        g = q.put(3)
        taker = asyncio.ensure_future(q.take(5, 30.0))
        await asyncio.sleep(0)
        boom = RuntimeError("replica crashed")
        q.close(boom)
        assert g.exception() is boom
        with pytest.raises(QueueClosed) as info:
            await taker
        assert info.value.__cause__ is boom
        assert await f == 1

    run(loop, main())


# -- the SLO controller, through a cimport ------------------------------------------


def test_take_for_reads_controller_via_cimport(
    impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    """The Cython take_for reads ``batch_size`` from the C struct of the cimported
    SloController (declared in ext/slo_controller.pxd); batches follow it."""

    async def main() -> None:
        q = impl.BatchQueue(100)
        fixed = impl.SloController(1.0, mode="fixed", max_batch_size=16, fixed_batch_size=3)
        for i in range(7):
            q.put(i)
        b1 = await asyncio.wait_for(q.take_for(fixed, 30.0), SLACK)
        b2 = await asyncio.wait_for(q.take_for(fixed, 30.0), SLACK)
        b3 = await q.take_for(fixed, 0)
        assert [items(b) for b in (b1, b2, b3)] == [[0, 1, 2], [3, 4, 5], [6]]
        # A controller that learns: its current batch size is what counts.
        aimd = impl.SloController(
            1.0, mode="aimd", max_batch_size=8, initial_batch_size=2, additive_increase=2
        )
        for i in range(6):
            q.put(i)
        b4 = await q.take_for(aimd, 30.0)
        aimd.observe(2, 0.01)  # far under the SLO: grows to 4
        assert aimd.batch_size == 4
        b5 = await q.take_for(aimd, 30.0)
        assert (len(b4), len(b5)) == (2, 4)
        if impl.name == "cython":
            # Typed through the cimport: a look-alike is refused.
            with pytest.raises(TypeError):
                await q.take_for(SimpleNamespace(batch_size=2), 0)
        for b in (b1, b2, b3, b4, b5):
            resolve(b)
        assert len(q) == 0

    run(loop, main())


def test_stats_and_repr(impl: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    q = impl.BatchQueue(2, name="m", loop=loop)
    q.put(1)
    left = q.put(2)
    with pytest.raises(QueueFull):
        q.put(3)
    late = q.put(4, time.monotonic() - 1)
    late.exception()
    resolve(q.take_nowait(1))
    assert q.stats() == {
        "name": "m",
        "capacity": 2,
        "len": 1,
        "closed": False,
        "taken": 1,
        "expired": 1,
        "rejected": 1,
        "cancelled": 0,
        "takers": 0,
    }
    assert "m" in repr(q) and "1/2" in repr(q)
    assert q.name == "m" and impl.BatchQueue(1).name == ""
    q.close()
    assert isinstance(left.exception(), QueueClosed)
    assert q.stats()["closed"] is True


# -- random operations against a model ----------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from([-1, 0, 0, 1, 2]),
            st.sampled_from(["inf", "past", "soon"]),
        ),
        st.tuples(st.just("take"), st.integers(1, 6)),
        st.tuples(st.just("cancel"), st.integers(0, 63)),
        st.tuples(st.just("wait")),
    ),
    max_size=40,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(capacity=st.integers(1, 8), ops=OPS)
def test_random_ops_against_model(
    impl: SimpleNamespace,
    loop: asyncio.AbstractEventLoop,
    capacity: int,
    ops: list[tuple[Any, ...]],
) -> None:
    """A synchronous dispatcher against a model of the spec.

    Deadlines are none, already past, or 1 ms ("soon"; whether one has passed when
    the queue looks is read back from its future).  Checks: order, counters,
    capacity, and at the end every future resolved exactly once, no item lost or
    given twice.
    """
    q = impl.BatchQueue(capacity, loop=loop)
    queued: list[tuple[int, int, str, asyncio.Future[Any]]] = []  # (id, prio, kind, fut)
    futures: dict[int, asyncio.Future[Any]] = {}
    resolutions: dict[int, int] = {}
    cancelled: set[int] = set()
    given_out: list[int] = []
    counts = {"taken": 0, "expired": 0, "rejected": 0, "cancelled": 0}

    def expired(fut: asyncio.Future[Any]) -> bool:
        return fut.done() and not fut.cancelled() and isinstance(fut.exception(), DeadlineExceeded)

    def dead(e: tuple[int, int, str, asyncio.Future[Any]]) -> str | None:
        ident, _, kind, fut = e
        if ident in cancelled:
            return "cancelled"
        if kind == "soon" and expired(fut):
            return "expired"
        return None

    def in_order() -> list[tuple[int, int, str, asyncio.Future[Any]]]:
        return sorted(queued, key=lambda e: -e[1])  # stable: FIFO within a level

    def drop(e: tuple[int, int, str, asyncio.Future[Any]], why: str) -> None:
        queued.remove(e)
        counts[why] += 1

    for n, op in enumerate(ops):
        if op[0] == "put":
            _, prio, kind = op
            deadline = {
                "inf": math.inf,
                "past": time.monotonic() - 1.0,
                "soon": time.monotonic() + 0.001,
            }[kind]
            try:
                fut = q.put(n, deadline, prio)
            except QueueFull:
                fut = None
            if kind != "past" and prio <= 0 and len(queued) >= capacity:
                # The queue dropped dead heads first; read back which expired.
                for level in {e[1] for e in queued}:
                    for e in [e for e in queued if e[1] == level]:
                        why = dead(e)
                        if why is None:
                            break
                        drop(e, why)
            if kind != "past" and prio <= 0 and len(queued) >= capacity:
                assert fut is None
                counts["rejected"] += 1
                continue
            assert fut is not None
            futures[n] = fut
            fut.add_done_callback(
                lambda f, n=n: resolutions.__setitem__(n, resolutions.get(n, 0) + 1)
            )
            if kind == "past":
                assert expired(fut)
                counts["expired"] += 1
            else:
                queued.append((n, prio, kind, fut))
        elif op[0] == "take":
            max_n = op[1]
            batch = q.take_nowait(max_n)
            expected: list[int] = []
            for e in in_order():
                if len(expected) == max_n:
                    break
                why = dead(e)
                if why is not None:
                    drop(e, why)
                else:
                    queued.remove(e)
                    expected.append(e[0])
            assert items(batch) == expected
            counts["taken"] += len(batch)
            for e in batch:
                assert not e.future.done()
                given_out.append(e.item)
            resolve(batch)
        elif op[0] == "cancel":
            live = [e for e in queued if e[0] not in cancelled and not e[3].done()]
            if live:
                e = live[op[1] % len(live)]
                e[3].cancel()
                cancelled.add(e[0])
        else:
            time.sleep(0.0015)
        # Hand-backs (a positive priority) may go past the capacity; new work not.
        assert len(q) == len(queued)
        assert sum(1 for e in queued if e[1] <= 0) <= capacity
        assert {k: getattr(q, k) for k in counts} == counts
        for ident, _, _, fut in queued:
            assert fut.done() == (ident in cancelled)  # nothing else touches a queued one

    q.close()
    for ident, _, _, fut in queued:
        if ident not in cancelled:
            assert isinstance(fut.exception(), QueueClosed)
    run(loop, asyncio.sleep(0))  # run the done callbacks
    assert all(f.done() for f in futures.values())
    assert resolutions == {n: 1 for n in futures}
    assert len(given_out) == len(set(given_out))
    for n, fut in futures.items():
        if n in given_out:
            assert fut.result() == n
    retrieve(futures.values())
