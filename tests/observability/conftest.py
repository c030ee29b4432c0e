"""Fixtures for the observability tests: captured structured logs, a server, and
artifacts (screenshots) listed at the end of the run."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clipper_core.logs import JsonFormatter
from tests.observability import artifacts
from tests.server.conftest import Running, start_server


class LogCapture:
    """JSON lines written by the ``clipper_core`` loggers while the fixture lives."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        docs = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [d for d in docs if name is None or d["event"] == name]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("clipper_core")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    r = start_server(tmp_path / "state")
    try:
        yield r
    finally:
        r.bg.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if artifacts.recorded:
        terminalreporter.section("artifacts")
        for label, path in artifacts.recorded:
            terminalreporter.write_line(f"{label}: {path}")
