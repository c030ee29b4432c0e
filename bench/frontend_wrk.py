"""End-to-end HTTP numbers with ``wrk`` (Debian package) on loopback.

Measures, in one run:
  * clipper_core: ``POST /noop/predict`` to a no-op model in its own process
    (cache off, so every query crosses the batching queue and gRPC), and
  * a bare uvloop server that answers a fixed reply (the floor: what an HTTP
    server on this machine costs at all),
each at concurrency 1 and 32, and prints throughput and p50/p99 latency.

    .venv/bin/python -m bench.frontend_wrk [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench.ports import free_port

BARE_SERVER = textwrap.dedent(
    """
    import asyncio, sys, uvloop
    REPLY = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
             b"Content-Length: 49\\r\\n\\r\\n"
             b'{"query_id":0,"output":1.0,"default":false,"x":0}')
    class P(asyncio.Protocol):
        def connection_made(self, t): self.t = t; self.buf = b""
        def data_received(self, data):
            self.buf += data
            while True:
                head, sep, rest = self.buf.partition(b"\\r\\n\\r\\n")
                if not sep: return
                n = 0
                for line in head.split(b"\\r\\n"):
                    if line[:15].lower() == b"content-length:": n = int(line[15:])
                if len(rest) < n: return
                self.buf = rest[n:]
                self.t.write(REPLY)
    async def main():
        srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
        print("ready", flush=True)
        await srv.serve_forever()
    uvloop.run(main())
    """
)

_LUA = textwrap.dedent(
    """
    wrk.method = "POST"
    wrk.body   = '%s'
    wrk.headers["Content-Type"] = "application/json"
    done = function(summary, latency, requests)
      io.write(string.format("RESULT %%d %%d %%.1f %%.1f %%.1f\\n", summary.requests,
        summary.errors.status + summary.errors.connect + summary.errors.read +
        summary.errors.write + summary.errors.timeout,
        latency:percentile(50), latency:percentile(99), summary.duration))
    end
    """
)


def post_script(body: str) -> str:
    """A wrk script that POSTs ``body`` (JSON, no single quotes) and prints the
    line :func:`run_wrk` reads."""
    return _LUA % body


LUA = post_script('{"input": [1.0, 2.0, 3.0, 4.0]}')


def _noop(inputs: list[Any]) -> list[float]:
    return [1.0] * len(inputs)


def run_wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    requests, errors, p50, p99, dur_us = (float(g) for g in m.groups())
    return {
        "rps": requests / (dur_us / 1e6),
        "errors": errors,
        "p50_ms": p50 / 1000.0,
        "p99_ms": p99 / 1000.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    from clipper_core.connection import ClipperConnection, LocalContainerManager
    from clipper_core.deployers import create_endpoint

    tmp = Path(tempfile.mkdtemp(prefix="clipper-wrk-"))
    script = tmp / "post.lua"
    script.write_text(LUA)
    rows: list[tuple[str, int, dict[str, float]]] = []

    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE_SERVER, str(bare_port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
        for c in (1, 32):
            rows.append(
                (
                    "bare uvloop",
                    c,
                    run_wrk(f"http://127.0.0.1:{bare_port}/", c, args.duration, script),
                )
            )
    finally:
        bare.terminate()
        bare.wait(10)

    # The server runs in its own process, as in production (the benchmark's
    # own Python would otherwise share its GIL).
    qp, mp = free_port(), free_port()
    # No OIP gRPC port (its default, 8001, may be taken).
    env = {**os.environ, "CLIPPER_STATE_DIR": str(tmp / "state"), "CLIPPER_GRPC_PORT": "off"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipper_core.cli",
            "--query-port",
            str(qp),
            "--management-port",
            str(mp),
            "serve",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        conn = ClipperConnection(LocalContainerManager("127.0.0.1", qp, mp, str(tmp / "state")))
        end = time.monotonic() + 30
        while not conn.ping():
            if time.monotonic() > end:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        create_endpoint(conn, "noop", "doubles", _noop, slo_micros=1_000_000, cache_enabled=False)
        for c in (1, 32):
            rows.append(
                (
                    "clipper_core noop",
                    c,
                    run_wrk(f"http://127.0.0.1:{qp}/noop/predict", c, args.duration, script),
                )
            )
    finally:
        server.terminate()
        server.wait(30)

    print(f"\nwrk -t1 -d{args.duration}s on {os.cpu_count()} cores, loopback")
    print(f"{'server':<20} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, c, r in rows:
        print(
            f"{name:<20} {c:>5} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
            f" {r['errors']:>6.0f}"
        )


if __name__ == "__main__":
    main()
