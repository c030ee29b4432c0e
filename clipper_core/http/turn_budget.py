"""A bound on how many reads the HTTP server handles in one event-loop turn.

In one turn the loop runs the callbacks of every socket that became readable
(libuv keeps polling while events arrive).  Under a storm of 1,000 clients that
resend the moment they are refused, that is a thousand requests parsed and
refused in a row -- 25-40 ms -- and every admitted query waits that long at
each of its steps (read, queue, batch reply, answer): it is late, admission
sees the lag and refuses more, and the model idles.  Refusing costlier or
slower would not help; spreading the same work over short turns does.

:class:`TurnBudget` lets ``per_turn`` reads be handled per turn.  A connection
whose data arrives beyond that -- or while others are still waiting for their
turn, so that no one is overtaken -- stops reading and keeps what it got; the
next turns hand the waiting connections their data back, ``per_turn`` of them
each, in arrival order.  The model's replies and the handlers of admitted
queries run between those turns, so their lag is a few milliseconds, whatever
the storm.  The refused clients wait as long as before in all (the server's
refusal rate is what it is), but in line rather than in one long turn.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

__all__ = ["DEFAULT_READS_PER_TURN", "Deferrable", "TurnBudget"]

#: Reads per turn by default: about 2-3 ms of refusals at 30-40 us each.
DEFAULT_READS_PER_TURN = 64


class Deferrable(Protocol):
    """A connection whose read can wait for a later turn."""

    def _take_turn(self) -> bool:
        """Handle the data kept for this turn; False if the connection is gone."""
        ...


class TurnBudget:
    """Reads handled per event-loop turn, and the connections waiting for one.

    Args:
        loop: The event loop of the connections.
        per_turn: Reads handled per turn (> 0).
    """

    __slots__ = ("_loop", "_reset_scheduled", "_used", "deferred", "per_turn", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int) -> None:
        if per_turn <= 0:
            raise ValueError("per_turn must be > 0")
        self._loop = loop
        self.per_turn = per_turn
        self._used = 0
        self._reset_scheduled = False
        #: Connections with data kept for a later turn, in arrival order.
        self.waiting: deque[Deferrable] = deque()
        #: Reads that waited for a later turn, in all.
        self.deferred = 0

    def take(self) -> bool:
        """Count one read in this turn; False when the reader must wait in line."""
        if not self._reset_scheduled:
            # The loop runs this after the current turn's callbacks.
            self._reset_scheduled = True
            self._loop.call_soon(self._next_turn)
        if self.waiting or self._used >= self.per_turn:
            return False
        self._used += 1
        return True

    def wait(self, conn: Deferrable) -> None:
        """Queue ``conn`` for a later turn (it has stopped reading)."""
        self.waiting.append(conn)
        self.deferred += 1

    def _next_turn(self) -> None:
        self._used = 0
        waiting = self.waiting
        while waiting and self._used < self.per_turn:
            if waiting.popleft()._take_turn():
                self._used += 1
        if waiting or self._used:
            self._loop.call_soon(self._next_turn)
        else:
            self._reset_scheduled = False
