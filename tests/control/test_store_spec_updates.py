"""The StateStore's in-place updates (``update_app``, ``update_model_spec``), run
against each backend of ``store_backends.BACKENDS``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_backends import BACKENDS, app, model, open_store

from clipper_core.auth import API_KEYS_NAMESPACE
from clipper_core.errors import BadInput, NotFound
from clipper_core.store import StateStore


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_update_app_changes_settings_and_keeps_links_and_keys(store: StateStore) -> None:
    store.add_app(app(policy="exp3", policy_config={"eta": 0.1}), ["d" * 64])
    store.add_model(model())
    store.link_model("app", "m")
    store.put_kv("selection:app", "0", {"learned": 1})
    revision = store.revision()
    rec = store.update_app("app", slo_micros=5000)
    assert rec.slo_micros == 5000 and rec.default_output == "-1" and rec.policy == "exp3"
    assert store.get_app("app") == rec
    assert store.linked_models("app") == ["m"]
    assert store.get_kv(API_KEYS_NAMESPACE, "app") == ["d" * 64]
    assert store.get_kv("selection:app", "0") == {"learned": 1}
    assert [(e.kind, e.name) for e in store.changes_since(revision)] == [("app", "app")]
    assert store.update_app("app", default_output="x").default_output == "x"


def test_update_app_that_changes_nothing_logs_nothing(store: StateStore) -> None:
    store.add_app(app())
    revision = store.revision()
    store.update_app("app", slo_micros=100_000)
    assert store.revision() == revision


def test_update_app_refuses_bad_values_and_unknown_apps(store: StateStore) -> None:
    store.add_app(app())
    with pytest.raises(BadInput, match="slo_micros"):
        store.update_app("app", slo_micros=0)
    with pytest.raises(NotFound):
        store.update_app("nope", slo_micros=1)
    assert store.get_app("app") == app()


def test_update_model_spec_writes_only_the_named_fields(store: StateStore) -> None:
    store.add_model(model())
    other = model("n")
    store.add_model(other)
    revision = store.revision()
    rec = store.update_model_spec(
        "m", "1", batch_wait_micros=300, batch_timeout=2.5, cache_enabled=False, labels=["b"]
    )
    assert (rec.batch_wait_micros, rec.batch_timeout, rec.cache_enabled, rec.labels) == (
        300,
        2.5,
        False,
        ["b"],
    )
    assert store.get_model("m", "1") == rec
    assert store.get_model("n", "1") == other
    assert [(e.kind, e.name) for e in store.changes_since(revision)] == [("model", "m")]
    rec = store.update_model_spec("m", "1", cpus=[0, 1], memory_limit_mb=64, batch_timeout=None)
    assert store.get_model("m", "1") == rec and rec.cpus == [0, 1] and rec.batch_timeout is None
    revision = store.revision()
    store.update_model_spec("m", "1", batch_wait_micros=300)
    assert store.revision() == revision  # nothing changed: nothing logged


def test_update_model_spec_refuses_identity_fields_and_bad_values(store: StateStore) -> None:
    rec = model()
    store.add_model(rec)
    with pytest.raises(BadInput, match="not tunable in place: input_type"):
        store.update_model_spec("m", "1", input_type="ints")
    # The identity fields by keyword too: a clear refusal, not a TypeError.
    for field in ("name", "version"):
        with pytest.raises(BadInput, match=f"not tunable in place: {field}"):
            store.update_model_spec("m", "1", **{field: "x"})
    with pytest.raises(BadInput, match="batch_wait_micros"):
        store.update_model_spec("m", "1", batch_wait_micros=-1)
    with pytest.raises(NotFound):
        store.update_model_spec("m", "2", num_replicas=1)
    assert store.get_model("m", "1") == rec
