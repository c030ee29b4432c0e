"""The container's own grpc.health.v1.Health servicer, over real gRPC servers.

Check and Watch as the standard specifies them, Watch in both of grpcio's calling
modes, and the generated code next to grpcio-health-checking's in one process.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from container_harness import REPO, container_env

from model_containers._proto import health_pb2, health_pb2_grpc
from model_containers.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthServicer

WAIT_S = 30.0


def _attach_native(servicer: HealthServicer, server: grpc.Server) -> None:
    servicer.add_to_server(server)  # Watch in grpcio's non-blocking mode


def _attach_blocking(servicer: HealthServicer, server: grpc.Server) -> None:
    # The generated helper hands grpcio the bound methods: Watch is called the
    # blocking way and returns an iterator.
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


@contextlib.contextmanager
def _serve(
    attach: Callable[[HealthServicer, grpc.Server], None],
) -> Iterator[tuple[HealthServicer, health_pb2_grpc.HealthStub]]:
    """A servicer on a real server with 4 workers, and a stub connected to it."""
    watch_pool = ThreadPoolExecutor(max_workers=1)
    servicer = HealthServicer(thread_pool=watch_pool)
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    attach(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, health_pb2_grpc.HealthStub(channel)
    finally:
        channel.close()
        server.stop(None).wait()
        executor.shutdown(wait=True)
        watch_pool.shutdown(wait=True)


@pytest.fixture(params=[_attach_native, _attach_blocking], ids=["non-blocking", "blocking"])
def served(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[HealthServicer, health_pb2_grpc.HealthStub]]:
    with _serve(request.param) as pair:
        yield pair


def _check(stub: health_pb2_grpc.HealthStub, service: str) -> Any:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S).status


def test_check_answers_each_services_status(
    served: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    servicer, stub = served
    servicer.set_status("", SERVING)
    servicer.set_status("a.Service", NOT_SERVING)
    assert _check(stub, "") == SERVING
    assert _check(stub, "a.Service") == NOT_SERVING
    servicer.set_status("a.Service", SERVING)
    assert _check(stub, "a.Service") == SERVING
    assert servicer.status("a.Service") == SERVING
    assert servicer.status("never.Set") is None


def test_check_of_an_unknown_service_fails_with_not_found(
    served: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    _, stub = served
    with pytest.raises(grpc.RpcError) as info:
        _check(stub, "never.Set")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


class _Watch:
    """One Watch stream, read on a thread of its own into a queue."""

    def __init__(self, stub: health_pb2_grpc.HealthStub, service: str) -> None:
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
        self.seen: queue.Queue[Any] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.seen.put(reply.status)
        except grpc.RpcError as exc:
            self.seen.put(exc.code())

    def next(self) -> Any:
        return self.seen.get(timeout=WAIT_S)

    def cancel(self) -> Any:
        self.call.cancel()
        self._reader.join(WAIT_S)
        return self.next()


def test_watch_streams_each_change_until_cancelled(
    served: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    servicer, stub = served
    servicer.set_status("a.Service", NOT_SERVING)
    watch = _Watch(stub, "a.Service")
    other = _Watch(stub, "")  # a service never set: known as SERVICE_UNKNOWN
    assert watch.next() == NOT_SERVING
    assert other.next() == SERVICE_UNKNOWN
    servicer.set_status("a.Service", SERVING)
    servicer.set_status("a.Service", NOT_SERVING)
    servicer.set_status("", SERVING)
    assert watch.next() == SERVING
    assert watch.next() == NOT_SERVING
    assert other.next() == SERVING
    assert watch.cancel() == grpc.StatusCode.CANCELLED
    assert other.cancel() == grpc.StatusCode.CANCELLED
    # The server forgets cancelled streams (once it has seen the cancellation).
    deadline = time.monotonic() + WAIT_S
    while servicer._watchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert servicer._watchers == {}
    servicer.set_status("a.Service", SERVING)


def test_graceful_shutdown_reports_not_serving_and_holds(
    served: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    servicer, stub = served
    for service in ("", "a.Service"):
        servicer.set_status(service, SERVING)
    watch = _Watch(stub, "a.Service")
    assert watch.next() == SERVING
    servicer.enter_graceful_shutdown()
    assert watch.next() == NOT_SERVING
    servicer.set_status("a.Service", SERVING)  # ignored from now on
    assert _check(stub, "") == NOT_SERVING
    assert _check(stub, "a.Service") == NOT_SERVING
    assert watch.cancel() == grpc.StatusCode.CANCELLED


def test_watches_hold_no_worker_thread() -> None:
    """More Watch streams than the server has workers; Check is still answered.

    (add_to_server's non-blocking mode; the blocking one holds a worker per stream.)
    """
    with _serve(_attach_native) as (servicer, stub):
        servicer.set_status("", SERVING)
        watches = [_Watch(stub, "") for _ in range(8)]  # the server has 4 workers
        for watch in watches:
            assert watch.next() == SERVING
        servicer.set_status("", NOT_SERVING)
        for watch in watches:
            assert watch.next() == NOT_SERVING
        assert _check(stub, "") == NOT_SERVING
        for watch in watches:
            assert watch.cancel() == grpc.StatusCode.CANCELLED


_BOTH_IN_ONE_PROCESS = """
import sys
first, second = sys.argv[1:]
modules = {}
for name in (first, second):
    if name == "ours":
        from model_containers._proto import health_pb2 as module
    else:
        from grpc_health.v1 import health_pb2 as module
    modules[name] = module
ours, theirs = modules["ours"], modules["theirs"]
reply = ours.HealthCheckResponse(status=ours.HealthCheckResponse.SERVING)
# One wire format: either side's bytes parse as the other's message.
assert theirs.HealthCheckResponse.FromString(reply.SerializeToString()).status == 1
assert ours.HealthCheckRequest.DESCRIPTOR.full_name == "grpc.health.v1.HealthCheckRequest"
print("ok")
"""


@pytest.mark.parametrize("first", ["ours", "theirs"])
def test_coexists_with_grpcio_health_checking_in_one_process(first: str) -> None:
    """A user's grpcio-health-checking and our generated module import side by side."""
    pytest.importorskip("grpc_health.v1.health_pb2")
    second = "theirs" if first == "ours" else "ours"
    result = subprocess.run(
        [sys.executable, "-c", _BOTH_IN_ONE_PROCESS, first, second],
        cwd=REPO,
        env=container_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
