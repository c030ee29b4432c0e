"""``bench.surfaces_ab``: one round of two cells, this checkout on both sides (real
servers, real containers, this checkout's load generators).  No speed is asserted:
the smoke run keeps the harness and its report parsing from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_round_of_the_binary_and_storm_cells(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.surfaces_ab", str(REPO), str(REPO),
         "--rounds", "1", "--cells", "binary,storm", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = json.loads(out.read_text())
    assert sorted((r["cell"], r["side"]) for r in runs) == [
        ("binary", "base"), ("binary", "new"), ("storm", "base"), ("storm", "new")
    ]  # fmt: skip
    for run in runs:
        if run["cell"] == "binary":
            assert run["req/s"] > 0 and run["SLO %"] >= 0 and run["batch"] >= 1
        else:
            # Goodput counts answers within a 100 ms SLO: on a loaded host (a CI run
            # with other work beside it) it can be 0, and a smoke run asserts no speed.
            assert run["goodput/C"] >= 0 and run["recovery s"] >= 0
            assert 0 <= run["late %"] <= 100
    assert "medians [range]:" in proc.stdout
