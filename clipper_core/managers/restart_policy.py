"""How long a supervised replica waits before it is started again.

Exponential backoff, as Kubernetes' CrashLoopBackOff does, but only for crash
loops: a process that stayed up ``stable_after`` seconds, or that served (was
ready) for at least ``served_before_crash`` seconds before it died, starts over
at the shortest delay.  One input that crashes the model, or an OOM kill, must
not keep a replica down for seconds.
"""

from __future__ import annotations

from clipper_core.errors import BadInput

#: A process that was ready this long before it died restarts after the shortest
#: delay: it crashed while serving, not in a start-up loop.
SERVED_BEFORE_CRASH = 1.0


class RestartBackoff:
    """The delays before the restarts of one replica.

    Args:
        first: The shortest delay, in seconds.
        largest: The longest delay; each crash of a loop doubles the delay up to it.
        stable_after: Uptime after which the delay starts over.
        served_before_crash: Time ready after which the delay starts over.
    """

    def __init__(
        self,
        first: float,
        largest: float,
        stable_after: float,
        served_before_crash: float = SERVED_BEFORE_CRASH,
    ) -> None:
        if not 0 <= first <= largest:
            raise BadInput("restart_backoff must be (first, largest) with 0 <= first <= largest")
        self.first = float(first)
        self.largest = float(largest)
        self.stable_after = stable_after
        self.served_before_crash = served_before_crash
        self._step = 0

    def next_delay(self, uptime: float, served: float | None) -> float:
        """The delay before the next start, after a process that ran ``uptime``
        seconds and was ready for ``served`` of them (None: never ready)."""
        if uptime >= self.stable_after or (
            served is not None and served >= self.served_before_crash
        ):
            self._step = 0
        delay = min(self.first * 2**self._step, self.largest)
        self._step += 1
        return float(delay)
