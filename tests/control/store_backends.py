"""The state-store implementations the contract tests run against, and record
builders shared by the store tests.

A new backend (Redis, issue 17) joins every contract test by adding an entry to
``BACKENDS``: a factory that returns a fresh, empty store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipper_core.store import AppRecord, ModelRecord, SqliteStateStore, StateStore

#: name -> factory(tmp_path, **store options) of an empty store.
BACKENDS: dict[str, Callable[..., StateStore]] = {
    "sqlite-file": lambda tmp, **kw: SqliteStateStore(tmp / "state.sqlite3", **kw),
    "sqlite-memory": lambda tmp, **kw: SqliteStateStore(":memory:", **kw),
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
