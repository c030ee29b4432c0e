"""Frontends sharing one Redis store, in process: the replica lease, the
store-backed endpoint sink and the feed follower, over a real redis-server, the
in-process fake container manager (real gRPC, no child processes) and the real
reconcilers.  The two-process version with ``clipper serve`` is
tests/server/test_multi_frontend.py."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import pytest
import redis
from control_helpers import Runner
from redis_server import RedisServer, fresh_prefix, shared_redis

from clipper_core.auth import ApiKeys
from clipper_core.control import (
    BackgroundTasks,
    ControlPlane,
    DataPlaneReconciler,
    ModelDefaults,
    ReplicaReconciler,
)
from clipper_core.control.artifacts import LocalArtifactStore
from clipper_core.control.follow import FeedFollower
from clipper_core.control.lease import AlwaysHeld, LeaseKeeper
from clipper_core.control.replicas import StoreEndpointSink
from clipper_core.dataplane import Application, DataPlane, ModelVersion
from clipper_core.errors import ReplicaUnavailable
from clipper_core.managers.fake import FakeContainerManager
from clipper_core.planning import budgets
from clipper_core.replica_client import insecure_connector
from clipper_core.selection.runtime import SelectionService
from clipper_core.store import EndpointRecord
from clipper_core.store.records import AppRecord, ModelRecord
from clipper_core.store.redis import RedisStateStore
from clipper_core.store.redis_lease import RedisLease
from model_containers.model import ClosureModel
from model_containers.server import ContainerInfo, ContainerServer
from tests.server import models

DEFAULTS = ModelDefaults(
    queue_capacity=1000,
    max_batch_size=32,
    batch_timeout=10.0,
    admission=False,
    replica_start_timeout=20.0,
)
TTL = 0.6  # seconds: short, so that a takeover is quick
T = TypeVar("T")


async def eventually(probe: Callable[[], T], what: str, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return value


class SharedFrontend:
    """One frontend over the shared store, wired as ``ClipperServer`` wires it."""

    def __init__(self, url: str, prefix: str, root: Path, name: str) -> None:
        self.store = RedisStateStore(url, prefix=prefix)
        self.lease = RedisLease(self.store.client, self.store.keys.lease, name, TTL)
        self.manager = FakeContainerManager()
        self.dataplane = DataPlane(cache_bytes=0, batch_slo_rule=budgets.batch_slos)
        self.selection = SelectionService()
        self.selection.open(self.store)
        self.tasks = BackgroundTasks()
        self.apply = DataPlaneReconciler(
            self.dataplane,
            self.selection,
            ApiKeys(),
            self.store,
            DEFAULTS,
            connector=insecure_connector,
            on_replica_hung=lambda *key: None,
        )
        self.sink = StoreEndpointSink(self.store, self.apply, self.lease)
        self.replicas = ReplicaReconciler(
            self.manager, self.store, self.sink, self.tasks, start_timeout=20.0, lease=self.lease
        )
        self.control = ControlPlane(
            self.store, self.apply, self.replicas, LocalArtifactStore(root / "models")
        )
        self.running: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        since = await asyncio.to_thread(self.store.revision)
        await self.apply.sync_all()
        follower = FeedFollower(
            self.store.feed(), self.store, self.apply, replicas=self.replicas, tasks=self.tasks
        )
        held = await self.lease.acquire()
        if held:
            await self.replicas.ensure_all()
        keeper = LeaseKeeper(
            self.lease,
            interval=TTL / 3,
            on_acquired=lambda: self.tasks.spawn(self.replicas.ensure_all()),
            on_lost=lambda: self.tasks.spawn(self.replicas.release_all()),
        )
        loop = asyncio.get_running_loop()
        self.running = [loop.create_task(follower.run(since)), loop.create_task(keeper.run(held))]

    async def die(self) -> None:
        """Stop following and renewing, as a killed process would (no release)."""
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        self.running = []

    async def predict(self, app: str) -> Any:
        [out] = await self.dataplane.predict(app, [[1.0]], [b""], deadline=time.monotonic() + 10)
        return out.output

    def serving(self, name: str, version: str) -> list[str]:
        model = self.dataplane.models.get(name)
        mv = None if model is None else model.versions.get(version)
        return sorted(mv.replicas) if mv is not None else []

    async def close(self) -> None:
        await self.die()
        await self.tasks.cancel_all()
        await self.apply.close()
        await self.dataplane.close()
        await self.manager.close()
        await self.sink.drain()
        await self.selection.close()
        self.store.close()


@asynccontextmanager
async def two_frontends(
    tmp_path: Path, url: str | None = None
) -> AsyncIterator[tuple[SharedFrontend, SharedFrontend]]:
    url, prefix = url or shared_redis().url, fresh_prefix()
    a = SharedFrontend(url, prefix, tmp_path, "a")
    b = SharedFrontend(url, prefix, tmp_path, "b")
    try:
        await a.start()  # first: takes the lease
        await b.start()
        yield a, b
    finally:
        await a.close()
        await b.close()


def payload(value: str) -> str:
    return base64.b64encode(cloudpickle.dumps(models.make_constant(value))).decode()


def model_rec(version: str = "1", replicas: int = 1) -> ModelRecord:
    container = {"kind": "closure", "filename": "f.pkl"}
    return ModelRecord("m", version, "doubles", [], container, num_replicas=replicas)


def test_only_the_lease_holder_starts_replicas_and_every_frontend_serves(
    run: Runner, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with two_frontends(tmp_path) as (a, b):
            assert a.lease.held() and not b.lease.held()
            # Written on B, which holds no lease: A starts the replica, and B's
            # call returns once B itself dispatches to it.
            await b.control.register_app(AppRecord("app", "doubles", "-1", 5_000_000))
            await b.control.deploy_model(model_rec(), payload_b64=payload("v1"))
            await b.control.link("app", "m")
            assert b.serving("m", "1") == ["0"]
            assert [s.replica_id for s in a.manager.list("m", "1")] == ["0"]
            assert b.manager.list() == []
            assert await b.predict("app") == "v1"
            await eventually(lambda: a.serving("m", "1") == ["0"], "A to serve")
            await eventually(
                lambda: "app" in a.dataplane.apps and a.dataplane.apps["app"].linked_models,
                "A to hear of the link",
            )
            assert await a.predict("app") == "v1"
            records = await asyncio.to_thread(a.store.list_endpoints, "m")
            assert [(e.replica_id, e.address) for e in records] == [
                ("0", a.manager.list("m", "1")[0].address)
            ]
            # Scale on B: A starts the second; B returns once it dispatches to both.
            await b.control.set_num_replicas("m", "1", 2)
            assert b.serving("m", "1") == ["0", "1"]
            await b.control.set_num_replicas("m", "1", 1)
            assert b.serving("m", "1") == ["0"]
            await eventually(lambda: len(a.manager.list("m", "1")) == 1, "A to stop one")
            # A second version, switched to on A; then the first removed on B.
            await a.control.deploy_model(model_rec("2"), payload_b64=payload("v2"))
            await a.control.set_model_version("m", "2")
            await eventually(lambda: b.dataplane.models["m"].current == "2", "B to switch")
            assert await b.predict("app") == "v2"
            await b.control.delete_model_version("m", "1")
            await eventually(lambda: a.manager.list("m", "1") == [], "A to stop version 1")
            assert await asyncio.to_thread(a.store.list_endpoints, "m", "1") == []

    run(scenario(), timeout=120)


def _one_version_plane(slo: float) -> tuple[DataPlane, ModelVersion]:
    """A data plane whose app "app" (``slo`` seconds) is answered by m:2, which
    has no replica yet."""
    dp = DataPlane(cache_bytes=0)
    dp.add_app(Application("app", "doubles", -1, slo))
    dp.add_model_version(ModelVersion("m", "2", "doubles", queue_capacity=10, max_batch_size=4))
    dp.link("app", "m")
    dp.set_current_version("m", "2")
    return dp, dp.get_model_version("m", "2")


def test_a_query_waits_for_the_replica_its_frontend_is_connecting(run: Runner) -> None:
    # A frontend that follows the store switches to a new version when the
    # holder's switch arrives, which may be before its own connect to the new
    # replica is done: a query then answered the default output at once, as if
    # the version had no replica at all.
    server = ContainerServer(ContainerInfo("m", "2", "doubles", "0"), local_socket=None)
    server.start()  # NOT_SERVING until serve(): the connect waits for it

    async def scenario() -> None:
        dp, mv = _one_version_plane(slo=5.0)
        loop = asyncio.get_running_loop()
        connect = loop.create_task(mv.add_replica("0", server.address, ready_timeout=20.0))
        try:
            await asyncio.sleep(0.1)  # the connect is under way: it waits for SERVING
            assert not connect.done() and not mv.replicas
            query = loop.create_task(
                dp.predict("app", [[1.0]], [b""], deadline=time.monotonic() + 10)
            )
            await asyncio.sleep(0.3)
            assert not query.done(), query.result()  # not the default at once
            server.serve(ClosureModel(models.make_constant("v2")))
            await connect
            [out] = await query
            assert (out.output, out.default) == ("v2", False)
        finally:
            connect.cancel()
            await dp.close()

    try:
        run(scenario(), timeout=60)
    finally:
        server.stop(0)


def test_a_batch_in_flight_when_its_replica_is_replaced_goes_to_the_replacement(
    run: Runner,
) -> None:
    # The replaced slot's dispatcher is stopped before its client is closed: its
    # batch is handed back (no replica loss counted) and the new slot answers it.
    server = ContainerServer(ContainerInfo("m", "2", "doubles", "0"), local_socket=None)
    server.start()
    server.serve(ClosureModel(models.make_constant("v2", delay=0.5)))

    async def scenario() -> None:
        dp, mv = _one_version_plane(slo=20.0)
        try:
            await mv.add_replica("0", server.address, ready_timeout=20.0)
            old = mv.replicas["0"]
            query = asyncio.get_running_loop().create_task(
                dp.predict("app", [[1.0]], [b""], deadline=time.monotonic() + 20)
            )
            await eventually(lambda: old.in_flight, "the batch to be sent")
            # The same container under another name: a new address for replica 0.
            await mv.add_replica("0", f"localhost:{server.port}", ready_timeout=20.0)
            assert mv.replicas["0"] is not old
            [out] = await query
            assert (out.output, out.default) == ("v2", False)
            assert old.failures == 0 and mv.retried == 1 and mv.isolation.isolated == 0
        finally:
            await dp.close()

    try:
        run(scenario(), timeout=60)
    finally:
        server.stop(0)


def test_a_frontend_without_the_lease_says_why_a_deploy_does_not_serve(
    run: Runner, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with two_frontends(tmp_path) as (a, b):
            # A keeps its lease but no longer follows the store: nobody starts
            # what B deploys.
            a.running[0].cancel()
            b.replicas._start_timeout = 0.3  # the wait is twice this
            with pytest.raises(ReplicaUnavailable, match="holding the replica lease"):
                await b.control.deploy_model(model_rec(), payload_b64=payload("v1"))
            # The failed deploy was rolled back.
            assert await asyncio.to_thread(b.store.list_models) == []

    run(scenario(), timeout=60)


def test_when_the_holder_dies_another_frontend_takes_over(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_frontends(tmp_path) as (a, b):
            await a.control.register_app(AppRecord("app", "doubles", "-1", 5_000_000))
            await a.control.deploy_model(model_rec(replicas=2), payload_b64=payload("v1"))
            await a.control.link("app", "m")
            await eventually(lambda: b.serving("m", "1") == ["0", "1"], "B to connect")
            old = {s.address for s in a.manager.list("m", "1")}
            await a.die()
            await a.manager.close()  # its replicas die with it
            await eventually(b.lease.held, "B to take the lease", within=10 * TTL + 10)
            new = await eventually(lambda: {s.address for s in b.manager.list("m", "1")}, "B")
            await eventually(lambda: len(b.manager.list("m", "1")) == 2, "two replicas on B")

            def addresses() -> set[str]:
                mv = b.dataplane.get_model_version("m", "1")
                return {slot.address for slot in mv.replicas.values()}

            await eventually(lambda: addresses() == {s.address for s in b.manager.list()}, "B")
            assert not (addresses() & old) and new
            assert await b.predict("app") == "v1"
            records = await asyncio.to_thread(b.store.list_endpoints, "m")
            assert {e.address for e in records} == addresses()

    run(scenario(), timeout=120)


def test_a_store_outage_leaves_the_replicas_serving(run: Runner, tmp_path: Path) -> None:
    # The holder stopped every replica once it could not renew its lease, so all
    # frontends answered defaults until Redis came back and the replicas cold-started.
    server = RedisServer(tmp_path / "redis")

    async def scenario() -> None:
        async with two_frontends(tmp_path, server.url) as (a, b):
            await a.control.register_app(AppRecord("app", "doubles", "-1", 5_000_000))
            await a.control.deploy_model(model_rec(), payload_b64=payload("v1"))
            await a.control.link("app", "m")
            await eventually(lambda: b.serving("m", "1") == ["0"], "B to connect")
            started = [s.address for s in a.manager.list("m", "1")]
            await asyncio.to_thread(server.pause)
            await asyncio.sleep(TTL * 4)  # the holder's lease clock has run out
            assert not a.lease.held()
            assert [s.address for s in a.manager.list("m", "1")] == started
            assert await a.predict("app") == "v1" and await b.predict("app") == "v1"
            await asyncio.to_thread(server.resume)
            await eventually(a.lease.held, "A to hold the lease again", within=10 * TTL + 10)
            assert [s.address for s in a.manager.list("m", "1")] == started
            assert await b.predict("app") == "v1"
            # Another frontend holding the lease when the store answers again: the
            # cut-off one gives its replicas up and the other starts its own.
            await asyncio.to_thread(server.pause)
            await asyncio.sleep(TTL * 2)
            await asyncio.to_thread(server.resume)
            await asyncio.to_thread(b.lease._client.set, b.lease._key, b.lease.owner)
            await eventually(lambda: a.manager.list("m", "1") == [], "A to stop its replica")
            await eventually(lambda: len(b.manager.list("m", "1")) == 1, "B to start one")
            await eventually(lambda: b.serving("m", "1") != [], "B to serve")
            assert await b.predict("app") == "v1"

    try:
        run(scenario(), timeout=120)
    finally:
        server.stop()


def test_a_resync_stops_the_replicas_of_versions_gone_from_the_store(
    run: Runner, tmp_path: Path
) -> None:
    # After a gap in the feed (here the store's keys removed, the lease kept) the
    # holder reread the store and started what it holds, but kept running the
    # versions it no longer has, with no event left to stop them.
    async def scenario() -> None:
        async with two_frontends(tmp_path) as (a, _b):
            await a.control.deploy_model(model_rec(replicas=2), payload_b64=payload("v1"))
            assert len(a.manager.list("m", "1")) == 2
            client = a.store.client
            keys = [k for k in client.keys(a.store.keys.prefix + "*") if "lease" not in k]
            client.delete(*keys)
            await eventually(lambda: a.manager.list() == [], "A to stop m:1's replicas")
            assert a.lease.held() and "m" not in a.dataplane.models

    run(scenario(), timeout=60)


def test_a_learning_restart_on_one_frontend_restarts_it_on_every_frontend(
    run: Runner, tmp_path: Path
) -> None:
    # set_selection_policy with the same policy restarts learning; only the
    # frontend that took the call did, the others kept (and wrote back) theirs.
    async def scenario() -> None:
        async with two_frontends(tmp_path) as (a, b):
            await a.control.register_app(
                AppRecord("app", "doubles", "-1", 5_000_000, policy="exp3")
            )
            await eventually(lambda: "app" in b.selection.selectors, "B to hear of the app")
            learned = b.selection.selectors["app"]
            learned.updates = 42  # as if B had taken feedback
            await a.control.set_selection_policy("app", "exp3", {})
            await eventually(
                lambda: b.selection.selectors["app"] is not learned, "B to restart learning"
            )
            assert b.selection.selectors["app"].updates == 0
            # Any other change to the app keeps what B learned since.
            learned = b.selection.selectors["app"]
            await a.control.update_app("app", slo_micros=6_000_000)
            await eventually(lambda: b.dataplane.apps["app"].slo == 6.0, "B to take the change")
            assert b.selection.selectors["app"] is learned

    run(scenario(), timeout=60)


# -- the pieces --------------------------------------------------------------------------


def test_redis_lease_has_one_holder_at_a_time(run: Runner) -> None:
    client = redis.Redis.from_url(shared_redis().url, decode_responses=True)
    key = fresh_prefix() + "lease"
    first, second = RedisLease(client, key, "one", TTL), RedisLease(client, key, "two", TTL)

    async def scenario() -> None:
        assert await first.acquire() and first.held()
        assert await first.acquire()  # its own lease: taken again (renewed)
        assert not await second.acquire() and not second.held()
        assert await first.renew()
        assert first.holder() == "one"
        await asyncio.sleep(TTL * 1.5)  # not renewed: it expires
        assert not first.held()
        assert await second.acquire()
        assert not await first.renew()  # lost: it may not extend its successor's
        await first.release()  # nor drop it
        assert second.holder() == "two"
        await second.release()
        assert not second.held() and second.holder() is None
        assert await first.acquire()  # free at once after a release
        await first.release()

    try:
        run(scenario())
        with pytest.raises(ValueError):
            RedisLease(client, key, "x", 0)
    finally:
        client.close()


def test_lease_keeper_reports_gains_and_losses(run: Runner) -> None:
    client = redis.Redis.from_url(shared_redis().url, decode_responses=True)
    key = fresh_prefix() + "lease"
    lease = RedisLease(client, key, "me", TTL)
    events: list[str] = []

    async def scenario() -> None:
        keeper = LeaseKeeper(
            lease,
            interval=TTL / 3,
            on_acquired=lambda: events.append("acquired"),
            on_lost=lambda: events.append("lost"),
        )
        client.set(key, "someone else", px=int(TTL * 1000))
        task = asyncio.get_running_loop().create_task(keeper.run(False))
        try:
            await eventually(lambda: events == ["acquired"], "the lease once free")
            client.set(key, "usurper")  # taken from under it
            await eventually(lambda: events == ["acquired", "lost"], "the loss")
            client.delete(key)
            await eventually(lambda: events[-1] == "acquired", "the lease again")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        run(scenario())
        with pytest.raises(ValueError):
            LeaseKeeper(AlwaysHeld(), interval=0, on_acquired=list, on_lost=list)
    finally:
        client.close()


class RecordingSink:
    """The local data-plane side of a StoreEndpointSink, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def publish(self, *key: Any) -> None:
        self.calls.append(("publish", *key))

    def withdraw(self, *key: Any) -> None:
        self.calls.append(("withdraw", *key))

    async def connected(self, *key: Any) -> None:
        self.calls.append(("connected", *key))

    async def prune(self, *key: Any) -> None:
        self.calls.append(("prune", *key))

    async def serving(self, *key: Any) -> None:
        self.calls.append(("serving", *key))


def test_the_store_sink_writes_in_order_and_only_with_the_lease(run: Runner) -> None:
    store = RedisStateStore(shared_redis().url, prefix=fresh_prefix())
    store.add_model(model_rec())
    local = RecordingSink()

    class Switch(AlwaysHeld):
        on = True

        def held(self) -> bool:
            return self.on

    lease = Switch()
    sink = StoreEndpointSink(store, local, lease)

    async def scenario() -> list[EndpointRecord]:
        # A replica that restarts at once: put, delete, put; the last one stays.
        sink.publish("m", "1", "0", "h:1")
        sink.withdraw("m", "1", "0")
        sink.publish("m", "1", "0", "h:2")
        sink.publish("m", "1", "1", "h:3")
        sink.publish("m", "9", "0", "h:4")  # no such version: logged, not raised
        await sink.drain()
        await sink.prune("m", "1", 1)
        await sink.connected("m", "1", "5", "h:5")
        lease.on = False  # lost: the successor's records are left alone
        sink.withdraw("m", "1", "5")
        sink.publish("m", "1", "6", "h:6")
        await sink.drain()
        return await asyncio.to_thread(store.list_endpoints)

    try:
        assert run(scenario()) == [
            EndpointRecord("m", "1", "0", "h:2"),
            EndpointRecord("m", "1", "5", "h:5"),
        ]
        # Local dispatchers stop at once; connects and prunes reach them too.
        assert local.calls == [
            ("withdraw", "m", "1", "0"),
            ("prune", "m", "1", 1),
            ("connected", "m", "1", "5", "h:5"),
            ("withdraw", "m", "1", "5"),
        ]
    finally:
        store.close()


def test_the_follower_resyncs_after_the_store_went_back(run: Runner, tmp_path: Path) -> None:
    """A flushed (or replaced) store is a gap: the follower reconciles everything."""
    url, prefix = shared_redis().url, fresh_prefix()

    async def scenario() -> None:
        f = SharedFrontend(url, prefix, tmp_path, "solo")
        try:
            await f.start()
            await f.control.register_app(AppRecord("old", "doubles", "-1", 1_000_000))
            await asyncio.to_thread(f.store.add_app, AppRecord("x", "doubles", "-1", 10))
            await eventually(lambda: "x" in f.dataplane.apps, "the feed to add x")
            # Everything goes behind the frontend's back; then one new write.
            keys = await asyncio.to_thread(f.store.client.keys, prefix + "*")
            await asyncio.to_thread(f.store.client.delete, *keys)
            await asyncio.to_thread(f.store.add_app, AppRecord("new", "doubles", "-1", 10))
            await eventually(lambda: set(f.dataplane.apps) == {"new"}, "the resync")
        finally:
            await f.close()

    run(scenario(), timeout=60)
