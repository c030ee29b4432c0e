"""The delay before a replica restarts: a crash loop backs off, a process that
served before it died comes back at once."""

from __future__ import annotations

import pytest

from clipper_core.errors import BadInput
from clipper_core.managers.restart_policy import RestartBackoff


def test_a_crash_loop_doubles_the_delay_up_to_the_largest() -> None:
    b = RestartBackoff(0.2, 1.0, stable_after=30.0)
    never_ready = [b.next_delay(uptime=0.1, served=None) for _ in range(5)]
    assert never_ready == [0.2, 0.4, 0.8, 1.0, 1.0]
    # Ready, but dying right away (every request crashes it): still a loop.
    assert b.next_delay(uptime=0.6, served=0.05) == 1.0


def test_a_process_that_served_restarts_after_the_shortest_delay() -> None:
    b = RestartBackoff(0.2, 5.0, stable_after=30.0)
    for _ in range(4):
        b.next_delay(uptime=0.1, served=None)
    assert b.next_delay(uptime=2.5, served=2.0) == 0.2  # one poison input, say
    assert b.next_delay(uptime=0.1, served=None) == 0.4
    assert b.next_delay(uptime=31.0, served=None) == 0.2  # stable for a while


def test_bad_delays_are_refused() -> None:
    with pytest.raises(BadInput):
        RestartBackoff(1.0, 0.5, stable_after=30.0)
