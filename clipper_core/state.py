"""Old home of the state store; kept so that existing imports keep working.

New code imports from :mod:`clipper_core.store`.  Here ``StateStore`` names the
SQLite store class (:class:`~clipper_core.store.sqlite.SqliteStateStore`), not the
Protocol of the same name in :mod:`clipper_core.store.base`.
"""

from __future__ import annotations

from clipper_core.store.records import INPUT_TYPES, AppRecord, EndpointRecord, ModelRecord
from clipper_core.store.schema import SCHEMA_VERSION
from clipper_core.store.sqlite import SqliteStateStore

StateStore = SqliteStateStore

__all__ = [
    "INPUT_TYPES",
    "SCHEMA_VERSION",
    "AppRecord",
    "EndpointRecord",
    "ModelRecord",
    "StateStore",
]
