"""``bench.wakeups``: a short run of two arrangements (a real server and container
under wrk, one of them pinned) and of the relay floor (``bench.relay_floor``), so
that the harness does not rot.  No speed is asserted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.timeout(180)
def test_each_arrangement_reports_rate_latency_and_cpu_per_process() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.wakeups",
            "--rounds=1",
            "--duration=1",
            "--spins=0",
            "--arrangements=spread,paired",
            "--floor",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("round 1")]
    labels = [(row.split()[2], "paired" if " paired " in row else "spread") for row in rows]
    assert labels == [
        ("spin", "spread"),
        ("spin", "paired"),
        ("floor", "spread"),
        ("floor", "paired"),
    ], done.stdout
    for row in rows:
        assert "req/s" in row and "frontend" in row and "container" in row
        rate = float(row.split("req/s")[0].split()[-1].replace(",", ""))
        assert rate > 0, row
