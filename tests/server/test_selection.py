"""Model selection end to end: ensembles with stragglers, bandits learning from
feedback, cascades (restarts: test_selection_restart.py).  Real server, real
model processes, real HTTP."""

from __future__ import annotations

import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from clipper_core.errors import ClipperError
from tests.server.conftest import Running
from tests.server.selection_helpers import (
    make_app,
    make_cheap_classifier,
    make_expensive_classifier,
    make_label,
    make_slow_label,
    predict,
    start_isolated,
    update,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server for the module, with two constant label models: ``one`` and
    ``zero`` (so a label stream decides which of them is right)."""
    r = start_isolated(tmp_path_factory.mktemp("selection") / "state")
    try:
        r.conn.deploy_pickled("one", 1, "doubles", make_label(1))
        r.conn.deploy_pickled("zero", 1, "doubles", make_label(0))
        yield r
    finally:
        r.bg.stop()


# -- configuration --------------------------------------------------------------------


def test_policy_is_configurable_and_visible(served: Running) -> None:
    conn = served.conn
    make_app(served, "cfg", "exp3", {"eta": 0.3, "seed": 4}, "one", "zero")
    info = conn.get_app_info("cfg")
    assert info is not None
    assert info["policy"] == "exp3" and info["policy_config"] == {"eta": 0.3, "seed": 4}
    state = conn.get_selection_state("cfg")
    assert state is not None and state["policy_config"]["min_weight"] == 0.01  # defaults shown

    conn.set_selection_policy("cfg", "cascade", {"order": ["zero", "one"], "threshold": 0.5})
    info = conn.get_app_info("cfg")
    assert info is not None and info["policy"] == "cascade"
    assert info["policy_config"]["order"] == ["zero", "one"]
    reply = predict(served, "cfg", 1.0)
    assert reply["model"] == "zero:1" and reply["models"] == ["zero:1"]

    with pytest.raises(ClipperError, match="unknown selection policy"):
        conn.set_selection_policy("cfg", "nope")
    with pytest.raises(ClipperError, match="'gamma'"):
        conn.set_selection_policy("cfg", "exp3", {"gamma": 1})
    with pytest.raises(ClipperError, match="eta"):
        conn.register_application(
            "bad", "doubles", "-1", 1000, policy="exp4", policy_config={"eta": -1}
        )
    assert "bad" not in conn.get_all_apps()
    # The default stays Clipper's: one model answers, replies keep their shape.
    conn.register_application("plain", "doubles", "-1", 2_000_000)
    conn.link_model_to_app("plain", "one")
    assert conn.get_app_info("plain")["policy"] == "single"  # type: ignore[index]
    reply = predict(served, "plain", 3.0)
    assert reply["output"] == 1 and reply["model"] == "one:1" and "confidence" not in reply
    assert update(served, "plain", 3.0, 1)["models"] == ["one:1"]


def test_update_rejects_bad_bodies(served: Running) -> None:
    make_app(served, "upd", "exp4", {}, "one", "zero")
    post = served.client.post
    assert post("/missing/update", {"input": [1.0], "label": 1})[0] == 404
    status, body = post("/upd/update", {"input": [1.0]})
    assert status == 400 and "label" in body["cause"]
    status, body = post("/upd/update", {"input_batch": [[1.0]], "label": 1})
    assert status == 400 and "input_batch" in body["cause"]
    status, body = post("/upd/update", {"uid": -3, "input": [1.0], "label": 1})
    assert status == 400 and "uid" in body["cause"]
    status, body = post("/upd/update", {"input": "text", "label": 1})
    assert status == 400 and "doubles" in body["cause"]
    status, body = post("/upd/update", {"input": [1.0], "label": {"a": 1}})
    assert status == 400 and "label" in body["cause"]


# -- bandits ----------------------------------------------------------------------------

BANDITS = {
    "exp3": {"eta": 0.2, "seed": 11},
    "exp4": {"eta": 0.2},
    "epsilon_greedy": {"epsilon": 0.1, "discount": 0.95, "seed": 11},
    "ucb1": {},
}
STEPS = 120  # per phase
TAIL = 80  # the share of traffic is measured over the last TAIL steps of a phase


@pytest.mark.parametrize("policy", sorted(BANDITS))
def test_bandit_moves_to_the_better_model_and_away_when_it_degrades(
    served: Running, policy: str
) -> None:
    app = f"bandit-{policy}"
    make_app(served, app, policy, BANDITS[policy], "one", "zero")
    stream = random.Random(2024)
    uid = 7
    shares = []
    # Phase 1: the label is 1 nine times out of ten ("one" is better); phase 2:
    # the stream switches and "zero" is right nine times out of ten.
    for good, bad in ((1, 0), (0, 1)):
        chosen = []
        for step in range(STEPS):
            x = float(stream.randrange(50))
            reply = predict(served, app, x, uid)
            assert not reply["default"], reply
            # Which model's answer the client got: for Exp4, the weighted vote.
            chosen.append(reply["output"])
            label = good if stream.random() < 0.9 else bad
            update(served, app, x, label, uid)
            if step == 0 and policy == "exp4":
                assert sorted(reply["models"]) == ["one:1", "zero:1"]
        shares.append(sum(1 for y in chosen[-TAIL:] if y == good) / TAIL)
    assert shares[0] >= 0.75, shares
    assert shares[1] >= 0.6, shares
    state = served.conn.get_selection_state(app, uid)
    assert state is not None and state["own_state"] and state["updates"] == 2 * STEPS
    # Another user (no feedback of its own) reads the untouched global state.
    assert served.conn.get_selection_state(app, 99)["own_state"] is False  # type: ignore[index]


def test_clipper_shaped_feedback_teaches_the_state_that_chose(served: Running) -> None:
    # Clipper's /predict carries no uid, its /update does: the label must score the
    # model that answered and teach the state that chose it (uid 0's), which is the
    # one that decides the next queries.
    make_app(served, "clip-fb", "exp3", {"eta": 0.3, "seed": 5}, "one", "zero")
    answered = []
    for step in range(100):
        x = 1000.0 + step
        status, reply = served.client.predict("clip-fb", {"input": [x]})
        assert status == 200 and not reply["default"], reply
        answered.append(reply["model"])
        taught = update(served, "clip-fb", x, 1, uid=3)
        assert taught["models"] == [reply["model"]] and taught["state_uid"] == 0
        assert taught["uid"] == 3
    assert answered[-60:].count("one:1") >= 50, answered
    serving = served.conn.get_selection_state("clip-fb")
    assert serving is not None and serving["state"]["updates"] == 100
    assert served.conn.get_selection_state("clip-fb", 3)["own_state"] is False  # type: ignore[index]
    # A query made with a uid is still taught to that uid's own state.
    reply = predict(served, "clip-fb", 5000.0, uid=4)
    taught = update(served, "clip-fb", 5000.0, 1, uid=4)
    assert taught["state_uid"] == 4 and taught["models"] == [reply["model"]]
    assert served.conn.get_selection_state("clip-fb", 4)["own_state"] is True  # type: ignore[index]


# -- feedback and the prediction cache ----------------------------------------------------


def test_feedback_reads_outputs_from_the_prediction_cache(served: Running) -> None:
    make_app(served, "fb", "ensemble", {}, "one", "zero")
    dataplane = served.server.dataplane
    mvs = [dataplane.get_model_version(m, "1") for m in ("one", "zero")]

    def model_calls() -> int:
        return sum(slot.batches for mv in mvs for slot in mv.replicas.values())

    reply = predict(served, "fb", 1234.5)
    assert sorted(reply["models"]) == ["one:1", "zero:1"]
    calls = model_calls()
    for _ in range(3):
        assert sorted(update(served, "fb", 1234.5, 1)["models"]) == ["one:1", "zero:1"]
    assert model_calls() == calls  # nothing recomputed: both outputs were cached
    state = served.conn.get_selection_state("fb")
    assert state is not None
    assert state["feedback_cache_hits"] == 6 and state["feedback_computed"] == 0
    assert state["summary"]["mean_loss"] == {"one": 0.0, "zero": 1.0}

    # An input never predicted: its outputs are computed once, then cached.
    update(served, "fb", -777.0, 0)
    update(served, "fb", -777.0, 0)
    state = served.conn.get_selection_state("fb")
    assert state is not None
    assert state["feedback_computed"] == 2 and state["feedback_cache_hits"] == 8
    assert model_calls() == calls + 2


def test_feedback_that_scores_no_model_is_refused_and_teaches_nothing(
    served: Running,
) -> None:
    # With discount < 1 an observation that scores nothing still moves the
    # weights: such a label must be refused before the state is touched.
    served.conn.deploy_pickled("gone", 1, "doubles", make_label(1))
    make_app(served, "nobody", "exp4", {"eta": 1.0, "discount": 0.5}, "gone")
    for x in (1.0, 2.0):
        assert update(served, "nobody", x, 0)["models"] == ["gone:1"]
    before = served.conn.get_selection_state("nobody")
    assert before is not None and before["updates"] == 2
    served.conn.set_num_replicas("gone", 0)
    deadline = time.monotonic() + 30
    while served.replica_pids("gone") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served.replica_pids("gone")

    for uid, x in ((0, 3.0), (0, 4.0), (42, 5.0)):
        status, body = served.client.post("/nobody/update", {"uid": uid, "input": [x], "label": 0})
        assert status == 503 and body["error"] == "no_model", body
        assert "gone:1: no live replica" in body["cause"], body
        assert "nothing was learned" in body["cause"], body
    after = served.conn.get_selection_state("nobody", 42)
    assert after is not None
    assert after["state"] == before["state"] and after["updates"] == 2
    assert after["own_state"] is False and after["uids"] == [0]
    assert after["feedback_rejected"] == 3

    # No model linked at all: nothing was chosen, so nothing can be scored.
    make_app(served, "unlinked", "exp4", {"discount": 0.5})
    status, body = served.client.post("/unlinked/update", {"input": [1.0], "label": 0})
    assert status == 503 and "no model is linked" in body["cause"], body
    bare = served.conn.get_selection_state("unlinked")
    assert bare is not None and bare["updates"] == 0 and bare["uids"] == []


def test_a_model_that_answers_nan_is_wrong_and_the_others_still_learn(
    served: Running,
) -> None:
    # A NaN output could not be scored, so every label for an input it answered
    # was refused (400) for all models, and the broken model was never penalised.
    served.conn.deploy_pickled("broken", 1, "doubles", make_label("nan"))
    make_app(served, "nanapp", "exp4", {"eta": 1.0}, "one", "broken")
    for x in (1.0, 2.0, 3.0):
        assert sorted(update(served, "nanapp", x, 1.0)["models"]) == ["broken:1", "one:1"]
    state = served.conn.get_selection_state("nanapp")
    assert state is not None and state["updates"] == 3 and state["feedback_rejected"] == 0
    weights = state["state"]["weights"]
    assert weights["broken"] == pytest.approx(math.exp(-3.0)) and weights["one"] == 1.0


# -- ensembles and stragglers -----------------------------------------------------------


def test_ensemble_answers_at_the_slo_with_the_models_that_arrived(served: Running) -> None:
    conn = served.conn
    conn.deploy_pickled("slowpoke", 1, "doubles", make_slow_label(0, 3.0), cache_enabled=False)
    conn.deploy_pickled("one_too", 1, "doubles", make_label(1))
    conn.register_application("ens", "doubles", "-1", 300_000, policy="ensemble")
    for m in ("one", "one_too", "slowpoke"):
        conn.link_model_to_app("ens", m)

    reply = predict(served, "ens", 5.0)
    # The slow model (3 s) cannot have answered: the reply came at the 300 ms SLO
    # with the two outputs that arrived, their vote, and a lowered confidence.
    assert reply["default"] is False
    assert reply["output"] == 1
    assert sorted(reply["models"]) == ["one:1", "one_too:1"]
    assert reply["missing"] == ["slowpoke:1"]
    assert reply["confidence"] == pytest.approx(2 / 3)
    assert "model" not in reply  # no single model answered

    # All three answer: full agreement is 2 of 3 votes; disagreement lowers it.
    conn.register_application("ens-fast", "doubles", "-1", 2_000_000, policy="ensemble")
    for m in ("one", "one_too", "zero"):
        conn.link_model_to_app("ens-fast", m)
    reply = predict(served, "ens-fast", 5.0)
    assert reply["output"] == 1 and reply["confidence"] == pytest.approx(2 / 3)
    assert "missing" not in reply

    # Only when nothing arrived is the default output returned.
    conn.register_application("ens-slow", "doubles", "-1", 200_000, policy="ensemble")
    conn.link_model_to_app("ens-slow", "slowpoke")
    reply = predict(served, "ens-slow", 6.0)
    assert reply["default"] is True and reply["output"] == -1
    assert "latency objective" in reply["default_explanation"]
    assert reply["missing"] == ["slowpoke:1"] and reply["models"] == []


# -- cascades ----------------------------------------------------------------------------


def test_cascade_calls_the_expensive_model_only_for_unsure_inputs(served: Running) -> None:
    conn = served.conn
    conn.deploy_pickled("cheap", 1, "doubles", make_cheap_classifier(), cache_enabled=False)
    conn.deploy_pickled("expensive", 1, "doubles", make_expensive_classifier(), cache_enabled=False)
    make_app(
        served,
        "casc",
        "cascade",
        {"order": ["cheap", "expensive"], "threshold": 0.9},
        "expensive",
        "cheap",
    )
    expensive = served.server.dataplane.get_model_version("expensive", "1")
    cheap = served.server.dataplane.get_model_version("cheap", "1")
    inputs = [-3.0, -2.0, -0.5, 0.2, 0.7, 0.9, 1.5, 2.5, 4.0, -1.5, 0.6, 3.0]
    unsure = [x for x in inputs if abs(x) <= 1.0]
    before = expensive.queries
    for x in inputs:
        reply = predict(served, "casc", x)
        assert not reply["default"]
        if abs(x) > 1.0:
            assert reply["model"] == "cheap:1" and reply["models"] == ["cheap:1"]
            assert reply["output"] == {"label": int(x > 0), "confidence": 0.95}
            assert reply["confidence"] == pytest.approx(0.95)
        else:
            assert reply["model"] == "expensive:1"
            assert reply["models"] == ["cheap:1", "expensive:1"]
            assert reply["output"] == [int(x > 0.5), 0.99]
            assert reply["confidence"] == pytest.approx(0.99)
    assert expensive.queries - before == len(unsure)
    assert cheap.queries >= len(inputs)


def test_oip_refuses_an_app_whose_policy_it_would_bypass(served: Running) -> None:
    # Over OIP an application is answered by one model; an ensemble or a bandit
    # would be bypassed silently, so the request is refused, naming the way in.
    make_app(served, "oipens", "ensemble", {}, "one", "zero")
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]}
    status, reply = served.client.post("/v2/models/oipens/infer", body)
    assert status == 400, reply
    assert "'ensemble'" in reply["error"] and "/oipens/predict" in reply["error"]
    assert "one, zero" in reply["error"]
    ready = urllib.request.Request(served.client.base + "/v2/models/oipens/ready")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(ready, timeout=10)
    assert refused.value.code == 400  # not ready for OIP inference
    # Its models stay reachable by name, and a single-policy app through OIP.
    status, reply = served.client.post("/v2/models/one/infer", body)
    assert status == 200 and reply["outputs"][0]["data"] == [1], reply
    make_app(served, "oipsingle", "single", {}, "zero")
    status, reply = served.client.post("/v2/models/oipsingle/infer", body)
    assert status == 200 and reply["outputs"][0]["data"] == [0], reply
