"""``bench.wakeups``: a short run of each arrangement (a real server and container
under wrk: as placed, pinned to one CPU together, beside idle-class spinners) and
of the relay floor (``bench.relay_floor``), so that the harness does not rot.  No
speed is asserted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _spinners_left() -> list[int]:
    """Processes still running the bench's spinner code."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"SCHED_IDLE" in cmdline and b"while True" in cmdline:
                found.append(int(entry))
    return found


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.timeout(240)
def test_each_arrangement_reports_rate_latency_and_cpu_per_process() -> None:
    # Its own session: a run that overstays is killed whole, spinners included.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.wakeups",
            "--rounds=1",
            "--duration=1",
            "--spins=0",
            "--floor",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err  # the bench checks that "paired" pinned both
    rows = [line for line in out.splitlines() if line.startswith("round 1")]
    labels = [
        (row.split()[2], next(a for a in ("spread", "paired", "busy") if f" {a} " in row))
        for row in rows
    ]
    assert labels == [
        ("spin", "spread"),
        ("spin", "paired"),
        ("spin", "busy"),
        ("floor", "spread"),
        ("floor", "paired"),
        ("floor", "busy"),
    ], out
    for row in rows:
        assert "frontend" in row and "container" in row
        assert float(row.split("req/s")[0].split()[-1].replace(",", "")) > 0, row
        assert row.split("errors")[1].split() == ["0"], row  # wrk saw every answer
    assert _spinners_left() == []
