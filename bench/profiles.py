"""Profiling the server over a run's measurement window, and summing it up.

Two profilers (``python -m bench SCENARIO --profile [cprofile|py-spy]``):

* ``cprofile``: the server runs under ``bench.profile_server``, which turns
  cProfile on at SIGUSR1 and off (writing the profile) at SIGUSR2; the
  orchestrator sends them at the start and the end of the measured window, so
  start-up, imports and warm-up stay out.  Deterministic, but it adds a cost to
  every Python call, and time spent inside Cython code that Python code awaits
  (grpc.aio's core, uvloop) is charged to the awaiting Python function.
* ``py-spy``: a sampling profiler attached to the running server (and, with
  ``--subprocesses``, its model containers) for the window; low overhead and it
  sees every frame, Cython or not.  Needs ``pip install py-spy`` and permission
  to ptrace the server (same user, no seccomp block).

``summarize_collapsed`` turns py-spy's raw output (one ``frame;frame;... count``
line per stack) into the self and inclusive shares of the top functions.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

PROFILERS = ("cprofile", "py-spy")


class WindowProfiler:
    """Profiles a server process from ``begin()`` for ``duration_s`` seconds."""

    def __init__(self, kind: str, pid: int, out_base: Path) -> None:
        if kind not in PROFILERS:
            raise ValueError(f"unknown profiler {kind!r}")
        self.kind = kind
        self.pid = pid
        self.out_base = out_base
        self.proc: subprocess.Popen[bytes] | None = None
        self._timers: list[threading.Timer] = []
        self.outputs: list[str] = []
        out_base.parent.mkdir(parents=True, exist_ok=True)

    @property
    def raw_path(self) -> Path:
        return self.out_base.with_name(self.out_base.name + "-server.pyspy.txt")

    def schedule(self, start_at: float, duration_s: float) -> None:
        """Begin at ``start_at`` (monotonic) and end ``duration_s`` later."""
        delay = max(0.0, start_at - time.monotonic())
        t1 = threading.Timer(delay, self._begin, args=(duration_s,))
        self._timers.append(t1)
        t1.start()
        if self.kind == "cprofile":
            t2 = threading.Timer(delay + duration_s, self._signal, args=(signal.SIGUSR2,))
            self._timers.append(t2)
            t2.start()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _begin(self, duration_s: float) -> None:
        if self.kind == "cprofile":
            self._signal(signal.SIGUSR1)
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(max(1, round(duration_s))),
                "--rate",
                "250",
                "--subprocesses",
                "--gil",  # only threads holding the GIL: Python CPU, not waits
                "--format",
                "raw",
                "--output",
                str(self.raw_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def finish(self) -> list[str]:
        """Wait for the profiler; return the files it wrote (profile, summary)."""
        for t in self._timers:
            t.join(60)
        if self.proc is not None:
            try:
                _, err = self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            if self.proc.returncode != 0:
                print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
            if self.raw_path.exists():
                summary = self.raw_path.with_suffix(".summary.txt")
                summary.write_text(summarize_collapsed(self.raw_path))
                self.outputs += [str(self.raw_path), str(summary)]
        return self.outputs


def pstats_summary(prof: Path, limit: int = 30) -> Path | None:
    """Top functions by own time and by cumulative time, as text next to ``prof``."""
    if not prof.exists():
        return None
    txt = prof.with_suffix(".txt")
    with txt.open("w") as f:
        st = pstats.Stats(str(prof), stream=f)
        st.sort_stats("tottime").print_stats(limit)
        st.sort_stats("cumulative").print_stats(limit)
    return txt


def _split_process(frames: list[str]) -> tuple[str, list[str]]:
    # With --subprocesses py-spy roots each stack at "process PID:<cmdline>"
    # frames, one per generation (server;container); the last one is the owner.
    i = 0
    while i < len(frames) and frames[i].startswith("process "):
        i += 1
    if i == 0:
        return "server", frames
    cmd = frames[i - 1].split(":", 1)[-1]
    return ("model container" if "model_containers" in cmd else "server"), frames[i:]


def summarize_collapsed(path: Path, limit: int = 25) -> str:
    """Self and inclusive shares of the top functions in py-spy raw output."""
    per_process: dict[str, tuple[Counter[str], Counter[str], list[int]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        proc, frames = _split_process(stack.split(";"))
        self_c, incl_c, total = per_process.setdefault(proc, (Counter(), Counter(), [0]))
        total[0] += count
        if frames:
            self_c[frames[-1]] += count
            for f in set(frames):
                incl_c[f] += count
    lines = [f"py-spy samples from {path.name} (shares of the non-idle samples)"]
    for proc, (self_c, incl_c, total) in sorted(per_process.items()):
        n = max(total[0], 1)
        lines.append(f"\n== {proc}: {total[0]} samples ==")
        lines.append("-- self (where the time is spent) --")
        for f, c in self_c.most_common(limit):
            lines.append(f"{c / n:7.1%}  {f}")
        lines.append("-- inclusive (time under each function) --")
        for f, c in incl_c.most_common(limit):
            lines.append(f"{c / n:7.1%}  {f}")
    return "\n".join(lines) + "\n"
