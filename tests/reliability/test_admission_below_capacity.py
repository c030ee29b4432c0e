"""Admission below capacity: the expected wait follows the batch size, so that a
load that just fell from saturation, or a burst's big batch, is not refused
for the mean of the recent batches; a storm still is (unit tests on a real model
version and queue, with a stand-in replica slot)."""

from __future__ import annotations

import asyncio
import time

import pytest

from clipper_core.admission import ServiceTimeEstimator
from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.errors import Overloaded

#: The bench's model: 10 ms per batch plus 2 ms per input.
BASE, PER_ITEM = 0.010, 0.002


def _latency(n: int) -> float:
    return BASE + PER_ITEM * n


def _saturated(est: ServiceTimeEstimator, rounds: int = 40) -> None:
    """Full batches of 19, with the odd smaller one (as under a closed-loop storm)."""
    for i in range(rounds):
        n = 12 if i % 8 == 0 else 19
        est.observe(n, _latency(n))


def test_latency_follows_the_batch_size() -> None:
    est = ServiceTimeEstimator()
    for i in range(60):
        n = 4 + (i * 7) % 16
        est.observe(n, _latency(n))
    assert est.latency_of(19) == pytest.approx(_latency(19), rel=0.05)
    assert est.latency_of(2) == pytest.approx(_latency(2), rel=0.1)
    # The margin is the deviation around that line: none for an exact model,
    # however much the sizes vary.
    assert est.batch_latency_dev < 0.001


def test_a_fixed_batch_size_is_costed_in_proportion() -> None:
    est = ServiceTimeEstimator()
    for _ in range(20):
        est.observe(8, 0.040)
    assert est.latency_of(8) == pytest.approx(0.040)
    assert est.latency_of(4) == pytest.approx(0.020)  # no line to fit: per input


class _Slot:
    """A replica slot as admission reads it."""

    up = True  # counted: its dispatcher runs and it answers

    def __init__(self, in_flight: int, started_ago: float) -> None:
        self.in_flight = [object()] * in_flight
        self.batch_started = time.monotonic() - started_ago


def _model() -> ModelVersion:
    mv = ModelVersion(
        "m", "1", "doubles", queue_capacity=1000, max_batch_size=19, batch_size=19, admission=True
    )
    _saturated(mv.estimator)
    return mv


def test_after_saturation_a_small_batch_in_flight_admits_the_next_input() -> None:
    async def body() -> None:
        mv = _model()
        # The load fell below capacity: a batch of 2 runs, nothing waits.  The
        # recent mean (about 46 ms a batch, plus twice its deviation, behind a
        # batch assumed as long) said about 100 ms: refused under a 100 ms SLO.
        mv.replicas["0"] = _Slot(2, 0.002)  # type: ignore[assignment]
        deadline = time.monotonic() + 0.100
        assert mv.overload(deadline) is None
        for i in range(5):  # a few more ride the same next batch
            mv.submit([float(i)], b"", deadline)
        assert mv.rejected_overload == 0
        mv.replicas.clear()
        await mv.close()

    asyncio.run(body())


def test_after_a_burst_the_next_batch_is_costed_at_the_usual_size() -> None:
    async def body() -> None:
        mv = ModelVersion(
            "m", "1", "doubles", queue_capacity=1000, max_batch_size=19, batch_size=19,
            admission=True,
        )  # fmt: skip
        for i in range(40):  # below capacity: batches of 6 to 10
            n = 6 + i % 5
            mv.estimator.observe(n, _latency(n))
        # A burst's full batch just started (48 ms); the queue is empty.
        mv.replicas["0"] = _Slot(19, 0.001)  # type: ignore[assignment]
        assert mv.overload(time.monotonic() + 0.100) is None
        mv.replicas.clear()
        await mv.close()

    asyncio.run(body())


def test_a_storm_is_still_refused() -> None:
    async def body() -> None:
        mv = _model()
        slot = _Slot(19, 0.001)
        mv.replicas["0"] = slot  # type: ignore[assignment]
        deadline = time.monotonic() + 0.100
        for i in range(19):  # a whole batch waits: its own batch is full too
            mv.queue.put(i, deadline)
        with pytest.raises(Overloaded):
            mv.submit([1.0], b"", deadline)
        assert mv.rejected_overload == 1
        # Nothing waits but a full batch just started, and the next will be
        # about as big: 48 + 46 ms, late for a 90 ms deadline.
        mv.queue.take_nowait(100)
        # Deadlines counted from the batch's start (1 ms before the slot was made),
        # not from now: the time the steps above took must not count.
        began = slot.batch_started + 0.001
        assert mv.overload(began + 0.090) is not None
        assert mv.overload(began + 0.110) is None
        mv.replicas.clear()
        await mv.close()

    asyncio.run(body())
