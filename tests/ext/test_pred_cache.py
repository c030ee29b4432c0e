"""PredictionCache: the Cython extension and its pure-Python twin, side by side."""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipper_core.structures import load

M, V = "resnet", "1"
MISSING = object()


def overhead(impl: SimpleNamespace) -> int:
    return int(importlib.import_module(impl.PredictionCache.__module__).ENTRY_OVERHEAD)


def collide(model: str, version: str, key: bytes) -> int:
    return 7


# -- lookups and keys ------------------------------------------------------------------


def test_hit_and_miss(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(10_000)
    assert c.get(M, V, b"x") is None
    assert c.get(M, V, b"x", MISSING) is MISSING
    c.put(M, V, b"x", "cat")
    assert c.get(M, V, b"x") == "cat"
    assert c.get(M, V, b"y", MISSING) is MISSING
    assert (c.hits, c.misses) == (1, 3)
    assert len(c) == 1
    assert c.nbytes == 1 + 3 + overhead(impl)


def test_key_parts_are_distinct(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(10_000)
    c.put("a", "1", b"x", "a1")
    c.put("a", "2", b"x", "a2")
    c.put("b", "1", b"x", "b1")
    c.put("a", "1", b"y", "a1y")
    assert [c.get("a", "1", b"x"), c.get("a", "2", b"x"), c.get("b", "1", b"x")] == [
        "a1",
        "a2",
        "b1",
    ]
    assert c.get("a", "1", b"y") == "a1y"
    # Concatenations that coincide are still different keys.
    c.put("ab", "", b"x", "ab")
    assert c.get("a", "b", b"x") is None


def test_forced_collision_never_returns_another_answer(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(1 << 20, hash_fn=collide)
    inputs = [bytes([i]) * (i % 5 + 1) for i in range(50)]
    for i, x in enumerate(inputs):
        c.put(M, V, x, i)
    assert [c.get(M, V, x) for x in inputs] == list(range(50))
    assert c.get(M, V, b"absent", MISSING) is MISSING
    # Same bytes under another model or version, same (forced) hash: distinct.
    c.put("other", V, inputs[0], "other-model")
    c.put(M, "2", inputs[0], "other-version")
    assert c.get(M, V, inputs[0]) == 0
    assert c.get("other", V, inputs[0]) == "other-model"
    assert c.get(M, "2", inputs[0]) == "other-version"
    assert c.get("other", "2", inputs[0], MISSING) is MISSING


def test_forced_collision_pending_entries(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(1 << 20, hash_fn=collide)
    fa, own_a = c.reserve(M, V, b"a", loop=loop)
    fb, own_b = c.reserve(M, V, b"b", loop=loop)
    assert own_a and own_b  # colliding keys do not coalesce
    c.put(M, V, b"b", "B")
    assert fb.result() == "B" and not fa.done()
    c.fail(M, V, b"a", RuntimeError("a failed"))
    assert isinstance(fa.exception(), RuntimeError)
    assert c.get(M, V, b"b") == "B" and c.get(M, V, b"a") is None


def test_argument_types(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(1000)
    bad = [(1, V, b"x"), (M, None, b"x"), (M, V, "x"), (M, V, bytearray(b"x")), (M, V, None)]
    for args in bad:
        with pytest.raises(TypeError):
            c.get(*args)
        with pytest.raises(TypeError):
            c.put(*args, "value")
        with pytest.raises(TypeError):
            c.reserve(*args, loop=loop)
        with pytest.raises(TypeError):
            c.fail(*args, RuntimeError())
    with pytest.raises(TypeError):
        c.invalidate(M, None)
    with pytest.raises(TypeError):
        c.fail(M, V, b"x", "not an exception")
    with pytest.raises(ValueError):
        impl.PredictionCache(-1)
    with pytest.raises(TypeError):
        impl.PredictionCache(1.5)
    with pytest.raises(OverflowError):  # sizes are C Py_ssize_t in the extension
        impl.PredictionCache(2**70)
    with pytest.raises(TypeError):
        c.put(M, V, b"x", "v", nbytes=1.5)
    with pytest.raises(OverflowError):
        c.put(M, V, b"x", "v", nbytes=2**70)
    with pytest.raises(ValueError):
        c.put(M, V, b"x", "v", nbytes=-1)
    assert (c.pending, len(c), c.hits, c.misses) == (0, 0, 0, 0)


def test_nbytes_estimate(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(1 << 20)
    c.put(M, V, b"abc", b"0123456789")
    assert c.nbytes == 3 + 10 + overhead(impl)
    c.put(M, V, b"abc", "héllo")  # replaces: charged by len() of the str
    assert c.nbytes == 3 + 5 + overhead(impl)
    value = [1.0, 2.0, 3.0]
    c.put(M, V, b"d", value)
    assert c.nbytes == 3 + 5 + overhead(impl) + 1 + sys.getsizeof(value) + overhead(impl)
    c.put(M, V, b"e", value, nbytes=7)
    assert c.nbytes == 3 + 5 + 1 + sys.getsizeof(value) + 2 * overhead(impl) + 7
    assert len(c) == 3


def test_put_replaces_value_and_charge(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(1000)
    c.put(M, V, b"x", "old", nbytes=100)
    c.put(M, V, b"x", "new", nbytes=30)
    assert (c.get(M, V, b"x"), len(c), c.nbytes, c.evictions) == ("new", 1, 30, 0)
    # A replacement too big for the budget drops the old value too.
    c.put(M, V, b"x", "huge", nbytes=1001)
    assert (c.get(M, V, b"x"), len(c), c.nbytes) == (None, 0, 0)


def test_zero_budget_stores_nothing(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(0)
    c.put(M, V, b"x", "v", nbytes=0)  # free entries fit any budget
    c.put(M, V, b"y", "v")
    assert (len(c), c.nbytes, c.get(M, V, b"x"), c.get(M, V, b"y")) == (1, 0, "v", None)


# -- CLOCK -----------------------------------------------------------------------------


def test_clock_second_chance(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(300)
    for k in (b"a", b"b", b"c"):
        c.put(M, V, k, k.decode(), nbytes=100)
    assert c.get(M, V, b"a") == "a"  # a is referenced: survives the next sweep
    c.put(M, V, b"d", "d", nbytes=100)
    assert [c.get(M, V, k, None) for k in (b"a", b"b", b"c", b"d")] == ["a", None, "c", "d"]
    assert c.evictions == 1
    # A second chance is one turn of the hand: not read again, a goes in its turn.
    c2 = impl.PredictionCache(300)
    for k in (b"a", b"b", b"c"):
        c2.put(M, V, k, k.decode(), nbytes=100)
    c2.get(M, V, b"a")
    c2.put(M, V, b"d", "d", nbytes=100)  # clears a, evicts b
    c2.put(M, V, b"e", "e", nbytes=100)  # evicts c (unreferenced), a is next
    c2.put(M, V, b"f", "f", nbytes=100)  # a lost its bit in the first sweep: evicted
    assert [k for k in (b"a", b"b", b"c", b"d", b"e", b"f") if c2.get(M, V, k) is not None] == [
        b"d",
        b"e",
        b"f",
    ]
    assert c2.evictions == 3


def test_clock_all_referenced_degrades_to_fifo(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(300)
    for k in (b"a", b"b", b"c"):
        c.put(M, V, k, k.decode(), nbytes=100)
        c.get(M, V, k)
    c.put(M, V, b"d", "d", nbytes=100)  # a full turn clears every bit, then a goes
    assert c.get(M, V, b"a") is None
    assert all(c.get(M, V, k) is not None for k in (b"b", b"c", b"d"))


def test_clock_new_entries_are_swept_last(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(400)
    for k in (b"a", b"b", b"c", b"d"):
        c.put(M, V, k, k.decode(), nbytes=100)
    c.get(M, V, b"a")
    c.get(M, V, b"b")
    c.put(M, V, b"e", "e", nbytes=100)  # clears a and b, evicts c
    c.put(M, V, b"f", "f", nbytes=100)  # evicts d; e, inserted behind the hand, stays
    assert [k for k in (b"a", b"b", b"c", b"d", b"e", b"f") if c.get(M, V, k)] == [
        b"a",
        b"b",
        b"e",
        b"f",
    ]


def test_big_entry_evicts_several(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(1000)
    for i in range(10):
        c.put(M, V, bytes([i]), i, nbytes=100)
    c.put(M, V, b"big", "big", nbytes=450)
    assert (c.evictions, len(c), c.nbytes) == (5, 6, 950)
    assert [i for i in range(10) if c.get(M, V, bytes([i])) is not None] == [5, 6, 7, 8, 9]


def test_reserve_of_completed_entry_sets_reference_bit(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(200)
    c.put(M, V, b"a", "a", nbytes=100)
    c.put(M, V, b"b", "b", nbytes=100)
    fut, owner = c.reserve(M, V, b"a", loop=loop)
    assert (owner, fut.done(), fut.result()) == (False, True, "a")
    assert (c.hits, c.misses, c.coalesced, c.pending) == (0, 0, 0, 0)
    c.put(M, V, b"c", "c", nbytes=100)
    assert (c.get(M, V, b"a"), c.get(M, V, b"b")) == ("a", None)


# -- coalescing, failure, cancellation ----------------------------------------------------


def test_coalescing(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    computations = []

    async def compute(key: bytes) -> None:
        computations.append(key)
        await asyncio.sleep(0.01)
        c.put(M, V, key, key.upper())

    async def request(key: bytes) -> tuple[object, bool]:
        value = c.get(M, V, key, MISSING)
        if value is not MISSING:
            return value, False
        fut, owner = c.reserve(M, V, key)
        if owner:
            asyncio.get_running_loop().create_task(compute(key))
        return await fut, owner

    async def main() -> list[tuple[object, bool]]:
        return await asyncio.gather(*(request(b"x") for _ in range(20)))

    results = loop.run_until_complete(main())
    assert [v for v, _ in results] == [b"X"] * 20
    assert sum(owner for _, owner in results) == 1
    assert computations == [b"x"]
    assert (c.coalesced, c.misses, c.hits, c.pending, len(c)) == (19, 20, 0, 0, 1)
    assert loop.run_until_complete(request(b"x")) == (b"X", False)
    assert c.hits == 1


def test_pending_counts_as_miss_and_is_not_evicted(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(200)
    fut, owner = c.reserve(M, V, b"slow", loop=loop)
    assert owner and c.get(M, V, b"slow") is None and c.misses == 1
    for i in range(20):  # churn the ring well past the budget
        c.put(M, V, bytes([i]), i, nbytes=100)
    assert c.pending == 1 and c.evictions == 18
    joined, owner2 = c.reserve(M, V, b"slow", loop=loop)
    assert not owner2
    c.put(M, V, b"slow", "done", nbytes=100)
    assert (fut.result(), joined.result(), c.get(M, V, b"slow")) == ("done", "done", "done")
    assert c.pending == 0


def test_oversized_value_reaches_waiters_but_is_not_stored(
    impl: SimpleNamespace, loop: Any
) -> None:
    c = impl.PredictionCache(100)
    fut, _ = c.reserve(M, V, b"x", loop=loop)
    joined, _ = c.reserve(M, V, b"x", loop=loop)
    c.put(M, V, b"x", b"v" * 1000)
    assert fut.result() == joined.result() == b"v" * 1000
    assert (len(c), c.nbytes, c.pending) == (0, 0, 0)


def test_failure_fails_all_waiters_and_is_not_cached(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    boom = RuntimeError("model crashed")

    async def main() -> None:
        owner_fut, owner = c.reserve(M, V, b"x")
        assert owner
        joiners = [c.reserve(M, V, b"x")[0] for _ in range(5)]
        await asyncio.sleep(0)
        c.fail(M, V, b"x", boom)
        # The owner never awaits its own future: that must not be reported.
        for fut in joiners:
            with pytest.raises(RuntimeError) as info:
                await fut
            assert info.value is boom
        assert owner_fut.exception() is boom

    loop.run_until_complete(main())
    assert (len(c), c.pending, c.get(M, V, b"x")) == (0, 0, None)
    fut, owner = c.reserve(M, V, b"x", loop=loop)  # a new computation, not the failed one
    assert owner and not fut.done()
    c.put(M, V, b"x", "ok")
    assert fut.result() == "ok"


def test_put_and_fail_without_pending_entry(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(10_000)
    c.fail(M, V, b"x", RuntimeError("nobody waits"))  # no-op
    assert (len(c), c.pending) == (0, 0)
    c.put(M, V, b"x", "v")  # plain insert
    assert c.get(M, V, b"x") == "v"
    c.fail(M, V, b"x", RuntimeError())  # a completed entry is not a computation
    assert c.get(M, V, b"x") == "v"


def test_fail_with_stop_iteration_is_wrapped(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    fut, _ = c.reserve(M, V, b"x", loop=loop)
    joined, _ = c.reserve(M, V, b"x", loop=loop)
    stop = StopIteration()
    c.fail(M, V, b"x", stop)
    exc = joined.exception()
    assert isinstance(exc, RuntimeError) and exc.__cause__ is stop
    assert fut.done() and c.pending == 0


def test_cancelled_joiner_does_not_affect_others(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)

    async def join() -> object:
        fut, owner = c.reserve(M, V, b"x")
        assert not owner
        return await fut

    async def main() -> None:
        owner_fut, owner = c.reserve(M, V, b"x")
        assert owner
        tasks = [asyncio.get_running_loop().create_task(join()) for _ in range(3)]
        await asyncio.sleep(0)
        tasks[1].cancel()  # a request that timed out
        await asyncio.sleep(0)
        c.put(M, V, b"x", "v")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == results[2] == "v"
        assert isinstance(results[1], asyncio.CancelledError)
        assert await owner_fut == "v"

    loop.run_until_complete(main())
    assert c.get(M, V, b"x") == "v"


def test_cancelled_futures_never_raise_in_put_or_fail(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    owner_fut, _ = c.reserve(M, V, b"x", loop=loop)
    joined, _ = c.reserve(M, V, b"x", loop=loop)
    owner_fut.cancel()
    joined.cancel()
    c.put(M, V, b"x", "v")  # no InvalidStateError
    assert c.get(M, V, b"x") == "v" and c.pending == 0
    owner_fut, _ = c.reserve(M, V, b"y", loop=loop)
    joined, _ = c.reserve(M, V, b"y", loop=loop)
    owner_fut.cancel()
    c.fail(M, V, b"y", RuntimeError("y"))
    assert owner_fut.cancelled() and isinstance(joined.exception(), RuntimeError)


def test_reserve_needs_a_loop(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(10_000)
    with pytest.raises(RuntimeError):
        c.reserve(M, V, b"x")  # no running loop, none given
    assert c.pending == 0


# -- invalidation ----------------------------------------------------------------------


def test_invalidate_drops_completed_entries(impl: SimpleNamespace) -> None:
    c = impl.PredictionCache(10_000)
    for k in (b"a", b"b", b"c"):
        c.put(M, "1", k, 1, nbytes=10)
        c.put(M, "2", k, 2, nbytes=10)
        c.put("other", "1", k, 3, nbytes=10)
    assert c.invalidate(M, "1") == 3
    assert c.invalidate(M, "1") == 0
    assert (len(c), c.nbytes) == (6, 60)
    assert c.get(M, "1", b"a") is None
    assert (c.get(M, "2", b"a"), c.get("other", "1", b"a")) == (2, 3)
    for i in range(10):  # the ring is intact: CLOCK still evicts within budget
        c.put(M, "3", bytes([i]), i, nbytes=1000)
    assert c.nbytes <= c.max_bytes and c.evictions > 0


def test_invalidate_detaches_pending_computations(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    old, owner = c.reserve(M, V, b"x", loop=loop)
    old_joiner, _ = c.reserve(M, V, b"x", loop=loop)
    other, _ = c.reserve(M, "2", b"x", loop=loop)
    assert c.invalidate(M, V) == 0
    assert c.pending == 2  # detached but still in flight
    new, new_owner = c.reserve(M, V, b"x", loop=loop)
    assert new_owner  # a fresh computation: the detached one is stale
    c.put(M, V, b"x", "stale")  # the oldest computation completes first
    assert old.result() == old_joiner.result() == "stale"
    assert not new.done() and c.get(M, V, b"x") is None  # not stored
    # Reserved while a stale computation ran, the new one could have been paired
    # with it, so its answer is not stored either; the next one will be.
    c.put(M, V, b"x", "fresh")
    assert new.result() == "fresh" and c.get(M, V, b"x") is None
    c.put(M, "2", b"x", "v2")
    assert other.result() == "v2" and c.get(M, "2", b"x") == "v2"
    assert c.pending == 0
    fut, owner = c.reserve(M, V, b"x", loop=loop)
    c.put(M, V, b"x", "fresh")
    assert fut.result() == "fresh"
    assert owner and c.get(M, V, b"x") == "fresh"


def test_detached_computation_can_fail(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    fut, _ = c.reserve(M, V, b"x", loop=loop)
    c.invalidate(M, V)
    c.fail(M, V, b"x", RuntimeError("stale model crashed"))
    assert isinstance(fut.exception(), RuntimeError) and c.pending == 0
    c.fail(M, V, b"x", RuntimeError())  # nothing left: no-op


def test_clear(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(10_000)
    c.put(M, V, b"a", "a")
    c.get(M, V, b"a")
    fut, _ = c.reserve(M, V, b"p", loop=loop)
    c.clear()
    assert (len(c), c.nbytes, c.pending, c.hits) == (0, 0, 1, 1)  # counters are kept
    assert c.get(M, V, b"a") is None
    c.put(M, V, b"p", "late")
    assert fut.result() == "late" and c.get(M, V, b"p") is None
    c.put(M, V, b"b", "b")
    assert c.get(M, V, b"b") == "b" and len(c) == 1


def test_stats(impl: SimpleNamespace, loop: Any) -> None:
    c = impl.PredictionCache(250)
    c.put(M, V, b"a", "a", nbytes=100)
    c.put(M, V, b"b", "b", nbytes=100)
    c.put(M, V, b"c", "c", nbytes=100)
    c.get(M, V, b"c")
    c.get(M, V, b"a")
    c.reserve(M, V, b"p", loop=loop)
    c.reserve(M, V, b"p", loop=loop)
    assert c.stats() == {
        "hits": 1,
        "misses": 1,
        "evictions": 1,
        "coalesced": 1,
        "entries": 2,
        "pending": 1,
        "nbytes": 200,
        "max_bytes": 250,
    }
    assert "entries=2" in repr(c)


def test_dropping_the_cache_frees_values_without_gc(impl: SimpleNamespace) -> None:
    """The extension's ring borrows its pointers, so it makes no reference cycles."""
    if impl.name != "cython":
        pytest.skip("the twin's ring is made of ordinary (cyclic) references")

    class Value:
        pass

    c = impl.PredictionCache(10_000)
    values = [Value() for _ in range(10)]
    refs = [weakref.ref(v) for v in values]
    for i, v in enumerate(values):
        c.put(M, V, bytes([i]), v, nbytes=100)
    c.invalidate(M, V)
    for i, v in enumerate(values):
        c.put(M, V, bytes([i]), v, nbytes=100)
    del values, v
    gc.disable()
    try:
        del c
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


# -- properties over random operation sequences ----------------------------------------

KEYS = st.tuples(
    st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"]), st.sampled_from([b"x", b"y", b"z"])
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("reserve"), KEYS),
        st.tuples(st.just("put"), KEYS, st.one_of(st.none(), st.integers(0, 150))),
        st.tuples(st.just("fail"), KEYS),
        st.tuples(st.just("invalidate"), KEYS),
        st.tuples(st.just("cancel"), st.integers(0, 63)),
        st.tuples(st.just("clear")),
    ),
    max_size=40,
)
HASH_FNS = st.sampled_from([None, collide])
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(max_bytes=st.integers(0, 400), hash_fn=HASH_FNS, ops=OPS)
def test_random_operations_keep_invariants(
    impl: SimpleNamespace, loop: Any, max_bytes: int, hash_fn: Any, ops: list[tuple[Any, ...]]
) -> None:
    """Budget respected, pending entries never lost, every future resolved once.

    The model tracks, per key, the computations in flight, oldest first: a put/fail
    completes the oldest; only the newest can be live (joinable), and only while no
    invalidate()/clear() detached it.
    """
    c = impl.PredictionCache(max_bytes, hash_fn=hash_fn)
    groups: dict[tuple[str, str, bytes], list[dict[str, Any]]] = {}
    last_put: dict[tuple[str, str, bytes], object] = {}
    unresolved: list[asyncio.Future[object]] = []
    cancelled: list[asyncio.Future[object]] = []

    def complete(key: tuple[str, str, bytes], value: object, exc: BaseException | None) -> None:
        popped = groups[key].pop(0) if groups.get(key) else None
        if exc is None:
            c.put(*key, value)
            last_put[key] = value
        else:
            c.fail(*key, exc)
        if popped is not None:
            for fut in popped["futs"]:
                assert fut.done()
                unresolved.remove(fut)
                if fut.cancelled():
                    continue
                if exc is None:
                    assert fut.result() is value
                else:
                    assert fut.exception() is exc

    for step, op in enumerate(ops):
        kind = op[0]
        if kind == "get":
            got = c.get(*op[1], default=MISSING)
            assert got is MISSING or got is last_put.get(op[1])
        elif kind == "reserve":
            key = op[1]
            fut, owner = c.reserve(*key, loop=loop)
            live = groups.get(key) and groups[key][-1]["live"]
            if owner:
                assert not live
                groups.setdefault(key, []).append({"live": True, "futs": [fut]})
                unresolved.append(fut)
            elif fut.done():
                assert not live and fut.result() is last_put[key]
            else:
                assert live
                groups[key][-1]["futs"].append(fut)
                unresolved.append(fut)
        elif kind == "put":
            complete(op[1], ("value", step), None)
        elif kind == "fail":
            complete(op[1], None, RuntimeError(step))
        elif kind == "invalidate":
            model, version, _ = op[1]
            before = len(c)
            dropped = c.invalidate(model, version)
            assert len(c) == before - dropped
            assert all(c.get(model, version, x) is None for x in (b"x", b"y", b"z"))
            for (m, v, _), gs in groups.items():
                if (m, v) == (model, version):
                    for g in gs:
                        g["live"] = False
        elif kind == "cancel":
            if unresolved:
                fut = unresolved[op[1] % len(unresolved)]
                fut.cancel()
                cancelled.append(fut)
        else:
            c.clear()
            assert (len(c), c.nbytes) == (0, 0)
            for gs in groups.values():
                for g in gs:
                    g["live"] = False
        assert 0 <= c.nbytes <= c.max_bytes
        assert c.pending == sum(len(gs) for gs in groups.values())
        assert all(not f.done() for f in unresolved if f not in cancelled)
    for key in list(groups):
        while groups[key]:
            complete(key, "final", None)
    assert not unresolved and c.pending == 0


def observe(c: Any, loop: Any, ops: list[tuple[Any, ...]]) -> list[object]:
    """Run ``ops`` and return everything a caller can see, for comparison."""
    seen: list[object] = []
    futs: list[asyncio.Future[object]] = []
    for step, op in enumerate(ops):
        kind = op[0]
        if kind == "get":
            seen.append(c.get(*op[1]))
        elif kind == "reserve":
            fut, owner = c.reserve(*op[1], loop=loop)
            futs.append(fut)
            seen.append((owner, fut.done()))
        elif kind == "put":
            c.put(*op[1], step, op[2])
        elif kind == "fail":
            c.fail(*op[1], RuntimeError(step))
        elif kind == "invalidate":
            seen.append(c.invalidate(*op[1][:2]))
        elif kind == "cancel":
            if futs:
                futs[op[1] % len(futs)].cancel()
        else:
            c.clear()
        seen.append(c.stats())
    for fut in futs:
        if fut.done() and not fut.cancelled():
            seen.append(repr(fut.exception()) if fut.exception() else fut.result())
        else:
            seen.append(fut.done())
            fut.cancel()
    return seen


@SETTINGS
@given(max_bytes=st.integers(0, 400), hash_fn=HASH_FNS, ops=OPS)
def test_extension_and_twin_behave_identically(
    loop: Any, max_bytes: int, hash_fn: Any, ops: list[tuple[Any, ...]]
) -> None:
    ext, twin = load(True), load(False)
    assert observe(ext.PredictionCache(max_bytes, hash_fn=hash_fn), loop, ops) == observe(
        twin.PredictionCache(max_bytes, hash_fn=hash_fn), loop, ops
    )
