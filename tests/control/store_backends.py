"""The state-store implementations the contract tests run against, and record
builders shared by the store tests.

A backend joins every contract test by an entry in ``BACKENDS``: a factory that
returns a fresh, empty store.  The Redis one runs on the session's real
redis-server (its stores kept apart by key prefix); without the binary its
tests are skipped, saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis_server import fresh_prefix, shared_redis

from clipper_core.store import AppRecord, ModelRecord, PipelineRecord, SqliteStateStore, StateStore
from clipper_core.store.redis import RedisStateStore


def _redis_store(tmp: Path, **options: Any) -> RedisStateStore:
    return RedisStateStore(shared_redis().url, prefix=fresh_prefix(), **options)


#: name -> factory(tmp_path, **store options) of an empty store.
BACKENDS: dict[str, Callable[..., StateStore]] = {
    "sqlite-file": lambda tmp, **kw: SqliteStateStore(tmp / "state.sqlite3", **kw),
    "sqlite-memory": lambda tmp, **kw: SqliteStateStore(":memory:", **kw),
    "redis": _redis_store,
}


def open_store(backend: str, tmp_path: Path, **options: Any) -> StateStore:
    """A fresh store of ``backend`` (options: ``changes_kept``, ``feed_capacity``)."""
    return BACKENDS[backend](tmp_path, **options)


def app(name: str = "app", input_type: str = "doubles", **kw: Any) -> AppRecord:
    return AppRecord(name, input_type, "-1", 100_000, **kw)


def model(
    name: str = "m", version: str = "1", input_type: str = "doubles", **kw: Any
) -> ModelRecord:
    kw.setdefault("labels", ["a"])
    kw.setdefault("container", {"kind": "closure", "path": "/x"})
    return ModelRecord(name, version, input_type, **kw)


def pipeline(name: str = "p", input_type: str = "doubles", **kw: Any) -> PipelineRecord:
    """A three-stage pipeline a -> b -> c over models ma, mb, mc (unless ``stages``
    and ``edges`` say otherwise)."""
    kw.setdefault(
        "stages",
        [
            {"name": "a", "model": "ma", "output_type": "doubles"},
            {"name": "b", "model": "mb", "version": "1", "output_type": "doubles"},
            {"name": "c", "model": "mc"},
        ],
    )
    kw.setdefault("edges", [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}])
    kw.setdefault("slo_micros", 100_000)
    kw.setdefault("default_output", "-1")
    return PipelineRecord(name, input_type, **kw)
