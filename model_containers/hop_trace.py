"""Per-hop timestamps of one query, for ``python -m bench.hops`` (off by default).

With ``CLIPPER_TRACE_HOPS=<folder>`` in a process's environment (the frontend's;
the containers it starts inherit it), each query's path is stamped with
``time.monotonic_ns()`` at named points and every finished query is appended as one
JSON line ``[[name, ns], ...]`` to ``<folder>/<role>-<pid>.jsonl``.  The monotonic
clock is the same in every process of a host, so the frontend's and the container's
lines can be lined up.

Off, a call site costs one module attribute test::

    if hop_trace.ENABLED:
        hop_trace.mark("decoded")

The stamps assume one query at a time (the benchmark sends them one by one): at
higher concurrency the points of different queries interleave.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO

__all__ = ["ENABLED", "finish", "mark", "start"]

_FOLDER = os.environ.get("CLIPPER_TRACE_HOPS", "")
#: Whether this process stamps hops (fixed at import: the switch costs nothing off).
ENABLED = bool(_FOLDER)

_marks: list[tuple[str, int]] = []
_out: IO[str] | None = None


def start(name: str) -> None:
    """Begin a query's stamps with ``name`` (dropping those of an unfinished one)."""
    _marks.clear()
    mark(name)


def mark(name: str) -> None:
    """Stamp point ``name`` of the query in progress."""
    _marks.append((name, time.monotonic_ns()))


def finish(role: str, name: str) -> None:
    """Stamp ``name`` and write the query's stamps as one line of ``<role>-<pid>.jsonl``."""
    global _out
    mark(name)
    if _out is None:
        os.makedirs(_FOLDER, exist_ok=True)
        _out = open(  # kept open for the process's life
            os.path.join(_FOLDER, f"{role}-{os.getpid()}.jsonl"), "a", buffering=1
        )
    _out.write(json.dumps(_marks) + "\n")
    _marks.clear()
