"""Clipper's query API: request parsing and validation, reply formatting."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipper_core import clipper_api as api
from clipper_core.clipper_api import (
    DEFAULT_EXPLANATION,
    INPUT_TYPES,
    InputKeys,
    format_batch_reply,
    format_reply,
    input_key,
    parse_default_output,
    parse_predict,
    validate_input_type,
)
from clipper_core.errors import BadInput
from clipper_core.http.messages import json_response


def body(obj: Any) -> bytes:
    return orjson.dumps(obj)


def bad(raw: bytes | Any, input_type: str) -> str:
    data = raw if isinstance(raw, bytes) else body(raw)
    with pytest.raises(BadInput) as info:
        parse_predict(data, input_type)
    return str(info.value)


# -- valid inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_type", "values", "dtype"),
    [
        ("ints", [1, -2, 2**31 - 1, -(2**31)], np.int32),
        ("ints", [1.0, 2.0], np.int32),  # integral floats are integers
        ("floats", [1.5, 2, -3.25], np.float32),
        ("doubles", [1.5, 2, 1e300], np.float64),
        ("doubles", [9007199254740993], np.float64),
    ],
)
def test_numeric_input(input_type: str, values: list[Any], dtype: type) -> None:
    q = parse_predict(body({"input": values}), input_type)
    assert q.batch is False and q.version is None
    (arr,) = q.inputs
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == dtype and arr.ndim == 1
    assert arr.tolist() == pytest.approx([float(v) for v in values])


def test_strings_and_bytes_input() -> None:
    assert parse_predict(body({"input": "héllo"}), "strings").inputs == ["héllo"]
    assert parse_predict(body({"input": ""}), "strings").inputs == [""]
    raw = bytes(range(256))
    q = parse_predict(body({"input": base64.b64encode(raw).decode()}), "bytes")
    assert q.inputs == [raw]


@pytest.mark.parametrize("input_type", ["ints", "floats", "doubles"])
def test_numeric_batch(input_type: str) -> None:
    rows = [[1, 2, 3], [4, 5, 6]]
    q = parse_predict(body({"input_batch": rows, "version": "2"}), input_type)
    assert q.batch is True and q.version == "2"
    assert [r.tolist() for r in q.inputs] == rows
    assert all(r.dtype == api._DTYPES[input_type] and r.ndim == 1 for r in q.inputs)
    # Rows of different lengths convert one by one.
    q = parse_predict(body({"input_batch": [[1], [2, 3]]}), input_type)
    assert [r.tolist() for r in q.inputs] == [[1], [2, 3]]


def test_string_batch_and_version_forms() -> None:
    q = parse_predict(body({"input_batch": ["a", "b"], "version": 3}), "strings")
    assert q.inputs == ["a", "b"] and q.version == "3" and q.batch
    q = parse_predict(body({"input": "a", "version": "v1", "extra": 1}), "string")
    assert q.version == "v1"


# -- invalid inputs ----------------------------------------------------------------


def test_body_must_be_a_json_object() -> None:
    assert "not valid JSON" in bad(b"{nope", "ints")
    assert "empty" in bad(b"", "ints")
    assert bad(b"[1, 2]", "ints") == "request body must be a JSON object, got array"
    assert bad(b'"x"', "strings") == "request body must be a JSON object, got string"


def test_nan_and_infinity_are_rejected() -> None:
    for lit in (b"NaN", b"Infinity", b"-Infinity"):
        msg = bad(b'{"input": [1, ' + lit + b"]}", "doubles")
        assert "NaN and Infinity" in msg
    assert "range" in bad(b'{"input": [1e400]}', "doubles") or "not valid JSON" in bad(
        b'{"input": [1e400]}', "doubles"
    )


def test_input_and_input_batch_exactly_one() -> None:
    assert bad({}, "ints") == "request must have 'input' or 'input_batch'"
    assert "both" in bad({"input": [1], "input_batch": [[1]]}, "ints")


def test_wrong_type_for_the_input_type() -> None:
    assert (
        bad({"input": "abc"}, "doubles")
        == "input must be a JSON array of numbers for input type 'doubles', got string"
    )
    assert "got object" in bad({"input": {"a": 1}}, "floats")
    assert "got null" in bad({"input": None}, "ints")
    assert "got number" in bad({"input": 3}, "ints")
    assert (
        bad({"input": [1]}, "strings")
        == "input must be a JSON string for input type 'strings', got array"
    )
    assert "base64" in bad({"input": 5}, "bytes")


def test_empty_inputs_and_batches() -> None:
    assert bad({"input": []}, "doubles") == "input must not be empty"
    assert bad({"input_batch": []}, "doubles") == "input_batch must not be empty"
    assert "input_batch[1] must not be empty" == bad({"input_batch": [[1], []]}, "doubles")
    assert "input_batch must be a JSON array of inputs, got string" == bad(
        {"input_batch": "x"}, "strings"
    )


def test_nested_arrays_are_rejected() -> None:
    msg = bad({"input": [[1, 2], [3, 4]]}, "doubles")
    assert "input[0] is an array" in msg and "nested" in msg
    assert "nested" in bad({"input": [1, [2]]}, "floats")
    assert "nested" in bad({"input_batch": [[[1]], [[2]]]}, "ints")
    deep: Any = [1]
    for _ in range(200):
        deep = [deep]
    msg = bad({"input": deep}, "doubles")
    assert "nested" in msg or "not valid JSON" in msg


def test_booleans_are_not_numbers() -> None:
    assert "input[0] is a boolean" in bad({"input": [True, False]}, "ints")
    assert "input[1] is a boolean" in bad({"input": [1, True]}, "doubles")
    assert "input_batch[1][0] is a boolean" in bad({"input_batch": [[1], [True]]}, "floats")
    # "true" elsewhere in the body (a version string) does not break numbers.
    q = parse_predict(body({"input": [1, 2], "version": "true"}), "ints")
    assert q.inputs[0].tolist() == [1, 2]


def test_other_non_numbers_are_named() -> None:
    assert "input[2] is a string" in bad({"input": [1, 2, "3"]}, "doubles")
    assert "input[0] is null" in bad({"input": [None]}, "ints")
    assert "input[1] is an object" in bad({"input": [1, {}]}, "floats")


def test_ints_range_and_integrality() -> None:
    assert "outside the int32 range" in bad({"input": [2**31]}, "ints")
    assert "outside the int32 range" in bad({"input": [-(2**31) - 1]}, "ints")
    assert "outside the int32 range" in bad({"input": [2**63]}, "ints")
    assert "outside the int32 range" in bad({"input": [2**64 - 1, -1]}, "ints")
    assert "non-integral number (1.5)" in bad({"input": [1, 1.5]}, "ints")
    assert "outside the int32 range" in bad({"input_batch": [[1], [2**40]]}, "ints")


def test_floats_out_of_float32_range() -> None:
    assert "float32" in bad({"input": [1e39]}, "floats")
    assert parse_predict(body({"input": [1e39]}), "doubles").inputs[0][0] == 1e39
    # more numbers than the Python range check takes: numpy's reductions decide
    many = [0.5] * 300
    for value in (1e39, -1e39):
        assert "float32" in bad({"input": [*many, value]}, "floats")
    edge = float(np.finfo(np.float32).max)
    got = parse_predict(body({"input": [*many, edge, -edge]}), "floats").inputs[0]
    assert got.dtype == np.float32 and got[-2] == np.float32(edge) and got[-1] == -got[-2]


def test_booleans_are_found_with_or_without_other_letters() -> None:
    # a body without any "e" skips the search for the literals: both hold one
    for literal in (True, False):
        assert "is a boolean" in bad({"input": [1, literal, 2]}, "floats")
        assert "is a boolean" in bad({"input": [1.5e3, literal], "version": "1"}, "doubles")
    assert parse_predict(b'{"input":[1,2.5,3]}', "floats").inputs[0].tolist() == [1, 2.5, 3]


def test_bad_base64() -> None:
    assert "not valid base64" in bad({"input": "aGVsbG8"}, "bytes")
    assert "not valid base64" in bad({"input": "a$b="}, "bytes")
    assert "input_batch[1] is not valid base64" in bad({"input_batch": ["", "?"]}, "bytes")


def test_version_must_be_string_or_int() -> None:
    assert "version must be a string or an integer, got boolean" == bad(
        {"input": "x", "version": True}, "strings"
    )
    assert "got number" in bad({"input": "x", "version": 1.5}, "strings")
    assert "version must not be empty" == bad({"input": "x", "version": ""}, "strings")


def test_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_BATCH", 3)
    monkeypatch.setattr(api, "MAX_INPUT_ELEMENTS", 4)
    assert "limit is 3" in bad({"input_batch": ["a"] * 4}, "strings")
    assert "limit is 4" in bad({"input": [1] * 5}, "ints")
    assert "limit is 4" in bad({"input_batch": [[1] * 5] * 2}, "doubles")
    assert len(parse_predict(body({"input_batch": [[1] * 4] * 3}), "doubles").inputs) == 3


# -- input types -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "canonical"),
    [
        ("ints", "ints"),
        ("integers", "ints"),
        ("float", "floats"),
        ("Doubles", "doubles"),
        ("double", "doubles"),
        ("string", "strings"),
        ("byte", "bytes"),
        (" bytes ", "bytes"),
    ],
)
def test_validate_input_type(given_: str, canonical: str) -> None:
    assert validate_input_type(given_) == canonical
    assert canonical in INPUT_TYPES


@pytest.mark.parametrize("bad_type", ["tensor", "", None, 3])
def test_validate_input_type_rejects(bad_type: object) -> None:
    with pytest.raises(BadInput, match="unknown input type"):
        validate_input_type(bad_type)
    with pytest.raises(BadInput):
        parse_predict(b'{"input": "x"}', bad_type)  # type: ignore[arg-type]


# -- cache keys --------------------------------------------------------------------


def test_input_key() -> None:
    arr = parse_predict(body({"input": [1, 2]}), "ints").inputs[0]
    assert input_key(arr, "ints") == np.array([1, 2], dtype=np.int32).tobytes()
    assert input_key(np.array([1, 2]), "ints") == input_key(arr, "ints")
    assert input_key("é", "strings") == "é".encode()
    assert input_key(b"\x00\x01", "bytes") == b"\x00\x01"
    f32 = parse_predict(body({"input": [1.5]}), "floats").inputs[0]
    f64 = parse_predict(body({"input": [1.5]}), "doubles").inputs[0]
    assert len(input_key(f32, "floats")) == 4 and len(input_key(f64, "doubles")) == 8
    with pytest.raises(TypeError):
        input_key(object(), "ints")


def test_input_keys_are_made_when_read() -> None:
    inputs = parse_predict(body({"input_batch": [[1, 2], [3, 4]]}), "ints").inputs
    keys = InputKeys(inputs, "ints")
    assert keys._keys is None and len(keys) == 2  # a model without a cache: never made
    assert list(keys) == [input_key(x, "ints") for x in inputs]
    assert keys[1] == input_key(inputs[1], "ints") and keys[:1] == [keys[0]]


# -- replies -----------------------------------------------------------------------


def test_format_reply_shapes() -> None:
    assert format_reply(7, 1.5, False) == {"query_id": 7, "output": 1.5, "default": False}
    reply = format_reply(8, -1, True)
    assert reply == {
        "query_id": 8,
        "output": -1,
        "default": True,
        "default_explanation": DEFAULT_EXPLANATION,
    }
    reply = format_reply(9, "x", True, "No connected models found for query")
    assert reply["default_explanation"] == "No connected models found for query"
    assert list(reply) == ["query_id", "output", "default", "default_explanation"]


def test_format_reply_outputs() -> None:
    assert format_reply(1, np.array([1, 2], dtype=np.int32), False)["output"] == [1, 2]
    out = format_reply(1, np.float32(0.5), False)["output"]
    assert out == 0.5 and type(out) is float
    # A string that looks like a number stays a string: the model decides.
    assert format_reply(1, "3.5", False)["output"] == "3.5"
    assert format_reply(1, b"\x00\xff", False)["output"] == base64.b64encode(b"\x00\xff").decode()
    assert format_reply(1, {"label": "cat"}, False)["output"] == {"label": "cat"}


def test_format_reply_names_non_finite_numbers() -> None:
    inf, nan = float("inf"), float("nan")
    assert format_reply(1, inf, False)["output"] == "Infinity"
    assert format_reply(1, np.float32(-inf), False)["output"] == "-Infinity"
    assert format_reply(1, [1.0, nan, None, {"a": -inf}], False)["output"] == [
        1.0,
        "NaN",
        None,
        {"a": "-Infinity"},
    ]
    out = format_reply(1, np.array([[1, inf], [nan, 2]]), False)["output"]
    assert out == [[1.0, "Infinity"], ["NaN", 2.0]]
    assert format_reply(1, (0.5, inf), False)["output"] == [0.5, "Infinity"]
    assert format_reply(1, [np.float64(nan)], False)["output"] == ["NaN"]
    extra = format_reply(1, 2, False, extra={"confidence": nan})
    assert extra["confidence"] == "NaN"
    # Strict JSON that keeps them apart from a real null.
    body = orjson.dumps(format_reply(1, [inf, None], False))
    assert orjson.loads(body)["output"] == ["Infinity", None]
    # Finite outputs are untouched, the text "null" included.
    assert format_reply(1, ["null", 1.5], False)["output"] == ["null", 1.5]
    assert format_reply(1, np.array([1.5, 2.5]), False)["output"] == [1.5, 2.5]


def test_format_reply_extra_keys() -> None:
    reply = format_reply(
        1, 2, False, extra={"models": ["m:1"], "confidence": np.float64(0.75), "default": 9}
    )
    assert reply == {
        "query_id": 1,
        "output": 2,
        "default": False,
        "models": ["m:1"],
        "confidence": 0.75,
    }
    orjson.dumps(reply)


def test_format_batch_reply() -> None:
    replies = (format_reply(i, i, False) for i in range(3))
    batch = format_batch_reply(replies)
    assert list(batch) == ["batch_predictions"]
    assert [r["query_id"] for r in batch["batch_predictions"]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("-1", -1),
        ("1.5", 1.5),
        ('"quoted"', "quoted"),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("null", None),
        ("None", "None"),
        ("NaN", "NaN"),
        ("", ""),
        ("cat", "cat"),
    ],
)
def test_parse_default_output(raw: str, value: Any) -> None:
    assert parse_default_output(raw) == value


# -- property: nothing but BadInput escapes ----------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["aGVsbG8=", "", "AA==", "true"]),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)
numbers = st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.floats(
    allow_nan=False, allow_infinity=False, width=32
)
request_bodies = st.one_of(
    st.builds(lambda v: {"input": v}, json_values),
    st.builds(lambda v: {"input_batch": v}, json_values),
    st.builds(lambda v: {"input": v}, st.lists(numbers | st.booleans(), max_size=6)),
    st.builds(
        lambda v: {"input_batch": v},
        st.lists(st.lists(numbers | st.booleans(), max_size=4), max_size=4),
    ),
    st.builds(lambda v, ver: {"input": v, "version": ver}, json_values, json_values),
    json_values,
)


def _check_outcome(data: bytes, input_type: str) -> None:
    try:
        q = parse_predict(data, input_type)
    except BadInput as exc:
        assert str(exc)
        return
    assert q.inputs
    assert q.version is None or isinstance(q.version, str)
    for x in q.inputs:
        if input_type in ("ints", "floats", "doubles"):
            assert isinstance(x, np.ndarray) and x.ndim == 1 and x.size > 0
            assert x.dtype == api._DTYPES[input_type]
            assert np.isfinite(x).all()
        elif input_type == "strings":
            assert isinstance(x, str)
        else:
            assert isinstance(x, bytes)


@settings(max_examples=300, deadline=None)
@given(obj=request_bodies, input_type=st.sampled_from(INPUT_TYPES))
def test_random_json_only_raises_bad_input(obj: Any, input_type: str) -> None:
    _check_outcome(orjson.dumps(obj), input_type)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64), input_type=st.sampled_from(INPUT_TYPES))
def test_random_bytes_only_raise_bad_input(raw: bytes, input_type: str) -> None:
    _check_outcome(raw, input_type)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), min_size=1))
def test_valid_ints_round_trip(values: list[int]) -> None:
    (arr,) = parse_predict(body({"input": values}), "ints").inputs
    assert arr.dtype == np.int32 and arr.tolist() == values


def test_format_reply_native_arrays_write_the_same_json() -> None:
    rng = np.random.default_rng(3)
    outputs: list[Any] = [
        rng.standard_normal(256).astype(np.float32),
        rng.standard_normal((3, 4)),
        np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        rng.standard_normal(8).astype(np.float16),
        rng.standard_normal(10)[::3],
        np.array([0.1, 1e300, -0.0, 5e-324]),
        np.array([1.0, np.inf, np.nan], dtype=np.float32),
        np.arange(5, dtype=np.int32),
        np.arange(5, dtype=">i8"),
        np.array([2**63 - 1], dtype=np.int64),
        np.array([2**64 - 1], dtype=np.uint64),
        np.array([[True, False]]),
        np.zeros((0,)),
        np.zeros((2, 0)),
        np.array(1.5),
        np.array(["a", "b"]),
        np.float32(0.1),
        [np.float32(0.1)],
    ]
    for out in outputs:
        plain = format_reply(1, out, False, extra={"model": "m:1"})
        native = format_reply(1, out, False, extra={"model": "m:1"}, native_arrays=True)
        assert json_response(native).body == json_response(plain).body, out
        assert orjson.loads(json_response(native).body)["output"] == plain["output"]
