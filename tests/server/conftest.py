"""Fixtures for end-to-end tests: a real server with real model processes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.server import BackgroundServer


class Client:
    """A tiny HTTP client for the query port (stdlib only, always with a timeout)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def post(
        self, path: str, body: Any, *, raw: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def predict(self, app: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.post(f"/{app}/predict", body, **kw)


class Running:
    def __init__(self, bg: BackgroundServer, state_dir: Path) -> None:
        self.bg = bg
        self.server = bg.server
        self.state_dir = state_dir
        self.conn = ClipperConnection(
            LocalContainerManager(
                "127.0.0.1", self.server.query_port, self.server.management_port, str(state_dir)
            )
        )
        self.client = Client(bg.query_url)

    def admin_headers(self) -> dict[str, str]:
        """What a raw management call needs: the token the server generated."""
        return {"Authorization": f"Bearer {self.server.config.admin_token}"}

    def replica_pids(self, model: str, version: str = "1") -> list[int]:
        return [
            h.pid
            for h in self.server.manager.list(model, version)
            if h.state == "running" and h.pid
        ]


def start_server(state_dir: Path, **overrides: Any) -> Running:
    bg = BackgroundServer(query_port=0, management_port=0, state_dir=str(state_dir), **overrides)
    bg.start()
    return Running(bg, state_dir)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start_server(tmp_path / "state")
    try:
        yield r
    finally:
        r.bg.stop()
