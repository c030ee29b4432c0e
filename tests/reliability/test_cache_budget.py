"""The prediction cache's byte budget bounds what its entries keep alive: a row of
a batch's tensor reply is cached as a copy of its own rows (not a view pinning the
whole reply buffer), and a list or dict output is charged for its items, so the
cache evicts when the answers it holds pass the budget."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import numpy as np

from clipper_core.dataplane.cache_entry import compact
from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.dataplane.tensor_batch import TensorResult
from clipper_core.replica_codec import decode_outputs
from clipper_core.structures import PredictionCache
from model_containers._proto import container_pb2 as pb

ROW = 1000  # float32 numbers per output row: 4 KB


def _tensor_rows(n: int) -> list[Any]:
    """The outputs of one batch of ``n`` rows, decoded as a replica's reply is."""
    data = np.arange(n * ROW, dtype=np.float32).tobytes()
    reply = pb.PredictResponse(
        encoding=pb.TENSOR,
        dtype="<f4",
        shape=[ROW],
        data=data,
        offsets=[i * ROW * 4 for i in range(n + 1)],
    )
    return list(decode_outputs(reply))


def _answer_all(cache: PredictionCache, outputs: list[Any]) -> None:
    """Submit one input per output through a model version and answer each with it."""

    async def body() -> None:
        mv = ModelVersion(
            "m", "1", "doubles", queue_capacity=10_000, max_batch_size=64, cache=cache
        )
        deadline = time.monotonic() + 30
        futures = [
            mv.submit([float(i)], i.to_bytes(4, "little"), deadline) for i in range(len(outputs))
        ]
        entries = mv.queue.take_nowait(len(outputs))
        assert len(entries) == len(outputs)
        for entry, out in zip(entries, outputs, strict=True):
            entry.future.set_result(out)
        await asyncio.gather(*futures)
        await mv.close()

    asyncio.run(body())


def test_tensor_rows_are_cached_as_their_own_rows_and_charged_for_them() -> None:
    rows = _tensor_rows(32)
    assert rows[0].base is not None  # views of the reply buffer
    cache = PredictionCache(1 << 20)
    _answer_all(cache, rows)
    assert len(cache) == 32 and cache.evictions == 0
    assert cache.nbytes >= 32 * ROW * 4  # charged at least the rows' bytes
    kept = cache.get("m", "1", (3).to_bytes(4, "little"))
    assert kept is not None and kept.base is None  # a copy: the reply buffer can go
    np.testing.assert_array_equal(kept, rows[3])


def test_answers_beyond_the_budget_are_evicted() -> None:
    budget = 1 << 20
    cache = PredictionCache(budget)
    # 600 tensor rows of 4 KB (2.4 MB) and 300 dicts holding 1,000 floats each
    # (~10 MB of objects): both well over a 1 MiB budget.
    _answer_all(cache, [r for _ in range(20) for r in _tensor_rows(30)])
    assert cache.evictions > 0 and cache.nbytes <= budget
    cache = PredictionCache(budget)
    _answer_all(cache, [{"label": i, "probs": [float(j) for j in range(1000)]} for i in range(300)])
    assert cache.evictions > 0 and cache.nbytes <= budget
    assert len(cache) < 60  # each dict is charged ~32 KB, not its outer 232 bytes


def test_compact_sizes_deeply_and_copies_views() -> None:
    probs = [float(j) for j in range(1000)]
    _, size = compact({"probs": probs})
    assert size >= sys.getsizeof(probs) + 1000 * sys.getsizeof(1.0)
    buf = np.zeros((4, 8), dtype=np.float64)
    result = TensorResult({"y": ("FP64", buf[1:2])})
    kept, size = compact(result)
    assert kept.outputs["y"][1].base is None and size >= 64
    assert compact(buf)[0] is buf  # an array that owns its data is kept as it is
    listed, size = compact([buf[0], "x"])
    assert listed[0].base is None and listed[1] == "x" and size >= 64
