"""The feed follower retries a failed event with its whole revision: one write
logs several events under one revision (a model version deleted, and each app
linked to it), and the ones after a failure must not be skipped.  The real
reconciler over a real SQLite store, with one transient failure injected."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from clipper_core.auth import ApiKeys
from clipper_core.control import DataPlaneReconciler, ModelDefaults
from clipper_core.control.follow import FeedFollower
from clipper_core.dataplane import DataPlane
from clipper_core.replica_client import insecure_connector
from clipper_core.selection.runtime import SelectionService
from clipper_core.store import SqliteStateStore, StateEvent
from clipper_core.store.records import AppRecord, ModelRecord

DEFAULTS = ModelDefaults(
    queue_capacity=100, max_batch_size=8, batch_timeout=5.0, admission=False,
    replica_start_timeout=5.0,
)  # fmt: skip


class FailsOnce(DataPlaneReconciler):
    """The real reconciler, failing once on app ``a2`` (a store hiccup)."""

    armed = failed = False

    async def reconcile(self, event: StateEvent) -> None:
        if self.armed and event.kind == "app" and event.name == "a2" and not self.failed:
            self.failed = True
            raise ConnectionError("the store went away for a moment")
        await super().reconcile(event)


def test_a_failed_event_is_retried_with_the_rest_of_its_revision(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStateStore(str(tmp_path / "state.db"))
        dp = DataPlane(cache_bytes=0)
        selection = SelectionService()
        selection.open(store)
        apply = FailsOnce(
            dp, selection, ApiKeys(), store, DEFAULTS,
            connector=insecure_connector, on_replica_hung=lambda *_: None,
        )  # fmt: skip
        follower = FeedFollower(store.feed(), store, apply, retry=0.05)
        task: asyncio.Task[None] | None = None
        try:
            for name in ("a1", "a2"):
                store.add_app(AppRecord(name, "doubles", "-1", 1_000_000))
            store.add_model(ModelRecord("m", "1", "doubles", [], {"kind": "external"}))
            for name in ("a1", "a2"):
                store.link_model(name, "m")
            await apply.sync_all()
            assert dp.apps["a2"].linked_models == ["m"]
            apply.armed = True
            task = asyncio.get_running_loop().create_task(follower.run(store.revision()))
            store.delete_model_version("m", "1")  # one revision: m, a1, a2
            deadline = time.monotonic() + 20
            while dp.apps["a2"].linked_models or follower.revision < store.revision():
                assert time.monotonic() < deadline, (dp.apps["a2"].linked_models, follower.revision)
                await asyncio.sleep(0.02)
            assert apply.failed and dp.apps["a1"].linked_models == []
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await apply.close()
            await dp.close()
            await selection.close()
            store.close()

    asyncio.run(main())
