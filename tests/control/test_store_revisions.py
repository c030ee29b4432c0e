"""The StateStore contract, continued: revisions and the change log, composite
writes in one transaction, API keys, links (404 vs 400) and endpoint records.
Every test runs against each backend of ``store_backends.BACKENDS``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_backends import BACKENDS, app, model, open_store, pipeline

from clipper_core.auth import API_KEYS_NAMESPACE, hash_api_key
from clipper_core.errors import BadInput, Conflict, NotFound
from clipper_core.selection.runtime import kv_namespace
from clipper_core.store import EndpointRecord, ResyncNeeded, StateEvent, StateStore
from clipper_core.store.records import learned_state_namespace

KEYS = [hash_api_key("k" * 16), hash_api_key("j" * 16)]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(backend, tmp_path)
    try:
        yield s
    finally:
        s.close()


def events(store: StateStore, since: int) -> list[tuple[str, str]]:
    """The (kind, name) of every change after ``since``, all of one revision."""
    changes = store.changes_since(since)
    assert {e.revision for e in changes} <= {since + 1}
    return [(e.kind, e.name) for e in changes]


def endpoint(replica: str = "r0", version: str = "1", address: str = "127.0.0.1:7000") -> Any:
    return EndpointRecord("m", version, replica, address)


def test_learned_state_namespace_matches_the_selection_runtime() -> None:
    assert learned_state_namespace("shop") == kv_namespace("shop")


# -- one revision per write, and what it names ----------------------------------------

# (write, the (kind, name) events it logs), run in this order on one store.
WRITES: list[tuple[str, Callable[[StateStore], Any], list[tuple[str, str]]]] = [
    ("add_app", lambda s: s.add_app(app("a")), [("app", "a")]),
    ("add_app+keys", lambda s: s.add_app(app("b"), KEYS), [("app", "b")]),
    ("add_model", lambda s: s.add_model(model("m", "1")), [("model", "m")]),
    (
        "add_model+current",
        lambda s: s.add_model(model("m", "2"), make_current=True),
        [("model", "m")],
    ),
    ("set_current_version", lambda s: s.set_current_version("m", "1"), [("model", "m")]),
    ("set_num_replicas", lambda s: s.set_num_replicas("m", "1", 3), [("model", "m")]),
    ("link_model", lambda s: s.link_model("a", "m"), [("app", "a")]),
    ("set_app_policy", lambda s: s.set_app_policy("a", "exp3", {"eta": 0.1}), [("app", "a")]),
    ("set_app_api_keys", lambda s: s.set_app_api_keys("a", KEYS[:1]), [("app", "a")]),
    ("put_kv api keys", lambda s: s.put_kv(API_KEYS_NAMESPACE, "a", KEYS), [("app", "a")]),
    ("put_endpoint", lambda s: s.put_endpoint(endpoint()), [("endpoint", "m")]),
    ("move endpoint", lambda s: s.put_endpoint(endpoint(address="h:1")), [("endpoint", "m")]),
    ("delete_endpoint", lambda s: s.delete_endpoint("m", "1", "r0"), [("endpoint", "m")]),
    ("unlink_model", lambda s: s.unlink_model("a", "m"), [("app", "a")]),
    ("delete_kv api keys", lambda s: s.delete_kv(API_KEYS_NAMESPACE, "a"), [("app", "a")]),
    (
        "put_kv_many api keys",
        lambda s: s.put_kv_many([(API_KEYS_NAMESPACE, "a", KEYS), ("x", "y", 1)]),
        [("app", "a")],
    ),
    (
        "put_kv_many drops api keys",
        lambda s: s.put_kv_many([], delete_namespaces=[API_KEYS_NAMESPACE]),
        [("app", "a"), ("app", "b")],
    ),
    ("delete_model_version", lambda s: s.delete_model_version("m", "2"), [("model", "m")]),
    ("delete_app", lambda s: s.delete_app("b"), [("app", "b")]),
    ("add_pipeline", lambda s: s.add_pipeline(pipeline("p")), [("pipeline", "p")]),
    (
        "update_pipeline",
        lambda s: s.update_pipeline(pipeline("p", slo_micros=7)),
        [("pipeline", "p")],
    ),
    (
        "set_pipeline_api_keys",
        lambda s: s.set_pipeline_api_keys("p", KEYS[:1]),
        [("pipeline", "p")],
    ),
    ("delete_pipeline", lambda s: s.delete_pipeline("p"), [("pipeline", "p")]),
    ("add_pipeline+keys", lambda s: s.add_pipeline(pipeline("q"), KEYS), [("pipeline", "q")]),
]


def test_each_write_bumps_the_revision_once_and_names_what_changed(store: StateStore) -> None:
    assert store.revision() == 0
    assert store.changes_since(0) == []
    for what, write, expected in WRITES:
        before = store.revision()
        write(store)
        assert store.revision() == before + 1, what
        assert events(store, before) == expected, what
    assert len(store.changes_since(0)) == sum(len(e) for _, _, e in WRITES)


def test_learned_state_and_no_op_writes_log_nothing(store: StateStore) -> None:
    store.add_app(app("a"))
    store.add_model(model("m"))
    store.link_model("a", "m")
    rev = store.revision()
    store.put_kv(kv_namespace("a"), "7", {"policy": "exp3", "state": {}})
    store.put_kv_many([(kv_namespace("a"), "8", {})], delete_namespaces=["other"])
    store.delete_kv(kv_namespace("a"))
    store.link_model("a", "m")  # linked already
    assert store.unlink_model("a", "nope") is False
    assert store.delete_endpoint("m", "1", "r9") is False
    assert store.delete_kv(API_KEYS_NAMESPACE, "a") == 0
    assert store.revision() == rev
    assert store.changes_since(rev) == []


def test_failed_writes_change_nothing(store: StateStore) -> None:
    store.add_app(app("a", input_type="ints"))
    store.add_model(model("m"))
    rev = store.revision()
    failing: list[Callable[[], Any]] = [
        lambda: store.add_app(app("a")),
        lambda: store.add_app(app("z"), ["ok", 3]),  # type: ignore[list-item]
        lambda: store.link_model("a", "m"),
        lambda: store.set_app_policy("a", ""),
        lambda: store.set_app_api_keys("nope", KEYS),
        lambda: store.set_num_replicas("m", "1", -1),
        lambda: store.put_endpoint(endpoint(version="9")),
        lambda: store.delete_model_version("m", "9"),
        lambda: store.put_kv_many([(API_KEYS_NAMESPACE, "a", KEYS), ("x", "y", {1})]),
        lambda: store.add_pipeline(pipeline("a")),
        lambda: store.update_pipeline(pipeline("nope")),
        lambda: store.delete_pipeline("nope"),
    ]
    for write in failing:
        with pytest.raises((BadInput, Conflict, NotFound)):
            write()
    assert store.revision() == rev
    assert store.get_app("z") is None
    assert store.get_kv(API_KEYS_NAMESPACE, "a") is None


def test_a_transaction_may_name_several_keys_under_one_revision(store: StateStore) -> None:
    store.add_app(app("a1"))
    store.add_app(app("a2"))
    store.add_model(model("m"))
    store.link_model("a1", "m")
    store.link_model("a2", "m")
    store.put_endpoint(endpoint())
    rev = store.revision()
    store.delete_model_version("m", "1")  # the last version: links and endpoints go
    assert store.revision() == rev + 1
    assert sorted(events(store, rev)) == [
        ("app", "a1"),
        ("app", "a2"),
        ("endpoint", "m"),
        ("model", "m"),
    ]


# -- composite writes -----------------------------------------------------------------


def test_add_app_with_api_keys_is_one_write(store: StateStore) -> None:
    store.put_kv(kv_namespace("a"), "1", {"stale": True})  # left by an older namesake
    store.add_app(app("a"), [KEYS[1], KEYS[0], KEYS[1]])
    assert store.get_kv(API_KEYS_NAMESPACE, "a") == sorted(KEYS)
    assert store.list_kv(kv_namespace("a")) == {}
    store.add_app(app("b"), [])
    store.add_app(app("c"))
    assert sorted(store.list_kv(API_KEYS_NAMESPACE)) == ["a"]


def test_delete_app_leaves_no_links_keys_or_learned_state(store: StateStore) -> None:
    store.add_app(app("a"), KEYS)
    store.add_app(app("b"), KEYS)
    store.add_model(model("m"))
    store.link_model("a", "m")
    store.link_model("b", "m")
    for name in ("a", "b"):
        store.put_kv_many([(kv_namespace(name), "0", {"w": 1}), (kv_namespace(name), "5", {})])
    store.put_kv("selection:ab", "0", {"other": "app"})  # a namespace that merely starts alike
    store.delete_app("a")
    assert store.get_app("a") is None
    assert store.apps_linked_to("m") == ["b"]
    assert store.get_kv(API_KEYS_NAMESPACE, "a") is None
    assert store.list_kv(kv_namespace("a")) == {}
    # Only that app's entries went.
    assert store.get_kv(API_KEYS_NAMESPACE, "b") == sorted(KEYS)
    assert sorted(store.list_kv(kv_namespace("b"))) == ["0", "5"]
    assert store.list_kv("selection:ab") == {"0": {"other": "app"}}
    with pytest.raises(NotFound, match="application a not found"):
        store.delete_app("a")


def test_set_app_api_keys(store: StateStore) -> None:
    with pytest.raises(NotFound, match="application a not found"):
        store.set_app_api_keys("a", KEYS)
    store.add_app(app("a"))
    store.set_app_api_keys("a", KEYS)
    assert store.get_kv(API_KEYS_NAMESPACE, "a") == sorted(KEYS)
    store.set_app_api_keys("a", [])
    assert store.get_kv(API_KEYS_NAMESPACE, "a") is None
    assert store.list_kv(API_KEYS_NAMESPACE) == {}


def test_pipeline_api_keys_are_set_with_it_and_go_with_it(store: StateStore) -> None:
    with pytest.raises(NotFound, match="pipeline p not found"):
        store.set_pipeline_api_keys("p", KEYS)
    store.add_app(app("a"))
    with pytest.raises(NotFound, match="pipeline a not found"):
        store.set_pipeline_api_keys("a", KEYS)  # an application's name
    rev = store.revision()
    with pytest.raises(BadInput):
        store.add_pipeline(pipeline("p"), ["ok", 3])  # type: ignore[list-item]
    assert store.get_pipeline("p") is None and store.revision() == rev
    store.add_pipeline(pipeline("p"), KEYS)
    assert store.get_kv(API_KEYS_NAMESPACE, "p") == sorted(KEYS)
    store.set_pipeline_api_keys("p", KEYS[1:])
    assert store.get_kv(API_KEYS_NAMESPACE, "p") == KEYS[1:]
    store.set_pipeline_api_keys("p", [])
    assert store.get_kv(API_KEYS_NAMESPACE, "p") is None
    store.set_pipeline_api_keys("p", KEYS)
    store.delete_pipeline("p")
    # An application registered under the freed name starts without keys.
    assert store.list_kv(API_KEYS_NAMESPACE) == {}


def test_set_app_policy_drops_the_learned_state(store: StateStore) -> None:
    store.add_app(app("a"))
    store.add_app(app("b"))
    store.put_kv(kv_namespace("a"), "0", {"policy": "single", "state": {}})
    store.put_kv(kv_namespace("b"), "0", {"policy": "single", "state": {}})
    rec = store.set_app_policy("a", "exp3", {"eta": 0.5})
    assert (rec.policy, rec.policy_config) == ("exp3", {"eta": 0.5})
    assert store.get_app("a") == rec
    assert store.list_kv(kv_namespace("a")) == {}
    assert list(store.list_kv(kv_namespace("b"))) == ["0"]
    with pytest.raises(NotFound):
        store.set_app_policy("nope", "exp3")


# -- links: 404 for what is missing, 400 for a type mismatch --------------------------


def test_link_names_what_is_missing_or_mismatched(store: StateStore) -> None:
    store.add_app(app("a", input_type="ints"))
    store.add_model(model("m", input_type="doubles"))
    with pytest.raises(NotFound, match="application nope not found") as missing_app:
        store.link_model("nope", "m")
    with pytest.raises(NotFound, match="model nope not found") as missing_model:
        store.link_model("a", "nope")
    assert missing_app.value.http_status == missing_model.value.http_status == 404
    with pytest.raises(BadInput) as mismatch:
        store.link_model("a", "m")
    assert str(mismatch.value) == "model m:1 takes doubles but application a takes ints"
    assert mismatch.value.http_status == 400


# -- endpoints ------------------------------------------------------------------------


def test_endpoint_crud(store: StateStore) -> None:
    store.add_model(model("m", "1"))
    store.add_model(model("m", "2"))
    store.add_model(model("k", "1"))
    assert store.list_endpoints() == []
    e1, e2 = endpoint("r1"), endpoint("r0", version="2", address="h:2")
    ek = EndpointRecord("k", "1", "external-h:3", "h:3")
    for e in (e1, e2, ek):
        store.put_endpoint(e)
    assert store.list_endpoints() == [ek, e1, e2]
    assert store.list_endpoints("m") == [e1, e2]
    assert store.list_endpoints("m", "2") == [e2]
    assert store.list_endpoints(version="1") == [ek, e1]
    assert store.list_endpoints("zzz") == []
    moved = endpoint("r1", address="h:9")  # a restarted replica's new address
    store.put_endpoint(moved)
    assert store.list_endpoints("m", "1") == [moved]
    assert store.delete_endpoint("m", "1", "r1") is True
    assert store.delete_endpoint("m", "1", "r1") is False
    assert store.list_endpoints("m") == [e2]
    with pytest.raises(NotFound, match="model m:7 not found"):
        store.put_endpoint(endpoint(version="7"))


def test_deleting_a_version_deletes_its_endpoints(store: StateStore) -> None:
    store.add_model(model("m", "1"))
    store.add_model(model("m", "2"))
    store.put_endpoint(endpoint("r0", "1"))
    store.put_endpoint(endpoint("r1", "1"))
    store.put_endpoint(endpoint("r0", "2"))
    store.delete_model_version("m", "1")
    assert store.list_endpoints("m") == [endpoint("r0", "2")]
    store.add_model(model("m", "1"))  # a re-created version starts with none
    assert store.list_endpoints("m", "1") == []


# -- the change log -------------------------------------------------------------------


def test_changes_since_replays_in_order(store: StateStore) -> None:
    store.add_app(app("a"))
    store.add_model(model("m"))
    store.link_model("a", "m")
    assert store.changes_since(0) == [
        StateEvent(1, "app", "a"),
        StateEvent(2, "model", "m"),
        StateEvent(3, "app", "a"),
    ]
    assert store.changes_since(2) == [StateEvent(3, "app", "a")]
    assert store.changes_since(3) == []
    with pytest.raises(ResyncNeeded, match="ahead"):
        store.changes_since(4)  # a consumer of another (or a replaced) store


def test_a_trimmed_log_asks_for_a_resync(backend: str, tmp_path: Path) -> None:
    store = open_store(backend, tmp_path, changes_kept=3)
    try:
        store.add_model(model("m"))
        for n in range(1, 6):  # revisions 2..6
            store.set_num_replicas("m", "1", n)
        assert store.revision() == 6
        assert [e.revision for e in store.changes_since(3)] == [4, 5, 6]
        for since in (0, 1, 2):
            with pytest.raises(ResyncNeeded, match="gone"):
                store.changes_since(since)
        store.set_num_replicas("m", "1", 9)
        with pytest.raises(ResyncNeeded):
            store.changes_since(3)
        assert [e.revision for e in store.changes_since(4)] == [5, 6, 7]
    finally:
        store.close()
