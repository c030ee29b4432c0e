"""The fast path of Open Inference Protocol JSON requests of FP32/FP64 numbers
(``parse_oip_request`` in ``ext/json_numbers.pyx`` and its twin): the request it
makes equals the general path's, or it declines, on both implementations."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from number_texts import double_texts

from clipper_core.errors import BadInput
from clipper_core.oip.tensors import (
    MAX_ELEMENTS,
    InferRequest,
    InputTensor,
    parse_http_request,
    parse_http_request_general,
)
from clipper_core.structures import load


def same_request(fast: InferRequest, general: InferRequest) -> bool:
    if (fast.id, fast.parameters, fast.outputs, fast.binary_output) != (
        general.id,
        general.parameters,
        general.outputs,
        general.binary_output,
    ):
        return False
    if len(fast.inputs) != len(general.inputs):
        return False
    for a, b in zip(fast.inputs, general.inputs, strict=True):
        if (a.name, a.datatype, a.shape) != (b.name, b.datatype, b.shape):
            return False
        if a.array.dtype != b.array.dtype or a.array.shape != b.array.shape:
            return False
        if a.array.tobytes() != b.array.tobytes():  # bits: -0.0 is not 0.0
            return False
    return True


def check(impl: SimpleNamespace, body: bytes) -> InferRequest | None:
    """The fast path's request (None when declined), asserted equal to the general
    path's when it makes one."""
    found = impl.parse_oip_request(body, MAX_ELEMENTS)
    if found is None:
        return None
    request_id, inputs = found
    fast = InferRequest([InputTensor(n, d, s, a.reshape(s)) for n, d, s, a in inputs], request_id)
    try:
        general = parse_http_request_general(body, None)
    except BadInput as exc:
        raise AssertionError(f"the fast path took {body!r}, the general path says {exc}") from None
    assert same_request(fast, general), (body, fast, general)
    return fast


def tensor(name: str, data: str, shape: str = "[1,2]", datatype: str = "FP32") -> str:
    return f'{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":{data}}}'


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs":[' + tensor("x", "[0.3456,-0.8216]") + "]}",
        '{"id":"r-1","inputs":[' + tensor("x", "[1,2]", datatype="FP64") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]") + '],\n "id" : ""}',
        '{"inputs":[{"data":[1.5e-45,-0],"datatype":"FP32","shape":[2],"name":"x"}]}',
        '{"inputs":[' + tensor("a", "[7]", "[]") + "," + tensor("b", "[1,2,3,4]", "[2,2]") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]") + "," + tensor("x", "[3,4]") + "]}",
        ' { "inputs" : [ { "name" : "x" , "shape" : [ 1 , 2 ] , "datatype" : "FP64" ,'
        ' "data" : [ 1e-400 , 1.7976931348623157e308 ] } ] } ',
    ],
)
def test_accepted_requests_match_the_general_path(impl: SimpleNamespace, body: str) -> None:
    assert check(impl, body.encode()) is not None


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"inputs":[]}',
        '{"inputs":{}}',
        '{"inputs":[' + tensor("x", "[1,2]") + '],"parameters":{}}',
        '{"inputs":[' + tensor("x", "[1,2]") + '],"outputs":[{"name":"y"}]}',
        '{"inputs":[' + tensor("x", "[1,2]") + '],"inputs":[' + tensor("x", "[1,2]") + "]}",
        '{"id":"a","id":"b","inputs":[' + tensor("x", "[1,2]") + "]}",
        '{"id":7,"inputs":[' + tensor("x", "[1,2]") + "]}",
        '{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2],"parameters":{}}]}',
        '{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32"}]}',
        '{"inputs":[{"name":"x","name":"y","shape":[1],"datatype":"FP32","data":[1]}]}',
        '{"inputs":[' + tensor("", "[1,2]") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", datatype="INT32") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", datatype="FP16") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", datatype="BYTES") + "]}",
        '{"inputs":[' + tensor("x", "[1,2,3]") + "]}",
        '{"inputs":[' + tensor("x", "[1]") + "]}",
        '{"inputs":[' + tensor("x", "[]", "[0]") + "]}",
        '{"inputs":[' + tensor("x", "[[1,2]]") + "]}",
        '{"inputs":[' + tensor("x", "[true,2]") + "]}",
        '{"inputs":[' + tensor("x", '["1",2]') + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", "[1,-2]") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", "[1.0,2]") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", "[01,2]") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]", '"1,2"') + "]}",
        '{"inputs":[' + tensor("x", "[1e39,2]") + "]}",
        '{"inputs":[' + tensor("x", "[1e400,2]", datatype="FP64") + "]}",
        '{"inputs":[' + tensor("x", "[1234567890123456,2]") + "]}",
        '{"inputs":[' + tensor("\\u0078", "[1,2]") + "]}",
        '{"inputs":[' + tensor("x\u00e9", "[1,2]") + "]}",
        '{"inputs":[' + tensor("x", "[1,2]") + "]",
        '{"inputs":[' + tensor("x", "[1,2]") + "]} []",
        '{"inputs":[' + tensor("x", "[1,2]") + ",]}",
        "[]",
        "",
    ],
)
def test_any_other_request_is_left_to_the_general_path(impl: SimpleNamespace, body: str) -> None:
    assert impl.parse_oip_request(body.encode(), MAX_ELEMENTS) is None


def test_a_shape_whose_product_would_wrap_is_left_to_the_general_path(
    impl: SimpleNamespace,
) -> None:
    # 274177 * 67280421310721 = 2**64 + 1: in 64-bit arithmetic, a product of 1.
    body = b'{"inputs":[' + tensor("x", "[1.5]", "[274177,67280421310721]").encode() + b"]}"
    assert impl.parse_oip_request(body, MAX_ELEMENTS) is None
    with pytest.raises(BadInput, match="too many elements"):
        parse_http_request(body, None)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_other_encodings_are_left_to_the_general_path(impl: SimpleNamespace, encoding: str) -> None:
    body = ('{"inputs":[' + tensor("x", "[0.1,-3]") + "]}").encode(encoding)
    assert impl.parse_oip_request(body, MAX_ELEMENTS) is None
    with pytest.raises(BadInput):
        parse_http_request(body, None)


def test_deep_nesting_is_left_to_the_general_path(impl: SimpleNamespace) -> None:
    for depth in (1000, 5000):
        body = b'{"inputs":' + b"[" * depth
        assert impl.parse_oip_request(body, MAX_ELEMENTS) is None
        with pytest.raises(BadInput):
            parse_http_request(body, None)


def test_element_limit(impl: SimpleNamespace) -> None:
    body = ('{"inputs":[' + tensor("x", "[" + ",".join(["0.5"] * 8) + "]", "[2,4]") + "]}").encode()
    assert impl.parse_oip_request(body, 7) is None
    assert impl.parse_oip_request(body, 8) is not None


def test_parse_http_request_takes_the_fast_path() -> None:
    body = ('{"id":"q","inputs":[' + tensor("x", "[1.5,-2]") + "]}").encode()
    request = parse_http_request(body, None)
    assert request.id == "q" and request.inputs[0].shape == (1, 2)
    assert request.inputs[0].array.tolist() == [[1.5, -2.0]]
    # Binary data (a header length) always takes the general path.
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                     "parameters": {"binary_data_size": 4}}]}
    )  # fmt: skip
    request = parse_http_request(header + b"\x00\x00\xc0\x3f", str(len(header)))
    assert request.inputs[0].array.tolist() == [1.5]


_names = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1).filter(
    lambda s: '"' not in s and "\\" not in s
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.integers(1, 3))
        cols = draw(st.integers(1, 4))
        numbers = draw(st.lists(double_texts, min_size=rows * cols, max_size=rows * cols))
        fields = {
            "name": '"' + draw(_names) + '"',
            "shape": f"[{rows},{cols}]",
            "datatype": '"' + draw(st.sampled_from(["FP32", "FP64"])) + '"',
            "data": "[" + ",".join(n.decode() for n in numbers) + "]",
        }
        order = draw(st.permutations(list(fields)))
        inputs.append("{" + ",".join(f'"{k}":{fields[k]}' for k in order) + "}")
    parts = ['"inputs":[' + ",".join(inputs) + "]"]
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, 1)), '"id":"' + draw(_names) + '"')
    return ("{" + ",".join(parts) + "}").encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests())
def test_random_requests_match_the_general_path(body: bytes) -> None:
    answers = [check(load(use_extensions), body) for use_extensions in (True, False)]
    # Both implementations decline the same requests.
    assert (answers[0] is None) == (answers[1] is None), body


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=80).map(
        lambda tail: b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":' + tail
    )
)
def test_random_bytes_never_answer_differently(body: bytes) -> None:
    for use_extensions in (True, False):
        check(load(use_extensions), body)


def test_json_dumps_of_a_request_is_taken(impl: SimpleNamespace) -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [0.1, 2, -3.5, 4e-5]}
            ]
        }
    )
    assert check(impl, body) is not None
