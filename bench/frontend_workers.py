"""Query workers at matmul c=32: ``clipper serve --workers N`` side by side.

For each round and each worker count (interleaved: 1, 2, 1, 2, ...), starts
``clipper serve --workers N`` on free loopback ports (prediction cache off),
deploys the peerbench matmul model (256 floats in, ``x @ W`` with W 256x256
float32, 256 floats out) behind the app ``matmul``, warms up, runs ``wrk -t1
-c32`` for ``--duration`` seconds against ``POST /matmul/predict`` and samples
the CPU seconds of each process of the server's tree (primary, query workers,
the replica).  Prints one row per run and the medians per worker count.

    flock /work/wt/notes/bench.lock .venv/bin/python -m bench.frontend_workers \\
        --workers 1,2 --rounds 2 --duration 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench.serverproc import ClipperProcess, cpu_seconds

LUA = textwrap.dedent(
    """
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
    wrk.body = f:read("*a")
    f:close()
    done = function(summary, latency, requests)
      io.write(string.format("RESULT %d %d %.1f %.1f %.1f\\n", summary.requests,
        summary.errors.status + summary.errors.connect + summary.errors.read +
        summary.errors.write + summary.errors.timeout,
        latency:percentile(50), latency:percentile(99), summary.duration))
    end
    """
)
DIM = 256


def _children(pid: int) -> dict[int, str]:
    """Every process below ``pid``: pid -> what it is (worker, replica, other)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - set(found)
        for p in frontier:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
            found[p] = (
                "worker"
                if b"query_worker" in cmd
                # not a replica's group guard: its child, named as it is
                else "replica"
                if b"model_containers" in cmd and found.get(parents[p]) != "replica"
                else "other"
            )
    return found


def _host_cpu() -> tuple[float, float]:
    """Busy and total jiffies of every CPU of the host (/proc/stat)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _wrk(url: str, body: Path, script: Path, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
        env={**os.environ, "BODY_FILE": str(body)},
    ).stdout
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    requests, errors, p50, p99, dur_us = (float(g) for g in m.groups())
    return {
        "rps": requests / (dur_us / 1e6),
        "errors": errors,
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "seconds": dur_us / 1e6,
    }


def run_one(workers: int, duration: int, body: Path, script: Path) -> dict[str, Any]:
    import cloudpickle

    import bench.models
    from clipper_core.deployers import deploy_python_closure

    cloudpickle.register_pickle_by_value(bench.models)
    server = ClipperProcess(extra_args=["--workers", str(workers)])
    server.start()
    try:
        server.conn.register_application("matmul", "floats", "-1", 1_000_000)
        model = bench.models.build("matmul", dim=DIM, seed=0, output="full", a_ms=0, b_ms=0)
        deploy_python_closure(server.conn, "matmul-m", 1, "floats", model, cache_enabled=False)
        server.conn.link_model_to_app("matmul", "matmul-m")
        url = f"http://127.0.0.1:{server.query_port}/matmul/predict"
        # Every worker serves the app once it has followed the deploy.
        time.sleep(2.0)
        _wrk(url, body, script, 2)  # warm-up
        tree = _children(server.pid)
        pids = {server.pid: "primary", **tree}
        before = {p: cpu_seconds(p) or 0.0 for p in pids}
        host_before = _host_cpu()
        result = _wrk(url, body, script, duration)
        host_after = _host_cpu()
        after = {p: cpu_seconds(p) or 0.0 for p in pids}
        cpu: dict[str, float] = {}
        for p, kind in pids.items():
            cpu[kind] = cpu.get(kind, 0.0) + (after[p] - before[p]) / result["seconds"] * 100
        result.update(
            workers=workers,
            cpu_pct={k: round(v) for k, v in cpu.items()},
            server_cpu_pct=round(sum(cpu.values())),
            cpu_us_per_req=round(sum(cpu.values()) / 100 / result["rps"] * 1e6),
            # Every process on the host, wrk and other users included, in % of one CPU.
            host_cpu_pct=round(
                (host_after[0] - host_before[0])
                / (host_after[1] - host_before[1])
                * 100
                * (os.cpu_count() or 1)
            ),
            load=os.getloadavg()[0],
        )
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    counts = [int(n) for n in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="clipper-workers-bench-"))
    script, body = tmp / "post.lua", tmp / "matmul.json"
    script.write_text(LUA)
    import numpy as np

    x = np.random.default_rng(1).standard_normal(DIM).round(4)
    body.write_text(json.dumps({"input": x.tolist()}))
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for n in counts:
            row = run_one(n, args.duration, body, script)
            row["round"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmatmul c=32, wrk -t1 -d{args.duration}s, {os.cpu_count()} cores; medians of rounds")
    print(
        f"{'workers':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU %':>6} {'us/req':>6}"
        f" {'host %':>6}  CPU % per process"
    )
    for n in counts:
        mine = [row for row in rows if row["workers"] == n]

        def med(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return statistics.median(float(row[key]) for row in rows)

        kinds = sorted({k for row in mine for k in row["cpu_pct"]})
        parts = ", ".join(
            f"{k} {statistics.median(row['cpu_pct'].get(k, 0) for row in mine):.0f}" for k in kinds
        )
        print(
            f"{n:>7} {med('rps'):>8.0f} {med('p50_ms'):>7.2f} {med('p99_ms'):>7.2f}"
            f" {med('server_cpu_pct'):>6.0f} {med('cpu_us_per_req'):>6.0f}"
            f" {med('host_cpu_pct'):>6.0f}  {parts}"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
