"""The selection policies' arithmetic, in process: pure functions of a state, an
input, labels and a seeded random source."""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import numpy as np
import pytest

from clipper_core.errors import BadInput
from clipper_core.selection import (
    SelectionPolicy,
    combine_outputs,
    get_policy_class,
    loss,
    make_policy,
    policy_names,
    register_policy,
    split_output,
    validate_policy,
)
from clipper_core.selection.base import State

MODELS = ["one", "zero"]
OUTPUTS = {"one": 1, "zero": 0}


def run_stream(
    policy: SelectionPolicy,
    phases: list[int],
    steps: int,
    *,
    seed: int = 0,
    accuracy: float = 0.9,
) -> tuple[State, list[list[Any]]]:
    """Feed a policy a label stream whose right answer is ``phases[i]`` (right with
    probability ``accuracy``) for ``steps`` labels each; return the final state and
    the answers it gave in each phase."""
    stream = random.Random(seed)
    state = policy.initial_state()
    answers: list[list[Any]] = []
    for good in phases:
        given = []
        for _ in range(steps):
            chosen = policy.select(state, None)
            outputs = {m: OUTPUTS[m] for m in chosen}
            y, confidence = policy.combine(state, None, outputs)
            assert 0.0 <= confidence <= 1.0
            given.append(y)
            label = good if stream.random() < accuracy else 1 - good
            state = policy.observe(state, None, label, outputs)
            json.dumps(state, allow_nan=False)  # storable
        answers.append(given)
    return state, answers


def share(answers: list[Any], good: int, tail: int = 100) -> float:
    return sum(1 for y in answers[-tail:] if y == good) / tail


# -- registry and configuration ---------------------------------------------------------


def test_every_policy_is_registered() -> None:
    assert policy_names() == [
        "cascade",
        "ensemble",
        "epsilon_greedy",
        "exp3",
        "exp4",
        "single",
        "ucb1",
    ]
    assert get_policy_class("exp3").name == "exp3"
    with pytest.raises(BadInput, match=r"unknown selection policy 'nope'.*exp3"):
        get_policy_class("nope")


def test_a_new_policy_registers_itself() -> None:
    @register_policy
    class Last(SelectionPolicy):
        name = "test_last"

        def select(self, state: State, x: Any) -> list[str]:
            return list(self.models[-1:])

        def combine(self, state: State, x: Any, outputs: Any) -> tuple[Any, float]:
            return next(iter(outputs.values())), 1.0

    try:
        assert make_policy("test_last", ["a", "b"]).select({}, None) == ["b"]
        with pytest.raises(ValueError, match="already registered"):

            @register_policy
            class Other(Last):
                pass

    finally:
        from clipper_core import selection

        selection._REGISTRY.pop("test_last")


@pytest.mark.parametrize(
    ("policy", "config", "message"),
    [
        ("exp3", {"eta": 0}, "'eta' must be > 0"),
        ("exp3", {"eta": "fast"}, "'eta' must be a number"),
        ("exp3", {"gamma": 0.1}, "no option.*'gamma'.*eta"),
        ("exp4", {"min_weight": 2}, "'min_weight' must be <= 1"),
        ("exp4", {"combine": "median"}, "'combine' must be one of"),
        ("epsilon_greedy", {"epsilon": 1.5}, "'epsilon' must be <= 1"),
        ("epsilon_greedy", {"seed": 1.5}, "'seed' must be an integer"),
        ("ucb1", {"discount": 0}, "'discount' must be > 0"),
        ("cascade", {"order": "cheap"}, "'order' must be a list"),
        ("cascade", {"order": ["a", "a"]}, "names a model twice"),
        ("cascade", {"threshold": -0.1}, "'threshold' must be >= 0"),
        ("ensemble", {"tolerance": float("nan")}, "'tolerance' must be a number"),
    ],
)
def test_bad_options_are_named(policy: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        validate_policy(policy, config)


def test_defaults_fill_in() -> None:
    assert validate_policy("exp3", {"eta": 1}) == {
        "eta": 1.0,
        "min_weight": 0.01,
        "discount": 1.0,
        "loss_scale": 1.0,
        "seed": None,
    }
    assert validate_policy("ucb1", None)["exploration"] == 2.0


# -- outputs, losses, combination -------------------------------------------------------


def test_output_convention() -> None:
    assert split_output({"label": "cat", "confidence": 0.7}) == ("cat", 0.7)
    assert split_output({"label": 3}) == (3, None)
    assert split_output({"label": 1, "confidence": 7}) == (1, 1.0)  # clamped
    assert split_output(["dog", 0.25]) == ("dog", 0.25)
    assert split_output([1, 0.9]) == (1, 0.9)
    assert split_output((True, 0.5)) == (True, 0.5)
    # Not pairs: two numbers that are not (label, confidence), and other shapes.
    assert split_output([0.3, 0.7]) == ([0.3, 0.7], None)
    assert split_output([1, 2]) == ([1, 2], None)
    assert split_output(["a", 1.5]) == (["a", 1.5], None)
    assert split_output(2.5) == (2.5, None)
    assert split_output({"score": 1}) == ({"score": 1}, None)


def test_losses() -> None:
    assert loss(1, 1) == 0.0 and loss(1, 0) == 1.0  # labels: 0/1
    assert loss("cat", "cat") == 0.0 and loss("cat", "dog") == 1.0
    assert loss(True, True) == 0.0 and loss(True, False) == 1.0
    assert loss(0.25, 1) == pytest.approx(0.75)  # numbers: |ŷ - y|
    assert loss(3.0, 1) == 1.0  # capped
    assert loss(3.0, 1, scale=4.0) == pytest.approx(0.5)
    assert loss(np.float32(0.5), 0.0) == pytest.approx(0.5)
    assert loss({"label": "a", "confidence": 0.1}, "a") == 0.0
    assert loss([0.0, 1.0], [0.5, 0.5]) == pytest.approx(0.5)  # mean over elements
    assert loss(np.array([1.0, 2.0]), [1.0]) == 1.0  # shapes differ
    assert loss(["x", 0.9], "x") == 0.0


def test_combine_means_numbers_and_votes_on_labels() -> None:
    y, conf = combine_outputs([1.0, 2.0, 3.0])
    assert y == 2.0 and conf == pytest.approx(1 / 3)  # only 2.0 within 10 %
    y, conf = combine_outputs([1.0, 1.02, 0.99])
    assert y == pytest.approx(1.00333, abs=1e-4) and conf == 1.0
    y, conf = combine_outputs([np.array([1.0, 3.0]), np.array([3.0, 5.0])])
    assert list(y) == [2.0, 4.0]
    y, conf = combine_outputs(["cat", "dog", "cat"])
    assert y == "cat" and conf == pytest.approx(2 / 3)
    y, conf = combine_outputs([1, 0, 0])  # integers are labels
    assert y == 0 and conf == pytest.approx(2 / 3)
    y, conf = combine_outputs(["a", "b"])  # a tie goes to the first
    assert y == "a" and conf == 0.5
    y, conf = combine_outputs([{"label": 1, "confidence": 0.9}, [1, 0.8], 2])
    assert y == 1 and conf == pytest.approx(2 / 3)
    y, conf = combine_outputs(["a", "b", "b"], [5.0, 1.0, 1.0])  # weighted vote
    assert y == "a" and conf == pytest.approx(5 / 7)
    y, conf = combine_outputs([0.0, 1.0], [3.0, 1.0])  # weighted mean
    assert y == pytest.approx(0.25)
    y, conf = combine_outputs([1, 2], mode="mean")
    assert y == 1.5
    y, conf = combine_outputs([1.0, 1.0, 2.0], mode="vote")
    assert y == 1.0 and conf == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        combine_outputs([])


# -- single and ensemble ---------------------------------------------------------------


def test_single_uses_the_first_model() -> None:
    p = make_policy("single", ["a", "b"])
    assert p.select({}, None) == ["a"]
    assert p.combine({}, None, {"a": ["x", 0.4]}) == (["x", 0.4], 0.4)
    state = p.observe({}, None, "x", {"a": ["x", 0.4]})
    assert state["loss"] == {"a": 0.0, "b": 0.0} and state["count"]["a"] == 1.0


def test_ensemble_queries_all_and_combines_what_arrived() -> None:
    p = make_policy("ensemble", ["a", "b", "c"])
    assert p.select({}, None) == ["a", "b", "c"]
    assert p.combine({}, None, {"a": 1, "b": 1, "c": 0}) == (1, pytest.approx(2 / 3))
    assert p.combine({}, None, {"c": 0, "b": 1}) == (1, 0.5)  # model order breaks ties
    assert p.primary({}, {"a": 1, "b": 1}) is None
    assert p.primary({}, {"a": 1}) == "a"


# -- Exp3 ----------------------------------------------------------------------------


def test_exp3_update_rule() -> None:
    p = make_policy("exp3", MODELS, {"eta": 0.5, "min_weight": 0.001})
    state = p.initial_state()
    assert p.probabilities(state) == {"one": 0.5, "zero": 0.5}
    frozen = copy.deepcopy(state)
    after = p.observe(state, None, 1, {"zero": 0})  # zero was wrong, p = 0.5
    assert state == frozen  # observe returns a new state
    assert after["weights"]["one"] == 1.0
    assert after["weights"]["zero"] == pytest.approx(math.exp(-0.5 * 1 / 0.5))
    # A right answer (loss 0) leaves the weights alone; the largest is kept at 1.
    assert p.observe(after, None, 0, {"zero": 0})["weights"] == after["weights"]
    again = p.observe(after, None, 0, {"one": 1})  # one was wrong, p = 1/(1+e^-1)
    p_one = 1 / (1 + math.exp(-1))
    expected_one = math.exp(-0.5 / p_one)
    # one (0.505) is still the largest: scaled back to 1, zero scaled alike.
    assert again["weights"]["one"] == 1.0
    assert again["weights"]["zero"] == pytest.approx(math.exp(-1) / expected_one)
    # The floor keeps a beaten model within reach.
    floored = p.observe({"weights": {"one": 1.0, "zero": 1e-9}}, None, 1, {"zero": 0})
    assert floored["weights"]["zero"] == 0.001


def test_exp3_weighs_a_label_by_the_chance_at_the_draw() -> None:
    p = make_policy("exp3", MODELS, {"eta": 0.5, "min_weight": 0.001, "seed": 0})
    state = p.initial_state()
    chosen, odds = p.draw(state, None)
    assert odds == {chosen[0]: 0.5}
    # Two queries drew zero at p = 0.5; the first label lowers zero's chance
    # before the second arrives, which still counts with the 0.5 it was drawn at.
    first = p.observe_drawn(state, None, 1, {"zero": 0}, {"zero": 0.5})
    second = p.observe_drawn(first, None, 1, {"zero": 0}, {"zero": 0.5})
    factor = second["weights"]["zero"] / first["weights"]["zero"]
    assert factor == pytest.approx(math.exp(-0.5 * 1 / 0.5))
    # Without odds (an input never predicted: drawn just now) the chance now counts.
    p_now = p.probabilities(first)["zero"]
    now = p.observe(first, None, 1, {"zero": 0})
    assert now["weights"]["zero"] / first["weights"]["zero"] == pytest.approx(
        math.exp(-0.5 / p_now)
    )


def test_exp3_samples_by_weight_with_its_seed() -> None:
    state = {"weights": {"one": 1.0, "zero": 0.25}}
    p = make_policy("exp3", MODELS, {"seed": 3})
    picks = [p.select(state, None)[0] for _ in range(4000)]
    assert picks.count("one") / 4000 == pytest.approx(0.8, abs=0.03)
    q = make_policy("exp3", MODELS, {"seed": 3})
    assert [q.select(state, None)[0] for _ in range(4000)] == picks  # seeded


def test_exp3_learns_and_follows_a_change() -> None:
    p = make_policy("exp3", MODELS, {"eta": 0.2, "seed": 5})
    state, (first, second) = run_stream(p, [1, 0], 200, seed=5)
    assert share(first, 1) >= 0.85
    assert share(second, 0) >= 0.85
    assert state["updates"] == 400


# -- Exp4 ----------------------------------------------------------------------------


def test_exp4_combines_by_weight_and_updates_every_model() -> None:
    p = make_policy("exp4", MODELS, {"eta": 1.0, "min_weight": 0.001})
    state = p.initial_state()
    assert p.select(state, None) == MODELS
    after = p.observe(state, None, 1, OUTPUTS)
    assert after["weights"] == {"one": 1.0, "zero": pytest.approx(math.exp(-1.0))}
    y, conf = p.combine(after, None, OUTPUTS)
    assert y == 1 and conf == pytest.approx(1 / (1 + math.exp(-1)))
    # Numbers: the weighted mean.
    y, _ = p.combine(after, None, {"one": 1.0, "zero": 0.0})
    assert y == pytest.approx(1 / (1 + math.exp(-1)))
    # Only the models that arrived vote.
    assert p.combine(after, None, {"zero": 0}) == (0, 1.0)


def test_exp4_keeps_the_ranking_when_eta_is_large() -> None:
    # exp(-5000 * 0.7) underflows to 0 for both models: the ranking must survive.
    p = make_policy("exp4", ["a", "b"], {"eta": 5000.0, "min_weight": 0.01})
    after = p.observe(p.initial_state(), None, 0.0, {"a": 0.8, "b": 0.7})
    assert after["weights"] == {"a": 0.01, "b": 1.0}
    # Close losses: only their difference counts, exp(-5000 * 0.0001).
    close = p.observe(p.initial_state(), None, 0.0, {"a": 0.7001, "b": 0.7})
    assert close["weights"]["b"] == 1.0
    assert close["weights"]["a"] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert p.combine(close, None, {"a": 1, "b": 0})[0] == 0  # b outweighs a


def test_exp4_learns_and_follows_a_change() -> None:
    p = make_policy("exp4", MODELS, {"eta": 0.2})
    _, (first, second) = run_stream(p, [1, 0], 200, seed=1)
    assert share(first, 1) == 1.0
    assert share(second, 0) == 1.0


# -- ε-greedy --------------------------------------------------------------------------


def test_epsilon_greedy_exploits_the_lowest_mean_loss() -> None:
    p = make_policy("epsilon_greedy", MODELS, {"epsilon": 0.0})
    state = p.initial_state()
    assert p.select(state, None) == ["one"]  # untried models count as loss 0
    state = p.observe(state, None, 0, {"one": 1})
    assert p.select(state, None) == ["zero"]
    state = p.observe(state, None, 0, {"zero": 0})
    assert p.select(state, None) == ["zero"]
    assert p.describe(state) == {"mean_loss": {"one": 1.0, "zero": 0.0}, "best": "zero"}


def test_epsilon_greedy_explores_epsilon_of_the_time() -> None:
    p = make_policy("epsilon_greedy", MODELS, {"epsilon": 0.2, "seed": 9})
    state = {"loss": {"one": 0.0, "zero": 5.0}, "count": {"one": 5.0, "zero": 5.0}}
    picks = [p.select(state, None)[0] for _ in range(5000)]
    # Exploration picks uniformly, so "zero" gets ε / 2.
    assert picks.count("zero") / 5000 == pytest.approx(0.1, abs=0.02)


def test_epsilon_greedy_discount_follows_a_change() -> None:
    p = make_policy("epsilon_greedy", MODELS, {"discount": 0.95, "seed": 2})
    state = p.observe(p.initial_state(), None, 1, {"one": 1})
    assert state["count"] == {"one": 1.0, "zero": 0.0}
    state = p.observe(state, None, 1, {"zero": 0})
    assert state["count"] == {"one": 0.95, "zero": 1.0}
    assert state["loss"] == {"one": 0.0, "zero": 1.0}
    _, (first, second) = run_stream(p, [1, 0], 200, seed=2)
    assert share(first, 1) >= 0.85
    assert share(second, 0) >= 0.85


# -- UCB1 ------------------------------------------------------------------------------


def test_ucb1_scores_use_the_total_pull_count() -> None:
    p = make_policy("ucb1", ["a", "b", "c"])
    assert p.select(p.initial_state(), None) == ["a"]  # untried first, in order
    state = {"loss": {"a": 2.0, "b": 1.0, "c": 3.0}, "count": {"a": 10.0, "b": 2.0, "c": 8.0}}
    t = 20.0  # pulls in all, not the three arms
    scores = p.scores(state)
    assert scores["a"] == pytest.approx(0.2 - math.sqrt(2 * math.log(t) / 10))
    assert scores["b"] == pytest.approx(0.5 - math.sqrt(2 * math.log(t) / 2))
    assert scores["c"] == pytest.approx(0.375 - math.sqrt(2 * math.log(t) / 8))
    assert p.select(state, None) == ["b"]  # the rarely tried arm's bound is lowest
    assert p.select({**state, "count": {**state["count"], "c": 0.0}}, None) == ["c"]
    exploit = make_policy("ucb1", ["a", "b", "c"], {"exploration": 0.0})
    assert exploit.select(state, None) == ["a"]  # c = 0: the best mean


def test_ucb1_learns_and_follows_a_change() -> None:
    p = make_policy("ucb1", MODELS)
    _, (first, second) = run_stream(p, [1, 0], 200, seed=4)
    assert share(first, 1) >= 0.85
    assert share(second, 0) >= 0.7


# -- cascade ------------------------------------------------------------------------------


def test_cascade_escalates_while_unsure() -> None:
    p = make_policy("cascade", ["big", "small", "mid"], {"order": ["small", "mid", "big"]})
    assert p.select({}, None) == ["small"]
    sure = {"small": {"label": 1, "confidence": 0.95}}
    assert p.escalate({}, None, sure, ["small"]) == []
    assert p.combine({}, None, sure) == (sure["small"], 0.95)
    unsure = {"small": ["cat", 0.3]}
    assert p.escalate({}, None, unsure, ["small"]) == ["mid"]
    both = {**unsure, "mid": ["dog", 0.5]}
    assert p.escalate({}, None, both, ["small", "mid"]) == ["big"]
    everything = {**both, "big": "dog"}  # no confidence given: confident
    assert p.escalate({}, None, everything, ["small", "mid", "big"]) == []
    assert p.combine({}, None, everything) == ("dog", 1.0)
    assert p.primary({}, everything) == "big"
    # A failed stage is skipped.
    assert p.escalate({}, None, {}, ["small"]) == ["mid"]
    # Not escalated past the last stage; stages not linked are skipped.
    q = make_policy("cascade", ["small"], {"order": ["small", "gone"]})
    assert q.stages == ["small"]
    assert q.escalate({}, None, unsure, ["small"]) == []
    # Without an order: the linked models by name.
    assert make_policy("cascade", ["b", "a"]).stages == ["a", "b"]


def test_cascade_threshold_is_configuration() -> None:
    lax = make_policy("cascade", ["s", "b"], {"order": ["s", "b"], "threshold": 0.2})
    assert lax.escalate({}, None, {"s": ["x", 0.3]}, ["s"]) == []
    strict = make_policy("cascade", ["s", "b"], {"order": ["s", "b"], "threshold": 1.0})
    assert strict.escalate({}, None, {"s": ["x", 0.99]}, ["s"]) == ["b"]


# -- state hygiene ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["single", "ensemble", "exp3", "exp4", "epsilon_greedy", "ucb1"])
def test_observe_is_pure_and_tolerates_relinked_models(name: str) -> None:
    p = make_policy(name, ["a", "b"], {"seed": 1} if name in ("exp3", "epsilon_greedy") else {})
    state = p.initial_state()
    for _ in range(3):
        state = p.observe(state, None, 1, {"a": 1, "b": 0})
    frozen = copy.deepcopy(state)
    # A model linked later (no state yet) and one unlinked since: no error.
    q = make_policy(name, ["b", "c"], p.config)
    chosen = q.select(state, None)
    assert set(chosen) <= {"b", "c"}
    new = q.observe(state, None, 1, {m: 1 for m in chosen})
    assert state == frozen
    json.dumps(new, allow_nan=False)


@pytest.mark.parametrize(
    "name", ["single", "ensemble", "cascade", "exp3", "exp4", "epsilon_greedy", "ucb1"]
)
def test_a_model_unlinked_for_a_while_keeps_what_was_learned(name: str) -> None:
    config = {"eta": 0.5} if name in ("exp3", "exp4") else {}
    both = make_policy(name, ["a", "b"], config)
    only_a = make_policy(name, ["a"], config)
    state = both.initial_state()
    for _ in range(30):
        state = both.observe(state, None, 1, {"a": 1, "b": 0})  # b always wrong
    figure = {"exp3": "probabilities", "exp4": "weight_share"}.get(name, "mean_loss")
    learned = both.describe(state)[figure]["b"]
    assert learned == pytest.approx(1.0 if figure == "mean_loss" else 1 / 101)
    # One label while b is unlinked (a right again), then b is linked back.
    state = only_a.observe(state, None, 1, {"a": 1})
    assert both.describe(state)[figure]["b"] == pytest.approx(learned)
