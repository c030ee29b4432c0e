"""Deadlines and disconnects: a client's tighter deadline is honoured, expired work
never reaches the model, and a client that goes away withdraws its queued work --
without cancelling the answer that another client, coalesced on the same input,
still waits for.  The model records every input it sees; each test ends with a
later request that queues behind the withdrawn one, so "never reached the model"
is checked once the model has provably moved past it."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import models
from tests.reliability.conftest import http, predict_bytes, raw_request, wait_for
from tests.server.conftest import Running, start_server


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start_server(tmp_path / "state")
    try:
        yield r
    finally:
        r.bg.stop()


def _deploy_logger(
    r: Running, tmp_path: Path, name: str, seconds: float, *, cache: bool
) -> tuple[Any, str]:
    log = str(tmp_path / f"{name}.calls")
    r.conn.register_application(name, "doubles", "-1", 30_000_000)
    r.conn.deploy_pickled(
        name,
        1,
        "doubles",
        models.make_logging_sleeper(log, seconds),
        batch_size=1,
        cache_enabled=cache,
    )
    r.conn.link_model_to_app(name, name)
    return r.server.dataplane.get_model_version(name, "1"), log


def _busy(mv: Any) -> bool:
    return any(info["busy"] for info in mv.replica_info())


def _read_response(sock: socket.socket) -> tuple[int, Any]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, json.loads(body)


def test_client_deadline_header_is_honoured(running: Running) -> None:
    running.conn.register_application("dl", "doubles", "-1", 30_000_000)
    running.conn.deploy_pickled("dl", 1, "doubles", models.make_sleeper(0.5), batch_size=1)
    running.conn.link_model_to_app("dl", "dl")
    url = f"{running.bg.query_url}/dl/predict"
    status, _, body = http("POST", url, {"input": [1.0]}, headers={"Clipper-Deadline-Ms": "100"})
    assert status == 200 and body["default"] is True and body["output"] == -1
    assert "100 ms" in body["default_explanation"]
    for bad in ("0", "-3", "soon", "1e30"):
        status, _, body = http("POST", url, {"input": [1.0]}, headers={"Clipper-Deadline-Ms": bad})
        assert status == 400 and "deadline" in body["cause"], (bad, body)
    status, _, body = http("POST", url, {"input": [2.0]})  # the app's 30 s objective
    assert status == 200 and body["default"] is False and body["output"] == 2.0


def test_expired_work_never_reaches_the_model(running: Running, tmp_path: Path) -> None:
    mv, log = _deploy_logger(running, tmp_path, "exp", 0.5, cache=False)
    url = f"{running.bg.query_url}/exp/predict"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        # Queued behind a 0.5 s batch with a 50 ms deadline: it expires in the queue.
        status, _, body = http("POST", url, {"input": [2.0]}, headers={"Clipper-Deadline-Ms": "50"})
        assert status == 200 and body["default"] is True
        assert first.result(timeout=30)[0] == 200
    status, _, body = http("POST", url, {"input": [3.0]})
    assert status == 200 and body["output"] == 3.0
    assert models.read_calls(log) == [1.0, 3.0]
    assert mv.queue.stats()["expired"] >= 1


def test_a_shared_computation_outlives_its_first_requesters_deadline(
    running: Running, tmp_path: Path
) -> None:
    mv, log = _deploy_logger(running, tmp_path, "share", 0.5, cache=True)
    url = f"{running.bg.query_url}/share/predict"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        # Two requests for the same input share one computation; the first of them
        # gives up after 50 ms, the second waits up to 10 s.
        hasty = pool.submit(
            http, "POST", url, {"input": [2.0]}, headers={"Clipper-Deadline-Ms": "50"}
        )
        wait_for("the hasty request queued", lambda: len(mv.queue) >= 1)
        patient = pool.submit(
            http, "POST", url, {"input": [2.0]}, headers={"Clipper-Deadline-Ms": "10000"}
        )
        status, _, body = hasty.result(timeout=30)
        assert status == 200 and body["default"] is True
        status, _, body = patient.result(timeout=30)
        # The hasty request's expiry did not take the patient one's answer away.
        assert status == 200 and body["default"] is False and body["output"] == 2.0, body
        assert first.result(timeout=30)[0] == 200
    assert models.read_calls(log) == [1.0, 2.0]


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
def test_disconnected_client_withdraws_its_queued_work(
    running: Running, tmp_path: Path, cache: bool
) -> None:
    mv, log = _deploy_logger(running, tmp_path, f"dc{int(cache)}", 1.0, cache=cache)
    app = mv.name
    url = f"{running.bg.query_url}/{app}/predict"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        sock = raw_request(running.server.query_port, predict_bytes(app, {"input": [2.0]}))
        wait_for("the second request queued", lambda: len(mv.queue) == 1)
        sock.close()  # the client gives up
        wait_for("its work withdrawn", lambda: mv.withdrawn >= 1)
        assert first.result(timeout=30)[0] == 200
    status, _, body = http("POST", url, {"input": [3.0]})
    assert status == 200 and body["output"] == 3.0
    assert models.read_calls(log) == [1.0, 3.0]  # 2.0 never reached the model


def test_disconnect_does_not_cancel_a_coalesced_waiter(running: Running, tmp_path: Path) -> None:
    mv, log = _deploy_logger(running, tmp_path, "co", 1.0, cache=True)
    port = running.server.query_port
    url = f"{running.bg.query_url}/co/predict"
    cache = running.server.dataplane.cache
    assert cache is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        coalesced = cache.coalesced
        leaver = raw_request(port, predict_bytes("co", {"input": [2.0]}))
        wait_for("the input queued", lambda: len(mv.queue) == 1)
        stayer = raw_request(port, predict_bytes("co", {"input": [2.0]}))
        wait_for("the second request coalesced", lambda: cache.coalesced > coalesced)
        leaver.close()
        wait_for("the leaver's request withdrawn", lambda: mv.withdrawn >= 1)
        status, body = _read_response(stayer)  # still answered, by the model
        stayer.close()
        assert status == 200 and body["output"] == 2.0 and body["default"] is False
        assert first.result(timeout=30)[0] == 200
    assert models.read_calls(log) == [1.0, 2.0]
    assert mv.cancelled == 0

    # When every coalesced requester leaves, the shared input is withdrawn.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, {"input": [4.0]})
        wait_for("the next request in flight", lambda: _busy(mv))
        socks = [raw_request(port, predict_bytes("co", {"input": [5.0]})) for _ in range(2)]
        wait_for("both requests in", lambda: len(mv.queue) == 1 and cache.coalesced > coalesced + 1)
        for s in socks:
            s.close()
        wait_for("the shared input withdrawn", lambda: mv.cancelled == 1)
        assert first.result(timeout=30)[0] == 200
    status, _, body = http("POST", url, {"input": [6.0]})
    assert status == 200 and body["output"] == 6.0
    assert models.read_calls(log) == [1.0, 2.0, 4.0, 6.0]
