"""Crash isolation: find the input that makes a model container exit, and refuse it.

A replica that goes away with a batch in flight (its connection lost, or its
dispatcher stopped) hands the batch back, ahead of new work, as one
:class:`SuspectBatch`: a queue item that a replica gets as a call of its own, so
that its fate is its own, already split into at most :data:`ISOLATION_FANOUT`
suspect batches.  The crash may have been the replica's (an out-of-memory kill,
an operator): then the pieces are simply answered.  A suspect batch lost again is
split again, and so on; an input lost while alone in its call, after it was lost
once before, is *poison*.  Splitting at the first loss, rather than sending the
whole batch once more, saves a crash per poison input: each costs a replica
restart (or its standby), and replicas restarting is what denies service while a
stream of new poison inputs arrives.  A loss
counts as evidence only on a replica that showed it was alive (connected, or
answered a call) after the suspects' previous loss: replicas that went away
together (their host or their owning frontend died) blame no input.  Its
requester gets :class:`~clipper_core.errors.InputCrashedModel`, and its digest is
remembered (:class:`PoisonInputs`), so that the same input is refused at
submission, without reaching a replica, for :data:`POISON_TTL` seconds.  A poison
input costs two replica restarts, alone or in a batch (up to the fan-out), then
none.

Work handed back after a crash outlives its requesters' deadlines (up to
:data:`ISOLATION_WINDOW`), and inputs whose requester went away are sent too: a
poison input whose client gave up must still be pinned, or every new request for
it would crash a replica again.
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

from clipper_core.dataplane.futures import consume_exception
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
    """What the queue holds for one input."""

    __slots__ = ("input",)

    def __init__(self, value: Any) -> None:
        self.input = value


class SuspectBatch:
    """Inputs lost with a replica, sent to a replica as one call of their own.

    Attributes:
        entries: The inputs' queue entries; the dispatcher resolves their futures.
        losses: Replicas that went away with these inputs in flight so far.
        removals: Times their dispatcher was stopped with them in flight (the
            replica was removed: scaled down, replaced, or the server stops).
    """

    __slots__ = ("entries", "losses", "lost_at", "removals")

    def __init__(self, entries: list[QueueEntry], losses: int) -> None:
        self.entries = entries
        self.losses = losses
        self.removals = 0
        #: When these inputs were last lost with a replica (``time.monotonic()``).
        self.lost_at = time.monotonic()


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
    """Digests of inputs that crashed a model container, each with the message of
    its error, for ``ttl`` seconds; at most ``capacity`` of them (the oldest are
    dropped)."""

    def __init__(self, ttl: float = POISON_TTL, capacity: int = POISON_CAPACITY) -> None:
        self.ttl = ttl
        self.capacity = capacity
        # digest -> (expiry, message); insertion order is expiry order (one ttl).
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, digest: bytes, message: str) -> None:
        now = time.monotonic()
        self._entries.pop(digest, None)
        self._entries[digest] = (now + self.ttl, message)
        self._expire(now)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, digest: bytes) -> str | None:
        """The error message of a remembered digest, or None."""
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
        suspects: Suspect batches in the queue, not yet taken (the dispatchers
            look for them only while this is not 0).
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
        message = self.poison.get(input_digest(value))
        if message is None:
            return None
        # A fresh exception each time: one raised again and again would keep
        # every traceback it was raised with.
        error = InputCrashedModel(message)
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
                # The queue's own future of the batch: done once it was taken.
                if not e.future.done():
                    e.future.set_result(None)
                item.entries = _unanswered(item.entries)
                if item.entries:
                    suspects.append(item)
            else:
                plain.append(e)
        return plain, suspects

    def lost(
        self,
        entries: Sequence[QueueEntry],
        suspect: SuspectBatch | None,
        replica_id: str,
        exc: BaseException,
        alive_at: float = math.inf,
    ) -> None:
        """A replica went away while ``entries`` were in flight (``suspect``: the
        suspect batch they were, if any): hand them back, split them, or pin.

        ``alive_at`` is when that replica last showed it was alive; a replica that
        did not since the suspects' previous loss died with it, not of them."""
        self._note_loss(replica_id)
        entries = _unanswered(entries)
        if not entries:
            return
        if suspect is not None and alive_at < suspect.lost_at:
            suspect.removals += 1  # no evidence: hand them back, bounded
            if suspect.removals > MAX_REMOVALS:
                self._fail(
                    suspect.entries,
                    ReplicaUnavailable(f"{self._mv.key}: replicas kept going away"),
                )
                return
            suspect.entries = entries
            self._queue(suspect)
            return
        if suspect is None:
            self._split(entries, 1, count=True)
        elif len(entries) > 1:
            self._split(entries, suspect.losses + 1)
        elif suspect.losses >= 1:
            self._pin(entries[0], replica_id, exc)
        else:
            self._queue(SuspectBatch(entries, 1))

    def removed(
        self, entries: Sequence[QueueEntry], suspect: SuspectBatch | None, replica_id: str
    ) -> None:
        """The dispatcher of a replica was stopped while ``entries`` were in flight
        (the replica was removed, or its process exited and that event came first).
        They are handed back; a removal alone counts as no loss."""
        self._note_loss(replica_id)
        if suspect is None:
            entries = _unanswered(entries)
            if entries:
                self._queue(SuspectBatch(entries, 0), count=True)
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

    def retry_alone(self, entries: Sequence[QueueEntry]) -> None:
        """A batch failed with the model's error (it raised, or refused an input):
        each input goes again as a call of its own, ahead of new work, so that
        only the inputs that fail alone get the error (once each: alone, an error
        is final)."""
        for e in _unanswered(entries):
            batch = SuspectBatch([e], 0)
            batch.lost_at = -math.inf  # no loss behind it: lost, it is a plain input
            self._queue(batch, count=True)

    def requeue(self, suspects: Sequence[SuspectBatch]) -> None:
        """Queue again suspect batches that were taken but not sent."""
        for batch in suspects:
            self._queue(batch)

    # -- internals ----------------------------------------------------------------

    def _split(self, entries: list[QueueEntry], losses: int, *, count: bool = False) -> None:
        n = len(entries)
        size = -(-n // min(n, ISOLATION_FANOUT))
        for start in range(0, n, size):
            self._queue(SuspectBatch(entries[start : start + size], losses), count=count)

    def _queue(self, batch: SuspectBatch, *, count: bool = False) -> None:
        """Queue ``batch`` ahead of new work; ``count``: its inputs are handed back
        for the first time (``retried``)."""
        if count:
            self._mv.retried += len(batch.entries)
        now = time.monotonic()
        deadline = max(now + ISOLATION_WINDOW, *(float(e.deadline) for e in batch.entries))
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
            f" away while predicting this input alone ({exc}), after a batch holding it"
            f" was lost the same way; the same input is refused for {minutes:g} min"
        )
        self.poison.add(input_digest(entry.item.input), str(error))
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


def _unanswered(entries: Sequence[QueueEntry]) -> list[QueueEntry]:
    """The entries not answered yet.  One whose requester went away (its future
    cancelled) gets a future of its own: it may be the poison, and must still meet
    a replica (a tensor batch skips entries whose future is done)."""
    out: list[QueueEntry] = []
    for e in entries:
        fut = e.future
        if not fut.done():
            out.append(e)
        elif fut.cancelled():
            own: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            own.add_done_callback(consume_exception)
            out.append(QueueEntry(e.item, own, e.deadline, e.priority, e.enqueued_at))
    return out
