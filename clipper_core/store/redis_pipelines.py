"""The pipelines hash of the Redis state store.

A pipeline and an application share one namespace (both answer
``/<name>/predict``), so adding either checks the other's hash in the same
transaction.  Every write logs a ``pipeline`` change; an update that changes
nothing logs none, so that applying the same description twice is a no-op.
API-key digests go with the pipeline, as with an application.  The same
checks, errors and events as
:class:`~clipper_core.store.sqlite_pipelines.SqlitePipelines`.
"""

from __future__ import annotations

import json

from clipper_core.errors import Conflict, NotFound
from clipper_core.store.records import PipelineRecord
from clipper_core.store.redis_db import RedisDatabase, Tx

__all__ = ["RedisPipelines"]


def _record(text: str) -> PipelineRecord:
    return PipelineRecord.from_stored(json.loads(text))


class RedisPipelines(RedisDatabase):
    """The pipeline reads and writes of
    :class:`~clipper_core.store.redis.RedisStateStore`."""

    def add_pipeline(
        self, pipeline: PipelineRecord, api_key_digests: list[str] | None = None
    ) -> None:
        """Register a pipeline, with the digests of its API keys (none: no key
        needed) in the same transaction.

        Raises:
            Conflict: A pipeline or an application of that name exists.
            BadInput: ``api_key_digests`` is not a list of strings.
        """
        keys, name = self.keys, pipeline.name
        text = json.dumps(pipeline.to_dict())
        digests = self._api_keys_value(api_key_digests or [])

        def body(tx: Tx) -> None:
            if tx.r.hexists(keys.pipelines, name):
                raise Conflict(f"pipeline {name} already exists")
            if tx.r.hexists(keys.apps, name):
                raise Conflict(f"an application named {name} exists; a pipeline needs its own name")
            tx.write("HSET", keys.pipelines, name, text)
            tx.set_api_keys(name, digests)
            tx.changed("pipeline", name)

        self._write(body)

    def update_pipeline(self, pipeline: PipelineRecord) -> bool:
        """Replace a pipeline's description.

        Returns:
            Whether anything changed (an identical record logs no change).

        Raises:
            NotFound: No pipeline has that name.
        """
        keys, name = self.keys, pipeline.name
        text = json.dumps(pipeline.to_dict())

        def body(tx: Tx) -> bool:
            old = tx.r.hget(keys.pipelines, name)
            if old is None:
                raise NotFound(f"pipeline {name} not found")
            if _record(old) == pipeline:
                return False
            tx.write("HSET", keys.pipelines, name, text)
            tx.changed("pipeline", name)
            return True

        return self._write(body)

    def delete_pipeline(self, name: str) -> None:
        """Delete a pipeline.

        Raises:
            NotFound: No pipeline has that name.
        """
        keys = self.keys

        def body(tx: Tx) -> None:
            if not tx.r.hexists(keys.pipelines, name):
                raise NotFound(f"pipeline {name} not found")
            tx.write("HDEL", keys.pipelines, name)
            tx.set_api_keys(name, None)
            tx.changed("pipeline", name)

        self._write(body)

    def set_pipeline_api_keys(self, name: str, digests: list[str]) -> None:
        """Replace a pipeline's API-key digests (SHA-256 hex); an empty list
        removes them.

        Raises:
            NotFound: No pipeline has that name.
            BadInput: ``digests`` is not a list of strings.
        """
        keys = self.keys
        text = self._api_keys_value(digests)

        def body(tx: Tx) -> None:
            if not tx.r.hexists(keys.pipelines, name):
                raise NotFound(f"pipeline {name} not found")
            tx.set_api_keys(name, text)
            tx.changed("pipeline", name)

        self._write(body)

    def get_pipeline(self, name: str) -> PipelineRecord | None:
        """The pipeline called ``name``, or None."""
        text = self._get(self.keys.pipelines, name)
        return None if text is None else _record(text)

    def list_pipelines(self) -> list[PipelineRecord]:
        """Every pipeline, by name."""
        return [_record(text) for _, text in sorted(self._all(self.keys.pipelines).items())]
