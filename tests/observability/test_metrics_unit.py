"""The metrics' building blocks, without a server: histograms, quantiles,
per-app accounting, content negotiation, the Prometheus rendering."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipper_core.http import Request
from clipper_core.metrics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS,
    AppMetrics,
    Histogram,
    ModelVersionMetrics,
    histogram_quantile,
)
from clipper_core.metrics_export import _app_families, wants_json
from clipper_core.server_metrics import _app_point, _app_rates


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    h = Histogram((1.0, 2.0, 5.0))
    for v in (0.5, 1.0, 1.5, 2.0, 4.0, 7.0):
        h.observe(v)
    assert h.counts == [2, 2, 1, 1]
    assert h.count == 6 and h.sum == pytest.approx(16.0)
    d = h.to_dict()
    assert d["buckets"] == [[1.0, 2], [2.0, 4], [5.0, 5], ["+Inf", 6]]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (0.01, 0.02, 0.04)
    # 100 observations, all in (0.01, 0.02]
    assert histogram_quantile(0.5, bounds, [0, 100, 0, 0]) == pytest.approx(0.015)
    assert histogram_quantile(0.99, bounds, [0, 100, 0, 0]) == pytest.approx(0.0199)
    # the +Inf bucket answers the highest finite bound
    assert histogram_quantile(0.99, bounds, [0, 0, 0, 5]) == 0.04
    assert histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None


def test_quantiles_of_latency_buckets_are_close_to_exact() -> None:
    h = Histogram(LATENCY_BUCKETS)
    values = [0.001 + 0.0001 * i for i in range(1000)]  # 1 ms .. 101 ms, uniform
    for v in values:
        h.observe(v)
    p50 = histogram_quantile(0.5, LATENCY_BUCKETS, h.counts)
    p99 = histogram_quantile(0.99, LATENCY_BUCKETS, h.counts)
    assert p50 is not None and p99 is not None
    assert abs(p50 - 0.051) < 0.006
    assert abs(p99 - 0.1) < 0.013


def test_app_metrics_accounting_and_window_rates() -> None:
    m = AppMetrics()
    before = _app_point_of(m)
    # 10 inputs in one call: 7 answered in time, 1 late, 1 expired, 1 model error
    m.answered(10, late=1, expired=1, errored=1, elapsed=0.05, slo=0.1)
    m.error("model_error")
    # a call that took longer than the SLO: its answers are not within the SLO
    m.answered(2, 0, 0, 0, elapsed=0.2, slo=0.1)
    # a bad request (client error) and a rejected one (server overload)
    m.error("bad_input", received=True)
    m.error("queue_full", 3, received=True)
    m.unanswered(4, "no_model")
    assert m.requests == 10 + 2 + 1 + 3 + 4
    assert m.within_slo == 7
    assert m.defaults == {"slo": 1, "expired": 1, "error": 1, "no_model": 4}
    assert m.errors == {"model_error": 1, "bad_input": 1, "queue_full": 3}
    assert m.latency.count == 2
    rates = _app_rates(_app_point_of(m), before, dt=2.0)
    assert rates["throughput"] == pytest.approx(20 / 2.0)
    assert rates["goodput"] == pytest.approx(7 / 2.0)
    # the bad input does not count against the SLO; everything else does
    assert rates["slo_attainment"] == pytest.approx(7 / 19)
    assert rates["p50_seconds"] is not None


def _app_point_of(m: AppMetrics):  # type: ignore[no-untyped-def]
    class _App:
        metrics = m

    return _app_point(_App())  # type: ignore[arg-type]


def test_model_version_metrics() -> None:
    m = ModelVersionMetrics()
    m.batch_done(8, 0.004, 0.003)
    m.batch_done(3, 0.002, 0.0)  # a container that does not report its time
    m.error("model_error", 5)
    assert m.batches == 2
    assert m.batch_size.count == 2 and m.batch_size.sum == 11
    assert m.model_latency.count == 1
    assert m.errors == {"model_error": 5}
    assert BATCH_SIZE_BUCKETS[0] == 1


def _request(accept: str | None, query: dict[str, str] | None = None) -> Request:
    headers = {} if accept is None else {"accept": accept}
    return Request("GET", "/metrics", query or {}, headers, b"")


@pytest.mark.parametrize(
    ("accept", "query", "json_wanted"),
    [
        # Clipper's clipper_admin.inspect_instance() uses requests.get: Accept */*
        ("*/*", None, True),
        (None, None, True),
        ("application/json", None, True),
        # what Prometheus sends
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,"
            "text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
            None,
            False,
        ),
        ("text/plain", None, False),
        ("text/plain;q=0.9, application/json", None, True),
        ("application/json;q=0.1, text/plain", None, False),
        ("*/*", {"format": "prometheus"}, False),
        ("text/plain", {"format": "json"}, True),
    ],
)
def test_content_negotiation(
    accept: str | None, query: dict[str, str] | None, json_wanted: bool
) -> None:
    assert wants_json(_request(accept, query)) is json_wanted


def test_prometheus_rendering_of_an_app() -> None:
    m = AppMetrics()
    m.answered(4, 1, 0, 0, 0.01, 0.1)
    m.error("bad_input", received=True)
    app = {
        "slo_seconds": 0.1,
        "requests": m.requests,
        "answers_within_slo": m.within_slo,
        "errors": m.errors,
        "default_outputs": m.defaults,
        "latency_seconds": m.latency.to_dict(),
        "window": {
            "throughput": 5.0,
            "goodput": 3.0,
            "slo_attainment": 0.75,
            "p50_seconds": 0.01,
            "p99_seconds": None,
        },
    }
    from prometheus_client import CollectorRegistry, generate_latest

    class _C:
        def collect(self):  # type: ignore[no-untyped-def]
            return _app_families({"a b": app})

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_C())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("clipper_app_requests_total", (("app", "a b"),))] == 5
    assert samples[("clipper_app_answers_within_slo_total", (("app", "a b"),))] == 3
    assert samples[("clipper_app_errors_total", (("app", "a b"), ("kind", "bad_input")))] == 1
    key = ("clipper_app_default_outputs_total", (("app", "a b"), ("reason", "slo")))
    assert samples[key] == 1
    assert samples[("clipper_app_latency_seconds_count", (("app", "a b"),))] == 1
    inf = ("clipper_app_latency_seconds_bucket", (("app", "a b"), ("le", "+Inf")))
    assert samples[inf] == 1
    assert samples[("clipper_app_slo_attainment_ratio", (("app", "a b"),))] == 0.75
    # no p99 in the window: no sample rather than NaN
    assert not any(
        n == "clipper_app_latency_window_seconds" and ("quantile", "0.99") in labels
        for n, labels in samples
    )
    assert not any(math.isnan(v) for v in samples.values())
