"""Where one query's time goes at concurrency 1: per-hop medians, CPU, syscalls and
wake-ups per query, next to the floors of this machine.

Starts a real server (its own process, embedded as ``../shared/peerbench`` runs it:
default settings, cache off) with a noop model in a container process, and sends
``--n`` queries one at a time over one keep-alive connection, for each API:
Clipper REST (``POST /noop/predict``) and OIP HTTP JSON (``POST /v2/models/noop/infer``).
It reports

* the client's p50 and, per process (frontend, container), CPU microseconds and
  context switches (wake-ups: voluntary; all threads) per query, from ``/proc``;
* syscalls per query per process: ``strace -c -f -p`` attached to each process over
  another ``--strace-n`` queries (strace slows the queries; only the counts are kept);
* the per-hop medians: a second server started with ``CLIPPER_TRACE_HOPS`` stamps each
  query at named points in both processes (``model_containers.hop_trace``: monotonic
  nanoseconds, a module flag that costs one test when off) and the stamps are merged
  on the shared monotonic clock;
* the floors, measured the same way: a bare uvloop HTTP server answering a fixed reply
  (``bench.bare_server``), and a bare Unix-socket ping-pong between two Python
  processes that frame like the container transport (``bench.unix_pingpong``).

    python -m bench.hops [--n 3000] [--strace-n 1000] [--api rest,oip] [--json out.json]

``--ab TREE`` instead runs the checkout at TREE (say a ``git worktree`` of the branch
point) and this one at the same time and queries them in alternating blocks, so that
a busy host's load falls on both alike: p50, CPU and wake-ups per query, per process.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ports import free_port
from bench.proc_counters import context_switches, cpu_user_system, measure, strace_counts

REST_BODY = b'{"input":[0.3456,0.8216,0.3304,-1.3032,0.9054,0.4464,-0.537,0.5811]}'
OIP_BODY = (
    b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32",'
    b'"data":[0.3456,0.8216,0.3304,-1.3032,0.9054,0.4464,-0.537,0.5811]}]}'
)
PATHS = {"rest": "/noop/predict", "oip": "/v2/models/noop/infer"}
BODIES = {"rest": REST_BODY, "oip": OIP_BODY}


# -- the server under test ---------------------------------------------------------


def _reply_spin() -> int:
    from clipper_core.config import ServerConfig

    return int(os.environ.get("BENCH_REPLY_SPIN_US", ServerConfig.reply_spin_us))


def serve(port: int, management_port: int) -> None:
    """The server process: noop deployed as ``noop`` for both APIs; prints READY."""
    import numpy as np

    from clipper_core import ClipperConnection
    from clipper_core.server import BackgroundServer
    from model_containers import Model, TensorSpec

    class Noop(Model):  # type: ignore[misc]
        input_type = "floats"
        inputs = (TensorSpec("x", "FP32", (-1, 8)),)
        outputs = (TensorSpec("y", "FP32", (-1, 8)),)

        def predict(self, inputs: list[Any]) -> list[Any]:
            return [np.asarray(x, dtype=np.float32) for x in inputs]

        def predict_tensors(self, inputs: dict[str, Any]) -> dict[str, Any]:
            return {"y": inputs["x"]}

    # SIGTERM/SIGINT end the wait below through a wake-up pipe, written by the
    # C-level handler from whichever thread takes the signal (the server's exit
    # and the rmtree then run; a sigwait without the signals blocked never woke:
    # SIGTERM's default action killed the process first).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    state = tempfile.mkdtemp(prefix="clipper-hops-")
    with BackgroundServer(
        query_port=port,
        management_port=management_port,
        grpc_port=None,
        cache_bytes=0,
        state_dir=state,
        # bench.wakeups compares the reply spin off and on (default: the server's).
        reply_spin_us=_reply_spin(),
    ) as bg:
        conn = ClipperConnection.for_server(bg.server)
        conn.register_application("noop", "floats", default_output="-1", slo_micros=1_000_000)
        conn.deploy_model("noop", 1, "floats", Noop())
        conn.link_model_to_app("noop", "noop")
        print("READY", flush=True)
        os.read(wake_read, 1)
    shutil.rmtree(state, ignore_errors=True)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of any of its threads), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Server:
    """``python -m bench.hops --serve`` in a process of its own, and its container."""

    def __init__(self, env: dict[str, str] | None = None, tree: Path | None = None) -> None:
        self.port = free_port()
        extra = {"PYTHONPATH": str(tree)} if tree is not None else {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.hops", "--serve", f"{self.port},{free_port()}"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), **extra},
            cwd=tree,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}")
        # The server's own children: below each container is its process group's
        # guard (a copy of the launcher, whose command line names the container).
        containers = [
            p
            for p in descendants(self.proc.pid)
            if _parent(p) == self.proc.pid
            and b"model_containers" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        if len(containers) != 1:
            self.stop()
            raise RuntimeError(f"expected one container process, found {containers}")
        self.pids = {"frontend": self.proc.pid, "container": containers[0]}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the client ------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection, one query at a time."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.buf = b""

    def query(self) -> bytes:
        self.sock.sendall(self.request)
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].lower()
                i = head.find(b"content-length:")
                n = int(head[i + 15 : head.find(b"\r\n", i) if b"\r\n" in head[i:] else end])
                if len(buf) >= end + 4 + n:
                    if not head.startswith(b"http/1.1 200"):
                        raise RuntimeError(f"answer: {buf[: end + 4 + n]!r}")
                    self.buf = buf[end + 4 + n :]
                    return buf[end + 4 : end + 4 + n]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk

    def run(self, n: int) -> list[float]:
        """``n`` queries; their latencies in seconds."""
        out = []
        for _ in range(n):
            t = time.perf_counter()
            self.query()
            out.append(time.perf_counter() - t)
        return out

    def close(self) -> None:
        self.sock.close()


# -- per-hop stamps ----------------------------------------------------------------


#: The hops of one query: (what, from stamp, to stamp), in the query's order.  Two
#: rows cross processes and include the socket, the peer's wake-up and, on a busy
#: host, the time the writer waits to run again after the reader preempts it.
HOPS = [
    ("HTTP read + parse", "http_read", "http_parsed"),
    ("handler task start (a loop turn)", "http_parsed", "handler_started"),
    ("admission", "handler_started", "admitted"),
    ("request decode", "admitted", "request_decoded"),
    ("queue put", "request_decoded", "queued"),
    ("dispatcher wake-up + take", "queued", "batch_taken"),
    ("batch encode", "batch_taken", "batch_encoded"),
    ("transport write (frontend's call)", "batch_encoded", "transport_written"),
    ("frontend -> container (write, wake-up, read)", "batch_encoded", "container_read"),
    ("container decode", "container_read", "model_started"),
    ("predict (noop)", "model_started", "model_done"),
    ("container encode", "model_done", "container_answered"),
    ("container serialize + write", "container_answered", "container_written"),
    ("container -> frontend (serialize, write, wake-up)", "container_answered", "transport_read"),
    ("frontend decode + batch bookkeeping", "transport_read", "outputs_decoded"),
    ("request task wake-up", "outputs_decoded", "handler_resumed"),
    ("reply format + encode", "handler_resumed", "reply_encoded"),
    ("traced span (HTTP read .. reply encoded)", "http_read", "reply_encoded"),
]


def hop_medians(folder: Path) -> dict[str, float]:
    """Median microseconds per hop, the frontend's and the container's stamps merged."""

    def lines(role: str) -> list[dict[str, int]]:
        out = []
        for f in folder.glob(f"{role}-*.jsonl"):
            out += [dict(json.loads(x)) for x in f.read_text().splitlines()]
        return out

    container = sorted(lines("container"), key=lambda r: r["container_read"])
    reads = [r["container_read"] for r in container]
    hops: dict[str, list[float]] = {}
    for rec in lines("frontend"):
        if "batch_encoded" in rec and "transport_read" in rec:
            # The container's stamps of this query: its read falls between the two.
            i = bisect.bisect_left(reads, rec["batch_encoded"])
            if i < len(reads) and reads[i] < rec["transport_read"]:
                rec = {**container[i], **rec}
        for what, a, b in HOPS:
            if a in rec and b in rec:
                hops.setdefault(what, []).append((rec[b] - rec[a]) / 1e3)
    return {what: statistics.median(hops[what]) for what, _, _ in HOPS if what in hops}


# -- floors ------------------------------------------------------------------------


def floor_http(n: int, strace_n: int) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", "--kind", "http", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        client = Client(port, "/", REST_BODY)
        client.run(300)
        out = measure({"server": proc.pid}, client.run, n)
        out.update(strace_counts({"server": proc.pid}, client.run, strace_n))
        client.close()
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def floor_unix(n: int, strace_n: int) -> dict[str, Any]:
    path = os.path.join(tempfile.mkdtemp(prefix="clipper-pp-"), "pp.sock")
    mod = [sys.executable, "-m", "bench.unix_pingpong"]
    server = subprocess.Popen([*mod, "--serve", path], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    client = subprocess.Popen(
        [*mod, "--client", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        got: dict[str, Any] = {}

        def run(k: int) -> list[float]:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(f"{k}\n")
            client.stdin.flush()
            got.update(json.loads(client.stdout.readline()))
            return [got["p50_us"] / 1e6]

        pids = {"client": client.pid, "server": server.pid}
        out = measure(pids, run, n)
        out["p50_us"] = got["p50_us"]
        out["qps"] = n / got["seconds"]
        del out["p99_us"]
        out.update(strace_counts(pids, run, strace_n))
        return out
    finally:
        client.terminate()
        server.terminate()
        client.wait(10)
        server.wait(10)


# -- the run -----------------------------------------------------------------------


def measure_api(server: Server, api: str, n: int, strace_n: int) -> dict[str, Any]:
    client = Client(server.port, PATHS[api], BODIES[api])
    try:
        client.run(500)  # warm: connections, caches, the batch-size controller
        out = measure(server.pids, client.run, n)
        out.update(strace_counts(server.pids, client.run, strace_n))
        return out
    finally:
        client.close()


def trace_api(api: str, n: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="clipper-hops-trace-"))
    server = Server({"CLIPPER_TRACE_HOPS": str(folder)})
    try:
        client = Client(server.port, PATHS[api], BODIES[api])
        client.run(300)
        for f in folder.glob("*.jsonl"):
            f.write_text("")  # keep only the measured queries
        lat = client.run(n)
        client.close()
    finally:
        server.stop()
    hops = hop_medians(folder)
    hops["client p50 (traced)"] = statistics.median(lat) * 1e6
    shutil.rmtree(folder, ignore_errors=True)
    return hops


def side_by_side(base: Path, n: int, block: int, apis: list[str]) -> dict[str, Any]:
    """The checkout at ``base`` against this one, both servers up at once and queried
    in alternating blocks of ``block`` queries, so that both see the same load."""
    servers = {"base": Server(tree=base.resolve()), "new": Server(tree=Path.cwd())}
    results: dict[str, Any] = {"loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        for api in apis:
            clients = {k: Client(s.port, PATHS[api], BODIES[api]) for k, s in servers.items()}
            for c in clients.values():
                c.run(500)
            lat: dict[str, list[float]] = {k: [] for k in servers}
            cpu = {k: {r: 0.0 for r in s.pids} for k, s in servers.items()}
            wake = {k: {r: 0 for r in s.pids} for k, s in servers.items()}
            for _ in range(max(n // block, 1)):
                for side, server in servers.items():
                    before = {
                        r: (sum(cpu_user_system(p)), context_switches(p)[0])
                        for r, p in server.pids.items()
                    }
                    lat[side] += clients[side].run(block)
                    for r, p in server.pids.items():
                        cpu[side][r] += sum(cpu_user_system(p)) - before[r][0]
                        wake[side][r] += context_switches(p)[0] - before[r][1]
            for side in servers:
                done = len(lat[side])
                row: dict[str, Any] = {"p50_us": statistics.median(lat[side]) * 1e6}
                for r in servers[side].pids:
                    row[f"{r}_cpu_us"] = cpu[side][r] / done * 1e6
                    row[f"{r}_wakeups"] = wake[side][r] / done
                results[f"{api}_{side}"] = row
            for c in clients.values():
                c.close()
    finally:
        for server in servers.values():
            server.stop()
    results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return results


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    if not args.no_floors:
        results["floor_http"] = floor_http(args.n, args.strace_n)
        results["floor_unix"] = floor_unix(args.n, args.strace_n)
    server = Server()
    try:
        for api in args.api.split(","):
            results[api] = measure_api(server, api, args.n, args.strace_n)
    finally:
        server.stop()
    if not args.no_trace:
        for api in args.api.split(","):
            results[f"{api}_hops"] = trace_api(api, args.n)
    results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return results


def _print(results: dict[str, Any]) -> None:
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"\n[{key}]")
            for k, v in value.items():
                print(f"  {k:<42} {v:>10.1f}" if isinstance(v, float) else f"  {k:<42} {v}")
        else:
            print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--serve", metavar="PORT,PORT", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=3000, help="queries per measurement")
    p.add_argument("--strace-n", type=int, default=1000, help="queries under strace (0: none)")
    p.add_argument("--api", default="rest,oip")
    p.add_argument("--no-floors", action="store_true")
    p.add_argument("--no-trace", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--ab",
        type=Path,
        metavar="TREE",
        help="only compare the checkout at TREE with this one, side by side (p50, CPU, wake-ups)",
    )
    p.add_argument("--block", type=int, default=200, help="queries per turn with --ab")
    args = p.parse_args(argv)
    if args.serve:
        query_port, management_port = map(int, args.serve.split(","))
        serve(query_port, management_port)
        return 0
    if args.ab:
        results = side_by_side(args.ab, args.n, args.block, args.api.split(","))
    else:
        results = run_all(args)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
