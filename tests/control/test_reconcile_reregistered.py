"""A frontend that reads the store late (its change feed lagged, or it resynced)
after another one deleted a model version and registered the same name:version
again sees one record where it runs another version: the running one is replaced
-- its queue, input type and cached answers go -- not retuned as if it were the
same.  The real reconciler over a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clipper_core.auth import ApiKeys
from clipper_core.control import DataPlaneReconciler, ModelDefaults
from clipper_core.dataplane import DataPlane
from clipper_core.replica_client import insecure_connector
from clipper_core.selection.runtime import SelectionService
from clipper_core.store import SqliteStateStore, StateEvent
from clipper_core.store.records import ModelRecord

DEFAULTS = ModelDefaults(
    queue_capacity=100,
    max_batch_size=8,
    batch_timeout=5.0,
    admission=False,
    replica_start_timeout=5.0,
)


def _record(input_type: str, filename: str) -> ModelRecord:
    return ModelRecord(
        name="m",
        version="1",
        input_type=input_type,
        labels=[],
        container={"kind": "closure", "filename": filename},
    )


def test_a_version_registered_again_replaces_the_running_one(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStateStore(str(tmp_path / "state.db"))
        dp = DataPlane(cache_bytes=1 << 20)
        selection = SelectionService()
        selection.open(store)
        reconciler = DataPlaneReconciler(
            dp,
            selection,
            ApiKeys(),
            store,
            DEFAULTS,
            connector=insecure_connector,
            on_replica_hung=lambda *_: None,
        )
        try:
            store.add_model(_record("doubles", "old.pkl"), make_current=True)
            await reconciler.reconcile(StateEvent(0, "model", "m"))
            old = dp.models["m"].versions["1"]
            assert dp.cache is not None
            dp.cache.put("m", "1", b"an input", "the old model's answer")
            # Another frontend deletes m:1 and registers it again; this one hears
            # of it once, after both writes.
            store.delete_model_version("m", "1")
            store.add_model(_record("floats", "new.pkl"), make_current=True)
            await reconciler.reconcile(StateEvent(0, "model", "m"))
            new = dp.models["m"].versions["1"]
            assert new is not old and new.input_type == "floats"
            assert dp.cache.get("m", "1", b"an input") is None
            # A re-read of the same record changes nothing.
            await reconciler.reconcile(StateEvent(0, "model", "m"))
            assert dp.models["m"].versions["1"] is new
        finally:
            await reconciler.close()
            await dp.close()
            await selection.close()
            store.close()

    asyncio.run(main())
