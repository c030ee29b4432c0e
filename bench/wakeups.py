"""What waking a sleeping process costs one query at a time, on this host.

    python -m bench.wakeups [--rounds 2] [--duration 5]

At concurrency 1 every process on a query's path sleeps between queries, and
each hand-off (client to frontend, frontend to container and back, frontend to
client) wakes one.  This runs ``bench.hops``' server (noop in a container
process, Clipper REST, cache off) under ``wrk -c1`` with the frontend's reply
spin off (0) and at the default, in three arrangements, interleaved over
``--rounds`` rounds:

``spread``
    The scheduler places every process (as in production).
``paired``
    The frontend's threads and the container pinned to the last CPU, wrk to the
    others: frontend and container wake each other on one CPU, with no
    inter-processor interrupt (with the spin on, the spinning frontend delays
    the container on that CPU instead).
``busy``
    As ``spread``, plus a ``SCHED_IDLE`` process spinning on every CPU: no CPU
    goes idle, so no wake-up has to bring one out of its idle state (on a
    virtual machine, a halted virtual CPU).  What is left is the processes'
    own work.  The spinners yield at once to any other process but take the
    idle time, so the tail grows (p99).

Each line: req/s, p50 and p99, and the CPU per query of the frontend and of
the container (``/proc`` ticks over the run).  Needs ``wrk`` and at least two
CPUs; stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.frontend_wrk import post_script, run_wrk
from bench.hops import REST_BODY, Server, descendants
from bench.proc_counters import cpu_user_system
from bench.relay_floor import RelayFloor

ARRANGEMENTS = ("spread", "paired", "busy")
#: A spinner: lowest scheduling class, one tight loop; killed with its parent
#: (PR_SET_PDEATHSIG), so that no spinner outlives a killed run.
SPINNER = (
    "import ctypes, os, signal\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "while True: pass"
)


def _pin_all(pids: list[int], cpu: int) -> None:
    """Pin every thread of each of ``pids`` and of their descendants to ``cpu``,
    and check that it took (a container is the child of the frontend's loop
    thread, not of its main thread)."""
    for pid in {p for root in pids for p in (root, *descendants(root))}:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})
    for pid in pids:
        if os.sched_getaffinity(pid) != {cpu}:
            raise RuntimeError(f"process {pid} is not pinned to CPU {cpu}")


@contextmanager
def _spinners(cpus: list[int]) -> Iterator[None]:
    procs = []
    try:
        for cpu in cpus:
            procs.append(subprocess.Popen([sys.executable, "-c", SPINNER]))
            os.sched_setaffinity(procs[-1].pid, {cpu})
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def one_cell(spin: int | None, arrangement: str, duration: int, script: Path) -> dict[str, float]:
    """Start a server with reply spin ``spin`` (None: the relay floor instead),
    arrange it, run wrk -c1; the figures."""
    cpus = sorted(os.sched_getaffinity(0))
    if spin is None:
        server: Server | RelayFloor = RelayFloor()
    else:
        os.environ["BENCH_REPLY_SPIN_US"] = str(spin)  # read by bench.hops --serve
        server = Server()
    try:
        frontend, container = server.pids["frontend"], server.pids["container"]
        wrk_cpus = set(cpus)
        if arrangement == "paired":
            _pin_all([frontend, container], cpus[-1])
            wrk_cpus = set(cpus[:-1])
        # (the relay floor answers any path)
        url = f"http://127.0.0.1:{server.port}/noop/predict"
        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, wrk_cpus)  # wrk inherits it
        try:
            with _spinners(cpus if arrangement == "busy" else []):
                run_wrk(url, 1, 1, script)  # warm-up
                before = {p: sum(cpu_user_system(p)) for p in (frontend, container)}
                got = run_wrk(url, 1, duration, script)
                after = {p: sum(cpu_user_system(p)) for p in (frontend, container)}
        finally:
            os.sched_setaffinity(0, own)
        queries = got["rps"] * duration
        got["frontend_cpu_us"] = (after[frontend] - before[frontend]) / queries * 1e6
        got["container_cpu_us"] = (after[container] - before[container]) / queries * 1e6
        return got
    finally:
        server.stop()
        os.environ.pop("BENCH_REPLY_SPIN_US", None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per cell")
    p.add_argument("--spins", default="0,250", help="reply spins to compare, microseconds")
    p.add_argument("--arrangements", default=",".join(ARRANGEMENTS))
    p.add_argument(
        "--floor",
        action="store_true",
        help="also run bench.relay_floor (a bare Python relay and socket server) in each round",
    )
    args = p.parse_args(argv)
    # A SIGTERM (timeout(1), a closed session) unwinds like Ctrl-C: the finally
    # blocks stop the servers and spinners this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least two CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="clipper-wakeups-"))
    try:
        script = tmp / "post.lua"
        script.write_text(post_script(REST_BODY.decode()))
        print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
        for r in range(args.rounds):
            spins: list[int | None] = [int(s) for s in args.spins.split(",")]
            for spin in [*spins, None] if args.floor else spins:
                for arrangement in args.arrangements.split(","):
                    got = one_cell(spin, arrangement, args.duration, script)
                    what = "floor relay  " if spin is None else f"spin {spin:>3} us"
                    print(
                        f"round {r + 1} {what} {arrangement:<6}"
                        f" {got['rps']:7,.0f} req/s  p50 {got['p50_ms'] * 1000:4.0f} us"
                        f"  p99 {got['p99_ms'] * 1000:5.0f} us"
                        f"  CPU/query frontend {got['frontend_cpu_us']:4.0f}"
                        f" container {got['container_cpu_us']:3.0f} us"
                        f"  errors {got['errors']:.0f}",
                        flush=True,
                    )
        print(f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
