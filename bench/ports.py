"""Ports for tests and bench runs that must name a port before anything listens on it.

The usual trick -- bind port 0, read the port, close, hand the number on -- leaves
the port free until the server binds it, and any other process binding port 0
meanwhile may get it: rare with one test process, likelier with ``make test``'s
two (each starting servers and containers all the time).  The ports given here
lie below the kernel's ephemeral range, which ``bind(0)`` never hands out, and
each pytest-xdist worker takes its own slice of them (outside xdist, the first)
from a random start, so neither the other worker nor any ephemeral bind can take
one; a port something already listens on is skipped.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator

#: Ports per worker slice, and how many slices lie below the ephemeral range.
_SLICE = 3000
_SLICES = 4


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _candidates() -> Iterator[int]:
    low = _ephemeral_low() - _SLICES * _SLICE
    if low < 1024:  # no room below the ephemeral range: fall back to bind(0)
        while True:
            yield 0
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) % _SLICES if worker[2:].isdigit() else 0
    first = low + index * _SLICE
    start = random.randrange(_SLICE)  # another test run on this host starts elsewhere
    for i in itertools.count():
        yield first + (start + i) % _SLICE


_PORTS = _candidates()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and no other test process of
    this run will be given."""
    for _ in range(_SLICE):
        port = next(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # something listens there (or lingers): the next one
            return int(s.getsockname()[1])
    raise RuntimeError("no free port in this test process's slice")
