"""The pure parts of pipelines: graph validation, predicates, values on edges."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from clipper_core.errors import BadInput, ModelError, NotFound
from clipper_core.pipelines import Predicate, validate
from clipper_core.pipelines.values import as_input, join, json_text
from clipper_core.store import PipelineRecord

#: Deployed models: name -> {version: input type}.
MODELS = {
    "pre": {"1": "doubles"},
    "det": {"1": "doubles", "2": "doubles"},
    "cls": {"1": "doubles"},
    "txt": {"1": "strings"},
    "fuse": {"1": "strings"},
    "mixed": {"1": "doubles", "2": "ints"},
}


def rec(stages: list[dict[str, Any]], edges: list[dict[str, Any]], **kw: Any) -> PipelineRecord:
    kw.setdefault("input_type", "doubles")
    return PipelineRecord("p", kw.pop("input_type"), stages, edges, 100_000, "-1", **kw)


def seq(*names: str) -> list[dict[str, Any]]:
    return [{"from": a, "to": b} for a, b in itertools.pairwise(names)]


def test_a_sequence_resolves_in_order_with_its_types() -> None:
    g = validate(
        rec(
            [
                {"name": "c", "model": "cls"},
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "b", "model": "det", "version": "2", "output_type": "doubles"},
            ],
            seq("a", "b", "c"),
        ),
        MODELS,
    )
    assert list(g.stages) == ["a", "b", "c"]  # topological, whatever the declaration order
    assert g.entry == "a" and g.models == ["pre", "det", "cls"]
    assert g.stages["b"].version == "2" and g.stages["b"].parents == ("a",)
    assert g.stages["c"].output_type == "json"  # declared none
    assert [e.label for e in g.stages["a"].edges] == ["a->b"]


def test_joins_derive_their_output_type() -> None:
    g = validate(
        rec(
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "x", "model": "det", "output_type": "doubles"},
                {"name": "y", "model": "cls", "output_type": "doubles"},
                {"name": "cat", "combine": "concat"},
                {"name": "both", "combine": "dict"},
                {"name": "f", "model": "fuse", "combine": "dict"},
                {"name": "last", "model": "cls", "combine": "concat"},
            ],
            [
                {"from": "a", "to": "x"},
                {"from": "a", "to": "y"},
                {"from": "x", "to": "cat"},
                {"from": "y", "to": "cat"},
                {"from": "x", "to": "both"},
                {"from": "y", "to": "both"},
                {"from": "x", "to": "f"},
                {"from": "y", "to": "f"},
                {"from": "cat", "to": "last"},
                {"from": "y", "to": "last"},
            ],
        ),
        MODELS,
    )
    assert g.stages["cat"].output_type == "doubles"
    assert g.stages["cat"].parents == ("x", "y")
    assert g.stages["both"].output_type == "json"
    assert g.stages["f"].input_type == "strings"


def test_a_restored_graph_is_checked_without_the_models() -> None:
    r = rec([{"name": "a", "model": "gone", "output_type": "doubles"}], [])
    with pytest.raises(NotFound):
        validate(r, MODELS)
    assert validate(r, None).stages["a"].input_type == "doubles"


@pytest.mark.parametrize(
    ("stages", "edges", "error", "message"),
    [
        (
            [{"name": "a", "model": "pre"}, {"name": "b", "model": "det"}],
            seq("a", "b") + seq("b", "a"),
            BadInput,
            "every stage has a parent",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "b", "model": "det", "output_type": "doubles"},
                {"name": "c", "model": "cls", "output_type": "doubles"},
            ],
            seq("a", "b", "c") + seq("c", "b"),
            BadInput,
            "cycle through b, c",
        ),
        (
            [{"name": "a", "model": "pre"}, {"name": "b", "model": "det"}],
            [],
            BadInput,
            "2 entry stages",
        ),
        ([{"name": "a", "model": "nope"}], [], NotFound, "model 'nope' is not deployed"),
        (
            [{"name": "a", "model": "det", "version": "9"}],
            [],
            NotFound,
            "model 'det' has no version '9'",
        ),
        (
            [{"name": "a", "model": "txt"}],
            [],
            BadInput,
            "the entry's model 'txt' takes strings, but the pipeline takes doubles",
        ),
        (
            [{"name": "a", "model": "pre"}, {"name": "b", "model": "det"}],
            seq("a", "b"),
            BadInput,
            "stage 'a' declares no output_type",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "strings"},
                {"name": "b", "model": "det"},
            ],
            seq("a", "b"),
            BadInput,
            "model 'det' takes doubles, but stage 'a' answers strings",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "x", "model": "det", "output_type": "doubles"},
                {"name": "y", "model": "cls", "output_type": "doubles"},
                {"name": "j", "model": "cls"},
            ],
            seq("a", "x") + seq("a", "y") + seq("x", "j") + seq("y", "j"),
            BadInput,
            "joins 2 parents .x, y.: it needs a combine",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "x", "model": "det", "output_type": "doubles"},
                {"name": "y", "model": "txt", "output_type": "strings"},
                {"name": "j", "combine": "concat"},
            ],
            [*seq("a", "x"), {"from": "a", "to": "y"}, *seq("x", "j"), *seq("y", "j")],
            BadInput,
            "model 'txt' takes strings",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "x", "model": "det", "output_type": "doubles"},
                {"name": "y", "model": "cls", "output_type": "ints"},
                {"name": "j", "combine": "concat"},
            ],
            seq("a", "x") + seq("a", "y") + seq("x", "j") + seq("y", "j"),
            BadInput,
            "they answer x: doubles, y: ints",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "x", "model": "det", "output_type": "doubles"},
                {"name": "j", "model": "cls", "combine": "dict"},
            ],
            seq("a", "x") + seq("a", "j") + seq("x", "j"),
            BadInput,
            "must take strings, not doubles",
        ),
        (
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "j", "combine": "dict", "output_type": "doubles"},
            ],
            seq("a", "j"),
            BadInput,
            "joins into json, but declares output_type 'doubles'",
        ),
        (
            [{"name": "j", "combine": "dict"}, {"name": "a", "model": "pre"}],
            seq("j", "a"),
            BadInput,
            "has a combine but no parent",
        ),
        ([{"name": "a", "model": "mixed"}], [], BadInput, "pin one with 'version'"),
        (
            # The hint is one that validates (output_type on a join is refused).
            [
                {"name": "a", "model": "pre", "output_type": "doubles"},
                {"name": "b", "model": "det", "output_type": "doubles"},
                {"name": "j", "combine": "dict"},
                {"name": "m", "model": "fuse"},
            ],
            [*seq("a", "b", "j"), *seq("a", "j"), *seq("j", "m")],
            BadInput,
            "stage 'j' joins its parents into json; put model 'fuse' on 'j' instead",
        ),
    ],
)
def test_bad_graphs_are_refused_with_the_stage_named(
    stages: list[dict[str, Any]], edges: list[dict[str, Any]], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        validate(rec(stages, edges), MODELS)


def test_the_model_a_dict_join_feeds_goes_on_the_join_as_its_refusal_says() -> None:
    stages = [
        {"name": "a", "model": "pre", "output_type": "doubles"},
        {"name": "b", "model": "det", "output_type": "doubles"},
        {"name": "j", "combine": "dict", "model": "fuse"},
    ]
    graph = validate(rec(stages, [*seq("a", "b", "j"), *seq("a", "j")]), MODELS)
    assert graph.stages["j"].input_type == "strings"


# -- predicates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicate", "output", "taken"),
    [
        (Predicate(">=", 0.5), 0.7, True),
        (Predicate(">=", 0.5), [0.2], False),  # a one-element list is its element
        (Predicate(">=", 0.5), np.array([0.5]), True),
        (Predicate("<", 3), np.float32(2.5), True),
        (Predicate(">", 1, field=1), [0, 2, 0], True),
        (Predicate("==", "cat", field="label"), {"label": "cat"}, True),
        (Predicate("!=", "cat", field="label"), {"label": "cat"}, False),
        (Predicate("in", ["a", "b"]), "b", True),
        (Predicate("not in", [1, 2]), 3, True),
        (Predicate("==", [1, 2]), [1, 2], True),
        (Predicate("<=", "m"), "a", True),
    ],
)
def test_predicates(predicate: Predicate, output: Any, taken: bool) -> None:
    assert predicate(output) is taken


@pytest.mark.parametrize(
    ("predicate", "output", "message"),
    [
        (Predicate(">=", 0.5), "high", "str is not comparable with 0.5"),
        (Predicate(">=", 0.5), [1.0, 2.0], "list is not comparable"),
        (Predicate(">", 0, field=3), [1], "cannot test output\\[3\\] > 0"),
        (Predicate(">", 0, field="p"), {"q": 1}, "'p'"),
        (Predicate(">", 0), float("nan"), "NaN"),
        (Predicate(">", 0), True, "bool is not comparable"),
    ],
)
def test_a_predicate_that_cannot_apply_is_a_model_error(
    predicate: Predicate, output: Any, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        predicate(output)


# -- values on edges --------------------------------------------------------------------


def test_outputs_become_the_next_models_inputs() -> None:
    v = as_input([1, 2, 3], "doubles", "stage 'a'")
    assert v.dtype == np.float64 and v.tolist() == [1.0, 2.0, 3.0]
    assert as_input(0.5, "floats", "s").tolist() == [0.5]
    assert as_input(np.array([[1, 2], [3, 4]]), "ints", "s").tolist() == [1, 2, 3, 4]
    assert as_input("x", "strings", "s") == "x"
    assert as_input(bytearray(b"ab"), "bytes", "s") == b"ab"
    for value, input_type in (
        ("x", "doubles"),
        ([1.5], "ints"),
        ([2**40], "ints"),
        ({"a": 1}, "doubles"),
        (1.0, "strings"),
        ("x", "bytes"),
    ):
        with pytest.raises(ModelError, match=f"stage 'a' answered .*, not {input_type}"):
            as_input(value, input_type, "stage 'a'")


def test_joins() -> None:
    cat = join("concat", [("x", [1.0]), ("y", np.array([2.0, 3.0]))], "doubles", "j")
    assert cat.tolist() == [1.0, 2.0, 3.0]
    assert join("concat", [("x", "ab"), ("y", "c")], "strings", "j") == "abc"
    assert join("dict", [("x", 1), ("y", "b")], "json", "j") == {"x": 1, "y": "b"}
    with pytest.raises(ModelError, match="j parent 'y' answered"):
        join("concat", [("x", [1.0]), ("y", "oops")], "doubles", "j")
    text = json_text({"x": np.array([1.0, 2.0]), "y": np.float32(0.5), "z": b"\x00"}, "j")
    assert text == '{"x":[1.0,2.0],"y":0.5,"z":"AA=="}'
