"""Every learning policy converges on Clipper-shaped feedback, over real containers.

Clipper's models answer strings and its ``/update`` takes a float label: here the
models answer ``"1"``, ``"0"``, ``"0.6"``... and the labels are floats.  For each
of ``exp3``, ``exp4``, ``epsilon_greedy`` and ``ucb1`` (``cascade`` does not learn:
its threshold is configuration), over the real server and model processes:

* a good and a bad model: the good one ends up answering;
* a model that degrades halfway (its answers turn wrong for the inputs of the
  second half): with ``discount`` < 1 the policy moves to the other model;
* three models with close losses (0.15, 0.25, 0.35): the best one answers most.

The shares are asserted against the policies' arithmetic
(:mod:`tests.selection.expectations`), with margins; every run is seeded, so the
figures repeat.  A label that cannot be compared with the outputs is refused.
"""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.selection.expectations import (
    epsilon_greedy_share,
    exp4_vote_share,
    exp_weights_share,
    lower_bound,
    ucb1_share,
)
from tests.server.conftest import Running
from tests.server.selection_helpers import make_app, make_label, start_isolated


def make_fading(threshold: float) -> Any:
    """Right ("1") for inputs below ``threshold``, wrong ("0") from there on."""

    def predict(inputs: list[Any]) -> list[Any]:
        return ["1" if float(x[0]) < threshold else "0" for x in inputs]

    return predict


FADES_AT = 1000.0

#: Model name -> what it answers (deployed once for the module).
MODELS: dict[str, Any] = {
    "one": make_label("1"),
    "zero": make_label("0"),
    "fading": make_fading(FADES_AT),
    "steady": make_label("0.6"),
    "p8": make_label("0.8"),
    "p7": make_label("0.7"),
    "word": make_label("cat"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start_isolated(tmp_path_factory.mktemp("convergence") / "state")
    try:
        for name, fn in MODELS.items():
            r.conn.deploy_pickled(name, 1, "doubles", fn)
        yield r
    finally:
        r.bg.stop()


class Session:
    """One keep-alive connection to the query port (hundreds of rounds per test)."""

    def __init__(self, r: Running) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", r.server.query_port, timeout=30)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())

    def round(self, app: str, x: float, label: float, uid: int) -> Any:
        """Predict ``x``, then feed back ``label``; the output the client got."""
        status, reply = self.post(f"/{app}/predict", {"uid": uid, "input": [x]})
        assert status == 200 and not reply["default"], reply
        status, fed = self.post(f"/{app}/update", {"uid": uid, "input": [x], "label": label})
        assert status == 200 and fed["success"], fed
        return reply["output"]

    def close(self) -> None:
        self.conn.close()


def run_phases(
    served: Running,
    app: str,
    phases: list[tuple[int, int, int]],
    label: Callable[[random.Random], float],
    seed: int = 2024,
) -> list[list[Any]]:
    """For each phase (inputs from ``lo`` to ``hi``, ``steps`` rounds), the outputs
    the client got."""
    stream = random.Random(seed)
    session = Session(served)
    try:
        out = []
        for lo, hi, steps in phases:
            out.append(
                [
                    session.round(app, float(stream.randrange(lo, hi)), label(stream), uid=7)
                    for _ in range(steps)
                ]
            )
        return out
    finally:
        session.close()


def share(outputs: list[Any], value: Any, tail: int) -> float:
    return sum(1 for y in outputs[-tail:] if y == value) / tail


def noisy_one(stream: random.Random) -> float:
    """1.0 nine times out of ten, else 0.0: "1" loses 0.1 on average, "0" 0.9."""
    return 1.0 if stream.random() < 0.9 else 0.0


def near_one(stream: random.Random) -> float:
    """Uniform in [0.9, 1.0]: "0.8" loses 0.15 on average, "0.7" 0.25, "0.6" 0.35."""
    return round(stream.uniform(0.9, 1.0), 3)


#: Per policy: its options for (good/bad, degrading, close) and its expected
#: best-model share in each (see tests.selection.expectations).  Exp3 and UCB1
#: need a sharper learning rate / less exploration than their defaults to move in
#: a few hundred labels; ``discount`` is what lets them leave a degraded model.
GOOD_BAD = [0.1, 0.9]  # mean losses of "1" and "0" under noisy_one
BEFORE, AFTER = [0.05, 0.35], [0.35, 0.95]  # fading vs steady under near_one
CLOSE = [0.15, 0.25, 0.35]  # "0.8", "0.7", "0.6" under near_one
STEPS, TAIL = 200, 100  # good/bad and close: rounds, and the tail measured
HALF, HALF_TAIL = 150, 80  # degrading: rounds per half, and each half's tail

POLICIES: dict[str, dict[str, Any]] = {
    "exp3": {
        "configs": (
            {"eta": 0.2, "seed": 11},
            {"eta": 0.2, "discount": 0.98, "seed": 11},
            {"eta": 0.2, "seed": 11},
        ),
        "expected": (
            exp_weights_share(GOOD_BAD, 0.2, 0.01, (STEPS - TAIL, STEPS)),
            exp_weights_share(BEFORE, 0.2, 0.01, (HALF - HALF_TAIL, HALF), 0.98),
            exp_weights_share(AFTER, 0.2, 0.01, (HALF - HALF_TAIL, HALF), 0.98),
            exp_weights_share(CLOSE, 0.2, 0.01, (STEPS - TAIL, STEPS)),
        ),
    },
    "exp4": {
        "configs": ({"eta": 0.2}, {"eta": 0.2, "discount": 0.98}, {"eta": 0.2}),
        "expected": (
            exp4_vote_share(GOOD_BAD),
            exp4_vote_share(BEFORE),
            exp4_vote_share(AFTER),
            exp4_vote_share(CLOSE),
        ),
    },
    "epsilon_greedy": {
        "configs": (
            {"epsilon": 0.1, "seed": 11},
            {"epsilon": 0.1, "discount": 0.95, "seed": 11},
            {"epsilon": 0.1, "seed": 11},
        ),
        "expected": (
            epsilon_greedy_share(2, 0.1),
            epsilon_greedy_share(2, 0.1),
            epsilon_greedy_share(2, 0.1),
            epsilon_greedy_share(3, 0.1),
        ),
    },
    "ucb1": {
        "configs": ({}, {"exploration": 0.5, "discount": 0.98}, {"exploration": 0.5}),
        "expected": (
            ucb1_share(GOOD_BAD, 2.0, (STEPS - TAIL, STEPS)),
            ucb1_share(BEFORE, 0.5, (HALF - HALF_TAIL, HALF), 0.98),
            ucb1_share(AFTER, 0.5, (HALF - HALF_TAIL, HALF), 0.98),
            ucb1_share(CLOSE, 0.5, (STEPS - TAIL, STEPS)),
        ),
    },
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_good_and_bad_model(served: Running, policy: str) -> None:
    spec = POLICIES[policy]
    app = f"gb-{policy}"
    make_app(served, app, policy, spec["configs"][0], "one", "zero")
    (outputs,) = run_phases(served, app, [(0, 50, STEPS)], noisy_one)
    got = share(outputs, "1", TAIL)
    assert got >= lower_bound(spec["expected"][0], TAIL), (got, spec["expected"][0])
    state = served.conn.get_selection_state(app, 7)
    assert state is not None and state["updates"] == STEPS and state["feedback_rejected"] == 0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_model_that_degrades_halfway(served: Running, policy: str) -> None:
    spec = POLICIES[policy]
    config = spec["configs"][1]
    assert config["discount"] < 1
    app = f"deg-{policy}"
    make_app(served, app, policy, config, "fading", "steady")
    fading_ok = int(FADES_AT)
    before, after = run_phases(
        served, app, [(0, fading_ok, HALF), (fading_ok, 2 * fading_ok, HALF)], near_one
    )
    got_before, got_after = share(before, "1", HALF_TAIL), share(after, "0.6", HALF_TAIL)
    assert got_before >= lower_bound(spec["expected"][1], HALF_TAIL), got_before
    assert got_after >= lower_bound(spec["expected"][2], HALF_TAIL), got_after
    info = served.conn.get_app_info(app)
    assert info is not None and info["policy_config"]["discount"] == config["discount"]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_three_models_with_close_losses(served: Running, policy: str) -> None:
    spec = POLICIES[policy]
    app = f"close-{policy}"
    make_app(served, app, policy, spec["configs"][2], "p8", "p7", "steady")
    (outputs,) = run_phases(served, app, [(0, 50, STEPS)], near_one)
    shares = {y: share(outputs, y, TAIL) for y in ("0.8", "0.7", "0.6")}
    assert shares["0.8"] >= lower_bound(spec["expected"][3], TAIL), shares
    assert shares["0.8"] > max(shares["0.7"], shares["0.6"]), shares


def test_a_label_that_cannot_be_compared_is_refused(served: Running) -> None:
    make_app(served, "refuse", "exp4", {"eta": 0.5}, "one", "word")
    session = Session(served)
    try:
        assert session.post("/refuse/predict", {"uid": 3, "input": [5.0]})[0] == 200
        # A number against "cat": no loss can be computed, so nothing is learned.
        status, body = session.post("/refuse/update", {"uid": 3, "input": [5.0], "label": 1.0})
        assert status == 400, body
        assert "1.0 (a number)" in body["cause"] and "word:1, 'cat' (a string)" in body["cause"]
        assert "nothing was learned" in body["cause"]
        # An array against "1", a number.
        status, body = session.post(
            "/refuse/update", {"uid": 3, "input": [5.0], "label": [1.0, 2.0]}
        )
        assert status == 400 and "an array of 2 numbers" in body["cause"], body
        assert "'1' (a string that is a number)" in body["cause"]
        # Strings are compared with strings, as labels.
        for label in ("cat", "dog"):
            status, body = session.post(
                "/refuse/update", {"uid": 3, "input": [5.0], "label": label}
            )
            assert status == 200, body
    finally:
        session.close()
    state = served.conn.get_selection_state("refuse", 3)
    assert state is not None
    assert state["updates"] == 2 and state["feedback_rejected"] == 2
    assert state["state"]["weights"]["one"] < 1.0  # "cat" was right once
