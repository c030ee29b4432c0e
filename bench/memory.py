"""Idle memory of a serving setup: ``clipper serve`` plus one noop model container.

    python -m bench.memory [--settle 5] [--queries 1000]

Starts the server in its own process (with its OIP gRPC port, as by default),
deploys the noop scenario's model, sends some queries (so that the query path's
imports and buffers are in), waits, and reads the resident set (RSS) and
proportional set (PSS, shared pages split between processes) of the frontend and
of each model container from ``/proc``.
Target (issue 18): frontend + one noop container <= 150 MB.  The warm standby
process the local manager keeps per model version (``--standby always``; by
default none until the version's first crash) is reported apart (``standbys``,
``with_standby_rss_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request

from bench.scenario import load_scenario
from bench.serverproc import ClipperProcess

TARGET_MB = 150.0


def _kib(pid: int, path: str, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def children(pid: int) -> set[int]:
    """The pids of ``pid``'s child processes."""
    out: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def measure(pid: int) -> dict[str, float | None]:
    """RSS and PSS of one process, in MiB."""
    return {"rss_mb": _kib(pid, "status", "VmRSS:"), "pss_mb": _kib(pid, "smaps_rollup", "Pss:")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading")
    parser.add_argument("--queries", type=int, default=1000, help="queries sent first")
    parser.add_argument("--no-grpc", action="store_true", help="serve no OIP gRPC port")
    parser.add_argument(
        "--standby",
        choices=("after-crash", "always", "off"),
        default="after-crash",
        help="server: when to keep a warm standby process (after-crash: none until a crash)",
    )
    args = parser.parse_args(argv)
    server = ClipperProcess(grpc=not args.no_grpc, extra_args=["--standby", args.standby])
    server.start()
    try:
        server.deploy(load_scenario("noop"), "noop")
        url = f"http://127.0.0.1:{server.query_port}/noop/predict"
        body = json.dumps({"input": [1.0, 2.0]}).encode()
        for _ in range(args.queries):
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        time.sleep(args.settle)
        frontend = measure(server.pid)
        replica_pids = set(server.replica_pids())
        replicas = {pid: measure(pid) for pid in replica_pids}
        # The warm standby: a child of the frontend that is no replica.
        standbys = {pid: measure(pid) for pid in children(server.pid) - replica_pids}
    finally:
        server.stop()
    spares = list(standbys.values())
    total_rss = (frontend["rss_mb"] or 0.0) + sum(r["rss_mb"] or 0.0 for r in replicas.values())
    total_pss = (frontend["pss_mb"] or 0.0) + sum(r["pss_mb"] or 0.0 for r in replicas.values())
    standby_rss = sum(r["rss_mb"] or 0.0 for r in spares)
    standby_pss = sum(r["pss_mb"] or 0.0 for r in spares)
    report = {
        "frontend": frontend,
        "containers": replicas,
        "standbys": standbys,
        "total_rss_mb": round(total_rss, 1),
        "total_pss_mb": round(total_pss, 1),
        "target_mb": TARGET_MB,
        "met": total_rss <= TARGET_MB,
        # The standby is one more loaded container, idle: reported apart from
        # the target's frontend + one container.
        "with_standby_rss_mb": round(total_rss + standby_rss, 1),
        "with_standby_pss_mb": round(total_pss + standby_pss, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
