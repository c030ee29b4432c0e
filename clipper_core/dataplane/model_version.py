"""One deployed model version: its batching queue, batch-size controller and replicas.

Each replica has a dispatcher task that pulls batches sized by the controller from
the shared queue (so a free replica takes the next batch: more replicas, more
throughput) and sends them over gRPC.  A replica that goes away mid-batch hands
the batch back to the queue, at high priority, as a call of its own for another
(or the restarted) replica; a batch lost again is split until the input that
crashes the container is found and refused (:mod:`clipper_core.dataplane.isolation`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from clipper_core.admission import ADMISSION_HEADROOM, ServiceTimeEstimator
from clipper_core.dataplane.batch_controller import batch_controller, teach
from clipper_core.dataplane.batch_split import cut_batch
from clipper_core.dataplane.coalesce import SharedComputation
from clipper_core.dataplane.futures import answer_entry, consume_exception
from clipper_core.dataplane.isolation import CrashIsolation, PendingQuery, SuspectBatch
from clipper_core.dataplane.replica_slot import ReplicaSlot
from clipper_core.dataplane.replica_watch import start_watch
from clipper_core.dataplane.tensor_batch import TensorQuery, predict_tensor_batch
from clipper_core.errors import (
    BadInput,
    ClipperError,
    DeadlineExceeded,
    ModelError,
    ModelTimeout,
    Overloaded,
    QueueClosed,
    ReplicaUnavailable,
)
from clipper_core.metrics import ModelVersionMetrics
from clipper_core.replica_client import ReplicaConnector, insecure_connector
from clipper_core.structures import BatchQueue, PredictionCache, QueueEntry
from model_containers import hop_trace

log = logging.getLogger("clipper_core.dataplane")

#: Objective used while no application is linked.
UNLINKED_BATCH_SLO = 0.1


class ModelVersion:
    """A model version that can be queried; owns its queue and dispatchers.

    ``connector`` makes the client of each replica that connects (see
    :class:`~clipper_core.replica_client.ReplicaConnector`).
    """

    def __init__(
        self,
        name: str,
        version: str,
        input_type: str,
        *,
        queue_capacity: int,
        max_batch_size: int,
        batch_size: int = -1,
        controller: str | None = None,
        batch_wait: float = 0.0,
        batch_timeout: float = 30.0,
        cache: PredictionCache | None = None,
        admission: bool = False,
        on_replica_hung: Callable[[str], None] | None = None,
        connector: ReplicaConnector = insecure_connector,
        supervised: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.input_type = input_type
        self.batch_wait = batch_wait
        self.batch_timeout = batch_timeout
        self.cache = cache
        self.connector = connector
        self.queue = BatchQueue(queue_capacity, name=f"{name}:{version}")
        # No batch larger than the queue: a taker waiting for more inputs than
        # the queue can hold would wait out the whole batch wait every time.
        self.controller = batch_controller(
            controller,
            min(batch_size, queue_capacity),
            min(max_batch_size, queue_capacity),
            UNLINKED_BATCH_SLO,
        )
        self.replicas: dict[str, ReplicaSlot] = {}
        #: Replicas being connected (``add_replica`` waits for them to be ready):
        #: they will answer soon, so a query waits for them (see ``nothing_can_answer``).
        self.connecting = 0
        self.queries = 0
        self.cache_hits = 0
        self.retried = 0
        self.metrics = ModelVersionMetrics()
        self.closed = False
        # Admission control (see clipper_core.admission): refuse an input whose
        # expected queueing wait exceeds its remaining deadline.
        self.admission = admission
        self.estimator = ServiceTimeEstimator()
        self.rejected_overload = 0
        # Called with a replica id when one of its batches passes batch_timeout;
        # the server recycles the replica's process.
        self.on_replica_hung = on_replica_hung
        # Whether a replica id's process is supervised here (else see replica_watch).
        self.supervised = supervised
        self.timeouts = 0
        # Queued inputs cancelled because every requester went away.
        self.cancelled = 0
        # Inputs whose requester went away (client disconnects) while pending.
        self.withdrawn = 0
        # Cache key -> the queued computation that waiters of that key share.
        self._computations: dict[bytes, SharedComputation] = {}
        # Finds and refuses the inputs that crash the model container.
        self.isolation = CrashIsolation(self)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    def set_slo(self, batch_slo: float | None) -> None:
        """Set the batch latency objective (seconds; None: no app is linked).

        The data plane's caller decides it (``clipper_core.planning.budgets``).
        """
        target = UNLINKED_BATCH_SLO if batch_slo is None else batch_slo
        self.controller.set_slo(max(target, 1e-4))

    # -- queries ----------------------------------------------------------------

    def submit(self, value: Any, key: bytes, deadline: float) -> Any:
        """Enqueue one input; return its output future (or, on a cache hit, a done one).

        Cancelling the returned future withdraws the input: a queued input that no
        requester waits for any more is skipped by the dispatchers (identical inputs
        share one computation, which is withdrawn only when all its requesters are
        gone).

        Raises QueueFull / QueueClosed / Overloaded at once, so the caller can
        answer 503.  An input known to crash the model container gets a future
        failed with ``InputCrashedModel``.
        """
        self.queries += 1
        if self.isolation.poison:
            refused = self.isolation.refusal(value)
            if refused is not None:
                return refused
        cache = self.cache
        if cache is None:
            self._admit(deadline)
            queued = self.queue.put(PendingQuery(value), deadline)
            if hop_trace.ENABLED:
                hop_trace.mark("queued")
            return queued
        loop = asyncio.get_running_loop()
        miss = _MISS
        hit = cache.get(self.name, self.version, key, miss)
        if hit is not miss:
            self.cache_hits += 1
            done: asyncio.Future[Any] = loop.create_future()
            done.set_result(hit)
            return done
        self.metrics.cache_misses += 1
        shared, owner = cache.reserve(self.name, self.version, key)
        if not owner:
            computation = self._computations.get(key)
            if computation is not None and not shared.done():
                computation.join(shared, deadline)
            return shared
        try:
            self._admit(deadline)
            queued = self.queue.put(PendingQuery(value), deadline)
        except ClipperError as exc:
            cache.fail(self.name, self.version, key, exc)
            consume_exception(shared)
            raise
        computation = SharedComputation(self, cache, key, queued, value, deadline)
        self._computations[key] = computation
        computation.join(shared, deadline)
        queued.add_done_callback(computation.settle)
        return shared

    def requeue(self, value: Any, deadline: float) -> asyncio.Future[Any]:
        """Queue ``value`` again as a fresh input (for a shared computation that
        expired while a later requester still waits); raises as ``BatchQueue.put``."""
        future: asyncio.Future[Any] = self.queue.put(PendingQuery(value), deadline)
        return future

    def _admit(self, deadline: float) -> None:
        """Refuse an input that would wait in the queue past its deadline."""
        refusal = self.overload(deadline)
        if refusal is not None:
            self.rejected_overload += 1
            raise refusal

    def overload(self, deadline: float, incoming: int = 0) -> Overloaded | None:
        """Why admission control would refuse an input due by ``deadline`` now
        (its expected wait exceeds the remaining deadline), or None.  Cheap: a
        frontend may ask before it reads a request's body, counting as
        ``incoming`` the inputs it let through that are not queued yet."""
        if not self.admission:
            return None
        queued = len(self.queue) + incoming
        now = time.monotonic()
        estimator = self.estimator
        replicas = 0
        idle = False
        first_free = math.inf  # when the first busy replica should be done
        next_size = 1  # the size of that replica's batch
        for s in self.replicas.values():
            if not s.up:
                continue
            replicas += 1
            if not s.in_flight:
                idle = True
            else:
                # The batch in flight, by its own size (a load that just fell
                # runs smaller batches than the recent mean).
                size = len(s.in_flight)
                done_in = max(0.0, estimator.latency_of(size) - (now - s.batch_started))
                if done_in < first_free:
                    first_free, next_size = done_in, size
        if queued == 0 and idle:
            # Next in line for an idle replica: whether the model is fast enough
            # for the deadline is not overload (the app's default answers that).
            return None
        wait = estimator.expected_wait(
            queued,
            replicas,
            0.0 if idle else first_free,
            self.controller.batch_size,
            own_size=next_size,
        )
        if wait is None:
            return None
        remaining = deadline - now
        # Less than a batch waiting: it rides the next batch and delays no one,
        # so it is refused only when expected to be late; the headroom is for
        # a queue that grows (a storm), where admitting what may be late
        # delays everything behind it.
        if queued < self.controller.batch_size:
            if wait <= remaining:
                return None
        elif wait <= remaining * ADMISSION_HEADROOM:
            return None
        return Overloaded(
            f"{self.key} is overloaded: {queued} inputs queued for {replicas} replica(s);"
            f" the expected wait of {wait * 1000:.0f} ms exceeds the remaining deadline"
            f" of {max(remaining, 0.0) * 1000:.0f} ms",
            retry_after=self.estimator.drain_time(queued, replicas),
        )

    # -- replicas ---------------------------------------------------------------

    async def add_replica(self, replica_id: str, address: str, *, ready_timeout: float) -> None:
        """Connect to a replica and start its dispatcher.  One of the same id (a
        new address) is replaced once this one is ready, and serves on if it fails."""
        old = self.replicas.get(replica_id)
        client = self.connector(address, self.name, self.version, replica_id)
        self.connecting += 1
        try:
            await client.wait_ready(ready_timeout)
        except BaseException:
            await client.close()
            raise
        finally:
            # No await from here until the slot joins ``replicas``: a query sees one or the other.
            self.connecting -= 1
        if self.closed or self.replicas.get(replica_id) is not old:
            # Stopped, or another connect (or a removal) of this replica came first.
            await client.close()
            if self.closed:
                raise QueueClosed(f"model version {self.key} was stopped")
            return
        slot = ReplicaSlot(replica_id, address, client)
        slot.watched = self.supervised is None or not self.supervised(replica_id)
        slot.task = self._start_dispatcher(slot)
        if slot.watched:
            what = f"replica {replica_id} of {self.key} at {address}"
            slot.watch = start_watch(slot, what, lambda: self._start_dispatcher(slot))
        self.replicas[replica_id] = slot
        log.info("replica %s of %s connected at %s", replica_id, self.key, address)
        if old is not None:
            await old.stop()  # its batch in flight, if any, goes to the new one

    def _start_dispatcher(self, slot: ReplicaSlot) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(
            self._dispatch(slot), name=f"dispatch {self.key} replica {slot.replica_id}"
        )

    async def remove_replica(self, replica_id: str) -> None:
        """Stop a replica's dispatcher; its in-flight batch is handed back."""
        slot = self.replicas.pop(replica_id, None)
        if slot is not None:
            await slot.stop()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (a bound, not a cancel)
        """Wait until nothing is queued or in flight (``timeout`` seconds at most),
        so that stopping the replicas next fails no accepted input; whether it did."""
        end = time.monotonic() + timeout
        while len(self.queue) or any(s.in_flight for s in self.replicas.values()):
            if not self.replicas or time.monotonic() >= end:
                return False
            await asyncio.sleep(0.005)
        return True

    async def close(self) -> None:
        """Stop every dispatcher and fail whatever is still queued."""
        self.closed = True
        for replica_id in list(self.replicas):
            await self.remove_replica(replica_id)
        self.queue.close()

    def replica_info(self) -> list[dict[str, Any]]:
        return [
            {
                "replica_id": s.replica_id,
                "address": s.address,
                "batches": s.batches,
                "failures": s.failures,
                "busy": bool(s.in_flight),
                "up": s.up,
            }
            for s in self.replicas.values()
        ]

    # -- dispatch ---------------------------------------------------------------

    async def _dispatch(self, slot: ReplicaSlot) -> None:
        queue = self.queue
        controller = self.controller
        isolation = self.isolation
        while True:
            try:
                entries = await queue.take_for(controller, self.batch_wait)
            except QueueClosed:
                return
            if hop_trace.ENABLED:
                hop_trace.mark("batch_taken")
            suspects: list[SuspectBatch] = []
            if isolation.suspects:
                # Each suspect batch is a call of its own, after the plain inputs.
                entries, suspects = isolation.split(entries)
            if len(entries) > 1:  # calls of at most BATCH_BYTES each, in order
                entries, more = cut_batch(entries)
                suspects[:0] = more
            try:
                lost = bool(entries) and await self._call(slot, entries, None)
                while suspects and not lost:
                    batch = suspects.pop(0)
                    lost = await self._call(slot, batch.entries, batch)
            except asyncio.CancelledError:
                isolation.requeue(suspects)
                raise
            if lost:
                isolation.requeue(suspects)
                # Take nothing more until it answers health checks again: the
                # process manager restarts a local replica (and replaces this
                # slot); an external one may come back by itself.
                await slot.recover()

    async def _call(
        self, slot: ReplicaSlot, entries: list[QueueEntry], suspect: SuspectBatch | None
    ) -> bool:
        """Send ``entries`` to the replica as one call and resolve their futures;
        True when the replica went away or hung (it must recover first)."""
        client = slot.client
        slot.in_flight = entries
        inputs = [e.item.input for e in entries]
        started = time.monotonic()
        slot.batch_started = started
        try:
            if any(type(x) is TensorQuery for x in inputs):
                # Open Inference Protocol requests: resolves the futures itself.
                outputs = await predict_tensor_batch(self, client, entries)
            else:
                outputs = await client.predict(inputs, self.input_type, timeout=self.batch_timeout)
        except ReplicaUnavailable as exc:
            slot.failures += 1
            self.isolation.lost(entries, suspect, slot.replica_id, exc, slot.alive_at)
            log.warning("replica %s of %s unavailable: %s", slot.replica_id, self.key, exc)
            return True
        except DeadlineExceeded:
            # The batch ran past batch_timeout: the model hangs (or is far too
            # slow).  Its inputs fail -- not handed back, since a poison input
            # would hang the next replica too -- and the replica is recycled, or
            # if no supervisor here restarts it, quarantined (then one trial batch).
            self.timeouts += 1
            slot.failures += 1
            then = "the replica is being restarted"
            if slot.watched:
                then = f"it gets no batch for {slot.quarantine_after_timeout():g} s"
            timeout_error = ModelTimeout(
                f"{self.key}: a batch of {len(entries)} took longer than the batch"
                f" timeout of {self.batch_timeout:g} s on replica {slot.replica_id}; {then}"
            )
            self.metrics.error(timeout_error.kind, len(entries))
            self._fail(entries, timeout_error)
            log.error("%s", timeout_error)
            if self.on_replica_hung is not None:
                try:
                    self.on_replica_hung(slot.replica_id)
                except Exception:
                    log.exception("recycling replica %s of %s failed", slot.replica_id, self.key)
            return True
        except asyncio.CancelledError:
            self.isolation.removed(entries, suspect, slot.replica_id)
            raise
        except (ModelError, BadInput) as exc:
            if len(entries) > 1:  # one input's error is not the others': each again, alone
                self.isolation.retry_alone(entries)
            else:
                self.metrics.error(exc.kind, 1)
                self._fail(entries, exc)
        except ClipperError as exc:
            self.metrics.error(exc.kind, len(entries))
            self._fail(entries, exc)
        except Exception as exc:  # a bug, not a model error: keep serving
            log.exception("dispatch to %s failed", self.key)
            self.metrics.error("internal", len(entries))
            self._fail(entries, ModelError(f"{type(exc).__name__}: {exc}"))
        else:
            if hop_trace.ENABLED:
                hop_trace.mark("outputs_decoded")
            try:
                latency = time.monotonic() - started
                if len(entries) == 1 and suspect is None:
                    # A batch of one (light load): its requester writes its reply
                    # before the bookkeeping below, which waits one loop turn.
                    fut = entries[0].future
                    if not fut.done():
                        answer_entry(fut, outputs[0], alone=True)
                    slot.in_flight = []
                    await asyncio.sleep(0)
                slot.failures = 0
                slot.quarantine = 0.0  # a hung replica's trial batch was answered
                slot.batches += 1
                slot.alive_at = time.monotonic()
                if suspect is None:  # a suspect call's size is not the controller's
                    # The batch size is the batch's own latency's business, not
                    # the event loop's time spent elsewhere; the expected wait
                    # (admission) is what a queued input lives through: all of it.
                    self._observe(
                        len(entries), slot.own_latency(latency, client.last_model_seconds)
                    )
                    self.estimator.observe(len(entries), latency)
                self.metrics.batch_done(len(entries), latency, client.last_model_seconds)
                alone = len(entries) == 1
                for entry, output in zip(entries, outputs, strict=True):
                    fut = entry.future
                    if not fut.done():
                        answer_entry(fut, output, alone=alone)
            except Exception as exc:  # never let the dispatcher die with futures open
                log.exception("finishing a batch of %s failed", self.key)
                self._fail(entries, ModelError(f"{type(exc).__name__}: {exc}"))
        finally:
            slot.in_flight = []
        return False

    def _observe(self, n: int, latency: float) -> None:
        teach(self.controller, n, latency)

    @staticmethod
    def _fail(entries: list[QueueEntry], exc: BaseException) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(exc)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.name,
            "version": self.version,
            "queries": self.queries,
            "cache_hits": self.cache_hits,
            "retried": self.retried,
            "queue": self.queue.stats(),
            "batch_size": self.controller.batch_size,
            "replicas": len(self.replicas),
            "rejected_overload": self.rejected_overload,
            "cancelled": self.cancelled,
            "withdrawn": self.withdrawn,
            "batch_timeouts": self.timeouts,
            "isolated_inputs": self.isolation.isolated,
            "poison_refused": self.isolation.refused,
        }
        return out


class _Missing:
    __slots__ = ()


_MISS = _Missing()
