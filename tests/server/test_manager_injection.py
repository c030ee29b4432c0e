"""The server takes its container manager as a parameter: the same HTTP deploy and
query path runs over the in-process fake manager, and no child process starts."""

from __future__ import annotations

import os
from pathlib import Path

from clipper_core.connection import ClipperConnection
from clipper_core.deployers import create_endpoint
from clipper_core.managers.fake import FakeContainerManager
from clipper_core.server import BackgroundServer
from tests.server import models
from tests.server.conftest import Client


def _children() -> set[int]:
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:  # pragma: no cover - not Linux
        return set()


def test_a_server_over_the_fake_manager_serves(tmp_path: Path) -> None:
    before = _children()
    manager = FakeContainerManager()
    with BackgroundServer(
        query_port=0, management_port=0, grpc_port=None, state_dir=str(tmp_path), manager=manager
    ) as bg:
        assert bg.server.manager is manager
        conn = ClipperConnection.for_server(bg.server)
        create_endpoint(conn, "inproc", "doubles", models.make_sum(), num_replicas=2)
        status, reply = Client(bg.query_url).predict("inproc", {"input": [1.0, 2.0]})
        assert status == 200 and reply["output"] == 3.0, reply
        assert sorted(s.replica_id for s in manager.list("inproc", "1")) == ["0", "1"]
        assert all(s.pid is None and s.state == "running" for s in manager.list())
        conn.set_num_replicas("inproc", 1)
        assert [s.replica_id for s in manager.list("inproc", "1")] == ["0"]
        assert _children() == before  # no model process was started
    assert manager.list() == []
