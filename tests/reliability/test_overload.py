"""Overload is answered at once: a full queue (503), admission control (503 when
the expected wait exceeds the request's deadline), per-client limits (429); each
with ``Retry-After``.  Real server, real model processes."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import models
from tests.reliability.conftest import (
    ServeProcess,
    http,
    predict_bytes,
    raw_request,
    wait_for,
)
from tests.server.conftest import Running, start_server


@pytest.fixture
def servers() -> Iterator[list[Running]]:
    started: list[Running] = []
    try:
        yield started
    finally:
        for r in started:
            r.bg.stop()


def _serve(servers: list[Running], tmp_path: Path, **overrides: Any) -> Running:
    r = start_server(tmp_path / f"state{len(servers)}", **overrides)
    servers.append(r)
    return r


def _deploy_slow(r: Running, name: str, seconds: float, **kw: Any) -> Any:
    r.conn.register_application(name, "doubles", "-1", 30_000_000)
    r.conn.deploy_pickled(
        name, 1, "doubles", models.make_sleeper(seconds), batch_size=1, cache_enabled=False, **kw
    )
    r.conn.link_model_to_app(name, name)
    return r.server.dataplane.get_model_version(name, "1")


def _busy(mv: Any) -> bool:
    return any(info["busy"] for info in mv.replica_info())


def test_full_queue_answers_503_with_retry_after(servers: list[Running], tmp_path: Path) -> None:
    r = _serve(servers, tmp_path, admission_control=False)  # the bound alone
    mv = _deploy_slow(r, "cap", 1.0, queue_capacity=2)
    info = r.conn.get_model_info("cap", 1)
    assert info is not None and info["queue_capacity"] == 2
    url = f"{r.bg.query_url}/cap/predict"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(http, "POST", url, {"input": [0.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        queued = [pool.submit(http, "POST", url, {"input": [float(i)]}) for i in (1, 2)]
        wait_for("two queued requests", lambda: len(mv.queue) == 2)
        status, headers, body = http("POST", url, {"input": [3.0]})
        assert status == 503, body
        assert body["error"] == "queue_full" and "capacity 2" in body["cause"]
        assert int(headers["retry-after"]) >= 1
        results = [f.result(timeout=60) for f in (first, *queued)]
    assert [s for s, _, _ in results] == [200, 200, 200]
    assert all(not b["default"] for _, _, b in results)


def test_admission_refuses_work_that_would_miss_its_deadline(
    servers: list[Running], tmp_path: Path
) -> None:
    r = _serve(servers, tmp_path)
    mv = _deploy_slow(r, "adm", 0.3)
    url = f"{r.bg.query_url}/adm/predict"
    assert http("POST", url, {"input": [0.5]})[0] == 200  # one batch observed
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(http, "POST", url, {"input": [0.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        queued = [pool.submit(http, "POST", url, {"input": [float(i)]}) for i in (1, 2)]
        wait_for("two queued requests", lambda: len(mv.queue) == 2)
        # ~0.6 s of queue plus a batch in flight and its own: far over 200 ms.
        status, headers, body = http(
            "POST", url, {"input": [9.0]}, headers={"Clipper-Deadline-Ms": "200"}
        )
        assert status == 503, body
        assert body["error"] == "overloaded" and "remaining deadline" in body["cause"]
        assert int(headers["retry-after"]) >= 1
        # The app's own objective (30 s) leaves room: the same input is admitted.
        later = pool.submit(http, "POST", url, {"input": [9.0]})
        results = [f.result(timeout=60) for f in (first, *queued, later)]
    assert [s for s, _, _ in results] == [200, 200, 200, 200]
    assert mv.rejected_overload == 1
    assert mv.queue.capacity == r.server.config.queue_capacity  # the server default


def test_per_client_concurrency_limit_answers_429(servers: list[Running], tmp_path: Path) -> None:
    r = _serve(servers, tmp_path, client_max_concurrency=1)
    mv = _deploy_slow(r, "lim", 1.0)
    one, two = "client-one-key-0001", "client-two-key-0001"
    r.conn.set_app_api_keys("lim", [one, two])
    url = f"{r.bg.query_url}/lim/predict"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(http, "POST", url, {"input": [0.0]}, headers={"X-Api-Key": one})
        wait_for("the first request in flight", lambda: _busy(mv))
        status, headers, body = http("POST", url, {"input": [1.0]}, headers={"X-Api-Key": one})
        assert status == 429, body
        assert body["error"] == "rate_limited" and int(headers["retry-after"]) >= 1
        # Another client (told apart by its valid API key) is not limited by the first.
        other = pool.submit(http, "POST", url, {"input": [2.0]}, headers={"X-Api-Key": two})
        assert first.result(timeout=60)[0] == 200
        assert other.result(timeout=60)[0] == 200
    # the slot was released
    assert http("POST", url, {"input": [3.0]}, headers={"X-Api-Key": one})[0] == 200


def test_per_client_rate_limit_answers_429(servers: list[Running], tmp_path: Path) -> None:
    r = _serve(servers, tmp_path, client_rate_limit=1.0)
    r.conn.register_application("rate", "doubles", "-1", 1_000_000)  # no model: instant
    url = f"{r.bg.query_url}/rate/predict"
    statuses = []
    for _ in range(5):
        status, headers, _ = http("POST", url, {"input": [1.0]})
        statuses.append(status)
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            break
    assert statuses[0] == 200 and statuses[-1] == 429


def test_feedback_updates_pass_the_same_gates_as_queries(
    servers: list[Running], tmp_path: Path
) -> None:
    r = _serve(servers, tmp_path, client_rate_limit=1.0)
    r.conn.register_application("upd", "doubles", "-1", 1_000_000)
    url = f"{r.bg.query_url}/upd/update"
    nested: Any = 1.0
    for _ in range(300):
        nested = [nested]
    status, _, body = http("POST", url, {"uid": 1, "input": nested, "label": 1})
    assert status == 400 and body["error"], body
    statuses = []
    for _ in range(5):
        status, headers, _ = http("POST", url, {"uid": 1, "input": [1.0], "label": 1})
        statuses.append(status)
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            break
    assert statuses[-1] == 429, statuses


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """One HTTP answer off a raw socket: status, headers (lower-case), JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split(" ")[1]), headers, json.loads(rest[:length])


def test_an_overloaded_model_is_refused_on_the_headers(
    servers: list[Running], tmp_path: Path
) -> None:
    r = _serve(servers, tmp_path)
    mv = _deploy_slow(r, "hdr", 0.3)
    url = f"{r.bg.query_url}/hdr/predict"
    assert http("POST", url, {"input": [0.5]})[0] == 200  # one batch observed
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(http, "POST", url, {"input": [0.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        queued = [pool.submit(http, "POST", url, {"input": [float(i)]}) for i in (1, 2)]
        wait_for("two queued requests", lambda: len(mv.queue) == 2)
        # Headers only, announcing a 1 MB body that never comes: the answer is
        # given from the headers, and the connection closed rather than read.
        with raw_request(
            r.server.query_port,
            b"POST /hdr/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Clipper-Deadline-Ms: 200\r\nContent-Length: 1000000\r\n\r\n",
        ) as sock:
            status, headers, body = _read_answer(sock)
            assert sock.recv(1) == b""  # closed
        assert status == 503 and body["error"] == "overloaded", body
        assert "remaining deadline" in body["cause"] and int(headers["retry-after"]) >= 1
        # A small body is read and dropped: the connection stays open for more.
        payload = b'{"input": [7.0]}'
        with raw_request(
            r.server.query_port,
            predict_bytes("hdr", {"input": [7.0]}, {"Clipper-Deadline-Ms": "200"}),
        ) as sock:
            assert _read_answer(sock)[0] == 503
            sock.sendall(
                b"POST /nosuchapp/predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(payload), payload)
            )
            assert _read_answer(sock)[0] == 404
        results = [f.result(timeout=60) for f in (first, *queued)]
    assert [s for s, _, _ in results] == [200, 200, 200]
    assert mv.rejected_overload == 2
    assert mv.queries == 4  # the refused ones never reached the model version's queue


def test_body_budget_and_connection_cap_from_the_command_line(
    serve_processes: list[ServeProcess], tmp_path: Path
) -> None:
    srv = ServeProcess(
        tmp_path / "state", "--max-inflight-body-bytes", "4096", "--max-connections", "2"
    )
    serve_processes.append(srv)
    port = srv.query_port
    # A body announced and partly sent holds 3000 bytes of the 4096 budget ...
    with raw_request(port, b"POST /a/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n{"):
        # ... so another 2000 bytes do not fit: 503 JSON, before the body is read.
        with raw_request(
            port, b"POST /a/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n"
        ) as sock:
            status, headers, body = _read_answer(sock)
        assert status == 503 and body["error"] == "overloaded", body
        assert "budget of 4096 bytes" in body["cause"] and headers["retry-after"] == "1"
        # Two connections are open (the holder, and this one): a third is refused.
        with raw_request(port, b"") as second, raw_request(port, b"") as third:
            status, _, body = _read_answer(third)
            assert status == 503 and "connections open" in body["cause"], body
            assert second.fileno() >= 0
    # Both gone (once the server has seen them close): serving as usual.
    wait_for("a connection slot", lambda: http("GET", f"{srv.query_url}/health")[0] == 200)
