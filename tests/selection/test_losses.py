"""The loss rules (clipper_core.selection.losses): labels are compared with what
Clipper-shaped outputs mean, and a pair that cannot be compared is refused."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from clipper_core.errors import BadInput
from clipper_core.selection import make_policy
from clipper_core.selection.losses import describe_value, incomparable, loss, score
from tests.selection.expectations import exp_weights_share, lower_bound


@pytest.mark.parametrize(
    ("output", "label", "expected"),
    [
        # Strings that spell numbers are numbers.
        ("1", 1.0, 0.0),
        ("0", 1.0, 1.0),
        ("0.25", 1.0, 0.75),
        (" 0.5 ", 0.0, 0.5),
        ("1", "1.0", 0.0),
        ("3", 1, 1.0),  # integers on both sides: class ids
        ("1", 1, 0.0),
        (2, "2", 0.0),
        ("1e-1", 0.0, 0.1),
        # Numeric arrays, strings included; a one-element array is its number.
        (["0.5", "1"], [0.0, 1.0], 0.25),
        ([0.5], 1.0, 0.5),
        (["2"], 2, 0.0),
        (np.array([0.25]), 0.0, 0.25),
        ([1.0, 2.0], [1.0, 2.0, 3.0], 1.0),  # shapes differ
        # Booleans against booleans, 0/1 and their names.
        (True, True, 0.0),
        ("true", True, 0.0),
        ("FALSE", True, 1.0),
        ("1", False, 1.0),
        (0, False, 0.0),
        # Strings against strings; other JSON types against their own.
        ("cat", "cat", 0.0),
        ("cat", "dog", 1.0),
        ("1", "cat", 1.0),
        ({"label": "0.9", "confidence": 0.8}, 1.0, pytest.approx(0.1)),
        (["1", 0.7], 1.0, 0.0),  # [label, confidence]
        ({"a": 1}, {"a": 1}, 0.0),
        # An output that is not finite, against a finite label, is simply wrong (it
        # was refused, and with it the label for every model).
        (float("nan"), 1.0, 1.0),
        ("nan", 1, 1.0),
        (float("-inf"), 0.5, 1.0),
        (np.array([np.inf]), 2.0, 1.0),
        ([float("nan"), 1.0], [1.0, 1.0], 1.0),
        (["1", "inf"], [1.0, 1.0], 1.0),
        ({"label": "nan", "confidence": 0.9}, 0.0, 1.0),
    ],
)
def test_scores(output: Any, label: Any, expected: float) -> None:
    assert score(output, label) == pytest.approx(expected)
    assert loss(output, label) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("output", "label", "kinds"),
    [
        ("cat", 1.0, ("a number", "a string")),
        (1, "cat", ("a string", "a number")),
        ([0.2, 0.8], 1, ("a number", "an array of 2 numbers")),
        ("1", [1.0, 2.0], ("an array of 2 numbers", "a string that is a number")),
        ("maybe", True, ("a boolean", "a string")),
        (None, 1.0, ("a number", "null")),
        ({"score": 1}, 1.0, ("a number", "an object")),
        (float("nan"), True, ("a boolean", "a number that is not finite")),
    ],
)
def test_incomparable_pairs_name_both_types(output: Any, label: Any, kinds: Any) -> None:
    assert score(output, label) is None
    with pytest.raises(BadInput) as err:
        loss(output, label)
    assert f"({kinds[0]})" in str(err.value) and f"({kinds[1]})" in str(err.value)
    why = incomparable(label, {"ok:1": label, "m:1": output})
    assert why is not None and "output of m:1" in why and f"({kinds[1]})" in why
    assert incomparable(label, {"ok:1": label}) is None


def test_describe_value() -> None:
    assert describe_value(np.zeros((2, 3))) == "an array of 2x3 numbers"
    assert describe_value(["a", 1]) == "an array that is not all numbers"
    assert describe_value("0.5") == "a string that is a number"


def test_scale_and_cap() -> None:
    assert loss("3", 1.0, scale=4.0) == pytest.approx(0.5)
    assert loss("30", 1.0, scale=4.0) == 1.0


# -- the run, in process -----------------------------------------------------


def test_exp3_learns_from_string_outputs_and_float_labels() -> None:
    """Issue 25: Exp3 (Clipper's eta 0.01) over a model answering "1" and one
    answering "0", 600 labels of 1.0.  The "1" model's loss is 0, the "0" model's 1:
    its log-weight falls by eta / p each time it is drawn, eta per label in
    expectation, so it reaches the floor (ln 100 = 4.6) after about 460 labels."""
    p = make_policy("exp3", ["good", "bad"], {"eta": 0.01, "seed": 7})
    outputs = {"good": "1", "bad": "0"}
    state = p.initial_state()
    answers = []
    for _ in range(600):
        (chosen,) = p.select(state, None)
        answers.append(outputs[chosen])
        state = p.observe(state, None, 1.0, {chosen: outputs[chosen]})
    got = sum(1 for y in answers[-100:] if y == "1") / 100
    expected = exp_weights_share([0.0, 1.0], 0.01, 0.01, (500, 600))
    assert got >= lower_bound(expected, 100), (got, expected)
    assert state["weights"]["good"] == 1.0 and state["weights"]["bad"] < 0.05


# -- discount for the exponential-weights policies ---------------------------------


@pytest.mark.parametrize("name", ["exp3", "exp4"])
def test_discount_pulls_log_weights_toward_equal(name: str) -> None:
    p = make_policy(name, ["a", "b"], {"eta": 1.0, "discount": 0.5, "min_weight": 1e-6})
    state = {"weights": {"a": 1.0, "b": math.exp(-4.0)}}
    # A label that both models get right: only the discount acts, w -> w ** 0.5.
    after = p.observe(state, None, 1.0, {"a": "1", "b": "1"} if name == "exp4" else {"a": "1"})
    assert after["weights"]["b"] == pytest.approx(math.exp(-2.0))
    plain = make_policy(name, ["a", "b"], {"eta": 1.0, "min_weight": 1e-6})
    assert plain.observe(state, None, 1.0, {"a": "1"})["weights"]["b"] == pytest.approx(
        math.exp(-4.0)
    )
    with pytest.raises(BadInput, match="'discount' must be > 0"):
        make_policy(name, ["a"], {"discount": 0})
    with pytest.raises(BadInput, match="'discount' must be <= 1"):
        make_policy(name, ["a"], {"discount": 1.5})


def test_exp3_importance_weight_uses_the_probability_it_drew_with() -> None:
    p = make_policy("exp3", ["a", "b"], {"eta": 0.5, "discount": 0.5, "min_weight": 1e-6})
    state = {"weights": {"a": 1.0, "b": 0.25}}
    after = p.observe(state, None, 1.0, {"a": "0"})  # a was drawn with p = 0.8
    # Discounted first (b: 0.25 -> 0.5), then a loses exp(-0.5 * 1 / 0.8).
    a = math.exp(-0.5 / 0.8)
    assert after["weights"]["a"] == pytest.approx(a / max(a, 0.5))
    assert after["weights"]["b"] == pytest.approx(0.5 / max(a, 0.5))


def test_discount_follows_a_model_that_degrades_in_process() -> None:
    stream = random.Random(3)
    p = make_policy("exp4", ["fading", "steady"], {"eta": 0.2, "discount": 0.98})
    state = p.initial_state()
    shares = []
    for fading in ("1", "0"):
        answers = []
        for _ in range(150):
            outputs = {"fading": fading, "steady": "0.6"}
            answers.append(p.combine(state, None, outputs)[0])
            state = p.observe(state, None, round(stream.uniform(0.9, 1.0), 3), outputs)
        shares.append(answers[-80:].count(fading if fading == "1" else "0.6") / 80)
    assert shares == [1.0, 1.0]
