"""Crash isolation: find the input that makes a model container exit, and refuse it.

A replica that goes away with a batch in flight (its connection lost, or its
dispatcher stopped) hands the batch back once, ahead of new work: the crash may
have been the replica's (an out-of-memory kill, an operator), not the batch's.
An input whose batch is lost a second time is a *suspect*.  The suspects are split
into at most :data:`ISOLATION_FANOUT` groups, and each group (a
:class:`SuspectBatch`, one queue item) is sent to a replica alone, so that its
fate is its own: a group that is answered was innocent; one lost again is split
again; an input lost while alone in its call is *poison*.  Its requester gets
:class:`~clipper_core.errors.InputCrashedModel`, and its digest is remembered
(:class:`PoisonInputs`), so that the same input is refused at submission, without
reaching a replica, for :data:`POISON_TTL` seconds.  One poison input costs three
replica restarts (batches up to the fan-out), then none.

Work handed back after a crash outlives its requesters' deadlines (up to
:data:`ISOLATION_WINDOW`): a poison input whose client gave up must still be
pinned, or every new request for it would crash a replica again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from clipper_core.dataplane.futures import copy_outcome
from clipper_core.dataplane.tensor_batch import TensorQuery
from clipper_core.errors import ClipperError, InputCrashedModel, ReplicaUnavailable
from clipper_core.metrics import ModelVersionMetrics
from clipper_core.structures import BatchQueue, QueueEntry

log = logging.getLogger("clipper_core.dataplane")

__all__ = [
    "ISOLATION_FANOUT",
    "ISOLATION_WINDOW",
    "POISON_CAPACITY",
    "POISON_TTL",
    "RETRY_PRIORITY",
    "CrashIsolation",
    "PendingQuery",
    "PoisonInputs",
    "SuspectBatch",
    "input_digest",
]

#: Priority of work handed back after its replica was lost: ahead of new work.
RETRY_PRIORITY = 1
#: Most groups the suspects of one lost batch are split into (each costs one call).
ISOLATION_FANOUT = 8
#: Seconds that work handed back after a crash may wait for a replica, whatever
#: its requesters' deadlines.
ISOLATION_WINDOW = 60.0
#: Removals of its replica that a suspect batch survives; then it fails.
MAX_REMOVALS = 3
#: Seconds a poison input is refused after it crashed a replica.
POISON_TTL = 600.0
#: Most poison digests remembered per model version (the oldest go first).
POISON_CAPACITY = 10_000


class PendingQuery:
    """What the queue holds for one input: the input, and whether it was handed back."""

    __slots__ = ("input", "retried")

    def __init__(self, value: Any) -> None:
        self.input = value
        self.retried = False


class SuspectBatch:
    """Inputs lost with two replicas, sent to a replica as one call of their own.

    Attributes:
        entries: The inputs' queue entries; the dispatcher resolves their futures.
        losses: Replicas that went away with these inputs in flight so far.
        removals: Times their dispatcher was stopped with them in flight (the
            replica was removed: scaled down, replaced, or the server stops).
    """

    __slots__ = ("entries", "losses", "removals")

    def __init__(self, entries: list[QueueEntry], losses: int) -> None:
        self.entries = entries
        self.losses = losses
        self.removals = 0


def input_digest(value: Any) -> bytes:
    """A 16-byte digest of an input as a model version receives it: the bytes of a
    numeric array (with dtype and shape), a string's UTF-8, the bytes themselves,
    or a tensor query's cache key."""
    if type(value) is TensorQuery:
        data = value.cache_key()
    elif isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        data = f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()
    elif isinstance(value, str):
        data = b"s" + value.encode("utf-8", "surrogatepass")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = b"b" + bytes(value)
    else:  # nested lists from the Python API: their repr is their value
        data = b"r" + repr(value).encode()
    return hashlib.blake2b(data, digest_size=16).digest()


class PoisonInputs:
    """Digests of inputs that crashed a model container, each with its error, for
    ``ttl`` seconds; at most ``capacity`` of them (the oldest are dropped)."""

    def __init__(self, ttl: float = POISON_TTL, capacity: int = POISON_CAPACITY) -> None:
        self.ttl = ttl
        self.capacity = capacity
        # digest -> (expiry, error); insertion order is expiry order (one ttl).
        self._entries: OrderedDict[bytes, tuple[float, InputCrashedModel]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, digest: bytes, error: InputCrashedModel) -> None:
        now = time.monotonic()
        self._entries.pop(digest, None)
        self._entries[digest] = (now + self.ttl, error)
        self._expire(now)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, digest: bytes) -> InputCrashedModel | None:
        """The error of a remembered digest, or None."""
        self._expire(time.monotonic())
        found = self._entries.get(digest)
        return None if found is None else found[1]

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            digest, (expiry, _) = next(iter(entries.items()))
            if expiry > now:
                return
            del entries[digest]


class IsolatingModel(Protocol):
    """What :class:`CrashIsolation` uses of its model version (``ModelVersion``)."""

    @property
    def key(self) -> str: ...

    queue: BatchQueue
    metrics: ModelVersionMetrics
    #: Inputs handed back to the queue after their replica was lost.
    retried: int


class CrashIsolation:
    """The crash isolation of one model version (see the module's docstring).

    Attributes:
        poison: The inputs refused at submission.
        suspects: Suspect batches queued or in flight (the dispatchers look for
            them only while this is not 0).
        isolated: Inputs found to crash the model container.
        refused: Requests for them refused since.
    """

    def __init__(self, mv: IsolatingModel, poison: PoisonInputs | None = None) -> None:
        self._mv = mv
        self.poison = poison if poison is not None else PoisonInputs()
        self.suspects = 0
        self.isolated = 0
        self.refused = 0
        self._last_loss = -math.inf
        self._last_loss_what = ""

    # -- submission ---------------------------------------------------------------

    def refusal(self, value: Any) -> asyncio.Future[Any] | None:
        """A future failed with the input's error if ``value`` is known poison;
        else None.  Call only while ``poison`` is not empty."""
        error = self.poison.get(input_digest(value))
        if error is None:
            return None
        self.refused += 1
        self._mv.metrics.error(error.kind, 1)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(error)
        return fut

    def recent_loss(self, within: float = 10.0) -> str | None:
        """What was lost, if a replica went away with work in flight in the last
        ``within`` seconds (for the explanation of a late answer)."""
        ago = time.monotonic() - self._last_loss
        if ago > within:
            return None
        return f"{self._last_loss_what} {ago:.1f} s ago; its inputs are being retried"

    # -- dispatch -----------------------------------------------------------------

    @staticmethod
    def split(entries: list[QueueEntry]) -> tuple[list[QueueEntry], list[SuspectBatch]]:
        """A taken batch's plain entries, and its suspect batches (to send alone)."""
        plain: list[QueueEntry] = []
        suspects: list[SuspectBatch] = []
        for e in entries:
            item = e.item
            if type(item) is SuspectBatch:
                suspects.append(item)
                # The queue's own future of the group: done once it was taken.
                if not e.future.done():
                    e.future.set_result(None)
            else:
                plain.append(e)
        return plain, suspects

    def lost(
        self,
        entries: Sequence[QueueEntry],
        suspect: SuspectBatch | None,
        replica_id: str,
        exc: BaseException,
    ) -> None:
        """A replica went away while ``entries`` were in flight (``suspect``: the
        suspect batch they were, if any): hand them back, isolate, or pin."""
        self._note_loss(replica_id)
        entries = _unanswered(entries)
        if suspect is None:
            self._hand_back(entries)
        elif len(entries) == 1:
            self._pin(entries[0], replica_id, exc)
        elif entries:
            self._isolate(entries, suspect.losses + 1)

    def removed(
        self, entries: Sequence[QueueEntry], suspect: SuspectBatch | None, replica_id: str
    ) -> None:
        """The dispatcher of a replica was stopped while ``entries`` were in flight
        (the replica was removed, or the process exited and its event came first).
        Plain inputs are handed back as after a loss; a suspect batch is queued
        again as it is, since a removal proves nothing about its inputs."""
        self._note_loss(replica_id)
        if suspect is None:
            self._hand_back(_unanswered(entries))
            return
        suspect.removals += 1
        if suspect.removals > MAX_REMOVALS:
            self._fail(
                suspect.entries,
                ReplicaUnavailable(
                    f"{self._mv.key}: {suspect.removals} replicas were removed with this"
                    " input in flight"
                ),
            )
            return
        self._queue(suspect)

    def _note_loss(self, replica_id: str) -> None:
        self._last_loss = time.monotonic()
        self._last_loss_what = f"replica {replica_id} of {self._mv.key} went away with a batch"

    def _hand_back(self, entries: Sequence[QueueEntry]) -> None:
        mv = self._mv
        again: list[QueueEntry] = []
        for entry in entries:
            item: PendingQuery = entry.item
            if item.retried:
                again.append(entry)
                continue
            item.retried = True
            mv.retried += 1
            self._put_back(entry)
        if again:
            self._isolate(again, 2)

    def requeue(self, suspects: Sequence[SuspectBatch]) -> None:
        """Queue again suspect batches that were taken but not sent."""
        for batch in suspects:
            self._queue(batch)

    # -- internals ----------------------------------------------------------------

    def _put_back(self, entry: QueueEntry) -> None:
        """Hand one input back, ahead of new work, past its requester's deadline."""
        fut = entry.future
        try:
            again = self._mv.queue.put(entry.item, self._deadline(entry), RETRY_PRIORITY)
        except ClipperError as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        # Not withdrawn when the requester goes away: if this input is the poison,
        # it must meet a replica again to be found.
        again.add_done_callback(lambda f, dst=fut: copy_outcome(f, dst))

    def _isolate(self, entries: list[QueueEntry], losses: int) -> None:
        n = len(entries)
        groups = min(n, ISOLATION_FANOUT)
        size = -(-n // groups)
        self._mv.retried += n
        for start in range(0, n, size):
            self._queue(SuspectBatch(entries[start : start + size], losses))

    def _queue(self, batch: SuspectBatch) -> None:
        deadline = max(self._deadline(e) for e in batch.entries)
        try:
            fut = self._mv.queue.put(batch, deadline, RETRY_PRIORITY)
        except ClipperError as exc:
            self._fail(batch.entries, exc)
            return
        self.suspects += 1
        fut.add_done_callback(lambda f, b=batch: self._settled(f, b))

    def _settled(self, fut: asyncio.Future[Any], batch: SuspectBatch) -> None:
        # Taken (``split`` sets the result), or expired or closed in the queue.
        self.suspects -= 1
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(
                batch.entries,
                ReplicaUnavailable(
                    f"{self._mv.key}: a replica went away with this input twice, and no"
                    f" replica took it again ({exc})"
                ),
            )

    def _pin(self, entry: QueueEntry, replica_id: str, exc: BaseException) -> None:
        mv = self._mv
        minutes = self.poison.ttl / 60.0
        error = InputCrashedModel(
            f"input crashed the model container of {mv.key}: replica {replica_id} went"
            f" away while predicting this input alone ({exc}), after two batches holding"
            f" it were lost the same way; the same input is refused for {minutes:g} min"
        )
        self.poison.add(input_digest(entry.item.input), error)
        self.isolated += 1
        mv.metrics.error(error.kind, 1)
        log.warning("%s", error)
        if not entry.future.done():
            entry.future.set_exception(error)

    def _fail(self, entries: Sequence[QueueEntry], exc: BaseException) -> None:
        self._mv.metrics.error(getattr(exc, "kind", "internal"), len(entries))
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(exc)

    @staticmethod
    def _deadline(entry: QueueEntry) -> float:
        return max(float(entry.deadline), time.monotonic() + ISOLATION_WINDOW)


def _unanswered(entries: Sequence[QueueEntry]) -> list[QueueEntry]:
    """The entries not answered yet: pending, or withdrawn by their requester (a
    withdrawn input may be the poison, and must meet a replica again)."""
    return [e for e in entries if not e.future.done() or e.future.cancelled()]
