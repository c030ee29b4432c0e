"""Redis-only behaviour of the state store: writes from separate connections (as
from separate frontends) to one database.  The shared contract is in
test_state_store.py and its siblings."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, fresh_prefix, shared_redis
from store_backends import app, model, pipeline

from clipper_core.errors import Conflict, StoreUnavailable
from clipper_core.store.redis import RedisStateStore
from clipper_core.store.redis_feed import RedisChangeFeed


@pytest.fixture
def pair() -> Iterator[tuple[RedisStateStore, RedisStateStore]]:
    """Two stores, each with its own connections, on one key prefix."""
    url, prefix = shared_redis().url, fresh_prefix()
    a, b = RedisStateStore(url, prefix=prefix), RedisStateStore(url, prefix=prefix)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _race(*writes: Callable[[], None]) -> list[str]:
    """Start ``writes`` at once, one thread each; each one's "added" or "conflict"."""
    start = threading.Barrier(len(writes))
    outcomes = ["unfinished"] * len(writes)

    def attempt(i: int) -> None:
        start.wait()
        try:
            writes[i]()
            outcomes[i] = "added"
        except Conflict:
            outcomes[i] = "conflict"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(writes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def test_an_app_and_a_pipeline_racing_for_one_name_leave_one_winner(
    pair: tuple[RedisStateStore, RedisStateStore],
) -> None:
    a, b = pair
    for name in (f"n{i}" for i in range(20)):
        before = a.revision()
        outcomes = _race(
            lambda name=name: a.add_app(app(name)),
            lambda name=name: b.add_pipeline(pipeline(name)),
        )
        assert sorted(outcomes) == ["added", "conflict"]
        assert (a.get_app(name) is None) != (b.get_pipeline(name) is None)
        assert a.revision() == before + 1


def test_updates_through_one_connection_are_read_and_logged_through_another(
    pair: tuple[RedisStateStore, RedisStateStore],
) -> None:
    a, b = pair
    a.add_model(model(controller="quantile"))
    a.add_pipeline(pipeline())
    rev = b.revision()
    b.update_model_spec("m", "1", controller="aimd", batch_size=8)
    b.update_pipeline(pipeline(slo_micros=5_000))
    got = a.get_model("m", "1")
    assert got is not None and (got.controller, got.batch_size) == ("aimd", 8)
    assert a.get_pipeline("p") == pipeline(slo_micros=5_000)
    assert [(e.kind, e.name) for e in a.changes_since(rev)] == [("model", "m"), ("pipeline", "p")]


def test_links_written_before_their_order_was_kept_come_first_by_name() -> None:
    # A store written by an older clipper_core: links in the set, no positions.
    store = RedisStateStore(shared_redis().url, prefix=fresh_prefix())
    try:
        store.add_app(app("a"))
        for name in ("zed", "alpha", "new"):
            store.add_model(model(name))
        store.client.sadd(store.keys.links("a"), "zed", "alpha")
        assert store.linked_models("a") == ["alpha", "zed"]  # as a restart restored them
        store.link_model("a", "new")
        assert store.linked_models("a") == ["alpha", "zed", "new"]
    finally:
        store.close()


def test_records_stored_before_the_bounds_are_read_within_them() -> None:
    # A version written before batch_size, batch_wait_micros and queue_capacity had
    # upper bounds made every read of the models raise BadInput, so sync_all, and
    # the server's start, failed for all of them.
    import json

    store = RedisStateStore(shared_redis().url, prefix=fresh_prefix())
    try:
        store.add_model(model("ok"))
        store.add_model(model("old"))
        raw = json.loads(store.client.hget(store.keys.models, "old:1"))
        raw.update(batch_size=2**31, batch_wait_micros=10**12, queue_capacity=10**12)
        store.client.hset(store.keys.models, "old:1", json.dumps(raw))
        got = {m.name: m for m in store.list_models()}
        assert (got["old"].batch_size, got["old"].batch_wait_micros) == (100_000, 3_600_000_000)
        assert got["old"].queue_capacity == 100_000_000
        # An in-place update reads it within the bounds too (it was refused).
        assert store.update_model_spec("old", "1", num_replicas=2).batch_size == 100_000
        raw.update(batch_size=64, queue_capacity=32)
        store.client.hset(store.keys.models, "old:1", json.dumps(raw))
        assert store.get_model("old", "1").batch_size == 32  # type: ignore[union-attr]
        assert [m.name for m in store.list_models("ok")] == ["ok"]
    finally:
        store.close()


def test_apps_and_pipelines_stored_past_the_slo_bound_are_read_within_it() -> None:
    # Redis kept any objective (JSON): one past today's bound (a day) must still
    # be read, or the server would not start.
    import json

    store = RedisStateStore(shared_redis().url, prefix=fresh_prefix())
    try:
        store.add_app(app("a"))
        store.add_pipeline(pipeline("p"))
        for key, name in ((store.keys.apps, "a"), (store.keys.pipelines, "p")):
            raw = json.loads(store.client.hget(key, name))
            raw["slo_micros"] = 2**64
            store.client.hset(key, name, json.dumps(raw))
        assert [a.slo_micros for a in store.list_apps()] == [86_400_000_000]
        got = store.get_pipeline("p")
        assert got is not None and got.slo_micros == 86_400_000_000
        # Updates read it within the bound too: every one was refused (400), the
        # one that would bring the objective back in range included.
        assert store.update_app("a", default_output="x").slo_micros == 86_400_000_000
        assert store.update_app("a", slo_micros=200_000).slo_micros == 200_000
    finally:
        store.close()


def test_a_redis_that_is_down_is_store_unavailable(tmp_path: Path) -> None:
    # Every management call answered a 500 with redis-py's ConnectionError.
    server = RedisServer(tmp_path / "redis")
    store = RedisStateStore(server.url, prefix=fresh_prefix())
    try:
        store.add_app(app("kept"))
        server.pause()
        for call in (
            store.list_apps,
            lambda: store.add_app(app("new")),
            lambda: store.get_model("m", "1"),
            store.revision,
        ):
            with pytest.raises(
                StoreUnavailable, match="Redis state store cannot be reached"
            ) as info:
                call()
            assert info.value.http_status == 503 and info.value.kind == "store_unavailable"
        server.resume()
        assert [a.name for a in store.list_apps()] == ["kept"]  # nothing was written
    finally:
        store.close()
        server.stop()


def test_a_redis_that_stops_answering_ends_the_subscription_with_an_error() -> None:
    """A Redis host that vanishes without a word (no reset, no FIN) must end the
    change feed's wait with an error, which makes the follower resubscribe; a
    wait without a bound left the frontend following nothing, silently."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        port = silent.getsockname()[1]
        feed = RedisChangeFeed(
            f"redis://127.0.0.1:{port}", "rev", "changes", 10, socket_timeout=0.5
        )

        async def first_event() -> None:
            async for _ in feed.subscribe(0):
                break

        with pytest.raises(redis.TimeoutError):
            asyncio.run(asyncio.wait_for(first_event(), 20))
    finally:
        silent.close()


def test_a_lost_revision_key_does_not_half_apply_writes(
    pair: tuple[RedisStateStore, RedisStateStore],
) -> None:
    # The revision key evicted (an allkeys-* maxmemory policy) or deleted by hand:
    # the next revision follows the change stream, not a count restarted at 1,
    # whose XADD failed inside EXEC after the writes queued before it applied.
    store, other = pair
    store.add_app(app("a"))
    store.add_app(app("b"))
    before = store.revision()
    store.client.delete(store.keys.revision)
    store.add_app(app("c"))
    assert store.revision() == before + 1
    assert [e.name for e in store.changes_since(before)] == ["c"]
    other.add_app(app("d"))
    assert [a.name for a in other.list_apps()] == ["a", "b", "c", "d"]
