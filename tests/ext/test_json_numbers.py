"""The fast path of ``{"input": [numbers]}`` bodies (``ext/json_numbers.pyx`` and its
twin): it answers exactly what the general path (orjson and numpy) answers, or
declines, on both implementations."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from number_texts import double_texts

from clipper_core.clipper_api import MAX_INPUT_ELEMENTS, parse_predict, parse_predict_general
from clipper_core.errors import BadInput
from clipper_core.structures import load

_FAST = pytest.mark.parametrize("input_type", ["floats", "doubles"])


def general(body: bytes, input_type: str) -> np.ndarray[Any, Any] | str:
    """The general path's answer: the input array, or the error's message."""
    try:
        query = parse_predict_general(body, input_type)
    except BadInput as exc:
        return str(exc)
    assert not query.batch
    return query.inputs[0]  # type: ignore[no-any-return]


def same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Equal dtype, shape and bits (so -0.0 differs from 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check(impl: SimpleNamespace, body: bytes, input_type: str) -> np.ndarray[Any, Any] | None:
    """The fast path's answer, asserted equal to the general path's when it gives one."""
    fast = impl.parse_single_input(body, input_type == "floats", MAX_INPUT_ELEMENTS)
    if fast is not None:
        expected = general(body, input_type)
        assert not isinstance(expected, str), (body, expected)
        assert same(fast, expected), (body, fast, expected)
        assert fast.flags.writeable and fast.flags.c_contiguous
    return fast  # type: ignore[no-any-return]


@_FAST
@pytest.mark.parametrize(
    "body",
    [
        b'{"input":[0.3456,0.8216,-1.3032]}',
        b' {\n\t"input" :\r [ 1 , 2.5 , -3e2 ] } \n',
        b'{"input":[-0, -0.0, 0, 0.0, 0e5, -0E-3]}',
        b'{"input":[1e-400, 5e-324, 2.2250738585072014e-308]}',
        b'{"input":[0.30000000000000004, 0.1, 1.5e-45, 7e-46]}',
        b'{"input":[123456789012345, -999999999999999]}',
        b'{"input":[3.4028234663852886e38, -3.4028234663852886e38]}',
        b'{"input":[1.00000000000000000000000000001, 9007199254740993.0]}',
        b'{"input":[12345678901234567890.5, 0.000000000000000000000000123]}',
    ],
)
def test_accepted_bodies_match_the_general_path(
    impl: SimpleNamespace, body: bytes, input_type: str
) -> None:
    assert check(impl, body, input_type) is not None


@_FAST
@pytest.mark.parametrize(
    "body",
    [
        b'{"input":[]}',
        b'{"input":[true]}',
        b'{"input":[1, false]}',
        b'{"input":[null]}',
        b'{"input":["1"]}',
        b'{"input":[[1, 2]]}',
        b'{"input":[1,]}',
        b'{"input":[,1]}',
        b'{"input":[01]}',
        b'{"input":[1.]}',
        b'{"input":[.5]}',
        b'{"input":[+1]}',
        b'{"input":[1e]}',
        b'{"input":[1e+]}',
        b'{"input":[NaN]}',
        b'{"input":[Infinity]}',
        b'{"input":[1e400]}',
        b'{"input":[-1e309]}',
        b'{"input":[1234567890123456]}',
        b'{"input":[0x10]}',
        b'{"input":[1 2]}',
        b'{"input":[1]',
        b'{"input":[1]}}',
        b'{"input":[1]} x',
        b'{"input":1}',
        b'{"input":[1],"version":"2"}',
        b'{"version":"2","input":[1]}',
        b'{"uid":3,"input":[1]}',
        b'{"\\u0069nput":[1]}',
        b'{"input_batch":[[1]]}',
        b'{"Input":[1]}',
        b"[1]",
        b"",
        b"   ",
        b'\xef\xbb\xbf{"input":[1]}',
    ],
)
def test_any_other_body_is_left_to_the_general_path(
    impl: SimpleNamespace, body: bytes, input_type: str
) -> None:
    assert impl.parse_single_input(body, input_type == "floats", MAX_INPUT_ELEMENTS) is None


def test_float32_range_is_left_to_the_general_path(impl: SimpleNamespace) -> None:
    # Above float32's largest finite value: the general path decides (it rounds
    # what rounds down and refuses the rest); doubles take it.
    body = b'{"input":[3.5e38, 1.7976931348623157e308]}'
    assert impl.parse_single_input(body, True, MAX_INPUT_ELEMENTS) is None
    assert check(impl, body, "doubles") is not None
    assert "outside the range of float32" in str(general(body, "floats"))


@_FAST
@pytest.mark.parametrize("zeros", [99_977, 99_990, 99_999])
def test_a_huge_exponent_after_a_long_fraction_is_not_read_small(
    impl: SimpleNamespace, zeros: int, input_type: str
) -> None:
    # The exponent is capped as it is read; a fraction's leading zeros then
    # brought the capped power into the quick branch's range, and
    # 0.<99,977 zeros>1e1000000 (10**900023: infinity) was read as 1e22.
    for digits in (b"1000000", b"1000000000000"):
        body = b'{"input":[0.' + b"0" * zeros + b"1e" + digits + b"]}"
        assert impl.parse_single_input(body, input_type == "floats", MAX_INPUT_ELEMENTS) is None
        assert "infinity" in str(general(body, input_type))


def test_element_limit(impl: SimpleNamespace) -> None:
    body = orjson.dumps({"input": [0.5] * 200})
    assert impl.parse_single_input(body, True, 199) is None
    out = impl.parse_single_input(body, True, 200)
    assert out is not None and out.shape == (200,)


def test_not_bytes_is_refused(impl: SimpleNamespace) -> None:
    with pytest.raises(TypeError):
        impl.parse_single_input(bytearray(b'{"input":[1]}'), True, 10)


def test_parse_predict_takes_the_fast_path() -> None:
    query = parse_predict(b'{"input": [1.5, -2]}', "floats")
    assert query.version is None and query.uid == 0 and not query.batch
    assert same(query.inputs[0], np.array([1.5, -2.0], dtype=np.float32))
    # ints are not on it: the general path's int32 checks stay in charge.
    assert parse_predict(b'{"input": [1, 2]}', "ints").inputs[0].dtype == np.int32


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    numbers=st.lists(double_texts, min_size=1, max_size=40),
    spaces=st.sampled_from([b"", b" ", b"\n\t "]),
    input_type=st.sampled_from(["floats", "doubles"]),
)
def test_random_numbers_match_the_general_path(
    numbers: list[bytes], spaces: bytes, input_type: str
) -> None:
    body = b'{"input":[' + (b"," + spaces).join(numbers) + b"]}"
    answers = [check(load(use_extensions), body, input_type) for use_extensions in (True, False)]
    # Both implementations decline the same bodies.
    assert (answers[0] is None) == (answers[1] is None), body


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=60).map(lambda tail: b'{"input":[' + tail))
def test_random_bytes_never_answer_differently(body: bytes) -> None:
    for use_extensions in (True, False):
        for input_type in ("floats", "doubles"):
            check(load(use_extensions), body, input_type)
