"""How long a model version's batches take: the estimate behind admission control.

:class:`ServiceTimeEstimator` follows a model version's recent batch latency,
per-item service time and their relation to the batch size;
:meth:`~ServiceTimeEstimator.expected_wait` turns a queue length into the time a
newly queued input would wait (:mod:`clipper_core.admission` explains how
``ModelVersion.submit`` uses it).
"""

from __future__ import annotations

import math

__all__ = ["SPIKE_LIMIT", "ServiceTimeEstimator"]

#: An observed batch counts for at most this many times the current estimates.
SPIKE_LIMIT = 4.0


class ServiceTimeEstimator:
    """Recent batch latency and per-item service time of one model version.

    Both are exponentially weighted moving averages over observed batches.  The
    expected wait of an input queued behind ``queued`` others, with ``replicas``
    replicas taking batches from the queue, is::

        first_free                      # until a replica is free (default: a batch)
        + queued * per_item / replicas  # the batches ahead of it
        + batch_latency_high            # its own batch

    where ``batch_latency_high`` is the mean batch latency plus twice its mean
    deviation (as TCP sizes its retransmission timer), so that a model whose
    batches vary in length is given the margin it needs.

    The latency also follows the batch size, as a line fitted over the same
    recent batches (:meth:`latency_of`): the batches of a model whose load just
    fell from saturation to below capacity are smaller, and so faster, than the
    mean of the recent ones says.  With the ``batch_size`` the queue is taken in,
    :meth:`expected_wait` costs each batch by its size (see there), and the
    deviation is the one around that line, not the spread of sizes.

    Args:
        alpha: Weight of the newest observation (0 < alpha <= 1).
    """

    __slots__ = (
        "_alpha",
        "_size_cov",
        "_size_var",
        "batch_latency",
        "batch_latency_dev",
        "batch_size",
        "observations",
        "per_item",
    )

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self._alpha = alpha
        self.per_item = 0.0
        self.batch_latency = 0.0
        self.batch_latency_dev = 0.0
        #: The mean size of the recent batches.
        self.batch_size = 0.0
        # Weighted variance of the sizes, and their covariance with the latency.
        self._size_var = 0.0
        self._size_cov = 0.0
        self.observations = 0

    @property
    def batch_latency_high(self) -> float:
        """A pessimistic batch latency: the mean plus twice the mean deviation."""
        return self.batch_latency + 2.0 * self.batch_latency_dev

    def observe(self, batch_size: int, latency: float) -> None:
        """Record one batch of ``batch_size`` inputs that took ``latency`` seconds."""
        if batch_size <= 0 or not latency >= 0:
            return
        per_item = latency / batch_size
        if self.observations == 0:
            self.per_item = per_item
            self.batch_latency = latency
            self.batch_size = float(batch_size)
        else:
            # One slow batch (a GC pause, a descheduled VM) must not make every
            # input look late for the next dozen batches and be refused: it counts
            # as at most SPIKE_LIMIT times the estimate.  A lasting slowdown still
            # gets through, compounding batch after batch (x1.6 each at alpha 0.2).
            if self.per_item > 0:
                per_item = min(per_item, self.per_item * SPIKE_LIMIT)
            if self.batch_latency > 0:
                latency = min(latency, self.batch_latency * SPIKE_LIMIT)
            a = self._alpha
            self.per_item += a * (per_item - self.per_item)
            # The deviation from what a batch of this size should take (the
            # spread of sizes is the line's business, not the margin's).
            error = latency - self.latency_of(batch_size)
            self.batch_latency_dev += a * (abs(error) - self.batch_latency_dev)
            d_size = batch_size - self.batch_size
            d_latency = latency - self.batch_latency
            self.batch_size += a * d_size
            self.batch_latency += a * d_latency
            self._size_var = (1.0 - a) * (self._size_var + a * d_size * d_size)
            self._size_cov = (1.0 - a) * (self._size_cov + a * d_size * d_latency)
        self.observations += 1

    def latency_of(self, batch_size: float) -> float:
        """The expected latency of a batch of ``batch_size`` inputs: the recent
        mean latency, moved along the line fitted over the recent batches' sizes
        (its slope between 0 and the mean per input; proportional to the size
        while the sizes have not varied enough to fit one)."""
        mean_size = self.batch_size
        if mean_size <= 0.0:
            return self.batch_latency
        proportional = self.batch_latency / mean_size
        if self._size_var >= 1.0:
            slope = min(max(self._size_cov / self._size_var, 0.0), proportional)
        else:
            slope = proportional
        return max(self.batch_latency + slope * (batch_size - mean_size), 0.0)

    def expected_wait(
        self,
        queued: int,
        replicas: int,
        first_free: float | None = None,
        batch_size: int = 0,
        *,
        own_size: int | None = None,
    ) -> float | None:
        """Seconds an input queued now would wait for its answer, or None while
        there is nothing to go by (no batch observed yet, or no replica).

        Args:
            queued: Inputs ahead of it.
            replicas: Replicas taking batches.
            first_free: Seconds until the first replica is free (0 when one is
                idle); unknown (None): a whole batch, the worst case.
            batch_size: The batch size the queue is taken in, when known: the
                inputs ahead then cost whole batches (``queued // batch_size`` of
                them, each as long as a full batch) and the input rides in the
                next one, rather than ``per_item`` each on top of a batch of its
                own -- which counts the inputs that share its batch twice and
                refuses a moderately loaded model.  Each batch ahead costs
                :meth:`latency_of` a full one; its own batch holds what is
                queued with it, or as many as the recent batches or ``own_size``
                if fewer (later arrivals join it); twice the deviation is added
                once a whole batch waits (a storm's queue).
            own_size: The size of the batch in flight on the replica that
                frees first (the load of the moment), if one is busy.
        """
        if self.observations == 0 or replicas <= 0:
            return None
        if batch_size > 0:
            full = self.latency_of(batch_size)
            # A margin for batches of unknown length ahead (a storm's queue).
            margin = 2.0 * self.batch_latency_dev if queued >= batch_size else 0.0
            if first_free is None or not math.isfinite(first_free):
                first_free = full + 2.0 * self.batch_latency_dev
            # Its batch: what is queued with it, or the smaller of the two signs
            # of the load if more (the arrivals still to come): after a burst the
            # next batch is back to the usual size; after a fall in load the
            # batch in flight is fresher than the recent mean.  In a storm both
            # are full batches.
            size = self.batch_size if own_size is None else min(own_size, self.batch_size)
            own = min(max(queued % batch_size + 1, size), batch_size)
            ahead = (queued // batch_size) * full
            return first_free + ahead / replicas + self.latency_of(own) + margin
        high = self.batch_latency_high
        if first_free is None or not math.isfinite(first_free):
            first_free = high
        return first_free + queued * self.per_item / replicas + high

    def drain_time(self, queued: int, replicas: int) -> float:
        """Seconds until ``queued`` inputs are served (for ``Retry-After``)."""
        if self.observations == 0 or replicas <= 0:
            return 1.0
        return queued * self.per_item / replicas + self.batch_latency
