"""``PipelineRouter`` in process, on both event loops: real model versions whose
answers come from the prediction cache (a cached input is answered at submission,
no replica needed) and whose other inputs wait in their queue behind a connected
replica that takes nothing, so that a stage that never answers can be staged
without a container (a stage with no replica at all answers at once).  The
``loop`` fixture fails a test if anything reaches the loop's exception handler."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
import pytest

from clipper_core.clipper_api import input_key
from clipper_core.clipper_reply import format_reply
from clipper_core.dataplane import Application, DataPlane, ModelVersion
from clipper_core.dataplane.model_version import ReplicaSlot
from clipper_core.errors import BadInput, ModelError
from clipper_core.http.messages import json_response
from clipper_core.pipelines import PipelineRouter, validate
from clipper_core.store import PipelineRecord

MODELS = {"ma": "doubles", "mb": "doubles", "mc": "doubles", "ms": "strings"}


class _IdleClient:
    """The client of a replica that is connected but takes no batch (its slot has
    no dispatcher): what is not cached waits in the queue."""

    async def close(self) -> None:
        pass


def make(
    stages: list[dict[str, Any]],
    edges: list[dict[str, Any]],
    slo: float = 5.0,
    without_replica: tuple[str, ...] = (),
) -> Any:
    dp = DataPlane(cache_bytes=1 << 20)
    for name, input_type in MODELS.items():
        mv = ModelVersion(
            name, "1", input_type, queue_capacity=100, max_batch_size=8, cache=dp.cache
        )
        if name not in without_replica:
            mv.replicas["idle"] = ReplicaSlot("idle", "-", _IdleClient())  # type: ignore[arg-type]
        dp.add_model_version(mv)
        dp.set_current_version(name, "1")
    rec = PipelineRecord("p", "doubles", stages, edges, int(slo * 1e6), "-1")
    graph = validate(rec, {name: {"1": t} for name, t in MODELS.items()})
    app = Application("p", "doubles", -1, slo, linked_models=graph.models, policy="pipeline")
    app.selector = PipelineRouter(graph)
    dp.add_app(app)
    return dp, app, app.selector


def answer(dp: DataPlane, model: str, value: Any, output: Any) -> None:
    """Make ``model`` answer ``value`` with ``output`` (a cached prediction)."""
    x = value if isinstance(value, str) else np.asarray(value, dtype=np.float64)
    assert dp.cache is not None
    dp.cache.put(model, "1", input_key(x, MODELS[model]), output)


def query(dp: DataPlane, *xs: list[float], raise_errors: bool = True) -> Any:
    inputs = [np.asarray(x, dtype=np.float64) for x in xs]
    keys = [input_key(x, "doubles") for x in inputs]
    return dp.predict("p", inputs, keys, raise_errors=raise_errors)


SEQ = [
    {"name": "a", "model": "ma", "output_type": "doubles"},
    {"name": "b", "model": "mb", "output_type": "doubles"},
    {"name": "c", "model": "mc"},
]
SEQ_EDGES = [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}]


def test_a_sequence_is_answered_stage_by_stage(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        dp, app, router = make(SEQ, SEQ_EDGES)
        answer(dp, "ma", [1.0], [2.0, 3.0])
        answer(dp, "mb", [2.0, 3.0], [5])  # ints: made doubles on the way
        answer(dp, "mc", [5.0], "five")
        [out] = await query(dp, [1.0])
        assert (out.output, out.default, out.model) == ("five", False, "mc:1")
        assert out.models == ["ma:1", "mb:1", "mc:1"]
        assert {s: c.answered for s, c in router.metrics.stages.items()} == {
            "a": 1,
            "b": 1,
            "c": 1,
        }
        assert app.metrics.requests == 1 and app.metrics.within_slo == 1
        with pytest.raises(BadInput, match="takes no version"):
            await dp.predict("p", [np.zeros(1)], [b""], version="1")
        await dp.close()

    loop.run_until_complete(main())


def test_an_edge_not_taken_skips_what_only_it_leads_to(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        dp, _, router = make(
            [
                {"name": "a", "model": "ma", "output_type": "doubles"},
                {"name": "b", "model": "mb", "output_type": "doubles"},
                {"name": "c", "model": "mc", "output_type": "doubles"},
                {"name": "j", "combine": "concat"},
            ],
            [
                {"from": "a", "to": "b", "when": {"op": ">=", "value": 10, "field": 0}},
                {"from": "a", "to": "c"},
                {"from": "b", "to": "j"},
                {"from": "c", "to": "j"},
            ],
        )
        answer(dp, "ma", [1.0], [1.0])
        answer(dp, "ma", [2.0], [20.0])
        answer(dp, "mb", [20.0], [7.0])
        for x in ([1.0], [20.0]):
            answer(dp, "mc", x, [9.0])
        low, high = await query(dp, [1.0], [2.0])
        # Low: b skipped, so the join too; the walk ended at c.
        assert low.output == [9.0] and low.models == ["ma:1", "mc:1"]
        assert high.output.tolist() == [7.0, 9.0] and high.model is None
        m = router.metrics
        assert (m.stages["b"].skipped, m.stages["j"].skipped, m.stages["j"].answered) == (1, 1, 1)
        taken = {label: (e.evaluated, e.taken) for label, e in m.edges.items()}
        assert taken == {"a->b": (2, 1), "a->c": (2, 2), "b->j": (1, 1), "c->j": (2, 2)}
        await dp.close()

    loop.run_until_complete(main())


def test_a_stage_without_a_replica_answers_at_once_naming_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        # An objective of an hour: only an answer at once finishes the test.
        dp, app, _ = make(SEQ, SEQ_EDGES, slo=3600.0, without_replica=("mb",))
        answer(dp, "ma", [1.0], [2.0])
        answer(dp, "ma", [2.0], [3.0])
        answer(dp, "mb", [3.0], [4.0])  # cached: answered with no replica
        answer(dp, "mc", [4.0], "four")
        first, second = await query(dp, [1.0], [2.0])
        assert first.default and first.output == -1 and first.unavailable == ["mb:1"]
        assert first.explanation == (
            "pipeline p: stage 'b': no connected model found for query: mb:1 has no live replica"
        )
        assert (second.output, second.default, second.unavailable) == ("four", False, None)
        assert app.metrics.defaults["no_model"] == 1
        await dp.close()

    loop.run_until_complete(main())


def test_a_stage_still_working_at_the_deadline_is_named_and_withdrawn(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        dp, app, router = make(SEQ, SEQ_EDGES, slo=0.05)
        answer(dp, "ma", [1.0], [2.0])  # b takes nothing: its input waits in the queue
        [out] = await query(dp, [1.0])
        assert out.default and out.output == -1
        assert "stage 'b' (mb:1) did not answer" in str(out.explanation)
        mb = dp.models["mb"].versions["1"]
        assert mb.withdrawn == 1
        assert router.metrics.stages["b"].deadline_misses == 1
        assert app.metrics.defaults["slo"] == 1
        # Once the stage is known to take longer than what remains, the input is
        # answered at once (after one probe).
        mb.estimator.observe(1, 5.0)
        answer(dp, "ma", [2.0], [4.0])
        answer(dp, "ma", [3.0], [6.0])
        first, second = [(await query(dp, x))[0] for x in ([2.0], [3.0])]
        assert "did not answer" in str(first.explanation)
        assert "stage 'b' (mb:1) expects 5000 ms" in str(second.explanation)
        assert router.metrics.stages["b"].requests == 3
        await dp.close()

    loop.run_until_complete(main())


def test_an_output_of_the_wrong_type_fails_its_query(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        dp, app, router = make(SEQ, SEQ_EDGES)
        answer(dp, "ma", [1.0], "not numbers")
        answer(dp, "ma", [2.0], [2.0])
        answer(dp, "mb", [2.0], [3.0])
        answer(dp, "mc", [3.0], "ok")
        with pytest.raises(ModelError, match=r"stage 'b'.*stage 'a' answered 'not numbers'"):
            await query(dp, [1.0])
        bad, good = await query(dp, [1.0], [2.0], raise_errors=False)
        assert bad.default and "not doubles" in str(bad.explanation)
        assert good.output == "ok" and not good.default
        assert router.metrics.stages["b"].errors == 2
        assert app.metrics.errors["model_error"] == 2
        await dp.close()

    loop.run_until_complete(main())


def test_a_client_that_leaves_withdraws_its_inputs(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        dp, _, _ = make(SEQ, SEQ_EDGES)
        answer(dp, "ma", [1.0], [2.0])
        task = asyncio.ensure_future(query(dp, [1.0]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert dp.models["mb"].versions["1"].withdrawn == 1
        await dp.close()

    loop.run_until_complete(main())


def test_a_model_stage_joining_its_parents_gets_them_concatenated(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The join is made of what the model takes (doubles), not of what it answers.
    async def main() -> None:
        dp, _, _ = make(
            [
                {"name": "a", "model": "ma", "output_type": "doubles"},
                {"name": "b", "model": "mb", "output_type": "doubles"},
                {"name": "c", "model": "mc", "output_type": "doubles"},
                {"name": "j", "model": "ma", "combine": "concat"},
            ],
            [
                {"from": "a", "to": "b"},
                {"from": "a", "to": "c"},
                {"from": "b", "to": "j"},
                {"from": "c", "to": "j"},
            ],
        )
        answer(dp, "ma", [1.0], [2.0])
        answer(dp, "mb", [2.0], [3.0])
        answer(dp, "mc", [2.0], [4.0])
        answer(dp, "ma", [3.0, 4.0], "joined")
        [out] = await query(dp, [1.0])
        assert out.output == "joined" and not out.default
        await dp.close()

    loop.run_until_complete(main())


def test_a_condition_on_a_vector_holds_for_an_array_as_for_a_list(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # A model's output row is an array when its batch came as a tensor, a list
    # when it came as JSON: the edge decides the same for both.
    async def main() -> None:
        dp, _, _ = make(
            [
                {"name": "a", "model": "ma", "output_type": "doubles"},
                {"name": "b", "model": "mb"},
            ],
            [{"from": "a", "to": "b", "when": {"op": "!=", "value": [0.0, 0.0]}}],
        )
        answer(dp, "ma", [1.0], np.array([2.0, 4.0]))
        answer(dp, "ma", [2.0], [2.0, 4.0])
        answer(dp, "ma", [3.0], np.array([0.0, 0.0]))
        answer(dp, "mb", [2.0, 4.0], "taken")
        as_array, as_list, zeros = await query(dp, [1.0], [2.0], [3.0])
        assert as_array.output == "taken" and as_list.output == "taken"
        assert zeros.output.tolist() == [0.0, 0.0]  # not taken: the walk ended at a
        await dp.close()

    loop.run_until_complete(main())


def test_bytes_inside_a_pipeline_answer_reach_the_client_base64(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        dp, _, _ = make(
            [
                {"name": "a", "model": "ma", "output_type": "doubles"},
                {"name": "b", "model": "mb"},
                {"name": "c", "model": "mc"},
            ],
            [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}],
        )
        answer(dp, "ma", [1.0], [2.0])
        answer(dp, "mb", [2.0], b"\x89PNG")
        answer(dp, "mc", [2.0], [4.0])
        [out] = await query(dp, [1.0])
        reply = json_response(format_reply(0, out.output, False, native_arrays=True))
        assert reply.status == 200
        assert orjson.loads(reply.body)["output"] == {"b": "iVBORw==", "c": [4.0]}
        await dp.close()

    loop.run_until_complete(main())


def test_a_probe_the_stage_refuses_as_overloaded_gets_the_default(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The query let through to probe a stage deemed too slow meets admission
    # control when the stage is busy: the pipeline answers its default, as for
    # any stage the budget cannot cover, instead of failing with 503.
    async def main() -> None:
        dp, app, router = make(SEQ, SEQ_EDGES, slo=0.2)
        mb = dp.models["mb"].versions["1"]
        mb.admission = True
        # The replica is taking batches (a dispatcher runs) and one input waits.
        mb.replicas["idle"].task = loop.create_future()  # type: ignore[assignment]
        mb.estimator.observe(1, 5.0)
        waiting = mb.submit(np.asarray([9.0]), b"other", time.monotonic() + 3600.0)
        answer(dp, "ma", [1.0], [2.0])
        [out] = await query(dp, [1.0])
        assert out.default and out.output == -1
        assert "stage 'b' (mb:1) was refused: mb:1 is overloaded" in str(out.explanation)
        assert router.metrics.stages["b"].deadline_misses == 1
        assert app.metrics.defaults["slo"] == 1
        waiting.cancel()
        mb.replicas["idle"].task.cancel()
        await dp.close()

    loop.run_until_complete(main())


def test_a_stage_whose_model_now_takes_another_type_names_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The model was deleted and redeployed with another input type after the
    # pipeline was checked: the error names the version, not the parent's output.
    async def main() -> None:
        dp, _, _ = make(SEQ, SEQ_EDGES)
        strings = ModelVersion("mb", "2", "strings", queue_capacity=100, max_batch_size=8)
        dp.add_model_version(strings)
        dp.set_current_version("mb", "2")
        answer(dp, "ma", [1.0], [2.0])
        with pytest.raises(ModelError) as info:
            await query(dp, [1.0])
        assert str(info.value) == (
            "pipeline p: stage 'b' failed: model mb:2 takes strings, but the stage sends it"
            " doubles; update the pipeline"
        )
        await dp.close()

    loop.run_until_complete(main())
