"""The pieces that carry a selection policy through the shared layers: the
store's app policy and kv batch, ``uid`` in a query, the reply fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipper_core.clipper_api import format_reply, parse_predict, reply_fields
from clipper_core.dataplane import Outcome
from clipper_core.errors import BadInput, NotFound
from clipper_core.selection.api import parse_label
from clipper_core.store.records import AppRecord
from clipper_core.store.sqlite import SqliteStateStore as StateStore


def test_store_sets_an_apps_policy(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite3") as store:
        store.add_app(AppRecord("app", "doubles", "-1", 1000))
        rec = store.set_app_policy("app", "exp3", {"eta": 0.5})
        assert (rec.policy, rec.policy_config) == ("exp3", {"eta": 0.5})
    with StateStore(tmp_path / "s.sqlite3") as store:
        rec2 = store.get_app("app")
        assert rec2 is not None and rec2.policy_config == {"eta": 0.5}
        with pytest.raises(NotFound):
            store.set_app_policy("nope", "exp3")
        with pytest.raises(BadInput):
            store.set_app_policy("app", "")


def test_store_writes_kv_batches_atomically(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite3") as store:
        store.put_kv_many([("a", "1", {"x": 1}), ("b", "1", [1, 2])])
        with pytest.raises(BadInput):
            store.put_kv_many([("a", "2", 1), ("a", "3", float("nan"))])
        assert store.list_kv("a") == {"1": {"x": 1}}  # nothing of the failed batch
        store.put_kv_many([("a", "9", True)], delete_namespaces=["a", "b"])
        assert store.list_kv("a") == {"9": True} and store.list_kv("b") == {}


def test_queries_carry_a_uid() -> None:
    assert parse_predict(b'{"input": [1.0]}', "doubles").uid == 0
    assert parse_predict(b'{"input": [1.0], "uid": 12}', "doubles").uid == 12
    assert parse_predict(b'{"input_batch": [[1.0]], "uid": 3}', "doubles").uid == 3
    for bad in (b'"x"', b"-1", b"1.5", b"true"):
        with pytest.raises(BadInput, match="uid"):
            parse_predict(b'{"input": [1.0], "uid": ' + bad + b"}", "doubles")


def test_labels() -> None:
    for ok in (1, 0.5, "cat", True, [1, 2.5]):
        assert parse_label({"label": ok}) == ok
    for bad in ({}, {"label": None}, {"label": {"a": 1}}, {"label": ["a"]}):
        with pytest.raises(BadInput, match="label"):
            parse_label(bad)


def test_reply_fields_keep_clippers_shape() -> None:
    assert reply_fields(Outcome(1)) is None
    assert reply_fields(Outcome(1, model="m:1")) == {"model": "m:1"}
    fields = reply_fields(Outcome(1, models=["a:1", "b:1"], confidence=2 / 3, missing=["c:1"]))
    assert fields == {"models": ["a:1", "b:1"], "confidence": 0.666667, "missing": ["c:1"]}
    reply = format_reply(4, 1, False, None, fields)
    assert list(reply)[:3] == ["query_id", "output", "default"]
