"""The pipelines table of the SQLite state store.

A pipeline and an application share one namespace (both answer
``/<name>/predict``), so adding either checks the other's table in the same
transaction.  Every write logs a ``pipeline`` change; an update that changes
nothing logs none, so that applying the same description twice is a no-op.
A pipeline's API-key digests live where an application's do (kv namespace
``auth.api_keys``, keyed by the shared name), and go with the pipeline.
"""

from __future__ import annotations

import json

from clipper_core.errors import Conflict, NotFound
from clipper_core.store.records import PipelineRecord
from clipper_core.store.schema import pipeline_from_row
from clipper_core.store.sqlite_db import SqliteDatabase

__all__ = ["SqlitePipelines"]


def _row(rec: PipelineRecord) -> tuple[str, str, str, int, str, str]:
    return (
        rec.input_type,
        json.dumps(rec.stages),
        json.dumps(rec.edges),
        rec.slo_micros,
        rec.default_output,
        rec.name,
    )


class SqlitePipelines(SqliteDatabase):
    """The pipeline reads and writes of
    :class:`~clipper_core.store.sqlite.SqliteStateStore`."""

    def add_pipeline(
        self, pipeline: PipelineRecord, api_key_digests: list[str] | None = None
    ) -> None:
        """Register a pipeline, with the digests of its API keys (none: no key
        needed) in the same transaction.

        Raises:
            Conflict: A pipeline or an application of that name exists.
            BadInput: ``api_key_digests`` is not a list of strings.
        """
        digests = self._api_keys_value(api_key_digests or [])
        with self._write() as tx:
            conn = tx.conn
            name = pipeline.name
            if conn.execute("SELECT 1 FROM pipelines WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"pipeline {name} already exists")
            if conn.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"an application named {name} exists; a pipeline needs its own name")
            conn.execute(
                "INSERT INTO pipelines (input_type, stages, edges, slo_micros, default_output,"
                " name) VALUES (?, ?, ?, ?, ?, ?)",
                _row(pipeline),
            )
            self._write_api_keys(conn, name, digests)
            tx.changed("pipeline", name)

    def update_pipeline(self, pipeline: PipelineRecord) -> bool:
        """Replace a pipeline's description.

        Returns:
            Whether anything changed (an identical record logs no change).

        Raises:
            NotFound: No pipeline has that name.
        """
        with self._write() as tx:
            row = tx.conn.execute(
                "SELECT * FROM pipelines WHERE name = ?", (pipeline.name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"pipeline {pipeline.name} not found")
            if pipeline_from_row(row) == pipeline:
                return False
            tx.conn.execute(
                "UPDATE pipelines SET input_type = ?, stages = ?, edges = ?, slo_micros = ?,"
                " default_output = ? WHERE name = ?",
                _row(pipeline),
            )
            tx.changed("pipeline", pipeline.name)
            return True

    def delete_pipeline(self, name: str) -> None:
        """Delete a pipeline.

        Raises:
            NotFound: No pipeline has that name.
        """
        with self._write() as tx:
            if tx.conn.execute("DELETE FROM pipelines WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"pipeline {name} not found")
            self._write_api_keys(tx.conn, name, None)
            tx.changed("pipeline", name)

    def set_pipeline_api_keys(self, name: str, digests: list[str]) -> None:
        """Replace a pipeline's API-key digests (SHA-256 hex); an empty list
        removes them.

        Raises:
            NotFound: No pipeline has that name.
            BadInput: ``digests`` is not a list of strings.
        """
        text = self._api_keys_value(digests)
        with self._write() as tx:
            if not tx.conn.execute("SELECT 1 FROM pipelines WHERE name = ?", (name,)).fetchone():
                raise NotFound(f"pipeline {name} not found")
            self._write_api_keys(tx.conn, name, text)
            tx.changed("pipeline", name)

    def get_pipeline(self, name: str) -> PipelineRecord | None:
        """The pipeline called ``name``, or None."""
        rows = self._read("SELECT * FROM pipelines WHERE name = ?", (name,))
        return pipeline_from_row(rows[0]) if rows else None

    def list_pipelines(self) -> list[PipelineRecord]:
        """Every pipeline, by name."""
        return [pipeline_from_row(r) for r in self._read("SELECT * FROM pipelines ORDER BY name")]
