"""Run a server script with the GC's pauses recorded, per phase of a load run.

    PYTHONPATH=TREE python -m bench.gc_probe MARK_FILE SCRIPT [ARGS...]

Runs ``SCRIPT ARGS`` (e.g. peerbench's ``peers/clipper_core_server.py PORT``) in
this process with a ``gc.callbacks`` hook.  Each time ``MARK_FILE`` appears, it
prints to stderr the collections since the last mark, per generation (count,
total and longest pause), under the file's text as a label, and deletes the
file: write the label after each wrk run.  Full (generation 2) collections of
20-30 ms, a few per 6 s at c=32, were the p99 regression of issue 22's
follow-up (per-request-cost page, "The p99 at c=32").
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import threading
import time
from typing import Any

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses[info["generation"]].append(time.perf_counter() - _started[0])


def _report(label: str) -> None:
    print(f"== {label} tracked={len(gc.get_objects())}", file=sys.stderr)
    for gen, pauses in _pauses.items():
        longest = max(pauses, default=0.0)
        print(
            f"GC gen{gen} n={len(pauses)} total_ms={sum(pauses) * 1e3:.1f}"
            f" max_ms={longest * 1e3:.2f}",
            file=sys.stderr,
            flush=True,
        )
        pauses.clear()


def _watch(mark: str) -> None:
    while True:
        time.sleep(0.2)
        if os.path.exists(mark):
            with open(mark) as f:
                label = f.read().strip()
            os.unlink(mark)
            _report(label)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    mark, script = sys.argv[1], sys.argv[2]
    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watch, args=(mark,), daemon=True).start()
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
