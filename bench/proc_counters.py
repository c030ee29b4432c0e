"""Per-process counters for the benchmarks: CPU time, context switches (wake-ups)
and system calls per query, read from ``/proc`` and ``strace -c``.

Used by :mod:`bench.hops` and :mod:`bench.frontend_ab`.  CPU comes in clock ticks
(``SC_CLK_TCK``, 10 ms here), so a figure per query resolves about 10 ms / N.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches, summed over the process's threads."""
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol += int(line.split()[1])
    return vol, invol


def measure(pids: dict[str, int], run: Callable[[int], list[float]], n: int) -> dict[str, Any]:
    """Client p50 and, per process, CPU microseconds and wake-ups per query over ``n``."""
    before = {r: (cpu_user_system(p), context_switches(p)) for r, p in pids.items()}
    t0 = time.perf_counter()
    lat = run(n)
    elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {
        "p50_us": statistics.median(lat) * 1e6,
        "p99_us": sorted(lat)[int(len(lat) * 0.99)] * 1e6,
        "qps": n / elapsed,
    }
    for role, pid in pids.items():
        (user0, sys0), (v0, i0) = before[role]
        v1, i1 = context_switches(pid)
        user1, sys1 = cpu_user_system(pid)
        out[f"{role}_cpu_us"] = (user1 - user0 + sys1 - sys0) / n * 1e6
        out[f"{role}_sys_us"] = (sys1 - sys0) / n * 1e6
        out[f"{role}_wakeups"] = (v1 - v0) / n
        out[f"{role}_preempted"] = (i1 - i0) / n
    return out


def strace_counts(pids: dict[str, int], run: Callable[[int], object], n: int) -> dict[str, Any]:
    """Syscalls per query per process (``strace -c -f -p``), and the most frequent ones."""
    if n <= 0:
        return {}
    if shutil.which("strace") is None:
        return {"error": "strace is not installed"}
    tmp = Path(tempfile.mkdtemp(prefix="clipper-strace-"))
    procs = {
        role: subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", str(tmp / role)],
            stderr=subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    }
    time.sleep(1.0)  # attached to every thread
    run(n)
    for proc in procs.values():
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    out: dict[str, Any] = {}
    for role in procs:
        calls: Counter[str] = Counter()
        for line in (tmp / role).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
        out[f"{role}_syscalls"] = sum(calls.values()) / n
        out[f"{role}_top"] = {k: round(v / n, 2) for k, v in calls.most_common(6)}
    shutil.rmtree(tmp, ignore_errors=True)
    return out
