"""The control plane over the in-process fake container manager: every write goes
through ``ControlPlane`` and reaches the data plane before the call returns; the
data-plane reconciler is level-triggered (it rereads the store, so duplicate and
missed events are harmless, and ``sync_all`` is both the restore and the resync);
the replica reconciler connects what the manager starts, follows crashes, and a
deploy that fails leaves nothing behind.  Real gRPC to in-process containers; no
child processes."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from control_helpers import Runner

from bench.ports import free_port
from clipper_core.auth import ApiKeys
from clipper_core.control import (
    BackgroundTasks,
    ControlPlane,
    DataPlaneReconciler,
    ModelDefaults,
    ReplicaReconciler,
)
from clipper_core.control.artifacts import LocalArtifactStore
from clipper_core.dataplane import DataPlane
from clipper_core.errors import BadInput, NotFound, ReplicaUnavailable
from clipper_core.managers.fake import FakeContainerManager, load_container_model
from clipper_core.pipelines import PipelineRouter
from clipper_core.planning import budgets
from clipper_core.replica_client import insecure_connector
from clipper_core.selection.runtime import SelectionService
from clipper_core.store import SqliteStateStore, StateEvent
from clipper_core.store.records import AppRecord, ModelRecord, PipelineRecord
from model_containers.model import Model
from tests.server import models

DEFAULTS = ModelDefaults(
    queue_capacity=1000,
    max_batch_size=32,
    batch_timeout=10.0,
    admission=False,
    replica_start_timeout=20.0,
)


class ThreadCheckingStore(SqliteStateStore):
    """Notes the thread of each write: none may run on the event loop's."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.write_threads: list[str] = []

    def add_app(self, *args: Any, **kw: Any) -> None:
        self.write_threads.append(threading.current_thread().name)
        super().add_app(*args, **kw)

    def add_model(self, *args: Any, **kw: Any) -> None:
        self.write_threads.append(threading.current_thread().name)
        super().add_model(*args, **kw)


class Frontend:
    """One frontend's data plane and reconcilers over a store (and a manager)."""

    def __init__(
        self,
        store: SqliteStateStore,
        manager: FakeContainerManager,
        root: Path,
        defaults: ModelDefaults = DEFAULTS,
    ) -> None:
        self.store = store
        self.manager = manager
        self.dataplane = DataPlane(cache_bytes=0, batch_slo_rule=budgets.batch_slos)
        self.selection = SelectionService()
        self.selection.open(store)
        self.tasks = BackgroundTasks()
        self.apply = DataPlaneReconciler(
            self.dataplane,
            self.selection,
            ApiKeys(),
            store,
            defaults,
            connector=insecure_connector,
            on_replica_hung=lambda *key: None,
        )
        self.replicas = ReplicaReconciler(
            manager, store, self.apply, self.tasks, start_timeout=20.0
        )
        self.control = ControlPlane(
            store, self.apply, self.replicas, LocalArtifactStore(root / "models")
        )

    async def predict(self, app: str, x: list[float]) -> Any:
        [out] = await self.dataplane.predict(app, [x], [b""], deadline=time.monotonic() + 10)
        return out

    async def close(self) -> None:
        await self.tasks.cancel_all()
        await self.apply.close()
        await self.dataplane.close()
        await self.selection.close()


def closure_payload(fn: Callable[[list[Any]], list[Any]]) -> str:
    return base64.b64encode(cloudpickle.dumps(fn)).decode()


def model_rec(name: str, version: str = "1", replicas: int = 1) -> ModelRecord:
    return ModelRecord(
        name=name,
        version=version,
        input_type="doubles",
        labels=[],
        container={"kind": "closure", "filename": "f.pkl"},
        num_replicas=replicas,
    )


def app_rec(name: str, policy: str = "single") -> AppRecord:
    return AppRecord(
        name=name, input_type="doubles", default_output="-1", slo_micros=5_000_000, policy=policy
    )


@asynccontextmanager
async def frontend(
    tmp_path: Path, factory: Any = None, defaults: ModelDefaults = DEFAULTS
) -> AsyncIterator[Frontend]:
    store = ThreadCheckingStore(str(tmp_path / "state.sqlite3"))
    manager = FakeContainerManager(factory)
    f = Frontend(store, manager, tmp_path, defaults)
    try:
        yield f
    finally:
        await f.close()
        await manager.close()
        store.close()


def test_writes_reach_the_data_plane_before_the_call_returns(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            await f.control.register_app(app_rec("a"))
            await f.control.deploy_model(
                model_rec("m", replicas=2), payload_b64=closure_payload(models.make_sum())
            )
            await f.control.link("a", "m")
            # Read your writes: no await of any feed in between.
            assert f.dataplane.apps["a"].linked_models == ["m"]
            mv = f.dataplane.get_model_version("m", "1")
            assert sorted(mv.replicas) == ["0", "1"]
            assert f.dataplane.models["m"].current == "1"
            out = await f.predict("a", [1.0, 2.0])
            assert (out.output, out.default) == (3.0, False)
            # Store writes ran off the event loop's thread.
            loop_thread = threading.current_thread().name
            assert f.store.write_threads and loop_thread not in f.store.write_threads
            # Scaling waits for the replicas and drops the ones above n.
            await f.control.set_num_replicas("m", "1", 1)
            assert sorted(mv.replicas) == ["0"]
            await f.control.set_num_replicas("m", "1", 3)
            assert sorted(mv.replicas) == ["0", "1", "2"]
            await f.control.unlink("a", "m")
            assert f.dataplane.apps["a"].linked_models == []
            await f.control.delete_app("a")
            assert "a" not in f.dataplane.apps
            with pytest.raises(NotFound):
                await f.control.delete_app("a")

    run(scenario(), timeout=120)


def test_the_data_plane_follows_the_stores_link_order(run: Runner, tmp_path: Path) -> None:
    """Under ``single`` the first linked model answers: a frontend that saw the
    links made in another order takes the store's."""

    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            await f.control.register_app(app_rec("a"))
            for name in ("m", "k"):
                await f.control.deploy_model(
                    model_rec(name), payload_b64=closure_payload(models.make_sum())
                )
            await f.control.link("a", "m")
            await f.control.link("a", "k")
            assert f.dataplane.apps["a"].linked_models == ["m", "k"]
            # Another frontend unlinks m and links it again: it is now last.
            await asyncio.to_thread(f.store.unlink_model, "a", "m")
            await asyncio.to_thread(f.store.link_model, "a", "m")
            await f.apply.reconcile(StateEvent(0, "app", "a"))
            assert f.dataplane.apps["a"].linked_models == ["k", "m"]

    run(scenario(), timeout=120)


def test_reconcile_is_level_triggered_and_sync_all_resyncs(run: Runner, tmp_path: Path) -> None:
    """Another writer changes the store; this frontend converges from events that
    name only a key, duplicated or missing, and from a full resync."""

    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            await f.control.register_app(app_rec("a"))
            await f.control.deploy_model(
                model_rec("m"), payload_b64=closure_payload(models.make_sum())
            )
            await f.control.link("a", "m")
            store = f.store
            # Writes behind the frontend's back (as another frontend's would be).
            await asyncio.to_thread(store.add_app, app_rec("b"), [])
            await asyncio.to_thread(store.link_model, "b", "m")
            await asyncio.to_thread(store.set_app_policy, "a", "exp3", {})
            for _ in range(2):  # a duplicate event changes nothing more
                await f.apply.reconcile(StateEvent(0, "app", "b"))
            assert f.dataplane.apps["b"].linked_models == ["m"]
            assert f.dataplane.apps["a"].policy == "single"  # no event for "a" yet
            # A gap: events were lost; the resync reads everything.
            await asyncio.to_thread(store.unlink_model, "b", "m")
            await asyncio.to_thread(store.delete_app, "a")
            await f.apply.sync_all()
            assert "a" not in f.dataplane.apps
            assert f.dataplane.apps["b"].linked_models == []
            # An event for a key that no longer exists removes it.
            await asyncio.to_thread(store.delete_app, "b")
            await f.apply.reconcile(StateEvent(0, "app", "b"))
            assert f.dataplane.apps == {}

    run(scenario(), timeout=120)


def test_the_restore_is_the_resync(run: Runner, tmp_path: Path) -> None:
    """A second frontend over the same store, started empty, gets everything from
    ``sync_all`` (and its replicas from the replica reconciler)."""

    async def scenario() -> None:
        async with frontend(tmp_path) as first:
            await first.control.register_app(app_rec("a"))
            await first.control.deploy_model(
                model_rec("m"), payload_b64=closure_payload(models.make_constant("v1"))
            )
            await first.control.deploy_model(
                model_rec("m", "2"), payload_b64=closure_payload(models.make_constant("v2"))
            )
            await first.control.link("a", "m")
            assert (await first.predict("a", [0.0])).output == "v1"
            await first.control.set_model_version("m", "2")
            assert (await first.predict("a", [0.0])).output == "v2"
        async with frontend(tmp_path) as second:
            await second.apply.sync_all()
            await second.replicas.ensure_all()
            assert second.dataplane.models["m"].current == "2"
            assert sorted(second.dataplane.models["m"].versions) == ["1", "2"]
            assert (await second.predict("a", [0.0])).output == "v2"

    run(scenario(), timeout=120)


def test_a_crashed_replica_is_reconnected(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            await f.control.register_app(app_rec("a"))
            await f.control.deploy_model(
                model_rec("m"), payload_b64=closure_payload(models.make_sum())
            )
            await f.control.link("a", "m")
            mv = f.dataplane.get_model_version("m", "1")
            before = mv.replicas["0"].address
            await f.manager.kill("m", "1", "0")
            deadline = time.monotonic() + 20
            while not ("0" in mv.replicas and mv.replicas["0"].address != before):
                assert time.monotonic() < deadline, "the restarted replica was not connected"
                await asyncio.sleep(0.05)
            assert (await f.predict("a", [2.0, 2.0])).output == 4.0

    run(scenario(), timeout=120)


def test_a_failed_deploy_leaves_nothing_behind(run: Runner, tmp_path: Path) -> None:
    def factory(rec: ModelRecord) -> Model:
        if rec.version == "bad":
            raise RuntimeError("this model cannot load")
        return load_container_model(rec)

    async def scenario() -> None:
        async with frontend(tmp_path, factory) as f:
            with pytest.raises(ReplicaUnavailable, match="cannot load"):
                await f.control.deploy_model(
                    model_rec("m", "bad"), payload_b64=closure_payload(models.make_sum())
                )
            assert await asyncio.to_thread(f.store.list_models) == []
            assert "m" not in f.dataplane.models
            assert not (tmp_path / "models" / "m" / "bad").exists()
            assert f.manager.list() == []
            with pytest.raises(BadInput, match="base64"):
                await f.control.deploy_model(model_rec("m"), payload_b64="not base64!")
            assert await asyncio.to_thread(f.store.list_models) == []

    run(scenario(), timeout=120)


def test_a_replica_registered_by_hand_is_remembered(run: Runner, tmp_path: Path) -> None:
    """``register_replica`` persists the endpoint: a restarted frontend connects to
    it again."""

    async def scenario() -> None:
        outside = FakeContainerManager()  # stands for a container started by hand
        try:
            rec = ModelRecord(
                name="ext", version="1", input_type="doubles", labels=[],
                container={"kind": "closure", "path": str(tmp_path / "f.pkl")},
            )  # fmt: skip
            (tmp_path / "f.pkl").write_bytes(cloudpickle.dumps(models.make_constant("far")))
            await outside.scale(rec, 1)
            address = await outside.wait_ready("ext", "1", "0", 20)
            # And a container of another model, registered as ext's by mistake.
            await outside.scale(ModelRecord(**{**rec.to_dict(), "name": "other"}), 1)
            elsewhere = await outside.wait_ready("other", "1", "0", 20)
            async with frontend(tmp_path) as f:
                await _external_model_for_app(f)
                await f.control.register_replica("ext", "1", "hand-1", address)
                assert (await f.predict("a", [0.0])).output == "far"
                with pytest.raises(NotFound):
                    await f.control.register_replica("nope", "1", "x", address)
                with pytest.raises(ReplicaUnavailable, match="serves other:1, not ext:1"):
                    await f.control.register_replica("ext", "1", "hand-2", elsewhere)
                assert sorted(f.dataplane.get_model_version("ext", "1").replicas) == ["hand-1"]
            async with frontend(tmp_path) as g:
                await g.apply.sync_all()
                eps = await asyncio.to_thread(g.store.list_endpoints, "ext")
                assert [(e.replica_id, e.address) for e in eps] == [("hand-1", address)]
                deadline = time.monotonic() + 20
                mv = g.dataplane.get_model_version("ext", "1")
                while "hand-1" not in mv.replicas:
                    assert time.monotonic() < deadline, "the endpoint was not reconnected"
                    await asyncio.sleep(0.05)
                assert (await g.predict("a", [0.0])).output == "far"
        finally:
            await outside.close()

    run(scenario(), timeout=120)


async def _external_model_for_app(f: Frontend) -> None:
    """App "a" served by model ext:1, whose replicas are started by hand."""
    await f.control.register_app(app_rec("a"))
    external = ModelRecord(
        name="ext", version="1", input_type="doubles", labels=[],
        container={"kind": "external"}, num_replicas=0,
    )  # fmt: skip
    await f.control.deploy_model(external)
    await f.control.link("a", "ext")


def test_a_replica_registered_again_at_a_wrong_address_serves_on(
    run: Runner, tmp_path: Path
) -> None:
    """Registering a replica id again moves it only once its new address connects:
    at a dead port, or at a container of another model, the call fails and the
    replica serves on where it was (its dispatcher untouched), its endpoint record
    unchanged; at a right address it moves."""

    async def scenario() -> None:
        outside = FakeContainerManager()  # stands for containers started by hand
        try:
            (tmp_path / "f.pkl").write_bytes(cloudpickle.dumps(models.make_constant("far")))
            rec = ModelRecord(
                name="ext", version="1", input_type="doubles", labels=[],
                container={"kind": "closure", "path": str(tmp_path / "f.pkl")},
            )  # fmt: skip
            await outside.scale(rec, 2)
            first = await outside.wait_ready("ext", "1", "0", 20)
            second = await outside.wait_ready("ext", "1", "1", 20)
            await outside.scale(ModelRecord(**{**rec.to_dict(), "name": "other"}), 1)
            elsewhere = await outside.wait_ready("other", "1", "0", 20)
            quick = replace(DEFAULTS, replica_start_timeout=2.0)  # for the dead port
            async with frontend(tmp_path, defaults=quick) as f:
                await _external_model_for_app(f)
                await f.control.register_replica("ext", "1", "hand-1", first)
                mv = f.dataplane.get_model_version("ext", "1")
                serving = mv.replicas["hand-1"]
                for wrong in (f"127.0.0.1:{free_port()}", elsewhere):
                    with pytest.raises(ReplicaUnavailable):
                        await f.control.register_replica("ext", "1", "hand-1", wrong)
                    assert mv.replicas == {"hand-1": serving}, wrong
                    assert serving.task is not None and not serving.task.done()
                    eps = await asyncio.to_thread(f.store.list_endpoints, "ext")
                    assert [(e.replica_id, e.address) for e in eps] == [("hand-1", first)]
                    assert (await f.predict("a", [0.0])).output == "far"
                await f.control.register_replica("ext", "1", "hand-1", second)
                assert [(r, s.address) for r, s in mv.replicas.items()] == [("hand-1", second)]
                assert serving.task is not None and serving.task.done()  # replaced
                eps = await asyncio.to_thread(f.store.list_endpoints, "ext")
                assert [(e.replica_id, e.address) for e in eps] == [("hand-1", second)]
                assert (await f.predict("a", [0.0])).output == "far"
        finally:
            await outside.close()

    run(scenario(), timeout=120)


def pipe_rec(name: str, slo_micros: int = 5_000_000) -> PipelineRecord:
    return PipelineRecord(
        name,
        "doubles",
        [{"name": "a", "model": "twice", "output_type": "doubles"}, {"name": "b", "model": "sum"}],
        [{"from": "a", "to": "b"}],
        slo_micros,
        "-1",
    )


def test_pipelines_are_reconciled_like_apps(run: Runner, tmp_path: Path) -> None:
    """Served before the call returns, rebuilt on an update (the app and its
    figures kept), restored by ``sync_all``, gone on delete; an app's reconcile
    never touches a pipeline."""

    def twice(xs: list[Any]) -> list[Any]:
        return [[2.0 * v for v in x] for x in xs]

    async def scenario() -> None:
        async with frontend(tmp_path) as first:
            for name, fn in (("twice", twice), ("sum", models.make_sum())):
                await first.control.deploy_model(model_rec(name), payload_b64=closure_payload(fn))
            await first.control.register_pipeline(pipe_rec("p"))
            app = first.dataplane.apps["p"]
            assert isinstance(app.selector, PipelineRouter) and app.routes_queries
            assert app.linked_models == ["twice", "sum"]
            # The stage models' batch objectives follow the pipeline's objective:
            # its half (2.5 s), split between its two stages.
            assert first.dataplane.get_model_version("sum", "1").controller.slo == 1.25
            out = await first.predict("p", [1.0, 2.0])
            assert (out.output, out.default) == (6.0, False)
            router = app.selector
            assert await first.control.update_pipeline(pipe_rec("p", 2_000_000)) is True
            assert first.dataplane.apps["p"] is app and app.selector is not router
            assert app.slo == 2.0 and app.metrics.requests == 1
            assert await first.control.update_pipeline(pipe_rec("p", 2_000_000)) is False
            # Behind its back: level-triggered, and an app reconcile leaves it be.
            await asyncio.to_thread(first.store.update_pipeline, pipe_rec("p", 3_000_000))
            await first.apply.reconcile(StateEvent(0, "app", "p"))
            assert app.slo == 2.0
            await first.apply.reconcile(StateEvent(0, "pipeline", "p"))
            assert app.slo == 3.0
            with pytest.raises(NotFound, match="model 'nope' is not deployed"):
                await first.control.register_pipeline(
                    PipelineRecord("q", "doubles", [{"name": "a", "model": "nope"}], [], 1, "-1")
                )
            assert "q" not in first.dataplane.apps
        async with frontend(tmp_path) as second:
            await second.apply.sync_all()
            await second.replicas.ensure_all()
            assert second.dataplane.apps["p"].slo == 3.0
            assert (await second.predict("p", [1.0])).output == 2.0
            await second.control.delete_pipeline("p")
            assert "p" not in second.dataplane.apps
            await second.apply.sync_all()
            assert "p" not in second.dataplane.apps
            with pytest.raises(NotFound):
                await second.control.delete_pipeline("p")

    run(scenario(), timeout=120)
