"""The desired state: records, the store interfaces, the SQLite store and its
change feeds.

``StateStore`` here is the Protocol; :class:`SqliteStateStore` is the store this
version ships.
"""

from clipper_core.store.base import (
    ChangeFeed,
    DesiredStateReader,
    EventKind,
    KvStore,
    ResyncNeeded,
    StateEvent,
    StateStore,
)
from clipper_core.store.feed import LocalChangeFeed, SqlitePollingFeed
from clipper_core.store.records import (
    INPUT_TYPES,
    AppRecord,
    EndpointRecord,
    ModelRecord,
    PipelineRecord,
)
from clipper_core.store.schema import SCHEMA_VERSION
from clipper_core.store.sqlite import SqliteStateStore

__all__ = [
    "INPUT_TYPES",
    "SCHEMA_VERSION",
    "AppRecord",
    "ChangeFeed",
    "DesiredStateReader",
    "EndpointRecord",
    "EventKind",
    "KvStore",
    "LocalChangeFeed",
    "ModelRecord",
    "PipelineRecord",
    "ResyncNeeded",
    "SqlitePollingFeed",
    "SqliteStateStore",
    "StateEvent",
    "StateStore",
]
