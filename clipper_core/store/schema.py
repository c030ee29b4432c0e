"""The SQLite schema of the state store: its DDL, one migration per version, and
the mappers between rows and records.

The schema version lives in ``PRAGMA user_version``; a file of an older version is
migrated on open, in the same transaction that checks the version.
"""

from __future__ import annotations

import json
import sqlite3

from clipper_core.errors import ClipperError
from clipper_core.store.records import AppRecord, EndpointRecord, ModelRecord, PipelineRecord

__all__ = [
    "MIGRATIONS",
    "MODEL_COLUMNS",
    "SCHEMA_VERSION",
    "app_from_row",
    "endpoint_from_row",
    "migrate",
    "model_from_row",
    "pipeline_from_row",
]

#: Version of the schema this code writes; stored in ``PRAGMA user_version``.
#: 1: apps, models, current versions, links, kv.  2: per-version queue_capacity and
#: batch_timeout.  3: revision, change log, endpoints.  4: pipelines.  5: per-version
#: batch-size controller mode.  6: link order (an app's first linked model answers it).
SCHEMA_VERSION = 7

# Each entry migrates the schema from version i to i + 1 (index i).  Append only:
# never edit a migration that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE apps (
            name TEXT PRIMARY KEY,
            input_type TEXT NOT NULL,
            default_output TEXT NOT NULL,
            slo_micros INTEGER NOT NULL,
            policy TEXT NOT NULL,
            policy_config TEXT NOT NULL
        )""",
        """CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            input_type TEXT NOT NULL,
            labels TEXT NOT NULL,
            container TEXT NOT NULL,
            batch_size INTEGER NOT NULL,
            num_replicas INTEGER NOT NULL,
            cpus TEXT,
            memory_limit_mb INTEGER,
            cache_enabled INTEGER NOT NULL,
            batch_wait_micros INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        )""",
        """CREATE TABLE current_versions (
            name TEXT PRIMARY KEY,
            version TEXT NOT NULL,
            FOREIGN KEY (name, version) REFERENCES models (name, version) ON DELETE CASCADE
        )""",
        """CREATE TABLE links (
            app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
            model_name TEXT NOT NULL,
            PRIMARY KEY (app, model_name)
        )""",
        "CREATE INDEX links_by_model ON links (model_name)",
        """CREATE TABLE kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (namespace, key)
        )""",
    ),
    (
        # Per-version admission settings; NULL: the server's defaults.
        "ALTER TABLE models ADD COLUMN queue_capacity INTEGER",
        "ALTER TABLE models ADD COLUMN batch_timeout REAL",
    ),
    (
        # The revision of the last committed change, and the highest revision whose
        # change rows were trimmed (changes_since(r) needs r >= trimmed_through).
        """CREATE TABLE revision (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            current INTEGER NOT NULL,
            trimmed_through INTEGER NOT NULL
        )""",
        "INSERT INTO revision (id, current, trimmed_through) VALUES (0, 0, 0)",
        # The keys each write transaction touched (kind: app, model, endpoint, ...).
        """CREATE TABLE changes (
            revision INTEGER NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (revision, kind, name)
        )""",
        # Replicas registered by hand (or published by the replica owner).
        """CREATE TABLE endpoints (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            replica_id TEXT NOT NULL,
            address TEXT NOT NULL,
            PRIMARY KEY (model, version, replica_id),
            FOREIGN KEY (model, version) REFERENCES models (name, version) ON DELETE CASCADE
        )""",
    ),
    (
        # Prediction pipelines; stages and edges are JSON (see PipelineRecord).
        """CREATE TABLE pipelines (
            name TEXT PRIMARY KEY,
            input_type TEXT NOT NULL,
            stages TEXT NOT NULL,
            edges TEXT NOT NULL,
            slo_micros INTEGER NOT NULL,
            default_output TEXT NOT NULL
        )""",
    ),
    (
        # The controller migration: per-version batch-size controller mode
        # ("aimd" | "quantile" | "fixed"); NULL: derived from batch_size.
        "ALTER TABLE models ADD COLUMN controller TEXT",
    ),
    (
        # The link order: under policy single an app's first linked model answers,
        # so a restart must bring the links back in the order they were made.
        # Links made before kept the order they were restored in (by name).
        "ALTER TABLE links ADD COLUMN position INTEGER NOT NULL DEFAULT 0",
        """UPDATE links SET position = (
            SELECT COUNT(*) FROM links AS earlier
            WHERE earlier.app = links.app AND earlier.model_name < links.model_name
        )""",
    ),
    (
        # The bounds migration: model versions stored before their batch size,
        # batch wait and queue capacity had upper bounds (records.MAX_*) are
        # brought within them (a batch size over a C int stopped every start).
        "UPDATE models SET batch_size = 100000 WHERE batch_size > 100000",
        "UPDATE models SET batch_wait_micros = 3600000000 WHERE batch_wait_micros > 3600000000",
        "UPDATE models SET queue_capacity = 100000000 WHERE queue_capacity > 100000000",
        """UPDATE models SET batch_size = queue_capacity
            WHERE queue_capacity IS NOT NULL AND batch_size > queue_capacity""",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

MODEL_COLUMNS = (
    "name, version, input_type, labels, container, batch_size, num_replicas, cpus,"
    " memory_limit_mb, cache_enabled, batch_wait_micros, created_at, queue_capacity,"
    " batch_timeout, controller"
)


def model_from_row(row: sqlite3.Row) -> ModelRecord:
    cpus = row["cpus"]
    return ModelRecord.from_stored(
        {
            "name": row["name"],
            "version": row["version"],
            "input_type": row["input_type"],
            "labels": json.loads(row["labels"]),
            "container": json.loads(row["container"]),
            "batch_size": row["batch_size"],
            "num_replicas": row["num_replicas"],
            "cpus": None if cpus is None else json.loads(cpus),
            "memory_limit_mb": row["memory_limit_mb"],
            "cache_enabled": bool(row["cache_enabled"]),
            "batch_wait_micros": row["batch_wait_micros"],
            "created_at": row["created_at"],
            "queue_capacity": row["queue_capacity"],
            "batch_timeout": row["batch_timeout"],
            "controller": row["controller"],
        }
    )


def app_from_row(row: sqlite3.Row) -> AppRecord:
    return AppRecord.from_stored(
        {
            "name": row["name"],
            "input_type": row["input_type"],
            "default_output": row["default_output"],
            "slo_micros": row["slo_micros"],
            "policy": row["policy"],
            "policy_config": json.loads(row["policy_config"]),
        }
    )


def endpoint_from_row(row: sqlite3.Row) -> EndpointRecord:
    return EndpointRecord(
        model=row["model"],
        version=row["version"],
        replica_id=row["replica_id"],
        address=row["address"],
    )


def pipeline_from_row(row: sqlite3.Row) -> PipelineRecord:
    return PipelineRecord.from_stored(
        {
            "name": row["name"],
            "input_type": row["input_type"],
            "stages": json.loads(row["stages"]),
            "edges": json.loads(row["edges"]),
            "slo_micros": row["slo_micros"],
            "default_output": row["default_output"],
        }
    )


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema of ``conn``'s database to :data:`SCHEMA_VERSION`.

    Call inside a write transaction (``BEGIN IMMEDIATE``): a failed migration then
    leaves the file as it was.

    Raises:
        ClipperError: The file was written by a newer clipper_core.
    """
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > SCHEMA_VERSION:
        raise ClipperError(
            f"{path}: state schema version {current} is newer than this"
            f" clipper_core supports ({SCHEMA_VERSION}); upgrade clipper_core"
        )
    for version in range(current, SCHEMA_VERSION):
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
    if current != SCHEMA_VERSION:
        # PRAGMA takes no parameters; the value is our own integer.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
