"""The selection runtime's bookkeeping, in process: per-user states with a global
default, and the writer that stores them (group commits, ordered deletes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clipper_core.dataplane import Application
from clipper_core.errors import BadInput, NotFound
from clipper_core.selection.runtime import (
    AppSelector,
    SelectionService,
    StatePersister,
    kv_namespace,
)
from clipper_core.store.records import AppRecord
from clipper_core.store.sqlite import SqliteStateStore as StateStore


def test_a_user_without_state_reads_the_global_one() -> None:
    selector = AppSelector("app", "exp4", {"eta": 1.0})
    policy = selector.policy_for(["a", "b"])
    assert selector.state_for(5, policy) == policy.initial_state()
    selector.states[0] = {"weights": {"a": 1.0, "b": 0.5}}
    assert selector.state_for(5, policy) == {"weights": {"a": 1.0, "b": 0.5}}
    selector.states[5] = {"weights": {"a": 0.1, "b": 1.0}}
    assert selector.state_for(5, policy)["weights"]["a"] == 0.1
    assert selector.describe(["a", "b"], 6)["own_state"] is False
    assert selector.describe(["a", "b"], 5)["summary"]["weight_share"]["b"] == pytest.approx(
        1 / 1.1
    )
    # The bound policy follows the links.
    assert selector.policy_for(["a", "b", "c"]).models == ("a", "b", "c")
    assert selector.routes_queries
    assert not AppSelector("app", "single", None).routes_queries
    with pytest.raises(BadInput):
        AppSelector("app", "exp4", {"eta": -1})


def test_persister_commits_in_groups_and_orders_deletes(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    store = StateStore(tmp_path / "state.sqlite3")

    async def scenario() -> int:
        persister = StatePersister(store)
        writes = [persister.put("ns", str(uid), {"n": uid}) for uid in range(50)]
        writes.append(persister.put("ns", "3", {"n": "latest"}))  # the latest wins
        await asyncio.gather(*writes)
        assert store.list_kv("ns")["3"] == {"n": "latest"}
        assert len(store.list_kv("ns")) == 50
        # A drop discards pending writes to its namespace; writes after it land.
        persister.put("ns", "stale", 1)
        persister.drop("ns")
        await persister.put("ns", "fresh", 2)
        await persister.flush()
        return persister.commits

    commits = loop.run_until_complete(scenario())
    assert commits <= 4  # 52 writes, a handful of transactions
    assert store.list_kv("ns") == {"fresh": 2}
    store.close()
    with StateStore(tmp_path / "state.sqlite3") as reopened:
        assert reopened.list_kv("ns") == {"fresh": 2}


def test_service_restores_states_of_the_current_policy_only(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    store = StateStore(tmp_path / "state.sqlite3")
    store.add_app(AppRecord("app", "doubles", "-1", 100_000, policy="ucb1"))
    ns = kv_namespace("app")
    store.put_kv_many(
        [
            (ns, "0", {"policy": "ucb1", "state": {"count": {"a": 1.0}}}),
            (ns, "7", {"policy": "ucb1", "state": {"count": {"a": 2.0}}}),
            (ns, "8", {"policy": "exp3", "state": {"weights": {}}}),  # another policy's
            (ns, "junk", {"policy": "ucb1", "state": {}}),
        ]
    )

    async def scenario() -> None:
        service = SelectionService()
        service.open(store)
        app = Application("app", "doubles", -1, 0.1, ["a"], policy="ucb1")
        selector = service.attach(app, {})
        assert app.selector is selector
        assert selector.states == {0: {"count": {"a": 1.0}}, 7: {"count": {"a": 2.0}}}
        # Switching the policy starts over, in memory and in the store.
        service.set_policy(app, "exp3", {"eta": 0.5})
        assert app.policy == "exp3" and app.selector is not selector
        assert app.selector.states == {}
        service.forget("app")
        with pytest.raises(NotFound):
            service.get("app")
        await service.close()

    loop.run_until_complete(scenario())
    assert store.list_kv(ns) == {}
    store.close()


class _TimedStore:
    """A KvStore that records when (loop time) each transaction ran."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: list[float] = []
        self.items: list[list[tuple[str, str, object]]] = []

    def put_kv_many(self, items: object, *, delete_namespaces: object = ()) -> None:
        self.times.append(self.loop.time())
        self.items.append(list(items))  # type: ignore[call-overload]

    def list_kv(self, namespace: str) -> dict[str, object]:
        return {}


def test_persister_spaces_its_commits(loop: asyncio.AbstractEventLoop) -> None:
    store = _TimedStore(loop)
    interval = 0.02

    async def scenario() -> None:
        persister = StatePersister(store, min_interval=interval)  # type: ignore[arg-type]
        pending = []
        for i in range(30):  # a stream of feedback, faster than the interval
            pending.append(persister.put("ns", "0", {"n": i}))
            await asyncio.sleep(interval / 8)
        await asyncio.gather(*pending)
        await persister.flush()

    loop.run_until_complete(scenario())
    gaps = [b - a for a, b in zip(store.times, store.times[1:], strict=False)]
    assert all(g >= interval * 0.999 for g in gaps), gaps
    assert store.items[-1] == [("ns", "0", {"n": 29})]  # the latest state wins


def test_feedback_does_not_wait_for_a_model_without_a_replica(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from clipper_core.clipper_api import input_key
    from clipper_core.dataplane import DataPlane, ModelVersion
    from clipper_core.selection import selector as selector_module

    # An hour to answer feedback: only not waiting for the dead model finishes.
    monkeypatch.setattr(selector_module, "FEEDBACK_TIMEOUT", 3600.0)

    async def scenario() -> dict[str, object]:
        dp = DataPlane(cache_bytes=1 << 20)
        for name in ("live", "dead"):
            dp.add_model_version(
                ModelVersion(
                    name, "1", "doubles", queue_capacity=10, max_batch_size=8, cache=dp.cache
                )
            )
            dp.set_current_version(name, "1")
        x = np.array([1.0])
        key = input_key(x, "doubles")
        assert dp.cache is not None
        dp.cache.put("live", "1", key, 1.0)  # answered from the cache, no replica needed
        app = Application("vote", "doubles", -1, 5.0, linked_models=["live", "dead"])
        app.selector = AppSelector("vote", "exp4", {})
        dp.add_app(app)
        try:
            return await app.selector.update(dp, app, 0, x, key, 1.0)
        finally:
            await dp.close()

    reply = loop.run_until_complete(scenario())
    assert reply == {"success": True, "uid": 0, "state_uid": 0, "models": ["live:1"]}


def test_exp3_feedback_weighs_by_the_chance_the_model_was_drawn_with(
    loop: asyncio.AbstractEventLoop,
) -> None:
    import math
    import time

    import numpy as np

    from clipper_core.clipper_api import input_key
    from clipper_core.dataplane import DataPlane, ModelVersion

    async def scenario() -> tuple[float, float]:
        dp = DataPlane(cache_bytes=1 << 20)
        xs = [np.array([float(i)]) for i in range(12)]
        keys = [input_key(x, "doubles") for x in xs]
        assert dp.cache is not None
        for name, answer in (("a", 0), ("b", 1)):
            dp.add_model_version(
                ModelVersion(
                    name, "1", "doubles", queue_capacity=20, max_batch_size=8, cache=dp.cache
                )
            )
            dp.set_current_version(name, "1")
            for key in keys:  # answered from the cache, no replica needed
                dp.cache.put(name, "1", key, answer)
        app = Application("bandit", "doubles", -1, 5.0, linked_models=["a", "b"])
        selector = AppSelector("bandit", "exp3", {"eta": 0.5, "min_weight": 0.001, "seed": 0})
        app.selector = selector
        dp.add_app(app)
        try:
            # Every query is drawn before any label: a and b at p = 0.5 each.
            outs = await dp.predict("bandit", xs, keys, deadline=time.monotonic() + 30)
            first, second = [i for i, o in enumerate(outs) if o.model == "a:1"][:2]
            await selector.update(dp, app, 0, xs[first], keys[first], 1)  # a wrong
            w1 = selector.states[0]["weights"]["a"]
            await selector.update(dp, app, 0, xs[second], keys[second], 1)
            return w1, selector.states[0]["weights"]["a"]
        finally:
            await dp.close()

    w1, w2 = loop.run_until_complete(scenario())
    assert w1 == pytest.approx(math.exp(-0.5 / 0.5))
    # Not exp(-0.5 / 0.269), a's chance after the first label.
    assert w2 / w1 == pytest.approx(math.exp(-0.5 / 0.5))


def test_per_user_states_are_bounded_least_recently_used_first(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """A client picks its uids: past max_users, the user least recently read or
    taught is forgotten, in memory and in the store, and reads the app-wide
    state again, as a new user does; the app-wide state is never pushed out."""
    store = StateStore(tmp_path / "state.sqlite3")
    ns = kv_namespace("app")

    async def scenario() -> AppSelector:
        persister = StatePersister(store)
        selector = AppSelector("app", "exp4", {"eta": 1.0}, persister=persister, max_users=2)
        policy = selector.policy_for(["a", "b"])
        learned = {uid: {"weights": {"a": float(uid), "b": 1.0}} for uid in range(4)}
        for uid in (0, 1, 2):
            selector.states[uid] = learned[uid]
            await persister.put(ns, str(uid), {"policy": "exp4", "state": learned[uid]})
        assert selector.state_for(1, policy) == learned[1]  # 1 is now the most recent
        selector.states[3] = learned[3]  # pushes out 2, not 1, and never 0
        await persister.put(ns, "3", {"policy": "exp4", "state": learned[3]})
        await persister.flush()
        assert sorted(selector.states) == [0, 1, 3]
        assert selector.state_for(2, policy) == learned[0]  # the app-wide state again
        assert selector.states.evicted == 1
        return selector

    loop.run_until_complete(scenario())
    assert sorted(store.list_kv(ns)) == ["0", "1", "3"]
    store.close()
