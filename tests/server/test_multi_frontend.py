"""Two frontends sharing one desired state through a real redis-server.

Each frontend is a ``clipper serve`` process with ephemeral ports and its own
state folder, both given ``--state-url`` of one redis-server that the test
starts; every call is real HTTP on 127.0.0.1.  The first frontend takes the
replica lease and starts the containers; the second learns their endpoints from
the store.  Writes made on either reach the other through the change stream;
when the lease holder is killed (SIGKILL) the other takes the lease, starts the
replicas again and keeps serving.

Nothing here asserts a duration: each wait is bounded generously, and the
propagation figures are printed (``-s``) for the README's "Scale out" section.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.errors import ClipperError
from tests.control.redis_server import RedisServer, require_redis
from tests.server.conftest import Client

REPO = Path(__file__).resolve().parents[2]
TOKEN = "multi-frontend-admin-token-0123456789"
#: Bound of every wait for convergence (the figure itself is ~ms; see -s).
WAIT = 90.0
T = TypeVar("T")


def tagged(tag: str) -> Any:
    """A model answering ``"<tag>:<pid of its replica>"``."""

    def predict(inputs: list[Any]) -> list[str]:
        return [f"{tag}:{os.getpid()}" for _ in inputs]

    return predict


class Frontend:
    """One ``clipper serve`` process with its own state folder."""

    def __init__(self, folder: Path, state_url: str) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        ready = folder / "ready.json"
        self.log = open(folder / "serve.log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "clipper_core.cli",
                "--query-port", "0", "--management-port", "0",
                "serve",
                "--grpc-port", "-1",
                "--state-dir", str(folder / "state"),
                "--state-url", state_url,
                "--lease-ttl", "2",
                "--admin-token", TOKEN,
                "--log-format", "text",
                "--shutdown-grace", "2",
                "--ready-file", str(ready),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )  # fmt: skip
        info = wait_for(lambda: ready.exists() or self._died(), "the frontend to start")
        assert info is True and ready.exists(), self.log_tail()
        ports = json.loads(ready.read_text())
        self.conn = ClipperConnection(
            LocalContainerManager(
                "127.0.0.1",
                ports["query_port"],
                ports["management_port"],
                str(folder / "state"),
                admin_token=TOKEN,
            )
        )
        self.client = Client(ports["query_url"])

    def _died(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the frontend exited:\n{self.log_tail()}")
        return False

    def log_tail(self) -> str:
        return (self.folder / "serve.log").read_text(errors="replace")[-4000:]

    def answer(self, app: str) -> str | None:
        """The app's output, or None while it does not answer with one."""
        try:
            status, body = self.client.predict(app, {"input": [1.0]}, timeout=5)
        except OSError:
            return None
        if status != 200 or body.get("default"):
            return None
        return str(body["output"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


def wait_for(probe: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of a dead parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


@pytest.fixture
def redis_and_frontends(tmp_path: Path) -> Iterator[tuple[RedisServer, Frontend, Frontend]]:
    require_redis()
    redis = RedisServer(tmp_path / "redis")
    started: list[Frontend] = []
    try:
        started.append(Frontend(tmp_path / "a", redis.url))  # first: takes the lease
        started.append(Frontend(tmp_path / "b", redis.url))
        yield redis, started[0], started[1]
    finally:
        for frontend in started:
            frontend.stop()
        redis.stop()


@pytest.fixture
def frontends(
    redis_and_frontends: tuple[RedisServer, Frontend, Frontend],
) -> tuple[Frontend, Frontend]:
    return redis_and_frontends[1], redis_and_frontends[2]


def pids(answers: set[str]) -> set[int]:
    return {int(a.split(":")[1]) for a in answers}


def test_two_frontends_share_state_and_survive_the_lease_holder(
    frontends: tuple[Frontend, Frontend],
) -> None:
    a, b = frontends
    a.conn.register_application("app", "doubles", "-1", 5_000_000)
    a.conn.deploy_pickled("m", 1, "doubles", tagged("v1"), cache_enabled=False)
    a.conn.link_model_to_app("app", "m")
    assert wait_for(lambda: b.answer("app"), "B to answer app").startswith("v1:")

    # A deploy made on B (which holds no lease) is started by A; B's call
    # returns once the new version serves on B.
    b.conn.deploy_pickled("m", 2, "doubles", tagged("v2"), cache_enabled=False)
    assert "m:2:0" in b.conn.get_all_model_replicas()
    # A version switch made on A reaches B.
    a.conn.set_model_version("m", "2")
    wait_for(lambda: (b.answer("app") or "").startswith("v2:"), "B to switch to version 2")

    # So does a scale: B dispatches to both replicas, at A's replicas' addresses.
    a.conn.set_num_replicas("m", 2, "2")
    wait_for(
        lambda: {"m:2:0", "m:2:1"} <= set(b.conn.get_all_model_replicas()),
        "B to see two replicas of m:2",
    )
    answers: set[str] = set()
    wait_for(lambda: len(answers.add(b.answer("app") or "") or answers - {""}) >= 2, "both")
    before = pids(answers - {""})
    assert len(before) == 2

    # Kill the lease holder: its replicas die with it; B takes the lease, starts
    # them again, and serves from the new ones.
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=30)
    wait_for(lambda: not any(alive(p) for p in before), "A's replicas to die with it")
    first = wait_for(lambda: b.answer("app"), "B to serve after A died")
    assert first.startswith("v2:") and int(first.split(":")[1]) not in before
    wait_for(
        lambda: {"m:2:0", "m:2:1"} <= set(b.conn.get_all_model_replicas()),
        "B to run two replicas of m:2",
    )
    assert b.conn.get_current_model_version("m") == "2"
    assert "lease_acquired" in b.log_tail() or "now owns the replicas" in b.log_tail()


def test_change_propagation_between_frontends(frontends: tuple[Frontend, Frontend]) -> None:
    """Register apps on A and time until B's data plane answers them (printed)."""
    a, b = frontends
    after_reply, from_call = [], []
    for i in range(50):
        called = time.perf_counter()
        a.conn.register_application(f"probe{i}", "doubles", "-1", 1_000_000)
        replied = time.perf_counter()
        wait_for(lambda i=i: b.client.predict(f"probe{i}", {"input": [1.0]})[0] == 200, "B")
        seen = time.perf_counter()
        after_reply.append(seen - replied)
        from_call.append(seen - called)
    for what, delays in (("after A's reply", after_reply), ("from A's call", from_call)):
        delays.sort()
        print(
            f"\nchange propagation A -> B over redis, {what} ({len(delays)} writes):"
            f" median {statistics.median(delays) * 1e3:.1f} ms,"
            f" p90 {delays[int(0.9 * len(delays)) - 1] * 1e3:.1f} ms,"
            f" max {delays[-1] * 1e3:.1f} ms"
        )


def test_both_frontends_serve_through_a_redis_outage(
    redis_and_frontends: tuple[RedisServer, Frontend, Frontend],
) -> None:
    # The lease holder stopped its replicas once it could not renew the lease, so
    # both frontends answered defaults until Redis came back; a management call
    # answered 500 with redis-py's ConnectionError.
    redis, a, b = redis_and_frontends
    a.conn.register_application("app", "doubles", "-1", 5_000_000)
    a.conn.deploy_pickled("m", 1, "doubles", tagged("v1"), cache_enabled=False)
    a.conn.link_model_to_app("app", "m")
    first = wait_for(lambda: b.answer("app"), "B to answer app")
    redis.pause()
    with pytest.raises(ClipperError, match=r"\(503\).*Redis state store cannot be reached"):
        a.conn.register_application("other", "doubles", "-1", 5_000_000)
    time.sleep(4)  # two lease lifetimes (--lease-ttl 2): the holder's clock ran out
    assert a.answer("app") == first and b.answer("app") == first  # the same replica
    redis.resume()
    wait_for(lambda: "kept the replica lease" in a.log_tail(), "A to take its lease back")
    assert b.answer("app") == first
    a.conn.register_application("other", "doubles", "-1", 5_000_000)
    wait_for(lambda: "other" in b.conn.get_all_apps(), "B to hear of the new app")
