"""The desired state in Redis, shared by every frontend that points at it:
applications, models, links, current versions, replica endpoints, pipelines
(:mod:`~clipper_core.store.redis_pipelines`), key/value state, and the change
stream that feeds every frontend's reconcilers; in-place updates are in
:mod:`~clipper_core.store.redis_spec`.

The same records, checks, errors and events as
:class:`~clipper_core.store.sqlite.SqliteStateStore` (one contract test suite
runs over both); each composite write is one ``WATCH``/``MULTI`` transaction
(see :mod:`clipper_core.store.redis_db`).  Calls are synchronous; callers on an
event loop run them in a thread (``asyncio.to_thread``); the client's
connection pool makes calls from any thread safe.

Example:
    >>> store = RedisStateStore("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> store.add_app(AppRecord("app", "doubles", "-1", 100_000))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from clipper_core.errors import BadInput, Conflict, NotFound
from clipper_core.store.base import ChangeFeed, StateStore
from clipper_core.store.records import (
    LEARNING_RESETS_NAMESPACE,
    AppRecord,
    EndpointRecord,
    ModelRecord,
    check_int,
    learned_state_namespace,
    new_reset_token,
)
from clipper_core.store.redis_db import Tx, model_field, outages_as_errors
from clipper_core.store.redis_pipelines import RedisPipelines
from clipper_core.store.redis_spec import RedisSpecWrites

__all__ = ["RedisStateStore"]


def _endpoint_field(model: str, version: str, replica_id: str) -> str:
    return json.dumps([model, version, replica_id])


def _model_order(m: ModelRecord) -> tuple[str, float, str]:
    return (m.name, m.created_at, m.version)


@outages_as_errors
class RedisStateStore(RedisPipelines, RedisSpecWrites):
    """Applications, models, links, replica endpoints, pipelines and key/value state in one
    Redis database, with a revision and a change stream (see
    :class:`~clipper_core.store.redis_db.RedisDatabase` for the constructor's
    arguments: the URL, a key prefix, ``changes_kept``, ``feed_capacity``).

    Raises:
        ClipperError: The server cannot be reached when the store is made.
        StoreUnavailable: From any method, when it cannot be reached later.
    """

    # -- reads used inside transactions ------------------------------------------

    def _app_in(self, tx: Tx, name: str) -> AppRecord | None:
        text = tx.r.hget(self.keys.apps, name)
        return None if text is None else AppRecord.from_stored(json.loads(text))

    def _versions_in(self, tx: Tx, name: str) -> list[ModelRecord]:
        records = [
            ModelRecord.from_stored(json.loads(text))
            for key, text in cast("dict[str, str]", tx.r.hgetall(self.keys.models)).items()
            if key.split(":", 1)[0] == name
        ]
        return sorted(records, key=_model_order)

    def _require_app(self, tx: Tx, name: str) -> None:
        if not tx.r.hexists(self.keys.apps, name):
            raise NotFound(f"application {name} not found")

    def _require_model(self, tx: Tx, name: str, version: str) -> None:
        if not tx.r.hexists(self.keys.models, model_field(name, version)):
            raise NotFound(f"model {name}:{version} not found")

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
        keys, text = self.keys, json.dumps(app.to_dict())

        def body(tx: Tx) -> None:
            if tx.r.hexists(keys.apps, app.name):
                raise Conflict(f"application {app.name} already exists")
            if tx.r.hexists(keys.pipelines, app.name):
                raise Conflict(f"a pipeline named {app.name} exists; an application needs its own")
            tx.write("HSET", keys.apps, app.name, text)
            tx.set_api_keys(app.name, digests)
            tx.write("DEL", keys.kv(learned_state_namespace(app.name)))
            tx.changed("app", app.name)

        self._write(body)

    def get_app(self, name: str) -> AppRecord | None:
        """The application called ``name``, or None."""
        text = self._get(self.keys.apps, name)
        return None if text is None else AppRecord.from_stored(json.loads(text))

    def list_apps(self) -> list[AppRecord]:
        """Every application, by name."""
        rows = sorted(self._all(self.keys.apps).items())
        return [AppRecord.from_stored(json.loads(text)) for _, text in rows]

    def delete_app(self, name: str) -> None:
        """Delete an application with its links to models, its API keys and its
        learned selection state, in one transaction.

        Raises:
            NotFound: No application has that name.
        """
        keys = self.keys

        def body(tx: Tx) -> None:
            self._require_app(tx, name)
            for model in cast("set[str]", tx.r.smembers(keys.links(name))):
                tx.write("SREM", keys.linked(model), name)
            tx.write("HDEL", keys.apps, name)
            tx.write(
                "DEL",
                keys.links(name),
                keys.link_order(name),
                keys.kv(learned_state_namespace(name)),
            )
            tx.write("HDEL", keys.kv(LEARNING_RESETS_NAMESPACE), name)
            tx.set_api_keys(name, None)
            tx.changed("app", name)

        self._write(body)

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
        keys = self.keys

        def body(tx: Tx) -> AppRecord:
            current = self._app_in(tx, name)
            if current is None:
                raise NotFound(f"application {name} not found")
            rec = AppRecord.from_dict(
                {
                    **current.to_dict(),
                    "policy": policy,
                    "policy_config": dict(policy_config or {}),
                }
            )
            text = json.dumps(rec.to_dict())
            tx.write("HSET", keys.apps, name, text)
            tx.write("DEL", keys.kv(learned_state_namespace(name)))
            token = json.dumps(new_reset_token())
            tx.write("HSET", keys.kv(LEARNING_RESETS_NAMESPACE), name, token)
            tx.changed("app", name)
            return rec

        return self._write(body)

    def set_app_api_keys(self, name: str, digests: list[str]) -> None:
        """Replace an application's API-key digests (SHA-256 hex, see
        :func:`clipper_core.auth.hash_api_key`); an empty list removes them.

        Raises:
            NotFound: No application has that name.
            BadInput: ``digests`` is not a list of strings.
        """
        text = self._api_keys_value(digests)

        def body(tx: Tx) -> None:
            self._require_app(tx, name)
            tx.set_api_keys(name, text)
            tx.changed("app", name)

        self._write(body)

    # -- models ------------------------------------------------------------------

    def add_model(self, model: ModelRecord, *, make_current: bool = False) -> None:
        """Register a model version (the current version is left alone unless
        ``make_current``, in the same transaction).

        Raises:
            Conflict: That name and version exist.
            BadInput: The model is linked to an application of another input type.
        """
        keys, field = self.keys, model_field(model.name, model.version)
        text = json.dumps(model.to_dict())

        def body(tx: Tx) -> None:
            if tx.r.hexists(keys.models, field):
                raise Conflict(f"model {model.key} already exists")
            for app_name in sorted(cast("set[str]", tx.r.smembers(keys.linked(model.name)))):
                app = self._app_in(tx, app_name)
                if app is not None and app.input_type != model.input_type:
                    raise BadInput(
                        f"model {model.key} takes {model.input_type} but is linked to application"
                        f" {app.name}, which takes {app.input_type}"
                    )
            tx.write("HSET", keys.models, field, text)
            if make_current:
                tx.write("HSET", keys.current, model.name, model.version)
            tx.changed("model", model.name)

        self._write(body)

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        """The model version, or None."""
        text = self._get(self.keys.models, model_field(name, version))
        return None if text is None else ModelRecord.from_stored(json.loads(text))

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Every model version (or every version of ``name``), by name then
        registration time."""
        rows = self._all(self.keys.models).values()
        records = [ModelRecord.from_stored(json.loads(text)) for text in rows]
        return sorted((m for m in records if name is None or m.name == name), key=_model_order)

    def delete_model_version(self, name: str, version: str) -> None:
        """Delete a model version and its registered endpoints.

        If it was the current version the model is left without one.  Deleting a
        model's last version also removes its links to applications.

        Raises:
            NotFound: No such version.
        """
        keys = self.keys

        def body(tx: Tx) -> None:
            self._require_model(tx, name, version)
            endpoints = [
                f
                for f in cast("list[str]", tx.r.hkeys(keys.endpoints))
                if json.loads(f)[:2] == [name, version]
            ]
            tx.write("HDEL", keys.models, model_field(name, version))
            if endpoints:
                tx.write("HDEL", keys.endpoints, *endpoints)
            if tx.r.hget(keys.current, name) == version:
                tx.write("HDEL", keys.current, name)
            tx.changed("model", name)
            if endpoints:
                tx.changed("endpoint", name)
            if all(m.version == version for m in self._versions_in(tx, name)):
                apps = sorted(cast("set[str]", tx.r.smembers(keys.linked(name))))
                for app in apps:
                    tx.write("SREM", keys.links(app), name)
                    tx.write("HDEL", keys.link_order(app), name)
                    tx.changed("app", app)
                tx.write("DEL", keys.linked(name))

        self._write(body)

    def set_current_version(self, name: str, version: str) -> None:
        """Make ``version`` the model's current version (roll forward or back).

        Raises:
            NotFound: No such version.
        """

        def body(tx: Tx) -> None:
            self._require_model(tx, name, version)
            tx.write("HSET", self.keys.current, name, version)
            tx.changed("model", name)

        self._write(body)

    def get_current_version(self, name: str) -> str | None:
        """The model's current version, or None."""
        return self._get(self.keys.current, name)

    def set_num_replicas(self, name: str, version: str, n: int) -> ModelRecord:
        """Set the desired replica count of a model version.

        Returns:
            The updated record.

        Raises:
            BadInput: ``n`` is not an integer >= 0.
            NotFound: No such version.
        """
        check_int("num_replicas", n, 0)
        field = model_field(name, version)

        def body(tx: Tx) -> ModelRecord:
            text = tx.r.hget(self.keys.models, field)
            if text is None:
                raise NotFound(f"model {name}:{version} not found")
            rec = replace(ModelRecord.from_stored(json.loads(text)), num_replicas=n)
            updated = json.dumps(rec.to_dict())
            tx.write("HSET", self.keys.models, field, updated)
            tx.changed("model", name)
            return rec

        return self._write(body)

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
        keys = self.keys

        def body(tx: Tx) -> None:
            rec = self._app_in(tx, app)
            if rec is None:
                raise NotFound(f"application {app} not found")
            for model_name in model_names:
                versions = self._versions_in(tx, model_name)
                if not versions:
                    raise NotFound(f"model {model_name} not found")
                for m in versions:
                    if m.input_type != rec.input_type:
                        raise BadInput(
                            f"model {model_name}:{m.version} takes {m.input_type} but"
                            f" application {app} takes {rec.input_type}"
                        )
            taken = cast("list[str]", tx.r.hvals(keys.link_order(app)))
            position = max((int(p) for p in taken), default=-1) + 1
            for model_name in dict.fromkeys(model_names):
                if not tx.r.sismember(keys.links(app), model_name):
                    tx.write("SADD", keys.links(app), model_name)
                    tx.write("HSET", keys.link_order(app), model_name, str(position))
                    tx.write("SADD", keys.linked(model_name), app)
                    tx.changed("app", app)
                    position += 1

        self._write(body)

    def unlink_model(self, app: str, model_name: str) -> bool:
        """Remove a link.

        Returns:
            Whether a link was removed (False if they were not linked; then no
            change is logged).

        Raises:
            NotFound: The application is missing.
        """
        keys = self.keys

        def body(tx: Tx) -> bool:
            self._require_app(tx, app)
            if not tx.r.sismember(keys.links(app), model_name):
                return False
            tx.write("SREM", keys.links(app), model_name)
            tx.write("HDEL", keys.link_order(app), model_name)
            tx.write("SREM", keys.linked(model_name), app)
            tx.changed("app", app)
            return True

        return self._write(body)

    def linked_models(self, app: str) -> list[str]:
        """The names of the models linked to ``app``, in the order they were linked
        (links written before the order was kept come first, by name).

        Raises:
            NotFound: The application is missing.
        """
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hexists(self.keys.apps, app)
            pipe.smembers(self.keys.links(app))
            pipe.hgetall(self.keys.link_order(app))
            exists, models, order = pipe.execute()
        if not exists:
            raise NotFound(f"application {app} not found")
        return sorted(models, key=lambda m: (int(order.get(m, -1)), m))

    def apps_linked_to(self, model_name: str) -> list[str]:
        """The names of the applications linked to ``model_name``, sorted."""
        return sorted(cast("set[str]", self.client.smembers(self.keys.linked(model_name))))

    # -- endpoints ---------------------------------------------------------------

    def put_endpoint(self, endpoint: EndpointRecord) -> None:
        """Register a replica endpoint of a model version, or move it (same
        replica id, new address).

        Raises:
            NotFound: No such model version.
        """
        field = _endpoint_field(endpoint.model, endpoint.version, endpoint.replica_id)

        def body(tx: Tx) -> None:
            if not tx.r.hexists(self.keys.models, model_field(endpoint.model, endpoint.version)):
                raise NotFound(f"model {endpoint.key} not found")
            tx.write("HSET", self.keys.endpoints, field, endpoint.address)
            tx.changed("endpoint", endpoint.model)

        self._write(body)

    def delete_endpoint(self, model: str, version: str, replica_id: str) -> bool:
        """Remove a replica endpoint.

        Returns:
            Whether there was one (False logs no change).
        """
        field = _endpoint_field(model, version, replica_id)

        def body(tx: Tx) -> bool:
            if not tx.r.hexists(self.keys.endpoints, field):
                return False
            tx.write("HDEL", self.keys.endpoints, field)
            tx.changed("endpoint", model)
            return True

        return self._write(body)

    def list_endpoints(
        self, model: str | None = None, version: str | None = None
    ) -> list[EndpointRecord]:
        """The registered endpoints, of every model, of ``model``, or of one
        version of it, by model, version and replica id."""
        found = []
        for field, address in self._all(self.keys.endpoints).items():
            m, v, rid = json.loads(field)
            if (model is None or m == model) and (version is None or v == version):
                found.append(EndpointRecord(m, v, rid, address))
        return sorted(found, key=lambda e: (e.model, e.version, e.replica_id))


if TYPE_CHECKING:
    # mypy checks here that the class fits the Protocols.
    def _fits(store: RedisStateStore) -> list[object]:
        protocol_store: StateStore = store
        feed: ChangeFeed = store.feed()
        return [protocol_store, feed]
