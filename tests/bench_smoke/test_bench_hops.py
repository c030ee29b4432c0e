"""``bench.hops``: the per-hop stamps (``model_containers.hop_trace``) and a smoke run
of the whole measurement (a real server, a real container, the floors, strace when
installed).  No speed is asserted: the smoke run keeps the harness from rotting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import hops

REPO = Path(__file__).resolve().parents[2]


def test_hop_trace_is_off_without_its_variable_and_writes_one_line_per_query(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLIPPER_TRACE_HOPS"}
    env["PYTHONPATH"] = str(REPO)
    script = (
        "from model_containers import hop_trace\n"
        "print(hop_trace.ENABLED)\n"
        "if hop_trace.ENABLED:\n"
        "    hop_trace.mark('stale'); hop_trace.start('a'); hop_trace.mark('b')\n"
        "    hop_trace.finish('role', 'c'); hop_trace.start('a'); hop_trace.finish('role', 'c')\n"
    )
    off = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert off.stdout.strip() == "False"
    env["CLIPPER_TRACE_HOPS"] = str(tmp_path / "trace")
    on = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert on.stdout.strip() == "True", on.stderr
    (out,) = (tmp_path / "trace").glob("role-*.jsonl")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [[name for name, _ in line] for line in lines] == [["a", "b", "c"], ["a", "c"]]
    stamps = [t for _, t in lines[0]]
    assert stamps == sorted(stamps)


def test_hop_medians_merge_the_container_stamps_into_their_query(tmp_path: Path) -> None:
    front = [
        ("http_read", 0), ("http_parsed", 10), ("batch_encoded", 100),
        ("transport_written", 110), ("transport_read", 500), ("reply_encoded", 600),
    ]  # fmt: skip
    container = [("container_read", 150), ("model_started", 170), ("container_answered", 400)]
    other = [("container_read", 5_000), ("model_started", 5_010)]  # another query's
    (tmp_path / "frontend-1.jsonl").write_text(json.dumps(front) + "\n")
    (tmp_path / "container-2.jsonl").write_text(json.dumps(other) + "\n" + json.dumps(container))
    medians = hops.hop_medians(tmp_path)
    assert medians["HTTP read + parse"] == 0.01
    assert medians["frontend -> container (write, wake-up, read)"] == 0.05
    assert medians["container decode"] == 0.02
    assert medians["container -> frontend (serialize, write, wake-up)"] == 0.1
    assert medians["traced span (HTTP read .. reply encoded)"] == 0.6


# Slow (10-11 s: two servers, strace): make test-slow and CI run it.
@pytest.mark.slow
def test_bench_hops_smoke(tmp_path: Path) -> None:
    out = tmp_path / "hops.json"
    subprocess.run(
        [sys.executable, "-m", "bench.hops", "--n", "40", "--strace-n", "20", "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        timeout=600,
    )
    results = json.loads(out.read_text())
    for api in ("rest", "oip"):
        row = results[api]
        assert row["p50_us"] > 0 and row["frontend_cpu_us"] >= 0
        assert {"frontend_wakeups", "container_wakeups"} <= row.keys()
        if shutil.which("strace"):
            assert row["frontend_syscalls"] > 0 and row["container_syscalls"] > 0
        # Every hop of the query was stamped, in both processes.
        assert set(results[f"{api}_hops"]) >= {what for what, _, _ in hops.HOPS}
    assert results["floor_http"]["p50_us"] > 0
    assert results["floor_unix"]["p50_us"] > 0


def test_process_counters_read_this_process() -> None:
    # A process that has slept has voluntary context switches; the field names
    # of /proc/PID/task/*/status are easy to get wrong and read as 0.
    import time

    from bench.proc_counters import context_switches, cpu_user_system

    time.sleep(0.01)
    voluntary, _ = context_switches(os.getpid())
    user, system = cpu_user_system(os.getpid())
    assert voluntary > 0
    assert user + system > 0
