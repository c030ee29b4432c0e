"""PipelineRouter's walk, in process: what the router itself costs a query.

A 3-stage sequence whose model versions answer at submission (``submit`` gives a
future already done, echoing its input), so no queue, dispatcher or container is
timed: only the walk (stage plans, input checks, edges, the outcome) and the
data plane's ``predict`` around it.  Each round runs ``N`` single-input queries
on uvloop; prints microseconds per query.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
from typing import Any

import numpy as np
import uvloop

from clipper_core.dataplane import Application, DataPlane, ModelVersion
from clipper_core.pipelines import PipelineRouter, validate
from clipper_core.store import PipelineRecord

N = 1000
MODELS = ("ma", "mb", "mc")


def _answered_at_once(value: Any, key: bytes, deadline: float) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def sequence() -> DataPlane:
    """A data plane serving pipeline ``p``: ma -> mb -> mc, floats all along."""
    dp = DataPlane(cache_bytes=0)
    for name in MODELS:
        mv = ModelVersion(name, "1", "floats", queue_capacity=100, max_batch_size=8)
        mv.submit = _answered_at_once  # type: ignore[method-assign]
        dp.add_model_version(mv)
        dp.set_current_version(name, "1")
    stages = [{"name": m, "model": m, "output_type": "floats"} for m in MODELS]
    edges = [{"from": a, "to": b} for a, b in itertools.pairwise(MODELS)]
    rec = PipelineRecord("p", "floats", stages, edges, 5_000_000, "-1")
    graph = validate(rec, {m: {"1": "floats"} for m in MODELS})
    app = Application("p", "floats", -1, 5.0, linked_models=graph.models, policy="pipeline")
    app.selector = PipelineRouter(graph)
    dp.add_app(app)
    return dp


def test_bench_pipeline_walk(benchmark: Any) -> None:
    dp = sequence()
    x = np.arange(8, dtype=np.float32)
    loop = uvloop.new_event_loop()

    async def queries() -> None:
        for _ in range(N):
            [out] = await dp.predict("p", [x], [b""])
            assert not out.default

    try:
        benchmark(lambda: loop.run_until_complete(queries()))
    finally:
        loop.close()
    us = benchmark.stats.stats.median / N * 1e6
    benchmark.extra_info["us_per_query"] = us
    print(
        f"\npipeline walk, 3 stages: {us:.1f} us a query (median of"
        f" {benchmark.stats.stats.rounds} rounds of {N}; {platform.python_implementation()}"
        f" {platform.python_version()}, {os.cpu_count()} CPUs)"
    )
