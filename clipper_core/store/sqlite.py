"""The desired state of a clipper_core instance in one SQLite file: applications,
models, links, current versions, replica endpoints, pipelines
(:mod:`~clipper_core.store.sqlite_pipelines`), a small key/value table, and the
change log that feeds the reconcilers.

The control plane reconciles running replicas against this store, so a restarted
server brings everything back from it.  Calls are synchronous and fast; callers on
an event loop run them in a thread (``asyncio.to_thread``): the one connection is
shared under a lock, so reads and writes from any thread are safe and writes are
serialised.

Example:
    >>> store = SqliteStateStore(":memory:")
    >>> store.add_app(AppRecord("app", "doubles", "-1", 100_000))
    >>> store.get_app("app").slo_micros
    100000
    >>> store.revision()
    1
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clipper_core.errors import BadInput, Conflict, NotFound
from clipper_core.store.base import ChangeFeed, StateStore
from clipper_core.store.feed import SqlitePollingFeed
from clipper_core.store.records import (
    LEARNING_RESETS_NAMESPACE,
    AppRecord,
    EndpointRecord,
    ModelRecord,
    check_int,
    learned_state_namespace,
    new_reset_token,
)
from clipper_core.store.schema import (
    MODEL_COLUMNS,
    app_from_row,
    endpoint_from_row,
    model_from_row,
)
from clipper_core.store.sqlite_pipelines import SqlitePipelines
from clipper_core.store.sqlite_spec import SqliteSpecWrites

__all__ = ["SqliteStateStore"]


class SqliteStateStore(SqlitePipelines, SqliteSpecWrites):
    """Applications, models, links, replica endpoints, pipelines and key/value
    state in one SQLite database, with a revision and a change log (see
    :class:`~clipper_core.store.sqlite_db.SqliteDatabase`
    for the connection, the constructor's arguments and the change log).

    Args:
        path: The database file, created (mode 0600) if missing, or ``":memory:"``.
            Its folder must exist.
        changes_kept: How many revisions the change log keeps.
        feed_capacity: Undelivered events a subscriber of :meth:`feed` may hold
            before it must resync.

    Raises:
        ClipperError: The file was written by a newer clipper_core, is not a
            database, or cannot be created.
    """

    # -- applications ------------------------------------------------------------

    def add_app(self, app: AppRecord, api_key_digests: list[str] | None = None) -> None:
        """Register an application and, in the same transaction, set its API-key
        digests (none: no key needed) and clear any learned selection state left
        by an earlier application of that name.

        Raises:
            Conflict: An application or a pipeline of that name exists.
            BadInput: The digests are not a list of strings.
        """
        digests = self._api_keys_value(api_key_digests or [])
        with self._write() as tx:
            conn = tx.conn
            if conn.execute("SELECT 1 FROM apps WHERE name = ?", (app.name,)).fetchone():
                raise Conflict(f"application {app.name} already exists")
            if conn.execute("SELECT 1 FROM pipelines WHERE name = ?", (app.name,)).fetchone():
                raise Conflict(f"a pipeline named {app.name} exists; an application needs its own")
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
            self._write_api_keys(conn, app.name, digests)
            conn.execute("DELETE FROM kv WHERE namespace = ?", (learned_state_namespace(app.name),))
            tx.changed("app", app.name)

    def get_app(self, name: str) -> AppRecord | None:
        """The application called ``name``, or None."""
        rows = self._read("SELECT * FROM apps WHERE name = ?", (name,))
        return app_from_row(rows[0]) if rows else None

    def list_apps(self) -> list[AppRecord]:
        """Every application, by name."""
        return [app_from_row(row) for row in self._read("SELECT * FROM apps ORDER BY name")]

    def delete_app(self, name: str) -> None:
        """Delete an application with its links to models, its API keys and its
        learned selection state, in one transaction.

        Raises:
            NotFound: No application has that name.
        """
        with self._write() as tx:
            conn = tx.conn
            # links go with it: ON DELETE CASCADE.
            if conn.execute("DELETE FROM apps WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"application {name} not found")
            self._write_api_keys(conn, name, None)
            conn.execute("DELETE FROM kv WHERE namespace = ?", (learned_state_namespace(name),))
            conn.execute(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", (LEARNING_RESETS_NAMESPACE, name)
            )
            tx.changed("app", name)

    def set_app_policy(
        self, name: str, policy: str, policy_config: Mapping[str, Any] | None = None
    ) -> AppRecord:
        """Set an application's selection policy and its options; its learned
        selection state is dropped in the same transaction.

        Returns:
            The updated record.

        Raises:
            BadInput: The policy name is empty or the options are not a JSON object.
            NotFound: No application has that name.
        """
        with self._write() as tx:
            conn = tx.conn
            row = conn.execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"application {name} not found")
            rec = AppRecord.from_dict(
                {
                    **app_from_row(row).to_dict(),
                    "policy": policy,
                    "policy_config": dict(policy_config or {}),
                }
            )
            conn.execute(
                "UPDATE apps SET policy = ?, policy_config = ? WHERE name = ?",
                (rec.policy, json.dumps(rec.policy_config), name),
            )
            conn.execute("DELETE FROM kv WHERE namespace = ?", (learned_state_namespace(name),))
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                (LEARNING_RESETS_NAMESPACE, name, json.dumps(new_reset_token())),
            )
            tx.changed("app", name)
        return rec

    def set_app_api_keys(self, name: str, digests: list[str]) -> None:
        """Replace an application's API-key digests (SHA-256 hex, see
        :func:`clipper_core.auth.hash_api_key`); an empty list removes them.

        Raises:
            NotFound: No application has that name.
            BadInput: ``digests`` is not a list of strings.
        """
        text = self._api_keys_value(digests)
        with self._write() as tx:
            if not tx.conn.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
                raise NotFound(f"application {name} not found")
            self._write_api_keys(tx.conn, name, text)
            tx.changed("app", name)

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
        with self._write() as tx:
            conn = tx.conn
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
                f"INSERT INTO models ({MODEL_COLUMNS}) VALUES ({', '.join('?' * 15)})",
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
                    model.controller,
                ),
            )
            if make_current:
                conn.execute(
                    "INSERT OR REPLACE INTO current_versions (name, version) VALUES (?, ?)",
                    (model.name, model.version),
                )
            tx.changed("model", model.name)

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        """The model version, or None."""
        rows = self._read(
            f"SELECT {MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?", (name, version)
        )
        return model_from_row(rows[0]) if rows else None

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Every model version (or every version of ``name``), by name then
        registration time."""
        order = " ORDER BY name, created_at, version"
        if name is None:
            rows = self._read(f"SELECT {MODEL_COLUMNS} FROM models{order}")
        else:
            rows = self._read(f"SELECT {MODEL_COLUMNS} FROM models WHERE name = ?{order}", (name,))
        return [model_from_row(row) for row in rows]

    def delete_model_version(self, name: str, version: str) -> None:
        """Delete a model version and its registered endpoints.

        If it was the current version the model is left without one
        (:meth:`get_current_version` returns None).  Deleting a model's last
        version also removes its links to applications.

        Raises:
            NotFound: No such version.
        """
        with self._write() as tx:
            conn = tx.conn
            endpoints = conn.execute(
                "DELETE FROM endpoints WHERE model = ? AND version = ?", (name, version)
            ).rowcount
            deleted = conn.execute(
                "DELETE FROM models WHERE name = ? AND version = ?", (name, version)
            ).rowcount
            if deleted == 0:
                raise NotFound(f"model {name}:{version} not found")
            tx.changed("model", name)
            if endpoints:
                tx.changed("endpoint", name)
            if not conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
                apps = conn.execute(
                    "DELETE FROM links WHERE model_name = ? RETURNING app", (name,)
                ).fetchall()
                for row in sorted(apps, key=lambda r: str(r["app"])):
                    tx.changed("app", str(row["app"]))

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current version (roll forward or back).

        Raises:
            NotFound: No such version.
        """
        with self._write() as tx:
            if not tx.conn.execute(
                "SELECT 1 FROM models WHERE name = ? AND version = ?", (name, version)
            ).fetchone():
                raise NotFound(f"model {name}:{version} not found")
            tx.conn.execute(
                "INSERT OR REPLACE INTO current_versions (name, version) VALUES (?, ?)",
                (name, version),
            )
            tx.changed("model", name)

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
        check_int("num_replicas", n, 0)
        with self._write() as tx:
            if (
                tx.conn.execute(
                    "UPDATE models SET num_replicas = ? WHERE name = ? AND version = ?",
                    (n, name, version),
                ).rowcount
                == 0
            ):
                raise NotFound(f"model {name}:{version} not found")
            row = tx.conn.execute(
                f"SELECT {MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            tx.changed("model", name)
        return model_from_row(row)

    # -- links -------------------------------------------------------------------

    def link_model(self, app: str, model_name: str) -> None:
        """Link a model (all its versions; queries use the current one) to an
        application.  Linking twice is a no-op (and logs no change).

        Raises:
            NotFound: The application, or every version of the model, is missing.
            BadInput: A version of the model takes another input type than the app.
        """
        self.link_models(app, (model_name,))

    def link_models(self, app: str, model_names: Sequence[str]) -> None:
        """Link models in order, in one transaction: a refused one (as in
        :meth:`link_model`) leaves every link as it was."""
        with self._write() as tx:
            conn = tx.conn
            app_row = conn.execute("SELECT input_type FROM apps WHERE name = ?", (app,)).fetchone()
            if app_row is None:
                raise NotFound(f"application {app} not found")
            for model_name in model_names:
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
            for model_name in model_names:
                if conn.execute(
                    "INSERT OR IGNORE INTO links (app, model_name, position) VALUES (?, ?,"
                    " (SELECT COALESCE(MAX(position) + 1, 0) FROM links WHERE app = ?))",
                    (app, model_name, app),
                ).rowcount:
                    tx.changed("app", app)

    def unlink_model(self, app: str, model_name: str) -> bool:
        """Remove a link.

        Returns:
            Whether a link was removed (False if they were not linked; then no
            change is logged).

        Raises:
            NotFound: The application is missing.
        """
        with self._write() as tx:
            if not tx.conn.execute("SELECT 1 FROM apps WHERE name = ?", (app,)).fetchone():
                raise NotFound(f"application {app} not found")
            cursor = tx.conn.execute(
                "DELETE FROM links WHERE app = ? AND model_name = ?", (app, model_name)
            )
            if cursor.rowcount > 0:
                tx.changed("app", app)
            return cursor.rowcount > 0

    def linked_models(self, app: str) -> list[str]:
        """The names of the models linked to ``app``, in the order they were linked.

        Raises:
            NotFound: The application is missing.
        """
        with self._lock:
            if not self._conn.execute("SELECT 1 FROM apps WHERE name = ?", (app,)).fetchone():
                raise NotFound(f"application {app} not found")
            rows = self._conn.execute(
                "SELECT model_name FROM links WHERE app = ? ORDER BY position, model_name", (app,)
            ).fetchall()
        return [str(row["model_name"]) for row in rows]

    def apps_linked_to(self, model_name: str) -> list[str]:
        """The names of the applications linked to ``model_name``, sorted."""
        rows = self._read("SELECT app FROM links WHERE model_name = ? ORDER BY app", (model_name,))
        return [str(row["app"]) for row in rows]

    # -- endpoints ---------------------------------------------------------------

    def put_endpoint(self, endpoint: EndpointRecord) -> None:
        """Register a replica endpoint of a model version, or move it (same
        replica id, new address).

        Raises:
            NotFound: No such model version.
        """
        with self._write() as tx:
            if not tx.conn.execute(
                "SELECT 1 FROM models WHERE name = ? AND version = ?",
                (endpoint.model, endpoint.version),
            ).fetchone():
                raise NotFound(f"model {endpoint.key} not found")
            tx.conn.execute(
                "INSERT OR REPLACE INTO endpoints (model, version, replica_id, address)"
                " VALUES (?, ?, ?, ?)",
                (endpoint.model, endpoint.version, endpoint.replica_id, endpoint.address),
            )
            tx.changed("endpoint", endpoint.model)

    def delete_endpoint(self, model: str, version: str, replica_id: str) -> bool:
        """Remove a replica endpoint.

        Returns:
            Whether there was one (False logs no change).
        """
        with self._write() as tx:
            deleted = tx.conn.execute(
                "DELETE FROM endpoints WHERE model = ? AND version = ? AND replica_id = ?",
                (model, version, replica_id),
            ).rowcount
            if deleted:
                tx.changed("endpoint", model)
            return deleted > 0

    def list_endpoints(
        self, model: str | None = None, version: str | None = None
    ) -> list[EndpointRecord]:
        """The registered endpoints, of every model, of ``model``, or of one
        version of it, by model, version and replica id."""
        where, params = [], []
        for column, value in (("model", model), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT model, version, replica_id, address FROM endpoints"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read(sql + " ORDER BY model, version, replica_id", tuple(params))
        return [endpoint_from_row(row) for row in rows]


if TYPE_CHECKING:
    # mypy checks here that the classes fit the Protocols.
    def _fits(store: SqliteStateStore, poller: SqlitePollingFeed) -> list[object]:
        protocol_store: StateStore = store
        feeds: list[ChangeFeed] = [store.feed(), poller]
        return [protocol_store, feeds]
