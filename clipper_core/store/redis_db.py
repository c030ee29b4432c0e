"""The Redis connection under the shared state store: its key layout, write
transactions that bump the revision and append to the change stream, the change
log's reader, and the key/value hashes.

Every write is one optimistic transaction: ``WATCH`` the revision, read what the
write's checks need, then ``MULTI`` the changes, ``INCR`` the revision and
``XADD`` one stream entry (id ``<revision>-0``, the keys it touched) in one
``EXEC``.  Every write watches the revision, and every write that changes
desired state bumps it, so a check made before ``EXEC`` still holds when it
commits: the writes of every process sharing the database are serialised, like
SQLite's ``BEGIN IMMEDIATE``.  A write that lost the race runs again.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable
from types import FunctionType
from typing import Any, Self, TypeVar, cast

import redis

from clipper_core.auth import API_KEYS_NAMESPACE
from clipper_core.errors import ClipperError, StoreUnavailable
from clipper_core.store.base import EventKind, ResyncNeeded, StateEvent
from clipper_core.store.feed import SUBSCRIBER_CAPACITY
from clipper_core.store.records import check_int
from clipper_core.store.redis_feed import RedisChangeFeed, events_of
from clipper_core.store.sqlite_db import CHANGES_KEPT, SqliteDatabase, _kv_text

__all__ = ["DEFAULT_PREFIX", "Keys", "RedisDatabase", "Tx", "model_field"]

#: Prefix of every key of a store (several stores may share one database).
DEFAULT_PREFIX = "clipper:"

T = TypeVar("T")


def model_field(name: str, version: str) -> str:
    """The field of a model version in the models hash."""
    return f"{name}:{version}"


class Keys:
    """The names of a store's Redis keys.

    Names (of apps, models, versions) never hold ``:`` (see
    :func:`~clipper_core.store.records.check_name`), so ``name:version`` is a
    unique hash field.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.revision = prefix + "revision"  # the last committed revision
        self.trimmed = prefix + "trimmed"  # changes up to here are gone from the stream
        self.changes = prefix + "changes"  # stream: one entry per revision
        self.apps = prefix + "apps"  # hash: name -> AppRecord JSON
        self.models = prefix + "models"  # hash: name:version -> ModelRecord JSON
        self.current = prefix + "current"  # hash: model name -> version
        self.endpoints = prefix + "endpoints"  # hash: [model, version, replica] JSON -> address
        self.pipelines = prefix + "pipelines"  # hash: name -> PipelineRecord JSON
        self.lease = prefix + "lease"  # the replica owner's lease

    def links(self, app: str) -> str:
        """Set: the models linked to ``app``."""
        return f"{self.prefix}links:{app}"

    def link_order(self, app: str) -> str:
        """Hash: model -> the position of its link to ``app`` (links are answered
        in this order; a link written before positions were kept has none)."""
        return f"{self.prefix}link_order:{app}"

    def linked(self, model: str) -> str:
        """Set: the apps ``model`` is linked to (the reverse index)."""
        return f"{self.prefix}linked:{model}"

    def kv(self, namespace: str) -> str:
        """Hash: the keys of one kv namespace and their JSON values."""
        return f"{self.prefix}kv:{namespace}"


class Tx:
    """One write transaction: reads run at once on the watching connection
    (``r``); writes are queued (``write``) and run in ``MULTI``/``EXEC``."""

    def __init__(self, pipe: Any, keys: Keys) -> None:
        self.r = pipe
        self.keys = keys
        self.events: dict[tuple[EventKind, str], None] = {}  # ordered, no repeats
        self.ops: list[tuple[str, ...]] = []

    def changed(self, kind: EventKind, name: str) -> None:
        self.events[(kind, name)] = None

    def write(self, *command: str) -> None:
        """Queue a Redis command (``"HSET", key, field, value``) for the ``EXEC``."""
        self.ops.append(command)

    def set_api_keys(self, app: str, value: str | None) -> None:
        key = self.keys.kv(API_KEYS_NAMESPACE)
        if value is None:
            self.write("HDEL", key, app)
        else:
            self.write("HSET", key, app, value)


def _outage_as_error(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"the Redis state store cannot be reached: {exc}") from exc

    return call


def outages_as_errors(cls: type[T]) -> type[T]:
    """Make every public method of a Redis store raise
    :class:`~clipper_core.errors.StoreUnavailable` (a 503) where the server
    cannot be reached, instead of redis-py's own errors (an unhandled 500)."""
    for name in dir(cls):
        if not name.startswith("_") and isinstance(inspect.getattr_static(cls, name), FunctionType):
            setattr(cls, name, _outage_as_error(getattr(cls, name)))
    return cls


class RedisDatabase:
    """The connection under :class:`~clipper_core.store.redis.RedisStateStore`:
    transactions, the revision and change stream, and the key/value hashes.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS), as redis-py reads it.
        prefix: Prefix of every key of this store.
        changes_kept: How many revisions the change stream keeps.
        feed_capacity: How many events a feed subscriber may fall behind before
            it must resync.

    Raises:
        ClipperError: The server cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        changes_kept: int = CHANGES_KEPT,
        feed_capacity: int = SUBSCRIBER_CAPACITY,
    ) -> None:
        check_int("changes_kept", changes_kept, 1)
        check_int("feed_capacity", feed_capacity, 1)
        self._url = url
        self.keys = Keys(prefix)
        self._changes_kept = changes_kept
        self._client: redis.Redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10.0, health_check_interval=30
        )
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise ClipperError(f"{url}: cannot reach the Redis state store: {exc}") from exc
        self._feed = RedisChangeFeed(url, self.keys.revision, self.keys.changes, feed_capacity)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL given to the constructor."""
        return self._url

    @property
    def client(self) -> redis.Redis:
        """The synchronous client (thread-safe: a connection pool)."""
        return self._client

    def close(self) -> None:
        """End the feed's subscriptions and close the connections.  Safe twice."""
        self._feed.close()
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, body: Callable[[Tx], T]) -> T:
        """Run ``body`` as one transaction, again if another writer committed
        first.  ``body`` reads through ``tx.r``, raises to abort, and queues
        its writes; if it named changed keys, the revision goes up by one and the
        change stream gets one entry."""
        keys = self.keys
        while True:
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(keys.revision)  # type: ignore[no-untyped-call]
                    tx = Tx(pipe, keys)
                    result = body(tx)
                    # The stream's last entry too: a revision key lost (evicted,
                    # deleted by hand) must not make XADD fail inside EXEC, where
                    # Redis keeps the writes queued before it.
                    top = pipe.xrevrange(keys.changes, count=1)
                    last = int(str(top[0][0]).split("-")[0]) if top else 0
                    revision = max(int(pipe.get(keys.revision) or 0), last) + 1
                    horizon = revision - self._changes_kept
                    trimmed = int(pipe.get(keys.trimmed) or 0)
                    pipe.multi()
                    for command in tx.ops:
                        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                    if tx.events:
                        pipe.set(keys.revision, revision)
                        entry = {"events": json.dumps(list(tx.events))}
                        pipe.xadd(
                            keys.changes,
                            entry,  # type: ignore[arg-type]
                            id=f"{revision}-0",
                            maxlen=self._changes_kept,
                            approximate=False,
                        )
                        if horizon > trimmed:
                            pipe.set(keys.trimmed, horizon)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue  # another writer committed since WATCH: read again

    def _get(self, key: str, field: str) -> str | None:
        return cast("str | None", self._client.hget(key, field))

    def _all(self, key: str) -> dict[str, str]:
        return cast("dict[str, str]", self._client.hgetall(key))

    # -- revisions and changes ---------------------------------------------------

    def revision(self) -> int:
        """The revision of the last committed change (0: none yet)."""
        return int(cast("str | None", self._client.get(self.keys.revision)) or 0)

    def changes_since(self, revision: int) -> list[StateEvent]:
        """The events of every transaction after ``revision``, in order.

        Raises:
            ResyncNeeded: The stream was trimmed past ``revision``, or
                ``revision`` is ahead of the store (a consumer of another store).
        """
        keys = self.keys
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(keys.revision)
            pipe.get(keys.trimmed)
            pipe.xrange(keys.changes, min=f"{revision + 1}-0")
            current_raw, trimmed_raw, entries = pipe.execute()
        current, trimmed = int(current_raw or 0), int(trimmed_raw or 0)
        if revision < trimmed:
            raise ResyncNeeded(
                f"changes after revision {revision} are gone (the log starts after {trimmed})"
            )
        if revision > current:
            raise ResyncNeeded(f"revision {revision} is ahead of the store's {current}")
        return [event for entry_id, fields in entries for event in events_of(entry_id, fields)]

    def feed(self) -> RedisChangeFeed:
        """The feed of every committed write to this store, by any process."""
        return self._feed

    # -- key/value ---------------------------------------------------------------
    # Learned state is not desired state: kv writes log nothing, except those to
    # the API-key digests (namespace auth.api_keys, key: the application).

    def put_kv(self, namespace: str, key: str, json_value: Any) -> None:
        """Store a JSON-serialisable value under (namespace, key), replacing any.

        Raises:
            BadInput: The value is not JSON-serialisable (NaN included).
        """
        self.put_kv_many([(namespace, key, json_value)])

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
        drops = list(dict.fromkeys(delete_namespaces))

        def body(tx: Tx) -> None:
            if API_KEYS_NAMESPACE in drops:
                apps = sorted(cast("list[str]", tx.r.hkeys(self.keys.kv(API_KEYS_NAMESPACE))))
                for app in apps:
                    tx.changed("app", app)
            for ns in drops:
                tx.write("DEL", self.keys.kv(ns))
            for ns, key, text in rows:
                tx.write("HSET", self.keys.kv(ns), key, text)
                if ns == API_KEYS_NAMESPACE:
                    tx.changed("app", key)

        self._write(body)

    def get_kv(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value stored under (namespace, key), or ``default``."""
        text = self._get(self.keys.kv(namespace), key)
        return default if text is None else json.loads(text)

    def list_kv(self, namespace: str) -> dict[str, Any]:
        """Every key of ``namespace`` and its value."""
        return {k: json.loads(v) for k, v in sorted(self._all(self.keys.kv(namespace)).items())}

    def delete_kv(self, namespace: str, key: str | None = None) -> int:
        """Delete one key, or the whole namespace when ``key`` is None.

        Returns:
            How many keys were deleted.
        """
        hash_key = self.keys.kv(namespace)

        def body(tx: Tx) -> int:
            present = cast("list[str]", tx.r.hkeys(hash_key))
            deleted = sorted(present) if key is None else [k for k in present if k == key]
            if key is None:
                # The whole hash: also what a concurrent put_kv_many (not a revision
                # change, so not seen by the WATCH) added since the read.
                tx.write("DEL", hash_key)
            elif deleted:
                tx.write("HDEL", hash_key, *deleted)
            if namespace == API_KEYS_NAMESPACE:
                for app in deleted:
                    tx.changed("app", app)
            return len(deleted)

        return self._write(body)

    # The same checks and encodings as the SQLite store.
    _api_keys_value = staticmethod(SqliteDatabase._api_keys_value)
