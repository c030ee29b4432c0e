"""The StateStore contract: records, CRUD, conflicts, links, current versions,
key/value, threads.  Every test taking ``store`` runs against each backend of
``store_backends.BACKENDS``; SQLite-only behaviour is in test_store_sqlite.py."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_backends import BACKENDS, app, model, open_store, pipeline

from clipper_core.errors import BadInput, Conflict, NotFound
from clipper_core.store import AppRecord, EndpointRecord, ModelRecord, PipelineRecord, StateStore
from clipper_core.store.records import LEARNING_RESETS_NAMESPACE


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.close()


# -- records --------------------------------------------------------------------


def test_records_round_trip_through_dicts_and_json() -> None:
    a = app(policy="exp3", policy_config={"eta": 0.01})
    assert AppRecord.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    m = model(batch_size=8, num_replicas=2, cpus=[0], memory_limit_mb=512, cache_enabled=False)
    assert ModelRecord.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.key == "m:1"
    assert app().policy == "single" and app().policy_config == {}


def test_records_copy_their_containers() -> None:
    config = {"eta": 0.1}
    a = app(policy_config=config)
    config["eta"] = 9
    assert a.policy_config == {"eta": 0.1}
    d = a.to_dict()
    d["policy_config"]["eta"] = 5
    assert a.policy_config == {"eta": 0.1}


@pytest.mark.parametrize(
    "make",
    [
        lambda: app(name=""),
        lambda: app(name="a/b"),
        lambda: app(input_type="tensor"),
        lambda: AppRecord("a", "ints", "-1", 0),
        lambda: AppRecord("a", "ints", "-1", 2**63),  # past SQLite's INTEGER: was a 500
        lambda: AppRecord("a", "ints", -1, 10),  # type: ignore[arg-type]
        lambda: app(policy_config={"x": {1, 2}}),
        lambda: model(name="m:x"),
        lambda: model(version=""),
        lambda: model(batch_size=0),
        lambda: model(num_replicas=-1),
        lambda: model(num_replicas=True),
        lambda: model(cpus=[]),
        lambda: model(cpus=[-1]),
        lambda: model(memory_limit_mb=0),
        lambda: model(batch_wait_micros=-1),
        # Past the bounds (a batch size over a C int stopped the server's start).
        lambda: model(batch_size=2**31),
        lambda: model(batch_wait_micros=10**400),
        lambda: model(queue_capacity=10**12),
        lambda: model(batch_size=16, queue_capacity=4),  # a batch cannot outgrow its queue
        lambda: model(created_at=math.nan),
        lambda: model(controller="pid"),
        lambda: model(controller="fixed"),  # fixed needs a batch_size > 0
        lambda: ModelRecord("m", "1", "ints", "abc", {}),  # type: ignore[arg-type]
        lambda: ModelRecord("m", "1", "ints", [], {"f": math.inf}),
    ],
)
def test_invalid_records_are_bad_input(make: Any) -> None:
    with pytest.raises(BadInput):
        make()


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    d = app().to_dict()
    with pytest.raises(BadInput, match=r"unknown AppRecord field.*colour"):
        AppRecord.from_dict({**d, "colour": "red"})
    del d["slo_micros"]
    with pytest.raises(BadInput, match="slo_micros"):
        AppRecord.from_dict(d)
    with pytest.raises(BadInput):
        ModelRecord.from_dict([1, 2])  # type: ignore[arg-type]


def test_endpoint_records() -> None:
    e = EndpointRecord("m", "1", "external-127.0.0.1:7000", "127.0.0.1:7000")
    assert EndpointRecord.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    assert e.key == "m:1"
    bad: list[dict[str, Any]] = [
        {"model": "m:x"},
        {"version": ""},
        {"replica_id": ""},
        {"address": ""},
        {"address": 7000},
    ]
    for change in bad:
        with pytest.raises(BadInput):
            EndpointRecord(**{**e.to_dict(), **change})
    with pytest.raises(BadInput, match="unknown EndpointRecord field"):
        EndpointRecord.from_dict({**e.to_dict(), "port": 1})


# -- applications ---------------------------------------------------------------


def test_app_crud(store: StateStore) -> None:
    assert store.get_app("app") is None
    assert store.list_apps() == []
    b, a = app("b", policy="eps_greedy", policy_config={"epsilon": 0.1}), app("a")
    store.add_app(b)
    store.add_app(a)
    assert store.get_app("b") == b
    assert [x.name for x in store.list_apps()] == ["a", "b"]
    store.delete_app("b")
    assert store.get_app("b") is None
    with pytest.raises(NotFound):
        store.delete_app("b")


def test_a_policy_change_leaves_a_learning_restart_token_the_app_takes_along(
    store: StateStore,
) -> None:
    # Every frontend restarts an app's learning when its token changes; the
    # tokens of deleted apps stayed in the store for ever.
    store.add_app(app("a"))
    assert store.get_kv(LEARNING_RESETS_NAMESPACE, "a") is None
    store.set_app_policy("a", "exp3")
    first = store.get_kv(LEARNING_RESETS_NAMESPACE, "a")
    store.set_app_policy("a", "exp3")  # the same policy: still a restart
    second = store.get_kv(LEARNING_RESETS_NAMESPACE, "a")
    assert isinstance(first, str) and isinstance(second, str) and first != second
    store.delete_app("a")
    assert store.list_kv(LEARNING_RESETS_NAMESPACE) == {}


def test_duplicate_app_is_a_conflict(store: StateStore) -> None:
    store.add_app(app())
    with pytest.raises(Conflict, match="application app already exists"):
        store.add_app(app(input_type="ints"))
    assert store.get_app("app") == app()


# -- models and versions --------------------------------------------------------


def test_model_crud(store: StateStore) -> None:
    m1 = model(version="1", created_at=1.0, controller="quantile")
    m2 = model(version="2", created_at=2.0, cpus=[0, 1], memory_limit_mb=100)
    other = model(name="a", created_at=3.0)
    for m in (m2, other, m1):
        store.add_model(m)
    assert store.get_model("m", "2") == m2
    assert store.get_model("m", "1") == m1 and m1.controller == "quantile"
    assert m2.controller is None
    assert store.get_model("m", "3") is None
    assert [x.key for x in store.list_models()] == ["a:1", "m:1", "m:2"]
    assert [x.key for x in store.list_models("m")] == ["m:1", "m:2"]
    assert store.list_models("zzz") == []
    store.delete_model_version("m", "1")
    assert [x.key for x in store.list_models("m")] == ["m:2"]
    with pytest.raises(NotFound):
        store.delete_model_version("m", "1")


def test_duplicate_model_version_is_a_conflict(store: StateStore) -> None:
    first = model(created_at=1.0)
    store.add_model(first)
    with pytest.raises(Conflict) as info:
        store.add_model(model(labels=["other"]))
    assert str(info.value) == "model m:1 already exists"
    assert info.value.http_status == 400
    assert store.get_model("m", "1") == first


def test_current_version(store: StateStore) -> None:
    assert store.get_current_version("m") is None
    store.add_model(model(version="1"))
    assert store.get_current_version("m") is None  # add_model leaves it alone
    store.set_current_version("m", "1")
    store.add_model(model(version="2"))
    assert store.get_current_version("m") == "1"
    store.add_model(model(version="3"), make_current=True)
    assert store.get_current_version("m") == "3"
    store.set_current_version("m", "1")  # roll back
    assert store.get_current_version("m") == "1"
    with pytest.raises(NotFound, match="m:9"):
        store.set_current_version("m", "9")
    with pytest.raises(NotFound):
        store.set_current_version("nope", "1")
    assert store.get_current_version("m") == "1"
    store.delete_model_version("m", "1")  # the current one
    assert store.get_current_version("m") is None


def test_set_num_replicas(store: StateStore) -> None:
    store.add_model(model())
    updated = store.set_num_replicas("m", "1", 4)
    assert updated.num_replicas == 4
    assert store.get_model("m", "1") == updated
    with pytest.raises(NotFound):
        store.set_num_replicas("m", "2", 1)
    with pytest.raises(BadInput):
        store.set_num_replicas("m", "1", -1)


# -- links ----------------------------------------------------------------------


def test_links(store: StateStore) -> None:
    store.add_app(app("a1"))
    store.add_app(app("a2"))
    store.add_model(model("m"))
    store.add_model(model("k"))
    store.link_model("a1", "m")
    store.link_model("a1", "k")
    store.link_model("a1", "k")  # idempotent
    store.link_model("a2", "m")
    assert store.linked_models("a1") == ["m", "k"]  # the order they were linked in
    assert store.apps_linked_to("m") == ["a1", "a2"]
    assert store.apps_linked_to("zzz") == []
    assert store.unlink_model("a1", "m") is True
    assert store.unlink_model("a1", "m") is False
    assert store.linked_models("a1") == ["k"]
    assert store.apps_linked_to("m") == ["a2"]


def test_link_models_links_all_in_order_or_none(store: StateStore) -> None:
    store.add_app(app("a"))
    store.add_model(model("x"))
    store.add_model(model("y"))
    store.add_model(model("s", input_type="strings"))
    with pytest.raises(NotFound, match="nope"):
        store.link_models("a", ["x", "nope"])
    with pytest.raises(BadInput, match="strings"):
        store.link_models("a", ["y", "s"])
    assert store.linked_models("a") == []  # neither refused call linked its first model
    store.link_models("a", ["y", "x", "y"])
    store.link_models("a", ["x"])  # linked already
    assert store.linked_models("a") == ["y", "x"]


def test_links_keep_the_order_they_were_made_in(store: StateStore) -> None:
    # Under policy single the first linked model answers: the order is state.
    store.add_app(app("a"))
    for name in ("b", "a", "c"):
        store.add_model(model(name))
    store.link_model("a", "b")
    store.link_model("a", "a")
    store.link_model("a", "c")
    store.link_model("a", "b")  # linked already: it keeps its place
    assert store.linked_models("a") == ["b", "a", "c"]
    store.unlink_model("a", "b")
    store.link_model("a", "b")  # linked again: last
    assert store.linked_models("a") == ["a", "c", "b"]
    store.delete_model_version("a", "1")  # its last version: its link goes
    store.add_model(model("a"))
    store.link_model("a", "a")
    assert store.linked_models("a") == ["c", "b", "a"]
    store.delete_app("a")
    store.add_app(app("a"))
    store.link_model("a", "c")
    assert store.linked_models("a") == ["c"]


def test_link_requires_app_model_and_matching_input_type(store: StateStore) -> None:
    store.add_app(app("a", input_type="ints"))
    store.add_model(model("m", input_type="doubles"))
    with pytest.raises(NotFound, match="application nope"):
        store.link_model("nope", "m")
    with pytest.raises(NotFound, match="model nope"):
        store.link_model("a", "nope")
    with pytest.raises(BadInput, match="takes doubles"):
        store.link_model("a", "m")
    with pytest.raises(NotFound):
        store.linked_models("nope")
    with pytest.raises(NotFound):
        store.unlink_model("nope", "m")
    assert store.linked_models("a") == []


def test_new_version_must_keep_the_input_type_of_linked_apps(store: StateStore) -> None:
    store.add_app(app("a", input_type="doubles"))
    store.add_model(model("m", "1"))
    store.link_model("a", "m")
    with pytest.raises(BadInput, match="linked to application a"):
        store.add_model(model("m", "2", input_type="strings"))
    assert store.get_model("m", "2") is None  # the failed write left nothing behind


def test_deleting_an_app_or_a_models_last_version_removes_links(store: StateStore) -> None:
    store.add_app(app("a1"))
    store.add_app(app("a2"))
    store.add_model(model("m", "1"))
    store.add_model(model("m", "2"))
    store.link_model("a1", "m")
    store.link_model("a2", "m")
    store.delete_app("a1")
    assert store.apps_linked_to("m") == ["a2"]
    store.add_app(app("a1"))
    assert store.linked_models("a1") == []  # a re-created app starts unlinked
    store.delete_model_version("m", "1")
    assert store.apps_linked_to("m") == ["a2"]  # a version remains
    store.delete_model_version("m", "2")
    assert store.apps_linked_to("m") == []
    assert store.linked_models("a2") == []


# -- key/value ------------------------------------------------------------------


def test_kv(store: StateStore) -> None:
    assert store.get_kv("policy:app", "7") is None
    assert store.get_kv("policy:app", "7", default={}) == {}
    store.put_kv("policy:app", "7", {"weights": [0.5, 0.5]})
    store.put_kv("policy:app", "8", [1, 2])
    store.put_kv("policy:other", "7", "x")
    store.put_kv("policy:app", "8", None)  # replace; None is a value
    assert store.get_kv("policy:app", "7") == {"weights": [0.5, 0.5]}
    assert store.list_kv("policy:app") == {"7": {"weights": [0.5, 0.5]}, "8": None}
    assert store.list_kv("empty") == {}
    assert store.delete_kv("policy:app", "7") == 1
    assert store.delete_kv("policy:app", "7") == 0
    assert store.delete_kv("policy:app") == 1
    assert store.list_kv("policy:app") == {}
    assert store.list_kv("policy:other") == {"7": "x"}


def test_kv_rejects_what_json_cannot_hold(store: StateStore) -> None:
    with pytest.raises(BadInput):
        store.put_kv("ns", "k", {1, 2})
    with pytest.raises(BadInput):
        store.put_kv("ns", "k", math.nan)
    assert store.list_kv("ns") == {}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@settings(max_examples=50, deadline=None)
@given(key=st.text(max_size=20), value=json_values)
def test_kv_round_trips_any_json(
    backend: str, tmp_path_factory: pytest.TempPathFactory, key: str, value: Any
) -> None:
    store = open_store(backend, tmp_path_factory.mktemp("kv"))
    try:
        store.put_kv("ns", key, value)
        assert store.get_kv("ns", key) == value
    finally:
        store.close()


# -- pipelines --------------------------------------------------------------------


def test_pipeline_records_round_trip_and_fill_in_their_optional_fields() -> None:
    p = pipeline(
        edges=[
            {"from": "a", "to": "b", "when": {"op": ">=", "value": 0.5, "field": 0}},
            {"from": "b", "to": "c"},
        ]
    )
    assert PipelineRecord.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.stages[0] == {
        "name": "a",
        "model": "ma",
        "version": None,
        "output_type": "doubles",
        "combine": None,
    }
    assert p.edges[1] == {"from": "b", "to": "c", "when": None}
    assert p.edges[0]["when"] == {"op": ">=", "value": 0.5, "field": 0}
    # A numeric version is a string, as model versions are.
    q = pipeline(stages=[{"name": "a", "model": "ma", "version": 2}], edges=[])
    assert q.stages[0]["version"] == "2"


def test_pipeline_records_copy_their_containers() -> None:
    stages: list[dict[str, Any]] = [{"name": "a", "model": "ma"}]
    p = pipeline(stages=stages, edges=[])
    stages[0]["model"] = "other"
    assert p.stages[0]["model"] == "ma"
    p.to_dict()["stages"][0]["model"] = "other"
    assert p.stages[0]["model"] == "ma"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "p/q"}, "invalid pipeline name"),
        ({"input_type": "tensor"}, "unknown input type"),
        ({"stages": []}, "non-empty list"),
        (
            {"stages": [{"name": "a", "model": "ma"}, {"name": "a", "model": "mb"}]},
            "duplicate stage",
        ),
        ({"stages": [{"name": "a"}]}, "names no model and no combine"),
        ({"stages": [{"model": "ma"}]}, "needs 'name'"),
        ({"stages": [{"name": "a", "model": "ma", "colour": 1}]}, "unknown stages.0. field"),
        ({"stages": [{"name": "a", "model": "m:1"}]}, "model name"),
        ({"stages": [{"name": "a", "combine": "sum"}]}, "unknown combine"),
        ({"stages": [{"name": "a", "model": "ma", "output_type": "tensor"}]}, "output_type"),
        ({"stages": [{"name": "a", "combine": "dict", "version": "1"}]}, "version but no model"),
        ({"edges": [{"from": "a", "to": "zz"}]}, "names no stage"),
        ({"edges": [{"from": "a"}]}, "needs 'to'"),
        ({"edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "b"}]}, "duplicate edge"),
        # More edges than ordered pairs of stages: refused before any is read (the
        # duplicate check was quadratic, on the server's event loop).
        ({"edges": [{"from": "a", "to": "b"}] * 50_000}, "at most 4096 edges"),
        ({"edges": [{"from": "a", "to": "b", "when": {"op": "~", "value": 1}}]}, "unknown op"),
        ({"edges": [{"from": "a", "to": "b", "when": {"op": "in", "value": 1}}]}, "list value"),
        ({"edges": [{"from": "a", "to": "b", "when": {"op": ">", "value": [1]}}]}, "a number"),
        ({"edges": [{"from": "a", "to": "b", "when": {"op": ">", "value": True}}]}, "a number"),
        (
            {"edges": [{"from": "a", "to": "b", "when": {"op": "==", "value": 1, "field": -1}}]},
            "index >= 0",
        ),
        ({"edges": [{"from": "a", "to": "b", "when": {"value": 1}}]}, "needs 'op'"),
        ({"slo_micros": 0}, "slo_micros"),
        ({"slo_micros": 86_400_000_001}, "slo_micros must be at most 86,400,000,000"),
        ({"default_output": 1}, "default_output"),
    ],
)
def test_invalid_pipeline_records_are_bad_input(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        PipelineRecord(**{**pipeline().to_dict(), **change})


def test_pipeline_crud(store: StateStore) -> None:
    assert store.get_pipeline("p") is None and store.list_pipelines() == []
    q, p = pipeline("q", slo_micros=5_000), pipeline("p")
    store.add_pipeline(q)
    store.add_pipeline(p)
    assert store.get_pipeline("q") == q
    assert [x.name for x in store.list_pipelines()] == ["p", "q"]
    with pytest.raises(Conflict, match="pipeline p already exists"):
        store.add_pipeline(pipeline("p", input_type="ints"))
    changed = pipeline("p", default_output="none", edges=[{"from": "a", "to": "c"}])
    rev = store.revision()
    assert store.update_pipeline(changed) is True
    assert store.get_pipeline("p") == changed
    assert [(e.kind, e.name) for e in store.changes_since(rev)] == [("pipeline", "p")]
    # The same description again changes nothing, and logs nothing.
    rev = store.revision()
    assert store.update_pipeline(changed) is False
    assert store.revision() == rev
    store.delete_pipeline("p")
    assert store.get_pipeline("p") is None
    with pytest.raises(NotFound):
        store.delete_pipeline("p")
    with pytest.raises(NotFound):
        store.update_pipeline(changed)
    assert [x.name for x in store.list_pipelines()] == ["q"]


def test_pipelines_and_apps_share_one_namespace(store: StateStore) -> None:
    store.add_app(app("taken"))
    with pytest.raises(Conflict, match="an application named taken exists"):
        store.add_pipeline(pipeline("taken"))
    store.add_pipeline(pipeline("piped"))
    with pytest.raises(Conflict, match="a pipeline named piped exists"):
        store.add_app(app("piped"))
    assert store.get_pipeline("taken") is None and store.get_app("piped") is None


# -- threads ----------------------------------------------------------------------


def test_calls_from_many_threads(store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                store.add_app(app(f"a{i}-{j}"))
                store.put_kv("ns", f"{i}-{j}", j)
                assert store.get_app(f"a{i}-{j}") is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(store.list_apps()) == 80
    assert len(store.list_kv("ns")) == 80
