"""Two checkouts side by side under the same load: the frontend's CPU per query,
the c=1 p50 and the c=32 req/s (wrk), for Clipper REST and OIP HTTP JSON.

    python -m bench.frontend_ab BASE_TREE NEW_TREE [--api rest,oip] [--n 1000]
        [--rounds 6] [--wrk 2]

Both servers of :mod:`bench.hops` (noop, cache off) run at once; each round
queries one then the other (the order flips every round) with ``--n`` queries
one at a time, then ``wrk -c32`` for ``--wrk`` seconds each.  CPU comes from
``/proc`` in clock ticks (10 ms), so it resolves ~10 µs per query at ``--n 1000``:
read the medians and the rounds together.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.hops import BODIES, PATHS, Client, Server
from bench.proc_counters import cpu_user_system

LUA = 'wrk.method = "POST"\nwrk.body = {body!r}\nwrk.headers["Content-Type"] = "application/json"\n'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--wrk", type=int, default=2, help="seconds of wrk -c32 per side and round")
    ap.add_argument("--api", default="rest,oip")
    args = ap.parse_args(argv)
    servers = {
        "base": Server(tree=Path(args.base).resolve()),
        "new": Server(tree=Path(args.new).resolve()),
    }
    res: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    load = [Path("/proc/loadavg").read_text().split()[:3]]
    try:
        for api in args.api.split(","):
            clients = {k: Client(s.port, PATHS[api], BODIES[api]) for k, s in servers.items()}
            for c in clients.values():
                c.run(500)
            orders = [("base", "new"), ("new", "base")]
            for r in range(args.rounds):
                for side in orders[r % 2]:
                    pid = servers[side].pids["frontend"]
                    c0 = sum(cpu_user_system(pid))
                    lat = clients[side].run(args.n)
                    c1 = sum(cpu_user_system(pid))
                    d = res.setdefault((api, 1, side), {"cpu": [], "p50": []})
                    d["cpu"].append((c1 - c0) / args.n * 1e6)
                    d["p50"].append(statistics.median(lat) * 1e6)
            for c in clients.values():
                c.close()
            if not args.wrk:
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
                f.write(LUA.format(body=BODIES[api].decode()))
            for r in range(args.rounds):
                for side in orders[r % 2]:
                    s = servers[side]
                    pid = s.pids["frontend"]
                    c0 = sum(cpu_user_system(pid))
                    url = f"http://127.0.0.1:{s.port}{PATHS[api]}"
                    cmd = ["wrk", "-t1", "-c32", f"-d{args.wrk}s", "-s", f.name, url]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    c1 = sum(cpu_user_system(pid))
                    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
                    d = res.setdefault((api, 32, side), {"cpu": [], "rps": []})
                    d["cpu"].append((c1 - c0) / n * 1e6)
                    d["rps"].append(rps)
            Path(f.name).unlink()
            time.sleep(0.1)
    finally:
        for s in servers.values():
            s.stop()
    load.append(Path("/proc/loadavg").read_text().split()[:3])
    print("loadavg", load[0], "->", load[1])
    for (api, conc, side), d in res.items():
        rounds = "/".join(f"{x:.0f}" for x in d.get("p50", d.get("rps", [])))
        what = "p50 us" if conc == 1 else "req/s"
        med = statistics.median(d.get("p50", d.get("rps", [])))
        cpu = statistics.median(d["cpu"])
        head = f"{api:4s} c={conc:<2d} {side:4s}: frontend CPU {cpu:4.0f} us/query"
        print(f"{head}  {what} {med:7.0f} ({rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
