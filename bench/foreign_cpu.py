"""The CPU that programs outside this bench took while it measured.

The bench's server, its model containers and its load generators all descend from
the bench process.  On a shared machine, anything else that runs during a step
(another test suite, a compiler) takes CPU from them, and a step that fails then
measured the machine, not the configuration.  :class:`ForeignCpu` tells how much:
the machine's busy time (``/proc/stat``: user, nice, system, interrupts, and steal,
the time a hypervisor gave to another guest) less the CPU time of the bench's own
process tree, in cores over the window.  Interrupts count on the machine's side
because the kernel charges an interrupt's tick to the task it interrupted as
well: the bench's own network work shows in its processes' system time, and
left out of the machine's it would make the others' share come out too small
(the kernel's per-task figures are tick samples, so the result is good to a few
hundredths of a core over a step).  Linux only; elsewhere
:meth:`ForeignCpu.cores` is None.
"""

from __future__ import annotations

import os
import time

__all__ = ["ForeignCpu", "machine_ticks", "own_ticks"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_ticks() -> int | None:
    """Busy clock ticks of the whole machine since boot (user, nice, system,
    irq, softirq, steal), or None without ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    # cpu  user nice system idle iowait irq softirq steal ...
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8))


def own_ticks(root: int | None = None) -> int:
    """Clock ticks of CPU used by ``root`` (default: this process) and all its
    descendants, live ones and those already reaped (a parent's ``cutime`` and
    ``cstime`` hold what its waited-for children used)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        pid = int(name)
        # After the name: state, ppid, ..., utime (11), stime, cutime, cstime (14).
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(fields[i]) for i in (11, 12, 13, 14))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


class ForeignCpu:
    """A stopwatch for the CPU that others took: start it, run, read :meth:`cores`."""

    __slots__ = ("_machine", "_own", "_t0")

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._machine = machine_ticks()
        self._own = own_ticks() if self._machine is not None else 0

    def cores(self) -> float | None:
        """Cores that processes outside the bench's tree used since the start, on
        average (0.5: half a core all along), or None off Linux."""
        machine = machine_ticks()
        if machine is None or self._machine is None:
            return None
        wall = time.monotonic() - self._t0
        if wall <= 0:
            return 0.0
        foreign = (machine - self._machine) - (own_ticks() - self._own)
        return max(foreign, 0) / _CLK_TCK / wall
