"""Two checkouts side by side under wrk, on ``../shared/peerbench``'s server and bodies.

    python -m bench.peer_ab BASE_TREE NEW_TREE [--peerbench DIR] [--rounds 4]
        [--seconds 4] matmul:rest:32 noop:oip:1 ...

Both trees serve peerbench's clipper_core peer (``peers/clipper_core_server.py``:
noop and matmul, defaults, cache off) at once, each on its own ports, from this
interpreter with ``PYTHONPATH`` set to the tree (build the tree's extensions
first, or copy its ``ext/*.so``).  Each round runs every cell (``model:api:conc``;
api ``rest`` or ``oip``) on one tree and then the other, the order flipping every
round, so that a busy host's load falls on both alike.  It prints every run and
the medians: req/s, server CPU per query (the server's process tree, ``/proc``)
and wrk's p50 and p99.  Needs ``wrk`` and a copy of peerbench (its ``post.lua``
and ``bodies/``).

Two interpreters instead of two trees: ``--base-python`` / ``--new-python`` name
each side's Python, and a tree given as ``installed`` sets no ``PYTHONPATH`` (the
clipper_core installed in that Python's environment serves)::

    python -m bench.peer_ab installed installed --new-python /tmp/v312/bin/python noop:rest:32
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.proc_counters import cpu_user_system

#: (model, api) -> (path, body file in peerbench's bodies/)
ENDPOINTS = {
    ("noop", "rest"): ("/noop/predict", "noop_clipper.json"),
    ("matmul", "rest"): ("/matmul/predict", "matmul_clipper.json"),
    ("noop", "oip"): ("/v2/models/noop-m/infer", "noop_v2_b.json"),
    ("matmul", "oip"): ("/v2/models/matmul-m/infer", "matmul_v2.json"),
}
PORTS = {"base": 8230, "new": 8240}


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the model containers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    total = 0.0
    for p in [pid, *map(int, out.split())]:
        try:
            total += sum(cpu_user_system(p))
        except OSError:
            pass  # a child that just exited
    return total


def _start(
    tree: Path | None, python: str, port: int, peerbench: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [python, str(peerbench / "peers" / "clipper_core_server.py"), str(port)],
            cwd=peerbench,  # not a checkout: a tree's sources must not shadow the install
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while "READY" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"peer_ab: the server of {tree} did not start (see {log})")
        time.sleep(0.5)
    return proc


def _wrk(peerbench: Path, port: int, cell: str, seconds: int) -> tuple[float, str, str]:
    model, api, conc = cell.split(":")
    path, body = ENDPOINTS[(model, api)]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--latency",
         "-s", str(peerbench / "post.lua"), f"http://127.0.0.1:{port}{path}"],
        env={**os.environ, "BODY_FILE": str(peerbench / "bodies" / body)},
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise SystemExit(f"peer_ab: wrk gave no rate for {cell}:\n{out}")
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return float(rate.group(1)), lat.get("50", "?"), lat.get("99", "?")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="a checkout, or `installed`")
    ap.add_argument("new", help="a checkout, or `installed`")
    ap.add_argument("cells", nargs="+", help="model:api:conc, e.g. matmul:rest:32")
    ap.add_argument("--peerbench", type=Path, default=Path("/tmp/peerbench"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4, help="wrk seconds per run")
    ap.add_argument("--base-python", default=sys.executable, help="the base side's Python")
    ap.add_argument("--new-python", default=sys.executable, help="the new side's Python")
    args = ap.parse_args(argv)
    for cell in args.cells:
        model, api, _ = cell.split(":")
        if (model, api) not in ENDPOINTS:
            ap.error(f"unknown cell {cell!r}: model noop|matmul, api rest|oip")
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    servers = {}
    try:
        for side, tree, python in (
            ("base", args.base, args.base_python),
            ("new", args.new, args.new_python),
        ):
            log = logs / f"peer_ab_{side}.log"
            where = None if tree == "installed" else Path(tree).resolve()
            servers[side] = _start(where, python, PORTS[side], args.peerbench.resolve(), log)
        print("load", " ".join(Path("/proc/loadavg").read_text().split()[:3]), flush=True)
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            order = ("base", "new") if r % 2 == 0 else ("new", "base")
            for cell in args.cells:
                for side in order:
                    pid = servers[side].pid
                    cpu0 = _tree_cpu(pid)
                    rate, p50, p99 = _wrk(args.peerbench, PORTS[side], cell, args.seconds)
                    per_query = (_tree_cpu(pid) - cpu0) / (rate * args.seconds) * 1e6
                    runs.setdefault((cell, side), []).append((rate, per_query))
                    print(
                        f"round {r} {cell:16s} {side:4s} {rate:9.0f} req/s"
                        f" {per_query:6.1f} µs CPU/query p50 {p50} p99 {p99}",
                        flush=True,
                    )
        print("load", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
        print("medians (req/s, server CPU µs per query):")
        for cell in args.cells:
            row = []
            for side in ("base", "new"):
                v = runs[(cell, side)]
                rate = statistics.median(x[0] for x in v)
                cpu = statistics.median(x[1] for x in v)
                row.append(f"{side} {rate:9.0f} {cpu:6.1f}")
            print(f"  {cell:16s} " + "   ".join(row))
    finally:
        for proc in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in servers.values():
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
