"""Unit tests of the admission pieces: per-client limits, the service-time
estimate, deadlines, the JSON nesting limit, access checks, and the withdrawal of
queued inputs whose requesters went away (coalesced ones included)."""

from __future__ import annotations

import asyncio
import math
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipper_core.admission import (
    SPIKE_LIMIT,
    ClientLimiter,
    ServiceTimeEstimator,
    check_json_depth,
    client_key,
    deadline_after,
    deadline_from_headers,
    retry_after_header,
)
from clipper_core.auth import (
    ApiKeys,
    admin_token_path,
    check_admin,
    hash_api_key,
    load_or_create_admin_token,
    secret_matches,
)
from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.errors import (
    BadInput,
    Forbidden,
    Overloaded,
    RateLimited,
    Unauthorized,
)
from clipper_core.replica_tokens import ReplicaTokens
from clipper_core.structures import PredictionCache

# -- per-client limits ----------------------------------------------------------


def test_concurrency_limit_is_per_client_and_released() -> None:
    limiter = ClientLimiter(max_concurrency=2)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert info.value.http_status == 429 and info.value.retry_after >= 1
    limiter.acquire("b")  # another client is not affected
    limiter.release("a")
    limiter.acquire("a")
    assert limiter.rejected == 1


def test_rate_limit_refills_over_time() -> None:
    limiter = ClientLimiter(rate=1000.0, burst=2)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert 0 < info.value.retry_after <= 0.001 + 1e-9
    time.sleep(0.005)  # 5 tokens' worth at 1000/s; the bucket holds 2
    limiter.acquire("a")
    limiter.acquire("a")


def test_no_limit_configured_is_free() -> None:
    limiter = ClientLimiter()
    assert not limiter.enabled
    for _ in range(1000):
        limiter.acquire("x")
    assert len(limiter) == 0


def test_remembered_clients_stay_bounded() -> None:
    limiter = ClientLimiter(max_concurrency=5, max_clients=100)
    limiter.acquire("busy")  # in flight: never evicted
    for i in range(10_000):
        limiter.acquire(f"c{i}")
        limiter.release(f"c{i}")
    assert len(limiter) <= 101
    limiter.release("busy")


def test_client_key_prefers_a_valid_api_key_and_hashes_it() -> None:
    keys = ApiKeys()
    keys.set_digests("app", [hash_api_key("secret-key-1")])
    assert client_key({}, "10.0.0.1", keys.known) == "addr:10.0.0.1"
    k1 = client_key({"x-api-key": "secret-key-1"}, "10.0.0.1", keys.known)
    k2 = client_key({"authorization": "Bearer secret-key-1"}, "10.0.0.2", keys.known)
    assert k1 == k2 and k1.startswith("key:") and "secret" not in k1


def test_made_up_api_keys_do_not_buy_fresh_allowances() -> None:
    keys = ApiKeys()
    keys.set_digests("app", [hash_api_key("secret-key-1")])
    # Each request with a different unknown key still counts against its address.
    for made_up in ("k1", "k2", "k3"):
        assert client_key({"x-api-key": made_up}, "10.0.0.9", keys.known) == "addr:10.0.0.9"
    assert client_key({"x-api-key": "anything"}, "10.0.0.9") == "addr:10.0.0.9"


# -- expected wait ----------------------------------------------------------------


def test_expected_wait_follows_observed_batches() -> None:
    est = ServiceTimeEstimator(alpha=1.0)
    assert est.expected_wait(10, 1) is None  # nothing observed: no estimate
    est.observe(8, 0.080)  # 10 ms per item
    assert est.expected_wait(10, 1) == pytest.approx(10 * 0.010 + 2 * 0.080)
    assert est.expected_wait(10, 1, 0.0) == pytest.approx(10 * 0.010 + 0.080)
    assert est.expected_wait(10, 2) == pytest.approx(5 * 0.010 + 2 * 0.080)
    assert est.expected_wait(10, 0) is None
    est.observe(0, 1.0)  # ignored
    est.observe(1, math.nan)  # ignored
    assert est.per_item == pytest.approx(0.010)


def test_one_slow_batch_is_damped_and_a_lasting_slowdown_learned() -> None:
    est = ServiceTimeEstimator()
    for _ in range(20):
        est.observe(10, 0.010)  # 1 ms per item
    est.observe(2, 0.100)  # a 50 ms-per-item hiccup (a GC pause, a descheduled VM)
    assert est.per_item == pytest.approx(0.001 * (1 + 0.2 * (SPIKE_LIMIT - 1)))
    assert est.batch_latency == pytest.approx(0.010 * (1 + 0.2 * (SPIKE_LIMIT - 1)))
    for _ in range(10):
        est.observe(10, 0.100)  # the model really is ten times slower now
    assert est.per_item == pytest.approx(0.010, rel=0.15)
    assert est.batch_latency == pytest.approx(0.100, rel=0.15)


@given(st.lists(st.tuples(st.integers(1, 512), st.floats(0, 10)), min_size=1, max_size=50))
def test_estimate_is_finite_and_non_negative(batches: list[tuple[int, float]]) -> None:
    est = ServiceTimeEstimator()
    for n, latency in batches:
        est.observe(n, latency)
    wait = est.expected_wait(100, 3)
    assert wait is not None and 0 <= wait < math.inf
    assert int(retry_after_header(est.drain_time(100, 3))) >= 1


# -- deadlines --------------------------------------------------------------------


def test_deadline_after_units_and_validation() -> None:
    now = 1000.0
    assert deadline_after(250, "ms", now=now) == pytest.approx(1000.25)
    assert deadline_after("1.5", "s", now=now) == pytest.approx(1001.5)
    assert deadline_after(500_000, "us", now=now) == pytest.approx(1000.5)
    for bad in (0, -5, "abc", "", math.nan, math.inf, True, None, [1], 1e12, 10**400, -(10**400)):
        with pytest.raises(BadInput):
            deadline_after(bad, "ms", now=now)


def test_deadline_header() -> None:
    assert deadline_from_headers({}) is None
    before = time.monotonic()
    d = deadline_from_headers({"clipper-deadline-ms": "100"})
    assert d is not None and before + 0.1 <= d <= time.monotonic() + 0.1
    with pytest.raises(BadInput, match="deadline"):
        deadline_from_headers({"clipper-deadline-ms": "-1"})


# -- JSON nesting -----------------------------------------------------------------


def test_json_depth_limit() -> None:
    check_json_depth(b'{"input": [1, 2]}', 2)
    check_json_depth(b'{"input_batch": [' + b"[1, 2]," * 5000 + b"[3]]}", 3)
    check_json_depth(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 1)  # brackets in a string
    check_json_depth(b"[[[", 1)  # malformed: left for the parser
    with pytest.raises(BadInput, match="deeper than the limit of 3"):
        check_json_depth(b'{"a": [[[1]]]}', 3)
    with pytest.raises(BadInput):
        check_json_depth(b"[" * 100_000 + b"]" * 100_000, 64)
    # Found by a review: an unterminated string of escaped quotes made the string
    # pass quadratic (seconds of a blocked event loop for 22 KB), and a body of
    # many nested arrays cost a regex pass per level (1.75 s per MB).  Both are
    # one linear pass now (bench/test_bench_json_depth.py times them).
    quotes = b'"' + b'\\"' * 32_000
    with pytest.raises(BadInput):
        check_json_depth(b'{"input":' + b"[" * 65 + quotes + b'"' + b"]" * 65 + b"}", 64)
    check_json_depth(b'{"input":' + b"[" * 65 + quotes, 64)  # malformed: the parser says so
    deep = b"[" * 61 + b"1" + b"]" * 61
    check_json_depth(b'{"input_batch": [' + b",".join([deep] * 8_000) + b"]}", 64)
    with pytest.raises(BadInput):
        check_json_depth(b'{"input_batch": [' + b",".join([b"[" + deep + b"]"] * 8) + b"]}", 62)


@given(st.integers(1, 40), st.integers(1, 40))
def test_json_depth_limit_is_exact(depth: int, limit: int) -> None:
    body = b"[" * depth + b"1" + b"]" * depth
    if depth <= limit:
        check_json_depth(body, limit)
    else:
        with pytest.raises(BadInput):
            check_json_depth(body, limit)


# -- access -----------------------------------------------------------------------


def test_admin_token_check() -> None:
    check_admin({}, "")  # no token configured: open
    with pytest.raises(Unauthorized):
        check_admin({}, "tok-123456")
    with pytest.raises(Unauthorized):
        check_admin({"authorization": "Bearer wrong"}, "tok-123456")
    with pytest.raises(Unauthorized):
        check_admin({"authorization": "Basic tok-123456"}, "tok-123456")
    check_admin({"authorization": "Bearer tok-123456"}, "tok-123456")
    assert secret_matches("a", "a") and not secret_matches("a", "ab")
    assert not secret_matches(None, "a")


def test_api_keys_401_403() -> None:
    keys = ApiKeys()
    keys.set_digests("a", [hash_api_key("key-of-app-a-0001")])
    keys.set_digests("b", [hash_api_key("key-of-app-b-0001")])
    keys.check("open", {})
    with pytest.raises(Unauthorized):
        keys.check("a", {})
    with pytest.raises(Unauthorized):
        keys.check("a", {"x-api-key": "not-a-key-at-all"})
    with pytest.raises(Forbidden):
        keys.check("a", {"x-api-key": "key-of-app-b-0001"})
    keys.check("a", {"x-api-key": "key-of-app-a-0001"})
    keys.check("a", {"authorization": "Bearer key-of-app-a-0001"})
    keys.remove("a")
    keys.check("a", {})


# -- withdrawal of queued work --------------------------------------------------------


def _model(cache: PredictionCache | None, **kw: object) -> ModelVersion:
    return ModelVersion(
        "m", "1", "doubles", queue_capacity=100, max_batch_size=8, cache=cache, **kw
    )


def test_cancelled_requester_withdraws_its_queued_input() -> None:
    async def body() -> None:
        mv = _model(None)
        deadline = time.monotonic() + 10
        a = mv.submit([1.0], b"a", deadline)
        b = mv.submit([2.0], b"b", deadline)
        a.cancel()
        taken = mv.queue.take_nowait(10)
        assert [e.item.input for e in taken] == [[2.0]]
        assert not b.done()
        await mv.close()

    asyncio.run(body())


def test_coalesced_input_is_withdrawn_only_when_every_requester_left() -> None:
    async def body() -> None:
        cache = PredictionCache(1 << 20)
        mv = _model(cache)
        deadline = time.monotonic() + 10
        first = mv.submit([1.0], b"x", deadline)
        second = mv.submit([1.0], b"x", deadline)  # joins the first's computation
        assert len(mv.queue) == 1
        first.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert mv.cancelled == 0  # the second still waits: nothing withdrawn
        [entry] = mv.queue.take_nowait(10)
        entry.future.set_result(42.0)
        assert await second == 42.0
        # Both leave: the queued input is withdrawn, and a new request for the same
        # input starts afresh instead of joining the abandoned computation.
        third = mv.submit([2.0], b"y", deadline)
        fourth = mv.submit([2.0], b"y", deadline)
        third.cancel()
        fourth.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert mv.cancelled == 1
        assert mv.queue.take_nowait(10) == []
        fifth = mv.submit([2.0], b"y", deadline)
        [entry] = mv.queue.take_nowait(10)
        entry.future.set_result(7.0)
        assert await fifth == 7.0
        await mv.close()

    asyncio.run(body())


def test_admission_refuses_what_would_miss_its_deadline() -> None:
    async def body() -> None:
        mv = _model(None, admission=True)
        now = time.monotonic()
        # No replica, nothing observed: only the capacity bounds the queue.
        for i in range(5):
            mv.submit([float(i)], b"", now + 0.5)
        mv.estimator.observe(1, 0.1)  # 100 ms per input
        mv.replicas["0"] = _FakeSlot()  # type: ignore[assignment]
        with pytest.raises(Overloaded) as info:
            mv.submit([9.0], b"", now + 0.5)  # 5 ahead: ~0.7 s > 0.5 s
        assert info.value.http_status == 503 and info.value.retry_after > 0
        mv.submit([9.0], b"", now + 5.0)  # a looser deadline is admitted
        assert mv.rejected_overload == 1
        # An empty queue with an idle replica admits anything: a model slower
        # than the deadline is not overload (the app's default output answers).
        mv.queue.take_nowait(100)
        mv.submit([1.0], b"", time.monotonic() + 0.01)
        # ...but behind a busy replica, the batch in flight counts.
        mv.queue.take_nowait(100)
        busy = _FakeSlot()
        busy.in_flight = [object()]
        busy.batch_started = time.monotonic()
        mv.replicas["0"] = busy  # type: ignore[assignment]
        with pytest.raises(Overloaded):
            mv.submit([1.0], b"", time.monotonic() + 0.1)  # ~0.1 + 0.1 s > 80 ms
        mv.submit([1.0], b"", time.monotonic() + 1.0)
        mv.replicas.clear()
        await mv.close()

    asyncio.run(body())


class _FakeSlot:
    up = True  # counted by admission
    in_flight: list[object] = []  # idle
    batch_started = 0.0


def test_secret_files_left_readable_by_others_are_made_private(tmp_path: Path) -> None:
    # An operator's copy of the replica secret (shared between frontends) or an
    # admin token written by hand with the usual 0644.
    secret = tmp_path / "replica_secret"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o644)
    tokens = ReplicaTokens.load_or_create(secret)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert tokens.check_bundle("m", "1", tokens.bundle_token("m", "1"))
    token = admin_token_path(tmp_path)
    token.write_text("t" * 40 + "\n")
    token.chmod(0o640)
    assert load_or_create_admin_token(tmp_path) == "t" * 40
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
