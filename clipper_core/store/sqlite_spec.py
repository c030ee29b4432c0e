"""In-place updates of the SQLite state store: an application's settings and a
model version's tunable spec.

A model version's identity (name, version, input type, container) never changes
in place; what a running version can take without a restart, or what the
planner and the tuner may later write, is its *spec*
(:data:`~clipper_core.store.records.MODEL_SPEC_FIELDS`).  An update that changes
nothing logs no change, so that applying the same description twice is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from clipper_core.errors import BadInput, NotFound
from clipper_core.store.records import MODEL_SPEC_FIELDS, AppRecord, ModelRecord
from clipper_core.store.schema import MODEL_COLUMNS, app_from_row, model_from_row
from clipper_core.store.sqlite_db import SqliteDatabase

__all__ = ["SqliteSpecWrites", "check_spec_fields"]

# Spec fields stored as JSON text (the others are plain columns).
_JSON_COLUMNS = frozenset({"labels", "cpus"})


def _column_value(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field in _JSON_COLUMNS:
        return json.dumps(value)
    if field == "cache_enabled":
        return int(value)
    return value


def check_spec_fields(spec: Mapping[str, Any]) -> None:
    """Refuse names that are not :data:`~clipper_core.store.records.MODEL_SPEC_FIELDS`
    (shared with the Redis store).

    Raises:
        BadInput: A field is not a spec field.
    """
    unknown = sorted(set(spec) - set(MODEL_SPEC_FIELDS))
    if unknown:
        raise BadInput(
            f"not tunable in place: {', '.join(unknown)} (tunable: {', '.join(MODEL_SPEC_FIELDS)})"
        )


class SqliteSpecWrites(SqliteDatabase):
    """The in-place updates of :class:`~clipper_core.store.sqlite.SqliteStateStore`."""

    def update_app(
        self, name: str, *, slo_micros: int | None = None, default_output: str | None = None
    ) -> AppRecord:
        """Change an application's latency objective and/or default output (its
        links, API keys and learned selection state stay).

        Returns:
            The updated record.

        Raises:
            NotFound: No application has that name.
            BadInput: A new value is invalid.
        """
        with self._write() as tx:
            row = tx.conn.execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"application {name} not found")
            old = app_from_row(row)
            changes: dict[str, Any] = {}
            if slo_micros is not None:
                changes["slo_micros"] = slo_micros
            if default_output is not None:
                changes["default_output"] = default_output
            rec = AppRecord.from_dict({**old.to_dict(), **changes})
            if rec != old:
                tx.conn.execute(
                    "UPDATE apps SET slo_micros = ?, default_output = ? WHERE name = ?",
                    (rec.slo_micros, rec.default_output, name),
                )
                tx.changed("app", name)
        return rec

    def update_model_spec(self, name: str, version: str, /, **spec: Any) -> ModelRecord:
        """Change tunable fields of a model version (any of
        :data:`~clipper_core.store.records.MODEL_SPEC_FIELDS`).

        Returns:
            The updated record.

        Raises:
            BadInput: A field is not a spec field, or a value is invalid.
            NotFound: No such version.
        """
        check_spec_fields(spec)
        with self._write() as tx:
            row = tx.conn.execute(
                f"SELECT {MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                raise NotFound(f"model {name}:{version} not found")
            old = model_from_row(row)
            rec = ModelRecord.from_dict({**old.to_dict(), **spec})
            changed = [f for f in spec if getattr(rec, f) != getattr(old, f)]
            if changed:
                # The names come from MODEL_SPEC_FIELDS, never from the caller's text.
                assignments = ", ".join(f"{f} = ?" for f in changed)
                tx.conn.execute(
                    f"UPDATE models SET {assignments} WHERE name = ? AND version = ?",
                    (*(_column_value(f, getattr(rec, f)) for f in changed), name, version),
                )
                tx.changed("model", name)
        return rec
