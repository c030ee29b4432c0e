"""Smoke runs of the selection benchmarks: ``python -m bench selection`` (regret
per policy, in process) and ``python -m bench noop --feedback`` (/update at the
query rate against a real server).  No speed is asserted: the report's shape, the
plot, and that no request failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import regret

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--smoke", "--out", str(out), "--name", "r"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads((out / "r.json").read_text()), proc.stdout


def test_regret_of_every_learning_policy(tmp_path: Path) -> None:
    report, stdout = run_bench(tmp_path, "selection", "--labels", "300")
    assert report["kind"] == "selection"
    assert report["stream"]["rounds"] == 300 and report["stream"]["seeds"] == 1
    rows = {r["policy"]: r for r in report["policies"]}
    assert set(rows) == {"exp3", "exp4", "epsilon_greedy", "ucb1"}
    for row in report["policies"]:
        assert len(row["curve"]["t"]) == len(row["curve"]["regret"]) > 0
        assert row["curve"]["t"][-1] == 300
        assert row["label"] in stdout
    # Exp3 with the tuned eta: its bound at T is sqrt(2 T K ln K).
    tuned = next(r for r in report["policies"] if r["policy"] == "exp3" and "tuned" in r["label"])
    assert tuned["bound_at_T"] == pytest.approx((2 * 300 * 3 * 1.0986) ** 0.5, rel=1e-3)
    (plot,) = report["plots"]
    assert Path(plot).name == "r.png" and Path(plot).stat().st_size > 0


def test_regret_is_computed_against_the_best_model_in_hindsight() -> None:
    outputs = [{"m0": "1", "m1": "0"}, {"m0": "0", "m1": "0"}, {"m0": "1", "m1": "1"}]
    labels = [1.0, 0.0, 0.0]
    # m0: right, right, wrong (1 mistake); m1: wrong, right, wrong (2).
    assert regret.best_in_hindsight(outputs, labels).tolist() == [0.0, 0.0, 1.0]
    outputs, labels = regret.make_stream(2000, (0.9, 0.5), seed=1)
    pairs = list(zip(outputs, labels, strict=True))
    mistakes = [sum(float(row[m]) != y for row, y in pairs) for m in ("m0", "m1")]
    assert mistakes[0] < 0.15 * 2000 < 0.4 * 2000 < mistakes[1]


@pytest.mark.slow  # 9 s of open-loop load: make test-slow and CI run it
@pytest.mark.timeout(300)
def test_feedback_at_the_query_rate(tmp_path: Path) -> None:
    report, stdout = run_bench(tmp_path, "noop", "--feedback", "--mode", "open", "--rate", "100")
    assert report["kind"] == "feedback"
    fb = report["feedback"]
    (pair,) = fb["pairs"]
    assert fb["feedback_rate"] == 100.0
    for key in ("predict_alone", "predict_with_feedback", "updates"):
        s = pair[key]
        assert s["requests"] > 0 and s["errors"] == {}, (key, s)
    assert pair["p99_ratio"] is not None and fb["p99_ratio_median"] == pair["p99_ratio"]
    assert report["selection_state"]["updates"] > 0
    assert "predict p99 with feedback / without" in stdout
