"""The persisted desired state of a clipper_core instance (applications, models,
links, current versions and a small key/value table), kept in one SQLite file.

The control plane reconciles running replicas against this store, so a restarted
server brings everything back from it.  Calls are synchronous and fast; callers on
an event loop may run them in a thread (``asyncio.to_thread``): the one connection
is shared under a lock.

Example:
    >>> store = StateStore(":memory:")
    >>> store.add_app(AppRecord("app", "doubles", "-1", 100_000))
    >>> store.get_app("app").slo_micros
    100000
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from clipper_core.errors import BadInput, ClipperError, Conflict, NotFound

__all__ = [
    "INPUT_TYPES",
    "SCHEMA_VERSION",
    "AppRecord",
    "ModelRecord",
    "StateStore",
]

#: The input types of Clipper's query API.
INPUT_TYPES = frozenset({"ints", "floats", "doubles", "strings", "bytes"})

#: Version of the schema this code writes; stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 2

# Names appear in URL paths (/<app>/predict) and in "name:version:replica" ids, so
# they may not contain '/' or ':'.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_R = TypeVar("_R", "AppRecord", "ModelRecord")


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise BadInput(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


def _check_int(what: str, value: object, minimum: int) -> None:
    # bool is an int subclass; True as a replica count is a caller bug.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadInput(f"{what} must be an integer >= {minimum}, got {value!r}")


def _check_input_type(value: object) -> None:
    if value not in INPUT_TYPES:
        raise BadInput(f"unknown input type {value!r}; expected one of {sorted(INPUT_TYPES)}")


def _json_copy(what: str, value: Any) -> Any:
    """A deep copy through JSON, which also proves that ``value`` can be stored."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what} is not JSON-serialisable: {exc}") from None


def _from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
    if not isinstance(data, Mapping):
        raise BadInput(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInput(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a missing required field
        raise BadInput(f"invalid {cls.__name__}: {exc}") from None


@dataclass(frozen=True)
class AppRecord:
    """An application: the endpoint clients query.

    Attributes:
        name: The application name (the ``/<name>/predict`` path).
        input_type: One of :data:`INPUT_TYPES`.
        default_output: Returned when the SLO is missed or no model is linked.
        slo_micros: The latency objective in microseconds.
        policy: The selection policy's name.
        policy_config: The policy's options (JSON).
    """

    name: str
    input_type: str
    default_output: str
    slo_micros: int
    policy: str = "single"
    policy_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("application name", self.name)
        _check_input_type(self.input_type)
        if not isinstance(self.default_output, str):
            raise BadInput(f"default_output must be a string, got {self.default_output!r}")
        _check_int("slo_micros", self.slo_micros, 1)
        if not isinstance(self.policy, str) or not self.policy:
            raise BadInput(f"policy must be a non-empty string, got {self.policy!r}")
        if not isinstance(self.policy_config, dict):
            raise BadInput(f"policy_config must be an object, got {self.policy_config!r}")
        object.__setattr__(self, "policy_config", _json_copy("policy_config", self.policy_config))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a deep copy) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppRecord:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        return _from_dict(cls, data)


@dataclass(frozen=True)
class ModelRecord:
    """One version of a model and how to run it.

    Attributes:
        name: The model name.
        version: The version, always a string (``"1"``).
        input_type: One of :data:`INPUT_TYPES`.
        labels: Free-form labels.
        container: How to start a replica (opaque JSON for the container manager,
            e.g. ``{"kind": "closure", "path": ...}``).
        batch_size: Maximum batch size; ``-1`` lets the SLO controller choose.
        num_replicas: Desired number of replicas.
        cpus: CPUs to pin the replicas to, or None.
        memory_limit_mb: Address-space limit per replica, or None.
        cache_enabled: Whether predictions of this version are cached.
        batch_wait_micros: Delayed-batching wait after a batch's first request.
        created_at: When the version was registered (UNIX time).
        queue_capacity: Bound of the version's queue, or None for the server's
            default (``ServerConfig.queue_capacity``).
        batch_timeout: Seconds one batch may take before the replica is deemed hung
            and recycled, or None for the server's default.
    """

    name: str
    version: str
    input_type: str
    labels: list[str]
    container: dict[str, Any]
    batch_size: int = -1
    num_replicas: int = 1
    cpus: list[int] | None = None
    memory_limit_mb: int | None = None
    cache_enabled: bool = True
    batch_wait_micros: int = 0
    created_at: float = field(default_factory=time.time)
    queue_capacity: int | None = None
    batch_timeout: float | None = None

    def __post_init__(self) -> None:
        _check_name("model name", self.name)
        _check_name("model version", self.version)
        _check_input_type(self.input_type)
        if not isinstance(self.labels, list | tuple) or not all(
            isinstance(label, str) for label in self.labels
        ):
            raise BadInput(f"labels must be a list of strings, got {self.labels!r}")
        object.__setattr__(self, "labels", list(self.labels))
        if not isinstance(self.container, dict):
            raise BadInput(f"container must be an object, got {self.container!r}")
        object.__setattr__(self, "container", _json_copy("container", self.container))
        if self.batch_size != -1:
            _check_int("batch_size (or -1 for adaptive)", self.batch_size, 1)
        _check_int("num_replicas", self.num_replicas, 0)
        if self.cpus is not None:
            if not isinstance(self.cpus, list | tuple) or not self.cpus:
                raise BadInput(f"cpus must be a non-empty list or None, got {self.cpus!r}")
            for cpu in self.cpus:
                _check_int("a cpu index", cpu, 0)
            object.__setattr__(self, "cpus", list(self.cpus))
        if self.memory_limit_mb is not None:
            _check_int("memory_limit_mb", self.memory_limit_mb, 1)
        if not isinstance(self.cache_enabled, bool):
            raise BadInput(f"cache_enabled must be a boolean, got {self.cache_enabled!r}")
        _check_int("batch_wait_micros", self.batch_wait_micros, 0)
        if (
            not isinstance(self.created_at, int | float)
            or isinstance(self.created_at, bool)
            or not math.isfinite(self.created_at)
        ):
            raise BadInput(f"created_at must be a number, got {self.created_at!r}")
        object.__setattr__(self, "created_at", float(self.created_at))
        if self.queue_capacity is not None:
            _check_int("queue_capacity", self.queue_capacity, 1)
        if self.batch_timeout is not None:
            if (
                not isinstance(self.batch_timeout, int | float)
                or isinstance(self.batch_timeout, bool)
                or not math.isfinite(self.batch_timeout)
                or self.batch_timeout <= 0
            ):
                raise BadInput(f"batch_timeout must be a number > 0, got {self.batch_timeout!r}")
            object.__setattr__(self, "batch_timeout", float(self.batch_timeout))

    @property
    def key(self) -> str:
        """``"name:version"``, as Clipper's ``get_all_models`` lists it."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a deep copy) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRecord:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        return _from_dict(cls, data)


# Each entry migrates the schema from version i to i + 1 (index i).  Append only:
# never edit a migration that has shipped.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_MODEL_COLUMNS = (
    "name, version, input_type, labels, container, batch_size, num_replicas, cpus,"
    " memory_limit_mb, cache_enabled, batch_wait_micros, created_at, queue_capacity,"
    " batch_timeout"
)


def _model_from_row(row: sqlite3.Row) -> ModelRecord:
    cpus = row["cpus"]
    return ModelRecord(
        name=row["name"],
        version=row["version"],
        input_type=row["input_type"],
        labels=json.loads(row["labels"]),
        container=json.loads(row["container"]),
        batch_size=row["batch_size"],
        num_replicas=row["num_replicas"],
        cpus=None if cpus is None else json.loads(cpus),
        memory_limit_mb=row["memory_limit_mb"],
        cache_enabled=bool(row["cache_enabled"]),
        batch_wait_micros=row["batch_wait_micros"],
        created_at=row["created_at"],
        queue_capacity=row["queue_capacity"],
        batch_timeout=row["batch_timeout"],
    )


def _app_from_row(row: sqlite3.Row) -> AppRecord:
    return AppRecord(
        name=row["name"],
        input_type=row["input_type"],
        default_output=row["default_output"],
        slo_micros=row["slo_micros"],
        policy=row["policy"],
        policy_config=json.loads(row["policy_config"]),
    )


class StateStore:
    """Applications, models, links and key/value state in one SQLite database.

    One connection in WAL mode (other processes, such as a CLI, can read while the
    server writes); every write is one transaction; the schema version lives in
    ``PRAGMA user_version`` and older files are migrated on open.

    Args:
        path: The database file, created if missing, or ``":memory:"``.

    Raises:
        ClipperError: The file was written by a newer clipper_core (its schema
            version is higher than :data:`SCHEMA_VERSION`) or is not a database.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._lock = threading.RLock()
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so
        # that DDL and PRAGMA user_version are part of them.
        self._conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            if self._path != ":memory:":
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ClipperError(f"{self._path}: cannot enable WAL mode (got {mode})")
                # Control-plane writes are rare: pay the fsync for durability.
                self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ClipperError(f"{self._path}: cannot open the state store: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle ---------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database path given to the constructor."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close the connection; further calls fail.  Safe to call twice."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self._write():
            current = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if current > SCHEMA_VERSION:
                raise ClipperError(
                    f"{self._path}: state schema version {current} is newer than this"
                    f" clipper_core supports ({SCHEMA_VERSION}); upgrade clipper_core"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    self._conn.execute(statement)
            if current != SCHEMA_VERSION:
                # PRAGMA takes no parameters; the value is our own integer.
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._lock:
            # IMMEDIATE takes the write lock up front, so that checks made inside the
            # transaction still hold when it commits, even with other writers.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- applications ------------------------------------------------------------

    def add_app(self, app: AppRecord) -> None:
        """Register an application.

        Raises:
            Conflict: An application of that name exists.
        """
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM apps WHERE name = ?", (app.name,)).fetchone():
                raise Conflict(f"application {app.name} already exists")
            conn.execute(
                "INSERT INTO apps VALUES (?, ?, ?, ?, ?, ?)",
                (
                    app.name,
                    app.input_type,
                    app.default_output,
                    app.slo_micros,
                    app.policy,
                    json.dumps(app.policy_config),
                ),
            )

    def get_app(self, name: str) -> AppRecord | None:
        """The application called ``name``, or None."""
        rows = self._read("SELECT * FROM apps WHERE name = ?", (name,))
        return _app_from_row(rows[0]) if rows else None

    def list_apps(self) -> list[AppRecord]:
        """Every application, by name."""
        return [_app_from_row(row) for row in self._read("SELECT * FROM apps ORDER BY name")]

    def delete_app(self, name: str) -> None:
        """Delete an application and its links to models.

        Raises:
            NotFound: No application has that name.
        """
        with self._write() as conn:
            # links go with it: ON DELETE CASCADE.
            if conn.execute("DELETE FROM apps WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"application {name} not found")

    def set_app_policy(
        self, name: str, policy: str, policy_config: Mapping[str, Any] | None = None
    ) -> AppRecord:
        """Set an application's selection policy and its options.

        Returns:
            The updated record.

        Raises:
            BadInput: The policy name is empty or the options are not a JSON object.
            NotFound: No application has that name.
        """
        current = self.get_app(name)
        if current is None:
            raise NotFound(f"application {name} not found")
        rec = AppRecord.from_dict(
            {**current.to_dict(), "policy": policy, "policy_config": dict(policy_config or {})}
        )
        with self._write() as conn:
            if (
                conn.execute(
                    "UPDATE apps SET policy = ?, policy_config = ? WHERE name = ?",
                    (rec.policy, json.dumps(rec.policy_config), name),
                ).rowcount
                == 0
            ):
                raise NotFound(f"application {name} not found")
        return rec

    # -- models ------------------------------------------------------------------

    def add_model(self, model: ModelRecord, *, make_current: bool = False) -> None:
        """Register a model version.

        The current version is left alone by default, so that a caller can make a
        version current only once its replicas serve (:meth:`set_current_version`).

        Args:
            model: The version to add.
            make_current: Also make it the model's current version, in the same
                transaction.

        Raises:
            Conflict: That name and version exist.
            BadInput: The model is linked to an application of another input type.
        """
        with self._write() as conn:
            if conn.execute(
                "SELECT 1 FROM models WHERE name = ? AND version = ?", (model.name, model.version)
            ).fetchone():
                raise Conflict(f"model {model.key} already exists")
            mismatched = conn.execute(
                "SELECT apps.name, apps.input_type FROM links JOIN apps ON apps.name = links.app"
                " WHERE links.model_name = ? AND apps.input_type != ? ORDER BY apps.name",
                (model.name, model.input_type),
            ).fetchall()
            if mismatched:
                app = mismatched[0]
                raise BadInput(
                    f"model {model.key} takes {model.input_type} but is linked to application"
                    f" {app['name']}, which takes {app['input_type']}"
                )
            conn.execute(
                f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                (
                    model.name,
                    model.version,
                    model.input_type,
                    json.dumps(model.labels),
                    json.dumps(model.container),
                    model.batch_size,
                    model.num_replicas,
                    None if model.cpus is None else json.dumps(model.cpus),
                    model.memory_limit_mb,
                    int(model.cache_enabled),
                    model.batch_wait_micros,
                    model.created_at,
                    model.queue_capacity,
                    model.batch_timeout,
                ),
            )
            if make_current:
                conn.execute(
                    "INSERT OR REPLACE INTO current_versions (name, version) VALUES (?, ?)",
                    (model.name, model.version),
                )

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        """The model version, or None."""
        rows = self._read(
            f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?", (name, version)
        )
        return _model_from_row(rows[0]) if rows else None

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Every model version (or every version of ``name``), by name then
        registration time."""
        order = " ORDER BY name, created_at, version"
        if name is None:
            rows = self._read(f"SELECT {_MODEL_COLUMNS} FROM models{order}")
        else:
            rows = self._read(f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = ?{order}", (name,))
        return [_model_from_row(row) for row in rows]

    def delete_model_version(self, name: str, version: str) -> None:
        """Delete a model version.

        If it was the current version the model is left without one
        (:meth:`get_current_version` returns None).  Deleting a model's last
        version also removes its links to applications.

        Raises:
            NotFound: No such version.
        """
        with self._write() as conn:
            deleted = conn.execute(
                "DELETE FROM models WHERE name = ? AND version = ?", (name, version)
            ).rowcount
            if deleted == 0:
                raise NotFound(f"model {name}:{version} not found")
            if not conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
                conn.execute("DELETE FROM links WHERE model_name = ?", (name,))

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current version (roll forward or back).

        Raises:
            NotFound: No such version.
        """
        with self._write() as conn:
            if not conn.execute(
                "SELECT 1 FROM models WHERE name = ? AND version = ?", (name, version)
            ).fetchone():
                raise NotFound(f"model {name}:{version} not found")
            conn.execute(
                "INSERT OR REPLACE INTO current_versions (name, version) VALUES (?, ?)",
                (name, version),
            )

    def get_current_version(self, name: str) -> str | None:
        """The model's current version, or None."""
        rows = self._read("SELECT version FROM current_versions WHERE name = ?", (name,))
        return str(rows[0]["version"]) if rows else None

    def set_num_replicas(self, name: str, version: str, n: int) -> ModelRecord:
        """Set the desired replica count of a model version.

        Returns:
            The updated record.

        Raises:
            BadInput: ``n`` is not an integer >= 0.
            NotFound: No such version.
        """
        _check_int("num_replicas", n, 0)
        with self._write() as conn:
            if (
                conn.execute(
                    "UPDATE models SET num_replicas = ? WHERE name = ? AND version = ?",
                    (n, name, version),
                ).rowcount
                == 0
            ):
                raise NotFound(f"model {name}:{version} not found")
            row = conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
        return _model_from_row(row)

    # -- links -------------------------------------------------------------------

    def link_model(self, app: str, model_name: str) -> None:
        """Link a model (all its versions; queries use the current one) to an
        application.  Linking twice is a no-op.

        Raises:
            NotFound: The application, or every version of the model, is missing.
            BadInput: A version of the model takes another input type than the app.
        """
        with self._write() as conn:
            app_row = conn.execute("SELECT input_type FROM apps WHERE name = ?", (app,)).fetchone()
            if app_row is None:
                raise NotFound(f"application {app} not found")
            versions = conn.execute(
                "SELECT version, input_type FROM models WHERE name = ? ORDER BY created_at",
                (model_name,),
            ).fetchall()
            if not versions:
                raise NotFound(f"model {model_name} not found")
            for row in versions:
                if row["input_type"] != app_row["input_type"]:
                    raise BadInput(
                        f"model {model_name}:{row['version']} takes {row['input_type']} but"
                        f" application {app} takes {app_row['input_type']}"
                    )
            conn.execute(
                "INSERT OR IGNORE INTO links (app, model_name) VALUES (?, ?)", (app, model_name)
            )

    def unlink_model(self, app: str, model_name: str) -> bool:
        """Remove a link.

        Returns:
            Whether a link was removed (False if they were not linked).

        Raises:
            NotFound: The application is missing.
        """
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM apps WHERE name = ?", (app,)).fetchone():
                raise NotFound(f"application {app} not found")
            cursor = conn.execute(
                "DELETE FROM links WHERE app = ? AND model_name = ?", (app, model_name)
            )
            return cursor.rowcount > 0

    def linked_models(self, app: str) -> list[str]:
        """The names of the models linked to ``app``, sorted.

        Raises:
            NotFound: The application is missing.
        """
        with self._lock:
            if not self._conn.execute("SELECT 1 FROM apps WHERE name = ?", (app,)).fetchone():
                raise NotFound(f"application {app} not found")
            rows = self._conn.execute(
                "SELECT model_name FROM links WHERE app = ? ORDER BY model_name", (app,)
            ).fetchall()
        return [str(row["model_name"]) for row in rows]

    def apps_linked_to(self, model_name: str) -> list[str]:
        """The names of the applications linked to ``model_name``, sorted."""
        rows = self._read("SELECT app FROM links WHERE model_name = ? ORDER BY app", (model_name,))
        return [str(row["app"]) for row in rows]

    # -- key/value ---------------------------------------------------------------

    def put_kv(self, namespace: str, key: str, json_value: Any) -> None:
        """Store a JSON-serialisable value under (namespace, key), replacing any.

        Raises:
            BadInput: The value is not JSON-serialisable (NaN included).
        """
        if not isinstance(namespace, str) or not isinstance(key, str):
            raise BadInput("kv namespace and key must be strings")
        try:
            text = json.dumps(json_value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"value for {namespace}/{key} is not JSON-serialisable: {exc}") from None
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                (namespace, key, text),
            )

    def put_kv_many(
        self,
        items: Iterable[tuple[str, str, Any]],
        *,
        delete_namespaces: Iterable[str] = (),
    ) -> None:
        """In one transaction: delete whole namespaces, then store (namespace, key,
        value) items, replacing any.

        Raises:
            BadInput: A value is not JSON-serialisable (nothing is written).
        """
        rows = []
        for namespace, key, value in items:
            if not isinstance(namespace, str) or not isinstance(key, str):
                raise BadInput("kv namespace and key must be strings")
            try:
                rows.append((namespace, key, json.dumps(value, allow_nan=False)))
            except (TypeError, ValueError) as exc:
                raise BadInput(
                    f"value for {namespace}/{key} is not JSON-serialisable: {exc}"
                ) from None
        drops = [(ns,) for ns in delete_namespaces]
        with self._write() as conn:
            conn.executemany("DELETE FROM kv WHERE namespace = ?", drops)
            conn.executemany(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)", rows
            )

    def get_kv(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value stored under (namespace, key), or ``default``."""
        rows = self._read("SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key))
        return json.loads(rows[0]["value"]) if rows else default

    def list_kv(self, namespace: str) -> dict[str, Any]:
        """Every key of ``namespace`` and its value."""
        rows = self._read(
            "SELECT key, value FROM kv WHERE namespace = ? ORDER BY key", (namespace,)
        )
        return {str(row["key"]): json.loads(row["value"]) for row in rows}

    def delete_kv(self, namespace: str, key: str | None = None) -> int:
        """Delete one key, or the whole namespace when ``key`` is None.

        Returns:
            How many keys were deleted.
        """
        with self._write() as conn:
            if key is None:
                cursor = conn.execute("DELETE FROM kv WHERE namespace = ?", (namespace,))
            else:
                cursor = conn.execute(
                    "DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
                )
            return int(cursor.rowcount)
