"""The declarative file's pure half: parsing its JSON form into a ``DesiredState``
and diffing it against what a store holds (``control.apply.diff``)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from clipper_core.auth import hash_api_key
from clipper_core.control.apply import Change, CurrentState, diff, diff_pipelines
from clipper_core.control.desired import DesiredState, decode_payload
from clipper_core.errors import BadInput
from clipper_core.store.records import AppRecord, ModelRecord

PAYLOAD = base64.b64encode(b"pickled code").decode()
KEY = "k" * 20


def model_entry(name: str = "m", version: Any = "1", **kw: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "version": version,
        "input_type": "doubles",
        "payload_b64": PAYLOAD,
        "source_sha256": "a" * 64,
    }
    return {**entry, **kw}


def app_entry(name: str = "app", **kw: Any) -> dict[str, Any]:
    return {"name": name, "input_type": "doubles", "models": ["m"], **kw}


def desired(**data: Any) -> DesiredState:
    data.setdefault("models", [model_entry()])
    data.setdefault("apps", [app_entry()])
    return DesiredState.from_dict(data)


def deployed(state: DesiredState) -> CurrentState:
    """What the store holds once ``state`` has been applied."""
    models = tuple(m.record for m in state.models)
    return CurrentState(
        models=models,
        current_versions={m.name: state.current_version(m.name) or "" for m in models},
        apps=tuple(a.record for a in state.apps),
        links={a.record.name: tuple(sorted(a.models)) for a in state.apps},
        api_key_digests={
            a.record.name: tuple(sorted(hash_api_key(k) for k in a.api_keys)) for a in state.apps
        },
    )


def lines(changes: list[Change]) -> list[str]:
    return [str(c) for c in changes]


# -- the desired state -------------------------------------------------------------------


def test_entries_become_records_with_defaults() -> None:
    state = desired(models=[model_entry(version=2, batch_wait_micros=100)])
    m = state.models[0]
    assert m.record.version == "2" and m.record.num_replicas == 1
    assert m.record.batch_wait_micros == 100 and m.record.batch_size == -1
    assert m.record.container["kind"] == "closure"
    assert m.record.container["source_sha256"] == "a" * 64
    assert m.record.container["payload_sha256"] == hashlib.sha256(b"pickled code").hexdigest()
    a = state.apps[0]
    assert (a.record.slo_micros, a.record.default_output, a.record.policy) == (
        100_000,
        "None",
        "single",
    )
    assert a.models == ("m",) and a.api_keys == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": [model_entry(replicas=2)]}, "models[0] (m:1): unknown field(s) 'replicas'"),
        ({"modles": []}, "the file: unknown field(s) 'modles'"),
        (
            {"models": [{"name": "m", "version": "1"}]},
            "models[0] (m:1): missing field 'input_type'",
        ),
        ({"apps": [{"name": "a"}]}, "apps[0] (a): missing field 'input_type'"),
        ({"models": [model_entry(num_replicas=-1)]}, "models[0] (m:1): num_replicas must be"),
        ({"models": [model_entry(input_type="tensors")]}, "models[0] (m:1): unknown input type"),
        ({"models": [model_entry(payload_b64=None)]}, "missing field 'source'"),
        ({"models": [model_entry(source="m.py:f")]}, "'source' is read by the client"),
        ({"models": [model_entry(), model_entry()]}, "model version m:1 is described twice"),
        ({"apps": [app_entry(slo_micros=0)]}, "apps[0] (app): slo_micros must be"),
        ({"apps": [app_entry(api_keys=["short"])]}, "apps[0] (app): "),
        ({"apps": [app_entry(models="m")]}, "apps[0] (app): models must be a list"),
        ({"apps": [app_entry(input_type="strings")]}, "app app takes strings but links model m"),
        (
            {"models": [model_entry(current=True), model_entry(version="2", current=True)]},
            "versions 1 and 2 are both marked current",
        ),
        ({"models": "m"}, "models must be a list of tables"),
    ],
)
def test_bad_entries_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as info:
        desired(**data)
    assert message in str(info.value)


def test_current_version_is_the_marked_one_else_the_last() -> None:
    state = desired(models=[model_entry(version="1"), model_entry(version="2")])
    assert state.current_version("m") == "2"
    state = desired(models=[model_entry(version="1", current=True), model_entry(version="2")])
    assert state.current_version("m") == "1"


# -- the diff ------------------------------------------------------------------------------


def test_a_fresh_store_gets_everything_in_dependency_order() -> None:
    state = desired(apps=[app_entry(api_keys=[KEY])])
    assert lines(diff(state, CurrentState())) == [
        "create model m:1: 1 replica(s)",
        "create app app: slo 100000 us, 1 API key(s)",
        "create link app -> m",
    ]


def test_applying_what_is_there_changes_nothing() -> None:
    state = desired(apps=[app_entry(api_keys=[KEY])])
    changes = diff(state, deployed(state))
    assert {c.kind for c in changes} == {"unchanged"}
    assert lines(changes) == ["unchanged model m:1", "unchanged app app", "unchanged link app -> m"]


def test_a_tunable_updates_only_its_model() -> None:
    state = desired(models=[model_entry(), model_entry("n")])
    wanted = desired(models=[model_entry(), model_entry("n", num_replicas=3, batch_timeout=5)])
    changes = diff(wanted, deployed(state))
    updated = [c for c in changes if c.kind != "unchanged"]
    assert lines(updated) == ["update model n:1: num_replicas 1 -> 3, batch_timeout default -> 5.0"]
    assert updated[0].fields == ("num_replicas", "batch_timeout")


def test_an_app_field_updates_only_that_app() -> None:
    state = desired(apps=[app_entry(), app_entry("other")])
    wanted = desired(apps=[app_entry(slo_micros=5000), app_entry("other")])
    updated = [c for c in diff(wanted, deployed(state)) if c.kind != "unchanged"]
    assert lines(updated) == ["update app app: slo_micros 100000 -> 5000"]
    assert updated[0].fields == ("slo_micros",)


def test_api_keys_and_policy_changes_are_named_without_the_keys() -> None:
    state = desired(apps=[app_entry(api_keys=[KEY])])
    wanted = desired(apps=[app_entry(api_keys=["z" * 20, KEY], policy="exp3")])
    (change,) = [c for c in diff(wanted, deployed(state)) if c.kind != "unchanged"]
    assert change.fields == ("policy", "api_keys")
    assert "policy 'single' -> 'exp3'" in change.detail and "1 -> 2 key(s)" in change.detail
    assert KEY not in str(change)


def test_links_the_file_drops_are_removed() -> None:
    state = desired(models=[model_entry(), model_entry("n")], apps=[app_entry(models=["m", "n"])])
    wanted = desired(models=[model_entry(), model_entry("n")], apps=[app_entry(models=["n"])])
    assert [str(c) for c in diff(wanted, deployed(state)) if c.what == "link"] == [
        "delete link app -> m",
        "unchanged link app -> n",
    ]


def test_changed_code_is_refused_and_names_the_difference() -> None:
    state = desired()
    wanted = desired(models=[model_entry(source_sha256="b" * 64)])
    with pytest.raises(BadInput) as info:
        diff(wanted, deployed(state))
    text = str(info.value)
    assert "model m:1: its code changed (source sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)" in text
    assert "new version" in text


def test_identity_and_fixed_spec_changes_are_all_refused() -> None:
    state = desired(models=[model_entry(), model_entry("n")], apps=[])
    wanted = desired(
        models=[model_entry(input_type="ints"), model_entry("n", batch_size=8, cpus=[0])],
        apps=[],
    )
    with pytest.raises(BadInput) as info:
        diff(wanted, deployed(state))
    text = str(info.value)
    assert "model m:1: input_type doubles -> ints" in text
    assert "model n:1: batch_size -1 -> 8" in text and "cpus default -> [0]" in text


def test_code_is_compared_by_payload_digest_when_no_source_digest_is_recorded() -> None:
    rec = desired().models[0].record
    container = {k: v for k, v in rec.container.items() if k != "source_sha256"}
    old = ModelRecord(**{**rec.to_dict(), "container": container})
    current = CurrentState(models=(old,), current_versions={"m": "1"})
    wanted = desired(models=[model_entry(source_sha256=None)], apps=[])
    assert lines(diff(wanted, current)) == ["unchanged model m:1"]
    other = base64.b64encode(b"other code").decode()
    with pytest.raises(BadInput, match="pickled payload sha256"):
        diff(desired(models=[model_entry(source_sha256=None, payload_b64=other)], apps=[]), current)
    bare = ModelRecord(**{**rec.to_dict(), "container": {"kind": "closure", "path": "/x"}})
    with pytest.raises(BadInput, match="records no digest"):
        diff(wanted, CurrentState(models=(bare,)))


def test_a_new_version_is_created_and_made_current() -> None:
    state = desired()
    wanted = desired(models=[model_entry(version="2", source_sha256="b" * 64)])
    assert lines(c for c in diff(wanted, deployed(state)) if c.what == "model") == [
        "create model m:2: 1 replica(s)",
        "update model m: current version 1 -> 2",
    ]


def test_a_new_model_needs_no_current_change_unless_a_later_version_is_marked() -> None:
    two = [model_entry(version="1"), model_entry(version="2")]
    assert [c.fields for c in diff(desired(models=two), CurrentState()) if c.what == "model"] == [
        (),
        (),
        ("current",),
    ]
    two[0]["current"] = True
    assert all(c.kind == "create" for c in diff(desired(models=two), CurrentState()))


def test_unknown_model_in_a_link_is_refused() -> None:
    with pytest.raises(BadInput, match="app app links model 'nope', which neither this file nor"):
        diff(desired(apps=[app_entry(models=["m", "nope"])]), CurrentState())


def test_a_link_to_a_model_only_the_server_has_needs_no_prune() -> None:
    server = ModelRecord("n", "1", "doubles", [], {"kind": "external"})
    state = desired(apps=[app_entry(models=["n"])])
    assert "create link app -> n" in lines(diff(state, CurrentState(models=(server,))))
    with pytest.raises(BadInput, match="which neither this file has"):
        diff(state, CurrentState(models=(server,)), prune=True)


def test_an_apps_input_type_cannot_change() -> None:
    state = desired()
    old = AppRecord("app", "strings", "None", 100_000)
    with pytest.raises(BadInput, match="input_type strings -> doubles"):
        diff(state, CurrentState(models=deployed(state).models, apps=(old,)))


def test_prune_deletes_what_the_file_does_not_describe() -> None:
    full = desired(
        models=[model_entry(), model_entry(version="2"), model_entry("n")],
        apps=[app_entry(), app_entry("gone")],
    )
    wanted = desired(models=[model_entry(version="2")], apps=[app_entry()])
    current = deployed(full)
    kept = diff(wanted, current)
    assert not [c for c in kept if c.kind == "delete"]
    assert [str(c) for c in diff(wanted, current, prune=True) if c.kind == "delete"] == [
        "delete app gone",
        "delete model m:1",
        "delete model n:1",
    ]


def test_external_models_have_no_code() -> None:
    state = desired(
        models=[{"name": "m", "version": "1", "input_type": "doubles", "external": True}]
    )
    rec = state.models[0].record
    assert rec.registered_by_hand and rec.num_replicas == 0 and state.models[0].payload_b64 is None
    assert {c.kind for c in diff(state, deployed(state))} == {"unchanged"}


# -- pipelines (pure: their record dicts) ----------------------------------------------------


def pipeline(**kw: Any) -> dict[str, Any]:
    stage = {"name": "a", "model": "m", "version": "1", "output_type": "doubles", "combine": None}
    last = {"name": "b", "model": "n", "version": "2", "output_type": None, "combine": None}
    base = {
        "name": "p",
        "input_type": "doubles",
        "stages": [stage, last],
        "edges": [{"from": "a", "to": "b", "when": None}],
        "slo_micros": 100_000,
        "default_output": "-1",
    }
    return {**base, **kw}


def test_pipeline_diff_names_the_stage_that_changed() -> None:
    old = pipeline()
    new = pipeline()
    new["stages"] = [old["stages"][0], {**old["stages"][1], "version": "3"}]
    upserts, deletions = diff_pipelines((new,), {"p": old}, prune=True)
    assert lines(upserts) == ["update pipeline p: stage b model n:2 -> n:3"]
    assert upserts[0].fields == ("stages",) and deletions == []
    upserts, _ = diff_pipelines((old,), {"p": old}, prune=False)
    assert lines(upserts) == ["unchanged pipeline p"]


def test_pipeline_diff_creates_updates_edges_and_prunes() -> None:
    old = pipeline()
    new = pipeline(slo_micros=5, edges=[{"from": "a", "to": "b", "when": {"op": ">", "value": 1}}])
    upserts, deletions = diff_pipelines(
        (new, pipeline(name="q")), {"p": old, "gone": old}, prune=True
    )
    assert lines(upserts) == [
        "update pipeline p: slo_micros 100000 -> 5, edge a->b when None -> {'op': '>', 'value': 1}",
        "create pipeline q: 2 stage(s)",
    ]
    assert upserts[0].fields == ("slo_micros", "edges")
    assert lines(deletions) == ["delete pipeline gone"]
    assert diff_pipelines((new,), {"gone": old}, prune=False)[1] == []


# -- the README's example ----------------------------------------------------------------------


def test_the_documented_example_is_a_valid_file() -> None:
    import tomllib
    from pathlib import Path

    from clipper_core.connection_apply import config_body

    repo = Path(__file__).resolve().parents[2]
    page = (repo / "docs" / "guides" / "declarative.md").read_text()
    text = page[page.index("```toml\n") + 8 : page.index("```\n\nRules:")]
    data = config_body(tomllib.loads(text), repo / "examples" / "declarative")
    state = DesiredState.from_dict(data)
    assert [m.record.key for m in state.models] == ["scale:1", "total:1"]
    assert state.apps[0].models == ("total",) and len(state.apps[0].api_keys) == 1
    assert {c.kind for c in diff(state, CurrentState())} == {"create"}


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 3 * 1024 * 1024 + 2])
def test_a_payload_decoded_piece_by_piece_is_the_payload(size: int) -> None:
    """Large payloads are decoded a piece at a time (the GIL is free between two
    pieces); the bytes and their digest are those of one decode."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    decoded, digest = decode_payload(base64.b64encode(data).decode())
    assert decoded == data
    assert digest == hashlib.sha256(data).hexdigest()


PIECE = "QUJD" * (1 << 18)  # one piece of the decode: 1 MiB of base64


@pytest.mark.parametrize(
    "text",
    [
        "QQ",
        "QQ=",
        "Q===",
        "QQ==QQ==",
        "QUJD RA==",
        "QUJD\n",
        "é",
        PIECE + "QU=D",
        PIECE[:-4] + "QQ==" + "QUJD",  # padding that ends a piece, then more
    ],
)
def test_a_payload_that_is_not_base64_is_refused(text: str) -> None:
    with pytest.raises(BadInput, match="model payload is not valid base64"):
        decode_payload(text)


def _pipeline(name: str, stages: list[dict[str, Any]], edges: list[dict[str, Any]]) -> Any:
    return {"name": name, "input_type": "doubles", "stages": stages, "edges": edges}


def test_a_pipeline_graph_the_file_cannot_serve_is_refused_before_any_change() -> None:
    # A cycle, a model neither the file nor the store has, a name an app has: the
    # refusal comes from diff (dry runs see it), not halfway through applying.
    cycle = _pipeline(
        "loop",
        [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}],
        [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}],
    )
    missing = _pipeline("ghost", [{"name": "a", "model": "nope"}], [])
    with pytest.raises(BadInput) as info:
        diff(desired(pipelines=[cycle, missing]), CurrentState())
    assert "pipeline loop" in str(info.value) and "nope" in str(info.value)
    # The store's app keeps its name (the file leaves it, without prune).
    store = deployed(desired(apps=[app_entry("old-app")]))
    taken = _pipeline("old-app", [{"name": "a", "model": "m"}], [])
    with pytest.raises(BadInput, match="pipeline old-app: an application has its name"):
        diff(desired(pipelines=[taken]), store)
    fine = _pipeline("fine", [{"name": "a", "model": "m"}], [])
    assert "create pipeline fine: 1 stage(s)" in lines(
        diff(desired(pipelines=[fine]), CurrentState())
    )


def test_a_pipeline_on_a_model_the_store_keeps_applies_and_one_prune_deletes_is_refused() -> None:
    store = deployed(desired(models=[model_entry("m"), model_entry("kept")], apps=[]))
    uses_kept = _pipeline("p", [{"name": "a", "model": "kept"}], [])
    state = desired(models=[model_entry("m")], apps=[], pipelines=[uses_kept])
    assert "create pipeline p: 1 stage(s)" in lines(diff(state, store))
    with pytest.raises(BadInput, match="kept"):
        diff(state, store, prune=True)  # prune would delete kept:1, which p needs


def test_an_app_named_like_a_pipeline_the_store_keeps_is_refused_before_any_change() -> None:
    # The store refuses the app, so without the refusal here the file's models
    # were deployed before the apply failed (and a dry run passed).
    store = CurrentState(pipelines={"p": pipeline()})
    with pytest.raises(BadInput, match="app p: pipeline p on the server has its name"):
        diff(desired(apps=[app_entry("p")]), store)


def test_prune_deletes_a_name_before_it_is_taken() -> None:
    # A pipeline replaced by an app of its name, and an app by a pipeline of its.
    store = deployed(desired(apps=[app_entry("was-app")]))
    store = CurrentState(
        models=store.models,
        current_versions=store.current_versions,
        apps=store.apps,
        links=store.links,
        pipelines={"was-pipe": pipeline(name="was-pipe")},
    )
    state = desired(
        apps=[app_entry("was-pipe")],
        pipelines=[_pipeline("was-app", [{"name": "a", "model": "m"}], [])],
    )
    made = [line for line in lines(diff(state, store, prune=True)) if "unchanged" not in line]
    assert made == [
        "delete pipeline was-pipe",
        "create app was-pipe: slo 100000 us",
        "create link was-pipe -> m",
        "delete app was-app",
        "create pipeline was-app: 1 stage(s)",
    ]


def test_a_new_version_a_stored_pipeline_cannot_send_to_is_refused_before_any_change() -> None:
    # The deploy refuses it (the pipeline follows the model's current version),
    # so without the refusal here the file's earlier models were deployed first.
    follows = pipeline(
        stages=[{"name": "a", "model": "m", "version": None, "output_type": None, "combine": None}],
        edges=[],
    )
    store = deployed(desired(apps=[]))
    store = CurrentState(
        models=store.models, current_versions=store.current_versions, pipelines={"p": follows}
    )
    strings = model_entry(version="2", input_type="strings", current=False)
    state = desired(models=[model_entry("n"), model_entry(), strings], apps=[])
    for prune in (False, True):  # prune deletes p only after the models are deployed
        with pytest.raises(BadInput, match="model m:2 takes strings, which pipeline p cannot"):
            diff(state, store, prune=prune)
    pinned = pipeline(stages=[{**follows["stages"][0], "version": "1"}], edges=[])
    kept = CurrentState(models=store.models, pipelines={"p": pinned})
    assert "create model m:2: 1 replica(s)" in lines(diff(state, kept))
