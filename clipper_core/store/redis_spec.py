"""In-place updates of the Redis state store: an application's settings and a
model version's tunable spec (:data:`~clipper_core.store.records.MODEL_SPEC_FIELDS`).

The same checks, errors and events as
:class:`~clipper_core.store.sqlite_spec.SqliteSpecWrites`: an update that
changes nothing logs no change, so that applying the same description twice is
a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from clipper_core.errors import NotFound
from clipper_core.store.base import EventKind
from clipper_core.store.records import AppRecord, ModelRecord
from clipper_core.store.redis_db import RedisDatabase, Tx, model_field
from clipper_core.store.sqlite_spec import check_spec_fields

__all__ = ["RedisSpecWrites"]

R = TypeVar("R", AppRecord, ModelRecord)


class RedisSpecWrites(RedisDatabase):
    """The in-place updates of :class:`~clipper_core.store.redis.RedisStateStore`."""

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
        changes: dict[str, Any] = {}
        if slo_micros is not None:
            changes["slo_micros"] = slo_micros
        if default_output is not None:
            changes["default_output"] = default_output
        where = (self.keys.apps, name)
        return self._merge(where, AppRecord, changes, ("app", name), f"application {name}")

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
        where = (self.keys.models, model_field(name, version))
        return self._merge(where, ModelRecord, spec, ("model", name), f"model {name}:{version}")

    def _merge(
        self,
        where: tuple[str, str],
        kind: type[R],
        changes: Mapping[str, Any],
        event: tuple[EventKind, str],
        what: str,
    ) -> R:
        """Overwrite ``changes`` in the record stored at (hash, field) in one
        transaction, logging ``event`` only if the record changed.  The stored
        record is read within today's bounds (``from_stored``: one written
        before a bound, or by an older frontend, must not refuse every change,
        the one that would fix it included); the result is checked whole."""
        key, field = where

        def body(tx: Tx) -> R:
            text = tx.r.hget(key, field)
            if text is None:
                raise NotFound(f"{what} not found")
            old = kind.from_stored(json.loads(text))
            rec = kind.from_dict({**old.to_dict(), **changes})
            if rec != old:
                tx.write("HSET", key, field, json.dumps(rec.to_dict()))
                tx.changed(*event)
            return rec

        return self._write(body)
