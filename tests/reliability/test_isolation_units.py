"""Unit tests of crash isolation (``clipper_core.dataplane.isolation``) on a real
model version and queue, without replicas: hand back split, split the inputs lost
again, pin the one lost alone twice, refuse it by digest; the poison set's expiry and
bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from clipper_core.dataplane.isolation import (
    ISOLATION_FANOUT,
    PoisonInputs,
    SuspectBatch,
    input_digest,
)
from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.errors import InputCrashedModel, ReplicaUnavailable
from clipper_core.structures import QueueEntry


def _mv() -> ModelVersion:
    return ModelVersion("m", "1", "doubles", queue_capacity=1000, max_batch_size=64)


def _take(mv: ModelVersion) -> list[QueueEntry]:
    return list(mv.queue.take_nowait(1000))


LOST = ReplicaUnavailable("the container closed its local socket")


def test_digest_names_the_value_its_type_and_shape() -> None:
    a = np.array([1.0, 2.0])
    assert input_digest(a) == input_digest(np.array([1.0, 2.0]))
    assert input_digest(a) != input_digest(a.astype(np.float32))
    assert input_digest(a) != input_digest(a.reshape(2, 1))
    assert input_digest("ab") != input_digest(b"ab")
    assert len(input_digest(b"x")) == 16


def test_poison_set_expires_and_is_bounded() -> None:
    err = "boom"
    ttl = PoisonInputs(ttl=0.05)
    ttl.add(b"a", err)
    assert ttl.get(b"a") is err and len(ttl) == 1
    time.sleep(0.06)
    assert ttl.get(b"a") is None and len(ttl) == 0
    small = PoisonInputs(capacity=2)
    for d in (b"a", b"b", b"c"):
        small.add(d, err)
    assert small.get(b"a") is None and small.get(b"b") is err and len(small) == 2
    small.add(b"b", err)  # added again: now the newest
    small.add(b"d", err)
    assert small.get(b"c") is None and small.get(b"b") is err


def test_hand_back_split_then_pin() -> None:
    async def run() -> None:
        mv = _mv()
        values = [np.array([float(i)]) for i in range(10)]
        futures = [mv.submit(v, b"", time.monotonic() + 0.05) for v in values]
        first = _take(mv)
        # The first loss: the batch back at once split into at most
        # ISOLATION_FANOUT suspect batches, ahead of new work.
        mv.isolation.lost(first, None, "0", LOST)
        assert mv.retried == 10 and 1 < mv.isolation.suspects <= ISOLATION_FANOUT
        mv.submit(np.array([99.0]), b"", time.monotonic() + 5)
        await asyncio.sleep(0.1)  # past the requesters' deadlines: still queued
        taken = _take(mv)
        assert taken[0].priority > 0 and taken[0].deadline > time.monotonic() + 30
        plain, suspects = mv.isolation.split(taken)
        assert [e.item.input[0] for e in plain] == [99.0]
        assert 1 < len(suspects) <= ISOLATION_FANOUT
        assert sorted(e.item.input[0] for s in suspects for e in s.entries) == list(range(10))
        await asyncio.sleep(0)  # the done callbacks
        assert mv.isolation.suspects == 0  # taken
        assert mv.retried == 10  # handed back once each
        # A group lost again is split again, down to single inputs.
        group = next(s for s in suspects if len(s.entries) > 1)
        mv.isolation.lost(group.entries, group, "2", LOST)
        singles = mv.isolation.split(_take(mv))[1]
        assert [len(s.entries) for s in singles] == [1] * len(group.entries)
        poison = singles[0]
        mv.isolation.lost(poison.entries, poison, "3", LOST)
        # The one lost alone is pinned: its requester gets the crash.
        value = poison.entries[0].item.input
        exc = futures[int(value[0])].exception()
        assert isinstance(exc, InputCrashedModel)
        assert "input crashed the model container of m:1" in str(exc)
        assert mv.isolation.isolated == 1 and mv.metrics.errors["input_crashed_model"] == 1
        # ... and the same input is refused at submission, not queued.
        again = mv.submit(np.array([value[0]]), b"", time.monotonic() + 5)
        refused = again.exception()
        assert isinstance(refused, InputCrashedModel) and str(refused) == str(exc)
        assert len(mv.queue) == 0 and mv.isolation.refused == 1
        # Another input is queued as usual.
        mv.submit(np.array([98.0]), b"", time.monotonic() + 5)
        assert len(mv.queue) == 1
        for f in futures:
            f.cancel()
        await mv.close()

    asyncio.run(run())


def test_an_input_lost_alone_is_pinned_at_its_second_loss() -> None:
    async def run() -> None:
        mv = _mv()
        fut = mv.submit(np.array([1.0]), b"", time.monotonic() + 5)
        mv.isolation.lost(_take(mv), None, "0", LOST)
        assert not fut.done()
        [alone] = mv.isolation.split(_take(mv))[1]
        mv.isolation.lost(alone.entries, alone, "0", LOST)
        assert isinstance(fut.exception(), InputCrashedModel)
        await mv.close()

    asyncio.run(run())


def test_replicas_that_died_together_blame_no_input() -> None:
    """A second loss on a replica that showed no life since the first (both went
    away with their host or their frontend) is no evidence: the input is handed
    back, and answered by a replica that was alive afterwards."""

    async def run() -> None:
        mv = _mv()
        fut = mv.submit(np.array([1.0]), b"", time.monotonic() + 5)
        before = time.monotonic()
        mv.isolation.lost(_take(mv), None, "0", LOST, before)
        for rid in ("1", "2"):  # both last answered before the first loss
            [alone] = mv.isolation.split(_take(mv))[1]
            mv.isolation.lost(alone.entries, alone, rid, LOST, before)
            assert not fut.done() and not mv.isolation.poison
        # One that connected (or answered) since: its loss is evidence.
        [alone] = mv.isolation.split(_take(mv))[1]
        mv.isolation.lost(alone.entries, alone, "3", LOST, time.monotonic())
        assert isinstance(fut.exception(), InputCrashedModel)
        await mv.close()

    asyncio.run(run())


def test_withdrawn_input_is_still_handed_back_and_answered_ones_are_not() -> None:
    async def run() -> None:
        mv = _mv()
        gone = mv.submit(np.array([1.0]), b"", time.monotonic() + 5)
        done = mv.submit(np.array([2.0]), b"", time.monotonic() + 5)
        entries = _take(mv)
        gone.cancel()  # the client went away: the input may still be the poison
        entries[1].future.set_result(4.0)
        mv.isolation.lost(entries, None, "0", LOST)
        [back] = mv.isolation.split(_take(mv))[1]
        assert [e.item.input[0] for e in back.entries] == [1.0]
        assert not back.entries[0].future.done()  # a future of its own, to be sent
        assert done.result() == 4.0
        await mv.close()

    asyncio.run(run())


def test_a_removed_replica_requeues_a_suspect_batch_unchanged() -> None:
    async def run() -> None:
        mv = _mv()
        fut = mv.submit(np.array([1.0]), b"", time.monotonic() + 5)
        entries = _take(mv)
        batch = SuspectBatch(entries, 2)
        for _ in range(3):
            mv.isolation.removed(entries, batch, "0")
            [taken] = mv.isolation.split(_take(mv))[1]
            assert taken is batch and not fut.done()
        mv.isolation.removed(entries, batch, "0")
        assert isinstance(fut.exception(), ReplicaUnavailable)
        assert mv.isolation.isolated == 0
        await mv.close()

    asyncio.run(run())


def test_a_suspect_batch_that_no_replica_takes_fails_its_inputs() -> None:
    async def run() -> None:
        mv = _mv()
        fut = mv.submit(np.array([1.0]), b"", time.monotonic() + 5)
        mv.isolation.lost(_take(mv), None, "0", LOST)
        assert mv.isolation.suspects == 1
        await mv.close()  # the queue closes with the suspect batch in it
        for _ in range(3):  # the queue's future, then the copy to the requester's
            await asyncio.sleep(0)
        exc = fut.exception()
        assert isinstance(exc, ReplicaUnavailable) and "no replica took it again" in str(exc)
        assert mv.isolation.suspects == 0

    asyncio.run(run())


@pytest.mark.parametrize("value", [np.array([1.5, 2.5]), "text", b"raw"])
def test_refusal_only_for_known_digests(value: Any) -> None:
    async def run() -> None:
        mv = _mv()
        mv.isolation.poison.add(input_digest(value), "boom")
        assert mv.isolation.refusal(value) is not None
        assert mv.isolation.refusal(np.array([0.0])) is None
        await mv.close()

    asyncio.run(run())
