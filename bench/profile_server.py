"""Run ``clipper serve`` under cProfile, on for a window set by signals.

    python -m bench.profile_server OUT.prof -- [clipper CLI arguments...]

SIGUSR1 turns the profiler on, SIGUSR2 turns it off and writes OUT.prof (a later
SIGUSR1/SIGUSR2 pair adds to it).  ``python -m bench SCENARIO --profile`` sends
them at the start and the end of the measured window, so that start-up, imports
and warm-up stay out of the profile.  The handlers run in the main thread, which
is the server's event loop: the profile covers the frontend, batching and
dispatch.  cProfile adds a cost to every Python call, so read the profile for
*shares* of time, not for absolute speed.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    prof = cProfile.Profile()
    state = {"on": False, "used": False}

    def start(signum: int, frame: FrameType | None) -> None:
        if not state["on"]:
            state["on"] = state["used"] = True
            prof.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        if state["on"]:
            prof.disable()
            state["on"] = False
            prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from clipper_core.cli import main as clipper_main

    try:
        return clipper_main(sys.argv[3:])
    finally:
        if state["on"]:
            stop(signal.SIGUSR2, None)


if __name__ == "__main__":
    sys.exit(main())
