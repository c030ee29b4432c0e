"""A batch's own latency, as the batch-size controller and admission must see it.

The dispatcher's stopwatch (send to resume) also counts the time the frontend's
event loop spent on other work before it got back to the dispatcher: under a
storm of refused requests that is most of it (14.8 ms "per batch" for a 3.6 ms
model call).  Fed to the AIMD controller, that lag shrinks the batch while the
queue stays empty -- fewer answers per batch, more load per answer, a collapse.

:class:`OwnLatency` rebuilds a batch's latency from what the event loop cannot
inflate: the container's own measurement of its model call
(``PredictResponse.model_seconds``) plus the transport's floor, the least
round trip minus model time among the last batches.  A lasting change of the
transport (a slower network) still shows within one window; a loop that was
busy elsewhere for one batch does not.  A container that reports no model time
leaves the round trip as it is.
"""

from __future__ import annotations

from collections import deque

__all__ = ["TRANSPORT_WINDOW", "OwnLatency"]

#: Batches over which the transport's floor is taken.
TRANSPORT_WINDOW = 16


class OwnLatency:
    """Container time plus the transport's recent floor, per batch.

    Args:
        window: Batches over which the transport's floor is taken (>= 1).
    """

    __slots__ = ("_overheads",)

    def __init__(self, window: int = TRANSPORT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._overheads: deque[float] = deque(maxlen=window)

    @property
    def transport(self) -> float | None:
        """The transport's floor in seconds (None before a reported model time)."""
        return min(self._overheads) if self._overheads else None

    def __call__(self, round_trip: float, model_seconds: float) -> float:
        """The latency of one batch that took ``round_trip`` seconds from send to
        the dispatcher's resumption, ``model_seconds`` of it in the model (0 when
        the container does not say)."""
        if not model_seconds > 0.0 or model_seconds > round_trip:
            # Not reported, or clocks that disagree: only the round trip is known.
            return round_trip
        overheads = self._overheads
        overheads.append(round_trip - model_seconds)
        return model_seconds + min(overheads)
