"""Overload is answered at once: a full queue (503), admission control (503 when
the expected wait exceeds the request's deadline), per-client limits (429); each
with ``Retry-After``.  Real server, real model processes."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import models
from tests.reliability.conftest import http, wait_for
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
