"""A real server for the REST API document's tests: token on, the closure model
``sum`` (doubles) deployed and linked to the application ``hello``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clipper_core.deployers import deploy_python_closure
from tests.server import models
from tests.server.conftest import Running, start_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_server(tmp_path_factory.mktemp("api") / "state")
    try:
        conn = running.conn
        conn.register_application("hello", "doubles", "-1", 2_000_000)
        deploy_python_closure(conn, "sum", 1, "doubles", models.make_sum())
        conn.link_model_to_app("hello", "sum")
        yield running
    finally:
        running.bg.stop()
