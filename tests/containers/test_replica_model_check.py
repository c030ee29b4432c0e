"""A replica is sent queries only while its container serves the replica's model
version: checked against the container's ``Metadata`` when the replica is added,
when a connection is made again, and before a lost replica gets batches again."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
from container_harness import Container, Launcher, model_class_args, run_async

from bench.ports import free_port
from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.errors import ReplicaUnavailable
from clipper_core.replica_client import ReplicaClient

WAIT = 60.0  # a bound on waits for real processes on shared cores, not a speed


def _start(containers: Launcher, model: str, name: str, port: int, transport: str) -> Container:
    args = [*model_class_args(model, name=name, input_type="doubles"), "--port", str(port)]
    if transport == "grpc":
        args += ["--local-socket", "off"]
    return containers.start(*args)


def _kill(container: Container) -> None:
    container.proc.kill()
    container.wait(30)


def test_a_container_of_another_model_is_refused_when_added(
    containers: Launcher, caplog: pytest.LogCaptureFixture
) -> None:
    other = _start(containers, "EchoModel", "b", free_port(), "local")

    async def scenario() -> tuple[str, bool, bool, bool]:
        mv = ModelVersion("a", "1", "doubles", queue_capacity=16, max_batch_size=4)
        try:
            with pytest.raises(ReplicaUnavailable) as refused:
                await mv.add_replica("r0", other.address, ready_timeout=WAIT)
            assert mv.replicas == {}
        finally:
            await mv.close()
        async with (
            ReplicaClient(other.address, model_name="a", model_version="1") as of_a,
            ReplicaClient(other.address, model_name="b", model_version="2") as of_b2,
            ReplicaClient(other.address, model_name="b", model_version="1") as of_b,
        ):
            return (
                str(refused.value),
                await of_a.serving(),
                await of_b2.serving(),
                (await of_b.serving()),
            )

    with caplog.at_level(logging.ERROR, logger="clipper_core.replica_client"):
        message, a_serving, b2_serving, b_serving = run_async(scenario)
    assert f"a:1 replica r0 at {other.address} serves b:1, not a:1" in message
    assert (a_serving, b2_serving, b_serving) == (False, False, True)
    assert any("serves b:1, not a:1" in r.getMessage() for r in caplog.records)


def test_another_model_at_a_replicas_address_answers_none_of_its_queries(
    containers: Launcher, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A replica registered by hand dies; another model's container starts on its
    # port.  Queries wait (the replica is recovering) until the replica's own model
    # serves there again: none is answered by the other model under this one's name.
    port = free_port()
    first = _start(containers, "SumModel", "a", port, transport)
    address = first.address

    async def scenario() -> tuple[float, object, bool]:
        mv = ModelVersion("a", "1", "doubles", queue_capacity=16, max_batch_size=4)
        try:
            await mv.add_replica("r0", address, ready_timeout=WAIT)
            slot = mv.replicas["r0"]
            assert slot.client.transport == transport
            before = float(await mv.submit(np.array([1.0, 2.0]), b"", time.monotonic() + WAIT))
            await asyncio.to_thread(_kill, first)
            other = await asyncio.to_thread(_start, containers, "EchoModel", "b", port, transport)
            pending = mv.submit(np.array([3.0, 4.0]), b"", time.monotonic() + 3 * WAIT)
            end = time.monotonic() + WAIT
            while not slot.recovering:  # the batch went back; the slot waits
                assert time.monotonic() < end, "the replica was not found serving b"
                assert not pending.done(), pending.result()
                await asyncio.sleep(0.02)
            waited = not pending.done()
            await asyncio.to_thread(_kill, other)
            await asyncio.to_thread(_start, containers, "SumModel", "a", port, transport)
            return before, await pending, waited
        finally:
            await mv.close()

    with caplog.at_level(logging.ERROR, logger="clipper_core.replica_client"):
        before, after, waited = run_async(scenario, timeout=5 * WAIT)
    assert before == 3.0
    assert waited
    assert after == 7.0  # SumModel's answer, from a; b would have echoed the input
    wrong = [r for r in caplog.records if "serves b:1, not a:1" in r.getMessage()]
    assert len(wrong) == 1, [r.getMessage() for r in wrong]  # once, not once per poll
