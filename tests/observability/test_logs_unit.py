"""Structured log records: JSON lines, text, replica events, rate limiting."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from clipper_core.logs import (
    JsonFormatter,
    RateLimiter,
    TextFormatter,
    configure_logging,
    log_event,
)
from clipper_core.managers.base import ReplicaEvent, log_replica_event


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("clipper_core")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_event_as_json_line(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, _ = captured
    log = logging.getLogger("clipper_core.test")
    log_event(log, "model_deployed", "deployed m:1", model="m", version="1", msg="clash")
    log.warning("plain %s", "record")
    first, second = _lines(stream)
    assert first["event"] == "model_deployed"
    assert first["msg"] == "deployed m:1"
    assert first["level"] == "info"
    assert first["logger"] == "clipper_core.test"
    assert first["model"] == "m" and first["version"] == "1"
    assert first["field_msg"] == "clash"  # a field never overwrites the core keys
    assert first["ts"].endswith("Z")
    assert second == {**second, "event": "log", "msg": "plain record", "level": "warning"}


def test_exception_is_kept(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, _ = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("clipper_core.test").exception("failed")
    (doc,) = _lines(stream)
    assert "ValueError: boom" in doc["exc"]


def test_text_format_puts_fields_after_the_message() -> None:
    record = logging.LogRecord(
        "clipper_core.server", logging.WARNING, __file__, 1, "%s", ("hi",), None
    )
    record.event = "replica_exited"
    record.fields = {"model": "m", "stderr_tail": "line 1\nline 2"}
    text = TextFormatter().format(record)
    first, *rest = text.splitlines()
    assert first.endswith("WARNING clipper_core.server: hi [replica_exited] model=m")
    assert rest == ["  stderr_tail:", "    line 1", "    line 2"]


def test_text_lines_cannot_be_forged_by_a_request() -> None:
    # An access-log line carries the percent-decoded path a client sent: a "%0a"
    # in it must not start a record of its own.
    path = "/x\n2026-12-07 00:00:00,000 ERROR clipper_core.server: FORGED\r\x1b[2J\u2028"
    record = logging.LogRecord(
        "clipper_core.http.access",
        logging.INFO,
        __file__,
        1,
        '"GET %s HTTP/1.1" 404',
        (path,),
        None,
    )
    record.event = "http_access"
    record.fields = {"replica": "r\n2026-12-07 ERROR forged too"}
    lines = TextFormatter().format(record).split("\n")
    assert lines[0].endswith('INFO clipper_core.http.access: "GET /x')
    assert all(ln.startswith("  ") for ln in lines[1:]), lines
    assert "FORGED\\x0d\\x1b[2J\\u2028 HTTP/1.1" in lines[1]
    assert [ln.strip() for ln in lines[2:]] == ["replica:", "r", "2026-12-07 ERROR forged too"]


def test_a_query_workers_lines_say_which_worker() -> None:
    # With --workers N every process logs to the same stderr: the lines could not
    # be told apart.
    record = logging.LogRecord("clipper_core.http", logging.INFO, __file__, 1, "hi", (), None)
    assert json.loads(JsonFormatter(worker=2).format(record))["worker"] == 2
    assert "worker" not in json.loads(JsonFormatter().format(record))
    assert "INFO worker 2 clipper_core.http: hi" in TextFormatter(worker=2).format(record)


def test_access_log_records_become_fields() -> None:
    record = logging.LogRecord(
        "clipper_core.http.access", logging.INFO, __file__, 1, '"%s %s HTTP/%s" %d %d',
        ("GET", "/metrics", "1.1", 200, 42), None,
    )  # fmt: skip
    doc = json.loads(JsonFormatter().format(record))
    assert doc["event"] == "http_access"
    assert doc["path"] == "/metrics" and doc["status"] == 200 and doc["bytes"] == 42


def test_replica_crash_carries_its_stderr_tail(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, _ = captured
    tail = "Traceback (most recent call last):\nRuntimeError: out of cheese"
    log_replica_event(
        ReplicaEvent(
            "exited",
            "m",
            "2",
            "1",
            pid=4242,
            detail="exit code 3; stderr tail:\n...",
            exit_code=3,
            stderr_tail=tail,
        )
    )
    log_replica_event(
        ReplicaEvent("ready", "m", "2", "1", "127.0.0.1:5000", 4242, "127.0.0.1:5000")
    )
    crash, ready = _lines(stream)
    assert crash["event"] == "replica_exited" and crash["level"] == "warning"
    assert crash["msg"] == "replica 1 of m:2 exited: exit code 3"
    assert crash["exit_code"] == 3 and crash["pid"] == 4242
    assert crash["stderr_tail"].endswith("RuntimeError: out of cheese")
    assert (crash["model"], crash["version"], crash["replica"]) == ("m", "2", "1")
    assert ready["event"] == "replica_ready" and ready["address"] == "127.0.0.1:5000"


def test_rate_limiter() -> None:
    limiter = RateLimiter(60.0)
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")


def test_configure_logging_levels() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("warning", "json", stream)
        logging.getLogger("clipper_core.x").info("hidden")
        logging.getLogger("clipper_core.x").warning("shown")
        assert [d["msg"] for d in _lines(stream)] == ["shown"]
        with pytest.raises(ValueError):
            configure_logging("info", "xml", stream)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
