"""Fixtures for the framework deployer tests: one real server per test module.

Tests marked ``heavy`` (torch, tensorflow, pyspark) are skipped unless the run
selects them with ``-m heavy`` (``.ci/run`` does, after installing the extras).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from model_containers._proto import container_pb2 as pb
from model_containers._proto import container_pb2_grpc as pb_grpc
from tests.server.conftest import Running, start_server

# Modules whose frameworks take seconds to import: not even collected by default.
HEAVY_MODULES = {"test_pytorch.py", "test_tensorflow.py", "test_pyspark.py"}


def _heavy_selected(config: pytest.Config) -> bool:
    return "heavy" in (config.getoption("-m") or "")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name in HEAVY_MODULES and not _heavy_selected(config):
        return True
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    if _heavy_selected(config):
        return None
    return "deployers: torch/tensorflow/pyspark tests not collected (select them with -m heavy)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _heavy_selected(config):
        return
    skip = pytest.mark.skip(reason="heavy framework test: select it with -m heavy (.ci/run does)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """A server for the whole module (each deploy starts its own container);
    a module's ``SERVER_SETTINGS`` dict overrides settings."""
    settings = {"grpc_port": 0, **getattr(request.module, "SERVER_SETTINGS", {})}
    r = start_server(tmp_path_factory.mktemp("state"), **settings)
    try:
        yield r
    finally:
        r.bg.stop()


def serve(server: Running, app: str, rows: Any, *, timeout: float = 60.0) -> list[Any]:
    """Query an app with one batch and return the outputs (no default outputs)."""
    body = {"input_batch": np.asarray(rows).tolist() if not isinstance(rows, list) else rows}
    status, reply = server.client.predict(app, body, timeout=timeout)
    assert status == 200, reply
    preds = reply["batch_predictions"]
    assert not any(p["default"] for p in preds), preds
    return [p["output"] for p in preds]


def endpoint(
    server: Running, name: str, input_type: str = "doubles", slo_micros: int = 20_000_000
) -> None:
    """Register an app named like the model, with a generous latency objective."""
    server.conn.register_application(name, input_type, "-1", slo_micros)


def link(server: Running, name: str) -> None:
    server.conn.link_model_to_app(name, name)


def metadata(server: Running, model: str, version: str = "1") -> Any:
    """The container's Metadata RPC (what OIP's model metadata is built from)."""
    handle = next(h for h in server.server.manager.list(model, version) if h.state == "running")
    # The local manager's replicas take calls with their version's local token only.
    tokens = server.server.replica_tokens
    assert tokens is not None
    auth = (("authorization", f"Bearer {tokens.local_token(model, version)}"),)
    with grpc.insecure_channel(handle.address) as channel:
        stub = pb_grpc.ModelContainerStub(channel)
        return stub.Metadata(pb.MetadataRequest(), timeout=10, metadata=auth)


def specs(tensors: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(t.name, t.datatype, tuple(t.shape)) for t in tensors]
