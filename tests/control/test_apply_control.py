"""``ControlPlane.apply`` over the in-process fake container manager (real gRPC to
in-process containers): a file's tunables reach the running ``ModelVersion`` and
``Application`` in place, deploys record a digest of their payload, and what a
running version cannot take is refused."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from control_helpers import Runner
from test_reconcile import frontend

from clipper_core.control.desired import DesiredState
from clipper_core.errors import BadInput
from clipper_core.store.records import PipelineRecord
from tests.server import models

PAYLOAD = base64.b64encode(cloudpickle.dumps(models.make_sum())).decode()


def state(model: dict[str, Any] | None = None, app: dict[str, Any] | None = None) -> DesiredState:
    m = {"name": "m", "version": "1", "input_type": "doubles", "payload_b64": PAYLOAD}
    a = {"name": "a", "input_type": "doubles", "slo_micros": 5_000_000, "models": ["m"]}
    return DesiredState.from_dict(
        {"models": [{**m, **(model or {})}], "apps": [{**a, **(app or {})}]}
    )


def test_apply_reaches_the_data_plane_in_place(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            changes = await f.control.apply(state())
            assert [str(c) for c in changes] == [
                "create model m:1: 1 replica(s)",
                "create app a: slo 5000000 us",
                "create link a -> m",
            ]
            rec = f.store.get_model("m", "1")
            assert rec is not None
            digest = hashlib.sha256(base64.b64decode(PAYLOAD)).hexdigest()
            assert rec.container["payload_sha256"] == digest
            out = await f.predict("a", [1.0, 2.0])
            assert (out.output, out.default) == (3.0, False)
            mv = f.dataplane.get_model_version("m", "1")
            app = f.dataplane.apps["a"]
            assert {c.kind for c in await f.control.apply(state())} == {"unchanged"}

            tuned = state(
                {"num_replicas": 2, "batch_wait_micros": 500, "batch_timeout": 3, "labels": ["x"]},
                {"slo_micros": 50_000, "default_output": "0"},
            )
            plan = await f.control.plan(tuned)
            assert mv.batch_wait == 0.0 and len(mv.replicas) == 1  # a plan changes nothing
            assert await f.control.apply(tuned) == plan
            assert [str(c) for c in plan if c.kind != "unchanged"] == [
                "update model m:1: num_replicas 1 -> 2, batch_wait_micros 0 -> 500,"
                " batch_timeout default -> 3.0, labels [] -> ['x']",
                "update app a: slo_micros 5000000 -> 50000, default_output 'None' -> '0'",
            ]
            # The same objects, changed in place.
            assert f.dataplane.get_model_version("m", "1") is mv and f.dataplane.apps["a"] is app
            assert (mv.batch_wait, mv.batch_timeout, sorted(mv.replicas)) == (
                0.0005,
                3.0,
                ["0", "1"],
            )
            assert app.slo == 0.05
            await f.control.apply(state({"cache_enabled": False}))
            assert mv.cache is None
            assert (mv.batch_wait, mv.batch_timeout, len(mv.replicas)) == (0.0, 10.0, 1)

            with pytest.raises(BadInput, match="batch_size cannot change while it runs"):
                await f.control.update_model_spec("m", "1", batch_size=4)
            with pytest.raises(BadInput, match=r"batch_size -1 -> 4 \(its batch controller"):
                await f.control.apply(state({"batch_size": 4}))

    run(scenario(), timeout=120)


def _pipeline_x() -> PipelineRecord:
    """A pipeline named x of one stage, model m."""
    return PipelineRecord("x", "doubles", [{"name": "s", "model": "m"}], [], 5_000_000, "-1")


def test_an_app_taking_a_pipelines_name_is_refused_up_front_or_pruned_in_order(
    run: Runner, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            await f.control.apply(state())
            await f.control.register_pipeline(_pipeline_x())
            renamed = state({"version": "2"}, {"name": "x"})
            # Refused before the first change: m:2 is not deployed.
            with pytest.raises(BadInput, match="app x: pipeline x on the server has its name"):
                await f.control.apply(renamed)
            assert f.store.get_model("m", "2") is None and f.store.get_app("x") is None
            # With prune the pipeline goes first, so the app can take its name.
            await f.control.apply(renamed, prune=True)
            assert f.store.get_pipeline("x") is None and f.store.get_app("a") is None
            out = await f.predict("x", [1.0, 2.0])
            assert (out.output, out.default) == (3.0, False)

    run(scenario(), timeout=120)


def test_a_version_a_stored_pipeline_cannot_send_to_is_refused_before_any_change(
    run: Runner, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with frontend(tmp_path) as f:
            await f.control.apply(state())
            await f.control.register_pipeline(_pipeline_x())
            m = {"name": "m", "version": "1", "input_type": "doubles", "payload_b64": PAYLOAD}
            strings = {**m, "version": "2", "input_type": "strings", "current": False}
            file = DesiredState.from_dict({"models": [{**m, "name": "n"}, m, strings]})
            with pytest.raises(BadInput, match="model m:2 takes strings, which pipeline x cannot"):
                await f.control.plan(file)
            with pytest.raises(BadInput, match="model m:2 takes strings, which pipeline x cannot"):
                await f.control.apply(file)
            assert f.store.get_model("n", "1") is None and f.store.get_model("m", "2") is None
            # The deploy itself refuses it in the same words.
            with pytest.raises(BadInput, match="model m:2 takes strings, which pipeline x cannot"):
                await f.control.deploy_model(file.models[2].record, payload_b64=PAYLOAD)

    run(scenario(), timeout=120)
