"""The batch-size controller learns a batch's own latency (the container's time
plus the transport), not the time the frontend's event loop spent elsewhere."""

from __future__ import annotations

import asyncio
import time

import pytest
from container_harness import Launcher, model_class_args, run_async

from clipper_core.dataplane.batch_latency import OwnLatency
from clipper_core.dataplane.model_version import ModelVersion

# -- OwnLatency -------------------------------------------------------------------------


def test_own_latency_is_model_time_plus_the_transport_floor() -> None:
    own = OwnLatency(window=10.0)
    assert own.transport is None
    assert own(0.012, 0.010, now=0.0) == pytest.approx(0.012)
    # The loop was busy elsewhere: the round trip grew, the model's time did not.
    assert own(0.090, 0.010, now=1.0) == pytest.approx(0.012)
    assert own(0.150, 0.020, now=2.0) == pytest.approx(0.022)
    assert own.transport == pytest.approx(0.002)
    # A faster transport is taken at once.
    assert own(0.0115, 0.010, now=3.0) == pytest.approx(0.0115)


def test_a_lasting_change_of_the_transport_shows_within_one_window() -> None:
    own = OwnLatency(window=10.0)
    own(0.012, 0.010, now=0.0)
    for t in range(1, 12):
        latency = own(0.030, 0.010, now=float(t))  # 20 ms of transport from now on
    assert latency == pytest.approx(0.030)
    assert own.transport == pytest.approx(0.020)


def test_without_a_reported_model_time_the_round_trip_counts() -> None:
    own = OwnLatency()
    assert own(0.050, 0.0) == 0.050
    assert own(0.050, 0.080) == 0.050  # clocks that disagree: the round trip
    assert own.transport is None
    with pytest.raises(ValueError):
        OwnLatency(window=0)


# -- with a real container and a slow event loop ------------------------------------------


def test_a_slow_event_loop_does_not_shrink_the_batch(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SlowModel"))
    slo = 0.030  # the batch objective; the model takes 5 ms a batch
    stall = 0.045  # the loop's time elsewhere per round: over the objective

    async def scenario() -> tuple[int, int, list[float]]:
        mv = ModelVersion("m", "1", "doubles", queue_capacity=1000, max_batch_size=64)
        mv.set_slo(slo)
        try:
            await mv.add_replica("r0", container.address, ready_timeout=30)

            async def fill() -> float:
                # Enough inputs to fill the controller's batch: AIMD learns from it.
                n = mv.controller.batch_size
                started = time.monotonic()
                futures = [
                    mv.submit([0.005, float(i)], b"", time.monotonic() + 30) for i in range(n)
                ]
                await asyncio.gather(*futures)
                return time.monotonic() - started

            for _ in range(5):  # quiet: the transport's floor is learned
                await fill()
            before = mv.controller.batch_size

            async def hog() -> None:
                while True:
                    time.sleep(stall)  # noqa: ASYNC251 (a storm of other work on the loop)
                    await asyncio.sleep(0)

            hogging = asyncio.get_running_loop().create_task(hog())
            try:
                round_trips = [await fill() for _ in range(8)]
            finally:
                hogging.cancel()
            return before, mv.controller.batch_size, round_trips
        finally:
            await mv.close()

    before, after, round_trips = run_async(scenario)
    # Every round trip was over the objective (the loop was slow) ...
    assert min(round_trips) > slo, round_trips
    # ... yet the controller saw 5 ms batches: it grew the batch, never cut it.
    assert after > before, (before, after)
