"""``clipper serve --workers 2``: a primary and a query worker on one query port.

Real processes throughout: the server is a ``clipper serve`` child process on
ephemeral ports; it starts its query worker (``python -m
clipper_core.query_worker``) and the model's replica; every call is real HTTP
(or gRPC) on 127.0.0.1.  Which process answered a connection is asked on that
connection (``GET /frontend``): with ``SO_REUSEPORT`` the kernel picks the
process per connection, and keep-alive keeps it.

No timed asserts: each wait is bounded generously.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clipper_core.cli import build_parser
from clipper_core.config import ServerConfig
from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.errors import BadInput, ClipperError
from clipper_core.frontend_workers import (
    FrontendWorkers,
    forget_published_endpoints,
    resolve_workers,
)
from clipper_core.server import BackgroundServer, ClipperServer
from clipper_core.store.records import EndpointRecord, ModelRecord
from clipper_core.store.sqlite import SqliteStateStore
from tests.control.redis_server import RedisServer, require_redis

REPO = Path(__file__).resolve().parents[2]
TOKEN = "frontend-workers-admin-token-0123456789"
WAIT = 90.0
T = TypeVar("T")


def replica_pid(inputs: list[Any]) -> list[str]:
    return [f"replica:{os.getpid()}" for _ in inputs]


def wait_for(probe: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])  # after the name: state, ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class Connection:
    """One keep-alive HTTP connection to the query port: one serving process."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status, self.frontend = self.get("/frontend")
        if status != 200:  # refused (admission, under the test's own load): say so
            self.http.close()
            raise http.client.HTTPException(f"GET /frontend answered {status}: {self.frontend}")

    @property
    def worker(self) -> int:
        return int(self.frontend["worker"])

    def get(self, path: str) -> tuple[int, Any]:
        self.http.request("GET", path)
        resp = self.http.getresponse()
        return resp.status, json.loads(resp.read())

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        self.http.request("POST", path, data, {"Content-Type": "application/json"})
        resp = self.http.getresponse()
        return resp.status, json.loads(resp.read())

    def answer(self, app: str) -> str | None:
        """The app's output, or None while this process does not serve it."""
        status, body = self.post(f"/{app}/predict", {"input": [1.0]})
        if status != 200 or body.get("default"):
            return None
        return str(body["output"])

    def close(self) -> None:
        self.http.close()


class Server:
    """``clipper serve --workers 2`` with its own state folder."""

    def __init__(self, folder: Path, *extra: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        ready = folder / "ready.json"
        self.log = open(folder / "serve.log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "clipper_core.cli",
                "--query-port", "0", "--management-port", "0",
                "serve",
                "--workers", "2",
                "--grpc-port", "0",
                "--state-dir", str(folder / "state"),
                "--admin-token", TOKEN,
                "--log-format", "text",
                "--shutdown-grace", "5",
                "--ready-file", str(ready),
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # a process group of its own, as in a terminal
        )  # fmt: skip
        wait_for(lambda: ready.exists() or self._died(), "the server to start")
        self.ports = json.loads(ready.read_text())
        self.port = int(self.ports["query_port"])
        self.conn = ClipperConnection(
            LocalContainerManager(
                "127.0.0.1",
                self.port,
                self.ports["management_port"],
                str(folder / "state"),
                admin_token=TOKEN,
            )
        )

    def _died(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited:\n{self.log_tail()}")
        return False

    def log_tail(self) -> str:
        return (self.folder / "serve.log").read_text(errors="replace")[-6000:]

    def connect_to(self, worker: int) -> Connection:
        """A connection the kernel gave to process ``worker`` (0: the primary)."""

        def attempt() -> Connection | None:
            try:
                conn = Connection(self.port)
            except (OSError, http.client.HTTPException):
                # A connection the kernel queued on a worker that was killed
                # is reset or cut mid-reply (SO_REUSEPORT); the pinned
                # connections see none.
                return None
            if conn.worker == worker:
                return conn
            conn.close()
            return None

        return wait_for(attempt, f"a connection served by worker {worker}")

    def workers(self) -> list[dict[str, Any]]:
        primary = self.connect_to(0)
        try:
            return list(primary.frontend["workers"])
        finally:
            primary.close()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
        return self.process.returncode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "srv")
    try:
        yield srv
    finally:
        srv.stop()


def deploy(srv: Server) -> None:
    srv.conn.register_application("app", "doubles", "-1", 5_000_000)
    srv.conn.deploy_pickled("m", 1, "doubles", replica_pid, cache_enabled=False)
    srv.conn.link_model_to_app("app", "m")


def test_both_processes_serve_a_deploy_made_on_the_management_port(server: Server) -> None:
    [worker] = server.workers()
    assert worker["worker"] == 1 and alive(worker["pid"])
    deploy(server)
    # Many connections: the kernel spreads them over both processes, and each
    # answers the app deployed through the primary's management port.
    served: dict[int, set[str]] = {0: set(), 1: set()}
    answered = {0: 0, 1: 0}
    conns = [Connection(server.port) for _ in range(40)]
    try:
        for conn in conns:
            served[conn.worker].add(wait_for(lambda c=conn: c.answer("app"), "an answer"))
            answered[conn.worker] += 1
        assert all(served.values()), f"one process served no connection of 40: {served}"
    finally:
        for conn in conns:
            conn.close()
    # Both reach the same replica (the primary's), through the endpoint record.
    assert served[0] == served[1] and len(served[0]) == 1

    # Each process also serves on a port of its own: its metrics, by itself.
    primary = server.connect_to(0)
    try:
        urls = [primary.frontend["direct_url"], primary.frontend["workers"][0]["direct_url"]]
    finally:
        primary.close()
    for process, url in enumerate(urls):
        with urllib.request.urlopen(f"{url}/frontend", timeout=30) as resp:
            assert json.loads(resp.read())["worker"] == process
        with urllib.request.urlopen(f"{url}/metrics?format=json", timeout=30) as resp:
            [model] = json.loads(resp.read())["models"]
            assert model["queries"] >= answered[process]  # its own figures
        with urllib.request.urlopen(f"{url}/metrics?format=prometheus", timeout=30) as resp:
            assert b"# TYPE" in resp.read()

    # The OIP over HTTP shares the port too, and so does OIP gRPC.
    oip = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}
    for process in (0, 1):
        conn = server.connect_to(process)
        try:
            status, body = conn.post("/v2/models/m/infer", oip)
            assert status == 200, body
        finally:
            conn.close()
    grpcclient = pytest.importorskip("tritonclient.grpc")
    for _ in range(4):  # one connection each
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports['grpc_port']}")
        try:
            assert client.is_model_ready("m")
        finally:
            client.close()


def test_a_killed_worker_is_restarted_and_the_others_lose_nothing(server: Server) -> None:
    deploy(server)
    [before] = server.workers()
    # Load on connections the primary holds, while the worker is killed.
    pinned = [server.connect_to(0) for _ in range(3)]
    for conn in pinned:
        wait_for(lambda c=conn: c.answer("app"), "the primary to answer")
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load(conn: Connection) -> None:
        while not stop.is_set():
            try:
                if conn.answer("app") is None:
                    failures.append("no answer")
                answered[0] += 1
            except Exception as exc:
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=load, args=(c,)) for c in pinned]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: answered[0] >= 20, "load on the primary")
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(
            lambda: [w for w in server.workers() if w["pid"] != before["pid"]],
            "the worker to be restarted",
        )[0]
        assert after["worker"] == 1 and after["restarts"] == 1
        # The new worker restores the app and connects to the replica.
        fresh = server.connect_to(1)
        try:
            assert fresh.frontend["pid"] == after["pid"]
            wait_for(lambda: fresh.answer("app"), "the restarted worker to answer")
        finally:
            fresh.close()
        done = answered[0]
        wait_for(lambda: answered[0] >= done + 20, "more load on the primary")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for conn in pinned:
            conn.close()
    assert not failures, failures[:5]
    assert "query_worker_exited" in server.log_tail()


def test_shutdown_leaves_no_process_behind(server: Server) -> None:
    deploy(server)
    conn = server.connect_to(1)
    wait_for(lambda: conn.answer("app"), "the worker to answer")
    conn.close()
    children = descendants(server.process.pid)
    worker_pids = {w["pid"] for w in server.workers()}
    assert worker_pids and worker_pids <= children
    assert len(children) >= 2  # the worker and the replica at least
    assert server.stop() == 0
    left = [p for p in children if alive(p)]
    assert not left, f"still running after the server stopped: {left}"


def test_ctrl_c_stops_the_primary_and_its_workers_in_order(server: Server) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C): the primary
    stops its workers; none is restarted, and everything exits."""
    workers = {w["pid"] for w in server.workers()}
    os.killpg(server.process.pid, signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    wait_for(lambda: not any(alive(p) for p in workers), "the worker to exit")
    assert "query_worker_exited" not in server.log_tail()


def test_workers_follow_a_shared_redis_store(tmp_path: Path) -> None:
    """With ``--state-url`` the workers follow the Redis stream, and the
    primary's replica endpoints, as a second frontend would."""
    require_redis()
    redis = RedisServer(tmp_path / "redis")
    srv = Server(tmp_path / "srv", "--state-url", redis.url, "--lease-ttl", "2")
    try:
        deploy(srv)
        for process in (0, 1):
            conn = srv.connect_to(process)
            try:
                assert wait_for(lambda c=conn: c.answer("app"), "an answer").startswith("replica:")
            finally:
                conn.close()
    finally:
        srv.stop()
        redis.stop()


def test_a_worker_exits_with_a_killed_primary(server: Server) -> None:
    workers = {w["pid"] for w in server.workers()}
    server.process.kill()
    server.process.wait(timeout=30)
    wait_for(lambda: not any(alive(p) for p in workers), "the worker to exit with its primary")


def test_embedded_server_runs_workers_and_stops_them(tmp_path: Path) -> None:
    with BackgroundServer(query_port=0, management_port=0, workers=2) as bg:
        port = bg.server.query_port
        [worker] = bg.server.workers.describe()
        served = set()
        for _ in range(40):
            conn = Connection(port)
            served.add(conn.worker)
            conn.close()
        assert served == {0, 1}
    wait_for(lambda: not alive(worker["pid"]), "the worker to stop with the server")


def test_default_is_one_process(tmp_path: Path) -> None:
    with BackgroundServer(query_port=0, management_port=0) as bg:
        conn = Connection(bg.server.query_port)
        try:
            assert conn.frontend == {
                "worker": 0,
                "pid": os.getpid(),
                "direct_url": None,
                "workers": [],
            }
        finally:
            conn.close()


def test_worker_counts() -> None:
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == (os.cpu_count() or 1)
    with pytest.raises(BadInput):
        resolve_workers(-1)
    parser = build_parser()
    args = parser.parse_args(["serve", "--workers", "auto"])
    assert args.workers == 0
    assert parser.parse_args(["serve"]).workers == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--workers", "-2"])


def test_a_primary_forgets_the_endpoints_of_an_earlier_run(tmp_path: Path) -> None:
    """Records a killed primary left for its workers go at the next start on
    the file; those of replicas registered by hand stay."""
    store = SqliteStateStore(tmp_path / "state.sqlite3")
    try:
        store.add_model(
            ModelRecord("m", "1", "doubles", ["a"], container={"kind": "closure", "path": "/x"})
        )
        store.add_model(ModelRecord("ext", "1", "doubles", ["a"], container={}))
        store.put_endpoint(EndpointRecord("m", "1", "0", "127.0.0.1:1"))
        store.put_endpoint(EndpointRecord("m", "1", "by-hand", "127.0.0.1:2"))
        store.put_endpoint(EndpointRecord("ext", "1", "0", "127.0.0.1:3"))
        forget_published_endpoints(store)
        left = {(e.model, e.replica_id) for e in store.list_endpoints()}
        assert left == {("m", "by-hand"), ("ext", "0")}
    finally:
        store.close()


def test_a_worker_restart_that_times_out_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart that does not serve within the start timeout is logged and
    tried again later: the supervision goes on (a TimeoutError used to end it,
    silently, and the worker was never restarted)."""
    with BackgroundServer(query_port=0, management_port=0, workers=2) as bg:
        workers = bg.server.workers
        [before] = workers.describe()
        workers._start_timeout = 0.001  # no worker can serve this fast
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(
            lambda: "restarting query worker 1 failed" in caplog.text,
            "a restart to fail",
        )
        workers._start_timeout = 120.0
        after = wait_for(
            lambda: [w for w in workers.describe() if w["pid"] != before["pid"]],
            "the worker to be restarted",
        )[0]
        assert after["restarts"] == 1
    wait_for(lambda: not alive(after["pid"]), "the worker to stop with the server")


def test_a_worker_that_does_not_serve_in_time_fails_the_start(tmp_path: Path) -> None:
    """``FrontendWorkers.start`` raises ClipperError, as documented, when a worker
    does not serve within its start timeout, and leaves no worker behind."""
    cfg = ServerConfig(query_port=0, management_port=0, workers=2, state_dir=str(tmp_path))
    workers = FrontendWorkers(cfg, start_timeout=0.001)

    async def start() -> None:
        await workers.start(0, None)

    with pytest.raises(ClipperError, match="did not serve within"):
        asyncio.run(start())
    assert workers.describe() == []


def test_a_failed_worker_start_stops_what_the_primary_started(tmp_path: Path) -> None:
    """When a worker does not serve, the primary's start fails and stops what it
    had started by then: its listeners, its replicas, its store (they were left
    running in the embedding program, the replicas too)."""
    state = str(tmp_path / "s")
    with BackgroundServer(query_port=0, management_port=0, state_dir=state) as bg:
        conn = ClipperConnection.for_server(bg.server)
        conn.deploy_pickled("m", 1, "doubles", replica_pid, cache_enabled=False)
    before = descendants(os.getpid())

    async def start_and_look() -> tuple[list[int], int, object]:
        server = ClipperServer(query_port=0, management_port=0, state_dir=state, workers=2)
        server.workers = FrontendWorkers(server.config, start_timeout=0.001)
        with pytest.raises(ClipperError, match="did not serve within"):
            await server.start()
        # Still in the embedding program's loop: what runs now stays running.
        left = [p for p in descendants(os.getpid()) - before if alive(p)]
        assert server.listeners is not None
        return left, server.listeners.query.port, server.store

    left, port, store = asyncio.run(start_and_look())
    assert not left, f"still running after the failed start: {left}"
    assert store is None  # closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_stop_during_the_workers_start_leaves_no_worker(tmp_path: Path) -> None:
    """``stop()`` while the primary waits for its workers to serve (SIGTERM to
    ``clipper serve`` early, an embedding program stopping early): the workers
    that come up after it are stopped too, not left serving on the shared port
    until the embedding process exits."""

    async def main() -> list[int]:
        server = ClipperServer(
            query_port=0, management_port=0, state_dir=str(tmp_path / "s"), workers=2
        )
        me = os.getpid()
        # Not this server's: processes of a longer-lived fixture (a shared server's
        # model containers) or of earlier tests that are still exiting.
        before = descendants(me)
        starting = asyncio.get_running_loop().create_task(server.start())
        # Polling /proc for the worker's process: nothing to wait on instead.
        while not (spawned := descendants(me) - before) and not starting.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await server.stop()
        with contextlib.suppress(Exception):
            await starting
        return [p for p in (spawned | descendants(me)) - before if alive(p)]

    left = asyncio.run(main())
    assert not left, f"still running after the stop: {left}"


def test_workers_on_an_in_memory_store_are_refused(tmp_path: Path) -> None:
    """A query worker cannot open the primary's ``:memory:`` database: it would
    answer 404 for every app, on the connections the kernel gives it."""
    with pytest.raises(BadInput, match="state_path ':memory:' is this process's alone"):
        ClipperServer(query_port=0, management_port=0, state_path=":memory:", workers=2)
    ClipperServer(query_port=0, management_port=0, state_path=":memory:")  # one process: fine
