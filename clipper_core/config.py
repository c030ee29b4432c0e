"""Server configuration: one dataclass, read from keyword arguments or the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_state_dir() -> str:
    return os.environ.get("CLIPPER_STATE_DIR", str(Path.home() / ".clipper_core"))


@dataclass
class ServerConfig:
    """Everything a ``ClipperServer`` needs to start.

    Attributes:
        host: address both HTTP ports bind to (loopback by default).
        query_port: Clipper's query REST port (0 picks a free port).
        management_port: the admin REST port (0 picks a free port).
        state_dir: folder holding the SQLite store and the deployed models' files.
        state_path: the SQLite file; ``":memory:"`` keeps nothing across restarts.
        max_body_size: largest accepted request body, in bytes (413 above it).
        queue_capacity: per model version; a full queue answers 503 at once.
        max_batch_size: upper bound of the adaptive batch size.
        batch_timeout: seconds a model may take for one batch before it fails.
        replica_start_timeout: seconds a container may take to become ready.
        cache_bytes: byte budget of the prediction cache (0 disables it).
        python: interpreter that runs model containers.
    """

    host: str = "127.0.0.1"
    query_port: int = 1337
    management_port: int = 1338
    state_dir: str = field(default_factory=_default_state_dir)
    state_path: str | None = None
    max_body_size: int = 10 * 1024 * 1024
    queue_capacity: int = 10_000
    max_batch_size: int = 256
    batch_timeout: float = 30.0
    replica_start_timeout: float = 60.0
    cache_bytes: int = 64 * 1024 * 1024
    python: str = ""

    def resolved_state_path(self) -> str:
        if self.state_path is not None:
            return self.state_path
        return str(Path(self.state_dir) / "state.sqlite3")

    def models_dir(self) -> Path:
        return Path(self.state_dir) / "models"
