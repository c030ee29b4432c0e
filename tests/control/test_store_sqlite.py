"""The SQLite state store itself: persistence, schema versions and migrations,
WAL, file permissions, several connections to one file, the old import path."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from store_backends import app, model, pipeline

from clipper_core.auth import API_KEYS_NAMESPACE
from clipper_core.errors import ClipperError
from clipper_core.selection.runtime import kv_namespace
from clipper_core.store import AppRecord, EndpointRecord, SqliteStateStore, StateEvent, schema
from clipper_core.store.schema import SCHEMA_VERSION

StateStore = SqliteStateStore

V2_DUMP = Path(__file__).parent / "data" / "state_v2.sql"


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with StateStore(path) as s:
        s.add_app(app("a", policy="exp4", policy_config={"eta": 0.2}))
        s.add_model(model("m", "1", cpus=[0], num_replicas=3), make_current=True)
        s.add_model(model("m", "2"))
        s.link_model("a", "m")
        s.put_kv("policy:a", "1", {"w": [1.0]})
    with StateStore(str(path)) as s:
        assert s.get_app("a") == app("a", policy="exp4", policy_config={"eta": 0.2})
        assert [m.key for m in s.list_models()] == ["m:1", "m:2"]
        assert s.get_model("m", "1").cpus == [0]  # type: ignore[union-attr]
        assert s.get_model("m", "1").num_replicas == 3  # type: ignore[union-attr]
        assert s.get_current_version("m") == "1"
        assert s.linked_models("a") == ["m"]
        assert s.get_kv("policy:a", "1") == {"w": [1.0]}
        assert s.schema_version == SCHEMA_VERSION


def test_file_uses_wal_and_records_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore(path).close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    finally:
        raw.close()


def test_an_empty_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    sqlite3.connect(path).close()  # version 0, no tables
    with StateStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        s.add_app(app())


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    StateStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(ClipperError, match="newer"):
        StateStore(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ClipperError, match="cannot open the state store"):
        StateStore(path)


def test_a_second_connection_sees_committed_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with StateStore(path) as writer, StateStore(path) as reader:
        writer.add_app(app("a"))
        assert reader.get_app("a") == app("a")
        reader.add_model(model())
        assert writer.get_model("m", "1") is not None


def test_close_twice_is_safe(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "x.sqlite3")
    s.close()
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        s.list_apps()


def test_a_version_1_file_is_migrated_keeping_its_models(tmp_path: Path) -> None:
    # Schema 2 added per-version queue_capacity and batch_timeout (NULL: defaults).
    path = tmp_path / "v1.sqlite3"
    raw = sqlite3.connect(path)
    for statement in schema.MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute(
        "INSERT INTO models VALUES ('m', '1', 'ints', '[]', '{}', -1, 2, NULL, NULL, 1, 1000, 0)"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        m = s.get_model("m", "1")
        assert m is not None and m.num_replicas == 2
        assert m.queue_capacity is None and m.batch_timeout is None
        s.add_model(model("m", "2", queue_capacity=50, batch_timeout=1.5))
        m2 = s.get_model("m", "2")
        assert m2 is not None and (m2.queue_capacity, m2.batch_timeout) == (50, 1.5)


def test_versions_stored_past_the_bounds_are_brought_within_them(tmp_path: Path) -> None:
    # Written before batch_size, batch_wait_micros and queue_capacity had upper
    # bounds: a batch size over a C int made every start of the server fail.
    path = tmp_path / "v6.sqlite3"
    with StateStore(path) as s:
        for version in ("1", "2", "3"):
            s.add_model(model("m", version))
    raw = sqlite3.connect(path)
    raw.execute("UPDATE models SET batch_size = 2147483648 WHERE version = '1'")
    raw.execute(
        "UPDATE models SET batch_wait_micros = 10000000000, queue_capacity = 1000000000000,"
        " batch_size = 10 WHERE version = '2'"
    )
    raw.execute("UPDATE models SET batch_size = 64, queue_capacity = 8 WHERE version = '3'")
    raw.execute("PRAGMA user_version = 6")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        got = {m.version: m for m in s.list_models("m")}
    assert got["1"].batch_size == 100_000
    assert (got["2"].batch_wait_micros, got["2"].queue_capacity) == (3_600_000_000, 100_000_000)
    assert (got["3"].batch_size, got["3"].queue_capacity) == (8, 8)


def test_apps_and_pipelines_stored_past_the_slo_bound_are_read_within_it(
    tmp_path: Path,
) -> None:
    # Written before latency objectives had an upper bound (a day): reading them
    # must not fail, or the server would not start.
    path = tmp_path / "slo.sqlite3"
    with StateStore(path) as s:
        s.add_app(app("a"))
        s.add_pipeline(pipeline("p"))
    raw = sqlite3.connect(path)
    raw.execute("UPDATE apps SET slo_micros = 9223372036854775807")
    raw.execute("UPDATE pipelines SET slo_micros = 86400000001")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        assert [a.slo_micros for a in s.list_apps()] == [86_400_000_000]
        got = s.get_pipeline("p")
        assert got is not None and got.slo_micros == 86_400_000_000


def test_a_version_2_file_is_migrated_keeping_everything(tmp_path: Path) -> None:
    # The dump was written by the schema-2 code (state.py at 1075aa8).
    path = tmp_path / "v2.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(V2_DUMP.read_text())
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        assert s.get_app("shop") == AppRecord("shop", "doubles", "-1", 20_000, "exp3", {"eta": 0.1})
        plain = s.get_app("plain")
        assert plain is not None and (plain.input_type, plain.default_output) == (
            "strings",
            "none",
        )
        assert [m.key for m in s.list_models()] == ["echo:1", "ranker:1", "ranker:2"]
        r1 = s.get_model("ranker", "1")
        assert r1 is not None
        assert (r1.labels, r1.container) == (
            ["prod"],
            {"kind": "closure", "path": "/m/ranker/1/f.pkl"},
        )
        assert (r1.batch_size, r1.num_replicas, r1.cpus, r1.memory_limit_mb) == (8, 2, [0, 1], 512)
        assert (r1.queue_capacity, r1.batch_timeout, r1.created_at) == (64, 2.5, 1700000000.0)
        r2 = s.get_model("ranker", "2")
        assert r2 is not None and (r2.cache_enabled, r2.batch_wait_micros) == (False, 500)
        assert r2.queue_capacity is None and r2.batch_timeout is None
        # The controller migration: old versions keep the mode their batch_size implied.
        assert r1.controller is None and r2.controller is None
        assert s.get_current_version("ranker") == "2"
        assert s.get_current_version("echo") is None
        assert s.linked_models("shop") == ["ranker"] and s.apps_linked_to("echo") == ["plain"]
        assert s.get_kv(API_KEYS_NAMESPACE, "shop") == ["0" * 64, "f" * 64]
        assert sorted(s.list_kv(kv_namespace("shop"))) == ["0", "42"]
        # The old state predates the change log: revision 0, nothing to replay.
        assert s.revision() == 0 and s.changes_since(0) == []
        assert s.list_endpoints() == []
        # And the new tables work.
        s.put_endpoint(EndpointRecord("ranker", "2", "ext-1", "127.0.0.1:7000"))
        s.delete_app("shop")
        assert s.revision() == 2
        assert s.changes_since(0) == [
            StateEvent(1, "endpoint", "ranker"),
            StateEvent(2, "app", "shop"),
        ]
        assert s.get_kv(API_KEYS_NAMESPACE, "shop") is None
        assert s.list_kv(kv_namespace("shop")) == {}


def test_a_version_3_file_is_migrated_keeping_everything(tmp_path: Path) -> None:
    # Schema 3 as the schema-3 code left it: the v2 dump plus migration 3.
    path = tmp_path / "v3.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(V2_DUMP.read_text())
    for statement in schema.MIGRATIONS[2]:
        raw.execute(statement)
    raw.execute("INSERT INTO endpoints VALUES ('ranker', '2', 'ext-1', '127.0.0.1:7000')")
    raw.execute("INSERT INTO changes VALUES (1, 'endpoint', 'ranker')")
    raw.execute("UPDATE revision SET current = 1")
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        assert [a.name for a in s.list_apps()] == ["plain", "shop"]
        assert [m.key for m in s.list_models()] == ["echo:1", "ranker:1", "ranker:2"]
        assert s.list_endpoints() == [EndpointRecord("ranker", "2", "ext-1", "127.0.0.1:7000")]
        assert s.revision() == 1 and s.changes_since(0) == [StateEvent(1, "endpoint", "ranker")]
        assert s.list_pipelines() == []
        p = pipeline("pipe")
        s.add_pipeline(p)
        assert s.get_pipeline("pipe") == p
        assert s.changes_since(1) == [StateEvent(2, "pipeline", "pipe")]
    with StateStore(path) as s:  # and it persists
        assert s.get_pipeline("pipe") == p


def test_a_version_5_file_keeps_its_links_in_the_order_they_were_restored(
    tmp_path: Path,
) -> None:
    # Schema 5 restored links by name: migration 6 keeps that order, and links
    # made afterwards come after them, in the order they are made.
    path = tmp_path / "v5.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(V2_DUMP.read_text())
    for version in (2, 3, 4):
        for statement in schema.MIGRATIONS[version]:
            raw.execute(statement)
    for name in ("alpha", "zed"):
        raw.execute(
            "INSERT INTO models VALUES"
            " (?, '1', 'doubles', '[]', '{}', -1, 1, NULL, NULL, 1, 0, 0, NULL, NULL, NULL)",
            (name,),
        )
    raw.execute("INSERT INTO links VALUES ('shop', 'zed')")
    raw.execute("INSERT INTO links VALUES ('shop', 'alpha')")
    raw.execute("PRAGMA user_version = 5")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 7
        assert s.linked_models("shop") == ["alpha", "ranker", "zed"]
        s.add_model(model("beta", "1"))
        s.link_model("shop", "beta")
        assert s.linked_models("shop") == ["alpha", "ranker", "zed", "beta"]
        assert s.linked_models("plain") == ["echo"]


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(V2_DUMP.read_text())
    raw.execute("CREATE TABLE endpoints (x)")  # makes migration 3 fail half-way
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    with pytest.raises(ClipperError, match="cannot open the state store"):
        StateStore(path)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "revision" not in tables and "changes" not in tables
    finally:
        raw.close()


def test_the_files_are_private_to_their_owner(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask would leave them world-readable
    try:
        path = tmp_path / "state.sqlite3"
        with StateStore(path) as s:
            s.add_app(app())
            names = {p.name for p in tmp_path.iterdir()}
            assert {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"} <= names
            for p in tmp_path.iterdir():
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    finally:
        os.umask(old)


def test_a_missing_folder_is_a_clipper_error(tmp_path: Path) -> None:
    with pytest.raises(ClipperError, match="cannot open the state store"):
        StateStore(tmp_path / "no" / "state.sqlite3")
    assert not (tmp_path / "no").exists()  # the server creates the folder, not the store


def test_two_store_objects_share_the_revision(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with StateStore(path) as a, StateStore(path) as b:
        a.add_app(app("x"))
        b.add_model(model())
        a.link_model("x", "m")
        assert a.revision() == b.revision() == 3
        assert (
            b.changes_since(0)
            == a.changes_since(0)
            == [
                StateEvent(1, "app", "x"),
                StateEvent(2, "model", "m"),
                StateEvent(3, "app", "x"),
            ]
        )


def test_a_version_3_file_gains_the_controller_column(tmp_path: Path) -> None:
    # Schema 3 is schema 2's dump plus migration 3 (pipelines and the controller come after).
    path = tmp_path / "v3.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(V2_DUMP.read_text())
    for statement in schema.MIGRATIONS[2]:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()
    with StateStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        r1 = s.get_model("ranker", "1")
        assert r1 is not None and (r1.batch_size, r1.controller) == (8, None)
        s.add_model(model("ranker", "3", batch_size=16, controller="quantile"))
    with StateStore(path) as s:
        r3 = s.get_model("ranker", "3")
        assert r3 is not None and (r3.batch_size, r3.controller) == (16, "quantile")


def test_a_file_locked_by_another_process_is_store_busy(tmp_path: Path) -> None:
    # Another writer holds the file's write lock past the busy timeout: a
    # StoreBusy (503, naming the file) and nothing written, not a raw
    # sqlite3.OperationalError (a 500 "internal" over the management API).
    from clipper_core.errors import StoreBusy

    path = tmp_path / "state.sqlite3"
    with StateStore(path, busy_timeout=0.2) as s:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusy, match="locked by another process") as info:
                s.add_app(app("a"))
            assert info.value.http_status == 503
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert s.get_app("a") is None
        s.add_app(app("a"))  # the lock gone, the write goes through
        assert s.get_app("a") is not None
