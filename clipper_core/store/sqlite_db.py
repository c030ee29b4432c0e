"""The SQLite connection under the state store: write transactions that bump the
revision and log the keys they changed, the change log's reader, and the
key/value table (learned selection state, API-key digests).

One connection is shared under a lock (``check_same_thread=False``), so any
thread may call in; writes are serialised, and each is one ``BEGIN IMMEDIATE``
transaction, also against other processes sharing the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from clipper_core.auth import API_KEYS_NAMESPACE
from clipper_core.errors import BadInput, ClipperError, StoreBusy
from clipper_core.store.base import EventKind, ResyncNeeded, StateEvent
from clipper_core.store.feed import SUBSCRIBER_CAPACITY, LocalChangeFeed
from clipper_core.store.records import check_int
from clipper_core.store.schema import migrate

__all__ = ["CHANGES_KEPT", "SqliteDatabase"]

#: How many revisions of change rows the log keeps; a consumer further behind
#: than that gets ResyncNeeded and rereads everything.
CHANGES_KEPT = 10_000


class _Transaction:
    """A write transaction's connection and the keys it changed."""

    __slots__ = ("conn", "events")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.events: dict[tuple[EventKind, str], None] = {}  # ordered, no repeats

    def changed(self, kind: EventKind, name: str) -> None:
        self.events[(kind, name)] = None

    def api_keys_changed(self, apps: Iterable[str]) -> None:
        for app in apps:
            self.changed("app", app)


def _kv_text(namespace: object, key: object, value: Any) -> str:
    if not isinstance(namespace, str) or not isinstance(key, str):
        raise BadInput("kv namespace and key must be strings")
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"value for {namespace}/{key} is not JSON-serialisable: {exc}") from None


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal
    and -shm files the mode of the database file)."""
    if path == ":memory:" or path.startswith("file:") or not path:
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


class SqliteDatabase:
    """The connection under :class:`~clipper_core.store.sqlite.SqliteStateStore`:
    transactions, the revision and change log, and the key/value table.

    One connection in WAL mode (other processes, such as a CLI or a second
    frontend, can read while the server writes); every write is one transaction,
    and one that changes desired state bumps the revision once and logs the keys
    it touched; the schema version lives in ``PRAGMA user_version`` and older
    files are migrated on open.

    Args:
        path: The database file, created (mode 0600) if missing, or ``":memory:"``.
            Its folder must exist.
        changes_kept: How many revisions the change log keeps.
        feed_capacity: Undelivered events a subscriber of :meth:`feed` may hold
            before it must resync.
        busy_timeout: Seconds a write waits for another process's lock on the
            file before it fails with :class:`~clipper_core.errors.StoreBusy`.

    Raises:
        ClipperError: The file was written by a newer clipper_core (its schema
            version is higher than :data:`SCHEMA_VERSION`), is not a database, or
            cannot be created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        changes_kept: int = CHANGES_KEPT,
        feed_capacity: int = SUBSCRIBER_CAPACITY,
        busy_timeout: float = 5.0,
    ) -> None:
        check_int("changes_kept", changes_kept, 1)
        check_int("feed_capacity", feed_capacity, 1)
        self._path = os.fspath(path)
        self._changes_kept = changes_kept
        self._lock = threading.RLock()
        self._feed = LocalChangeFeed(self.changes_since, capacity=feed_capacity)
        try:
            _create_private(self._path)
        except OSError as exc:
            raise ClipperError(f"{self._path}: cannot open the state store: {exc}") from exc
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so
        # that DDL and PRAGMA user_version are part of them.
        self._conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
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
            with self._write() as tx:
                migrate(tx.conn, self._path)
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
        """Close the connection and end the feed's subscriptions; further calls
        fail.  Safe to call twice."""
        with self._lock:
            self._conn.close()
        self._feed.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[_Transaction]:
        """One write transaction: committed on success, rolled back on any error.
        If it changed desired state, the revision goes up by one, the change log
        records it, and the feed hears of it once committed."""
        with self._lock:
            # IMMEDIATE takes the write lock up front, so that checks made inside the
            # transaction still hold when it commits, even with other writers.
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) not in (
                    sqlite3.SQLITE_BUSY,
                    sqlite3.SQLITE_LOCKED,
                ):
                    raise ClipperError(f"{self._path}: cannot write the state: {exc}") from None
                raise StoreBusy(
                    f"{self._path}: the state store is locked by another process ({exc});"
                    " nothing was changed: retry, or stop the other writer"
                ) from None
            try:
                tx = _Transaction(self._conn)
                yield tx
                events = self._log_changes(tx) if tx.events else []
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            # Still under the lock, so that subscribers hear commits in order.
            self._feed.publish(events)

    def _log_changes(self, tx: _Transaction) -> list[StateEvent]:
        conn = tx.conn
        row = conn.execute("SELECT current, trimmed_through FROM revision").fetchone()
        revision = int(row["current"]) + 1
        events = [StateEvent(revision, kind, name) for kind, name in tx.events]
        conn.execute("UPDATE revision SET current = ?", (revision,))
        conn.executemany(
            "INSERT INTO changes (revision, kind, name) VALUES (?, ?, ?)",
            [(e.revision, e.kind, e.name) for e in events],
        )
        horizon = revision - self._changes_kept
        if horizon > int(row["trimmed_through"]):
            conn.execute("DELETE FROM changes WHERE revision <= ?", (horizon,))
            conn.execute("UPDATE revision SET trimmed_through = ?", (horizon,))
        return events

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- revisions and changes ---------------------------------------------------

    def revision(self) -> int:
        """The revision of the last committed change (0: none yet, also for a
        file migrated from schema 2: its state predates the change log)."""
        return int(self._read("SELECT current FROM revision")[0]["current"])

    def changes_since(self, revision: int) -> list[StateEvent]:
        """The events of every transaction after ``revision``, in order.

        Raises:
            ResyncNeeded: The log was trimmed past ``revision``, or ``revision`` is
                ahead of the store (a consumer of another store).
        """
        with self._lock:
            # One read transaction: the trim mark and the rows agree.
            self._conn.execute("BEGIN")
            try:
                mark = self._conn.execute("SELECT current, trimmed_through FROM revision")
                current, trimmed = mark.fetchone()
                rows = self._conn.execute(
                    "SELECT revision, kind, name FROM changes WHERE revision > ?"
                    " ORDER BY revision, rowid",
                    (revision,),
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        if revision < trimmed:
            raise ResyncNeeded(
                f"changes after revision {revision} are gone (the log starts after {trimmed})"
            )
        if revision > current:
            raise ResyncNeeded(f"revision {revision} is ahead of the store's {current}")
        return [StateEvent(int(r["revision"]), r["kind"], str(r["name"])) for r in rows]

    def feed(self) -> LocalChangeFeed:
        """The feed of this store's commits (this process's writes only)."""
        return self._feed

    # -- key/value ---------------------------------------------------------------
    # Learned state is not desired state: kv writes log nothing, except those to
    # the API-key digests (namespace auth.api_keys, key: the application).

    def put_kv(self, namespace: str, key: str, json_value: Any) -> None:
        """Store a JSON-serialisable value under (namespace, key), replacing any.

        Raises:
            BadInput: The value is not JSON-serialisable (NaN included).
        """
        text = _kv_text(namespace, key, json_value)
        with self._write() as tx:
            tx.conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                (namespace, key, text),
            )
            if namespace == API_KEYS_NAMESPACE:
                tx.changed("app", key)

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
        rows = [(ns, key, _kv_text(ns, key, value)) for ns, key, value in items]
        drops = [(ns,) for ns in delete_namespaces]
        with self._write() as tx:
            conn = tx.conn
            if (API_KEYS_NAMESPACE,) in drops:
                tx.api_keys_changed(self._kv_keys(conn, API_KEYS_NAMESPACE))
            conn.executemany("DELETE FROM kv WHERE namespace = ?", drops)
            conn.executemany(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)", rows
            )
            tx.api_keys_changed(key for ns, key, _ in rows if ns == API_KEYS_NAMESPACE)

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
        with self._write() as tx:
            params: tuple[str, ...] = (namespace,) if key is None else (namespace, key)
            sql = "DELETE FROM kv WHERE namespace = ?" + ("" if key is None else " AND key = ?")
            deleted = [str(row[0]) for row in tx.conn.execute(sql + " RETURNING key", params)]
            if namespace == API_KEYS_NAMESPACE:
                tx.api_keys_changed(sorted(deleted))
            return len(deleted)

    @staticmethod
    def _api_keys_value(digests: object) -> str | None:
        """The kv value of an app's API-key digests; None when there are none."""
        if not isinstance(digests, list | tuple) or not all(isinstance(d, str) for d in digests):
            raise BadInput(f"API-key digests must be a list of strings, got {digests!r}")
        return json.dumps(sorted(set(digests))) if digests else None

    @staticmethod
    def _write_api_keys(conn: sqlite3.Connection, app: str, value: str | None) -> None:
        if value is None:
            conn.execute(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", (API_KEYS_NAMESPACE, app)
            )
        else:
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                (API_KEYS_NAMESPACE, app, value),
            )

    @staticmethod
    def _kv_keys(conn: sqlite3.Connection, namespace: str) -> list[str]:
        rows = conn.execute("SELECT key FROM kv WHERE namespace = ? ORDER BY key", (namespace,))
        return [str(row[0]) for row in rows]
