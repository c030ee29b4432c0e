"""Change feeds: the in-process LocalChangeFeed (replay, then live, across the
seam; writes from worker threads; overflow; close) and the SqlitePollingFeed
that a second store object on the same file uses.  Each runs on both loops."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from control_helpers import Runner
from store_backends import BACKENDS, app, model, open_store

from clipper_core.store import (
    ResyncNeeded,
    SqlitePollingFeed,
    SqliteStateStore,
    StateEvent,
    StateStore,
)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(backend, tmp_path)
    try:
        yield s
    finally:
        s.close()


async def take(events: AsyncIterator[StateEvent], n: int) -> list[StateEvent]:
    return [await anext(events) for _ in range(n)]


def test_replay_then_live(store: StateStore, run: Runner) -> None:
    store.add_app(app("a"))
    store.add_model(model("m"))

    async def main() -> list[StateEvent]:
        events = store.feed().subscribe(1)
        try:
            replayed = await take(events, 1)
            await asyncio.to_thread(store.link_model, "a", "m")  # committed in a thread
            store.set_num_replicas("m", "1", 2)  # and on the loop's thread
            return replayed + await take(events, 2)
        finally:
            await events.aclose()

    assert run(main()) == [
        StateEvent(2, "model", "m"),
        StateEvent(3, "app", "a"),
        StateEvent(4, "model", "m"),
    ]


def test_no_event_is_lost_or_repeated_across_the_seam(store: StateStore, run: Runner) -> None:
    # A writer thread commits while subscribers join at every point of its run;
    # each must see every revision after the one it asked for, once, in order.
    store.add_model(model("m"))
    writes = 300
    started = threading.Event()

    def writer() -> None:
        started.set()
        for n in range(writes):
            store.set_num_replicas("m", "1", n)
            if n % 10 == 9:
                # An in-memory store took all 300 before the loop joined a second
                # time now and then under load: a pause lets subscribers join.
                time.sleep(0.001)

    async def subscriber(since: int) -> list[int]:
        events = store.feed().subscribe(since)
        try:
            return [e.revision for e in await take(events, 1 + writes - since)]
        finally:
            await events.aclose()

    async def main() -> list[tuple[int, list[int]]]:
        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.to_thread(started.wait)
        joined = []
        while True:
            since = store.revision()
            joined.append((since, asyncio.ensure_future(subscriber(since))))
            if since >= 1 + writes:
                break
            await asyncio.sleep(0)
        await asyncio.to_thread(thread.join)
        return [(since, await task) for since, task in joined]

    results = run(main(), timeout=60)
    assert len(results) > 1
    for since, seen in results:
        assert seen == list(range(since + 1, 2 + writes)), since


def test_every_subscriber_gets_every_event(store: StateStore, run: Runner) -> None:
    async def main() -> tuple[list[StateEvent], list[StateEvent]]:
        first, second = store.feed().subscribe(0), store.feed().subscribe(0)
        try:
            store.add_app(app("a"))
            store.add_app(app("b"))
            return await take(first, 2), await take(second, 2)
        finally:
            await first.aclose()
            await second.aclose()

    one, two = run(main())
    assert one == two == [StateEvent(1, "app", "a"), StateEvent(2, "app", "b")]


def test_a_subscriber_that_falls_behind_must_resync(
    backend: str, tmp_path: Path, run: Runner
) -> None:
    store = open_store(backend, tmp_path, feed_capacity=5)
    try:

        async def main() -> list[StateEvent]:
            events = store.feed().subscribe(0)
            got: list[StateEvent] = []
            try:
                store.add_model(model("m"))
                got += await take(events, 1)
                for n in range(6):  # more than the subscriber may hold
                    store.set_num_replicas("m", "1", n)
                await asyncio.sleep(0)  # let the deliveries land
                with pytest.raises(ResyncNeeded, match="behind"):
                    await anext(events)
                return got
            finally:
                await events.aclose()

        assert run(main()) == [StateEvent(1, "model", "m")]
        assert store.feed().subscriber_count == 0  # type: ignore[attr-defined]
    finally:
        store.close()


def test_subscribing_past_the_trimmed_log_asks_for_a_resync(
    backend: str, tmp_path: Path, run: Runner
) -> None:
    store = open_store(backend, tmp_path, changes_kept=2)
    try:
        for name in "abcd":
            store.add_app(app(name))

        async def main() -> list[StateEvent]:
            with pytest.raises(ResyncNeeded):
                await anext(store.feed().subscribe(1))
            events = store.feed().subscribe(2)
            try:
                return await take(events, 2)
            finally:
                await events.aclose()

        assert run(main()) == [StateEvent(3, "app", "c"), StateEvent(4, "app", "d")]
    finally:
        store.close()


def test_closing_the_store_ends_the_subscriptions(
    backend: str, tmp_path: Path, run: Runner
) -> None:
    store = open_store(backend, tmp_path)

    async def main() -> list[StateEvent]:
        events = store.feed().subscribe(0)
        store.add_app(app("a"))
        first = await anext(events)
        await asyncio.to_thread(store.close)
        rest = [e async for e in events]
        return [first, *rest]

    assert run(main()) == [StateEvent(1, "app", "a")]


# -- a second process's view: polling the shared file ---------------------------------


def test_the_polling_feed_sees_another_store_objects_writes(tmp_path: Path, run: Runner) -> None:
    path = tmp_path / "state.sqlite3"
    with SqliteStateStore(path) as writer, SqliteStateStore(path) as reader:
        writer.add_app(app("a"))

        async def main() -> list[StateEvent]:
            # The reader's own in-process feed would hear nothing: the polls do.
            events = SqlitePollingFeed(reader, interval=0.01).subscribe(0)
            try:
                got = await take(events, 1)
                await asyncio.to_thread(writer.add_model, model("m"))
                writer.link_model("a", "m")
                got += await take(events, 2)
                return got
            finally:
                await events.aclose()

        assert run(main()) == [
            StateEvent(1, "app", "a"),
            StateEvent(2, "model", "m"),
            StateEvent(3, "app", "a"),
        ]
        assert reader.linked_models("a") == ["m"]


def test_a_poller_that_falls_behind_the_trimmed_log_must_resync(
    tmp_path: Path, run: Runner
) -> None:
    path = tmp_path / "state.sqlite3"
    with (
        SqliteStateStore(path, changes_kept=2) as writer,
        SqliteStateStore(path, changes_kept=2) as reader,
    ):
        writer.add_app(app("a"))

        async def main() -> None:
            events = SqlitePollingFeed(reader, interval=0.01).subscribe(0)
            try:
                await take(events, 1)
                for name in "bcd":  # trims revisions 1 and 2 away
                    writer.add_app(app(name))
                with pytest.raises(ResyncNeeded):
                    await anext(events)
            finally:
                await events.aclose()

        # The poller saw revision 1 and asks for what follows it: 2 is gone.
        run(main())


def test_the_polling_interval_must_be_positive(tmp_path: Path) -> None:
    with SqliteStateStore(":memory:") as s, pytest.raises(ValueError):
        SqlitePollingFeed(s, interval=0)
