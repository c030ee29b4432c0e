"""A batch's own latency, as the batch-size controller and admission must see it.

The dispatcher's stopwatch (send to resume) also counts the time the frontend's
event loop spent on other work before it got back to the dispatcher: under a
storm of refused requests that is most of it (14.8 ms "per batch" for a 3.6 ms
model call).  Fed to the AIMD controller, that lag shrinks the batch while the
queue stays empty -- fewer answers per batch, more load per answer, a collapse.

:class:`OwnLatency` rebuilds a batch's latency from what the event loop cannot
inflate: the container's own measurement of its model call
(``PredictResponse.model_seconds``) plus the transport's floor, the least
round trip minus model time seen in the last :data:`TRANSPORT_WINDOW` seconds.
A loop that is busy elsewhere for a whole storm inflates every round trip of
the storm, so the window is long: a storm shorter than it leaves the floor
where it was before, while a lasting change of the transport (a slower
network) shows within one window.  A container that reports no model time
leaves the round trip as it is.
"""

from __future__ import annotations

import time
from collections import deque

__all__ = ["TRANSPORT_WINDOW", "OwnLatency"]

#: Seconds over which the transport's floor is taken.
TRANSPORT_WINDOW = 60.0


class OwnLatency:
    """Container time plus the transport's recent floor, per batch.

    Args:
        window: Seconds over which the transport's floor is taken (> 0).
    """

    __slots__ = ("_minima", "_window")

    def __init__(self, window: float = TRANSPORT_WINDOW) -> None:
        if not window > 0:
            raise ValueError("window must be > 0")
        self._window = window
        # (time, overhead), overheads increasing: the sliding window's minimum
        # is the first entry (each later one is the minimum after the former
        # leaves the window).
        self._minima: deque[tuple[float, float]] = deque()

    @property
    def transport(self) -> float | None:
        """The transport's floor in seconds (None before a reported model time)."""
        return self._minima[0][1] if self._minima else None

    def __call__(self, round_trip: float, model_seconds: float, now: float | None = None) -> float:
        """The latency of one batch that took ``round_trip`` seconds from send to
        the dispatcher's resumption, ``model_seconds`` of it in the model (0 when
        the container does not say); ``now`` is ``time.monotonic()``."""
        if not model_seconds > 0.0 or model_seconds > round_trip:
            # Not reported, or clocks that disagree: only the round trip is known.
            return round_trip
        if now is None:
            now = time.monotonic()
        overhead = round_trip - model_seconds
        minima = self._minima
        while minima and minima[-1][1] >= overhead:
            minima.pop()
        minima.append((now, overhead))
        horizon = now - self._window
        while minima[0][0] < horizon:
            minima.popleft()
        return model_seconds + minima[0][1]
