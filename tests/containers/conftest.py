"""Fixtures of the container tests (helpers live in ``container_harness``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers import as a top-level module whatever pytest's import mode.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from container_harness import Launcher  # noqa: E402


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Launcher]:
    """Start containers with ``containers.start(...)``; all are killed afterwards."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(params=["local", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    """Predict over the container's local socket, then over gRPC."""
    return str(request.param)
