"""OIP tensors without a server: parsing, encoding, validation, batch splitting."""

from __future__ import annotations

import asyncio
import json
import math
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from clipper_core.dataplane.model_version import PendingQuery
from clipper_core.dataplane.tensor_batch import TensorQuery, TensorResult, predict_tensor_batch
from clipper_core.errors import BadInput, ModelError
from clipper_core.oip.specs import build_query, select_outputs
from clipper_core.oip.tensors import (
    InferRequest,
    InputTensor,
    RequestedOutput,
    encode_http_response,
    parse_http_request,
)
from clipper_core.structures import QueueEntry
from model_containers import Model, TensorSpec
from model_containers._proto import container_pb2 as pb
from model_containers.tensors import (
    decode_bytes,
    decode_tensor,
    encode_bytes,
    encode_tensor,
    outputs_to_tensor,
)


def _binary_body(
    tensors: list[tuple[str, str, list[int], bytes]], **extra: Any
) -> tuple[bytes, str]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
            for n, d, s, b in tensors
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in tensors), str(len(head))


def test_binary_inputs_are_zero_copy_views_of_the_body() -> None:
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    y = np.array([1, 2], dtype="<i8")
    body, hl = _binary_body([("x", "FP32", [2, 3], x.tobytes()), ("y", "INT64", [2], y.tobytes())])
    req = parse_http_request(body, hl)
    got_x, got_y = req.inputs[0].array, req.inputs[1].array
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    whole = np.frombuffer(body, dtype=np.uint8)
    assert np.shares_memory(got_x, whole) and np.shares_memory(got_y, whole)
    assert not got_x.flags.writeable


def test_json_flat_and_nested_data_agree() -> None:
    def parse(data: Any, datatype: str = "INT16") -> np.ndarray:
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": data}]}
        ).encode()
        return parse_http_request(body, None).inputs[0].array

    np.testing.assert_array_equal(parse([1, 2, 3, 4]), parse([[1, 2], [3, 4]]))
    assert parse([1, 2, 3, 4]).dtype == np.int16
    assert parse([True, False, True, True], "BOOL").dtype == np.bool_
    for bad, datatype in (
        ([1, 2, 3], "INT16"),
        ([1, 2, 3, 70000], "INT16"),
        ([1.5, 2, 3, 4], "INT16"),
        ([1, True, 3, 4], "INT16"),
        ([1, 0, 1, 1], "BOOL"),
        ([1, 2, 3, 1e6], "FP16"),
        ([[1, 2], [3]], "FP32"),
        ([1, 2, 3, 4], "BYTES"),
    ):
        with pytest.raises(BadInput):
            parse(bad, datatype)


def test_bytes_are_length_prefixed() -> None:
    arr = np.array([b"", b"abc", "é".encode()], dtype=object)
    raw = encode_bytes(arr)
    assert raw == b"\x00\x00\x00\x00\x03\x00\x00\x00abc\x02\x00\x00\x00\xc3\xa9"
    assert decode_bytes(raw, 3).tolist() == arr.tolist()
    for broken in (raw[:-1], raw + b"x", b"\x01\x00"):
        with pytest.raises(ValueError):
            decode_bytes(broken, 3)


def test_json_text_in_bytes_names_non_finite_numbers() -> None:
    # json.dumps wrote NaN and Infinity bare: not JSON (a client's parser refused
    # the element); named as Clipper REST replies name them.
    arr = np.empty(2, dtype=object)
    arr[0] = {"a": [1.0, math.inf], "b": (math.nan,), "c": np.float32(-math.inf)}
    arr[1] = {"ok": [1.5]}
    raw = encode_bytes(arr)
    assert [orjson.loads(e) for e in decode_bytes(raw, 2).tolist()] == [
        {"a": [1.0, "Infinity"], "b": ["NaN"], "c": "-Infinity"},
        {"ok": [1.5]},
    ]


def test_a_bytes_shape_larger_than_its_data_is_refused_before_any_allocation() -> None:
    """Each BYTES element takes at least its 4-byte length: a shape of 2^30
    elements over a few bytes is a 400, not 8 GiB of object array first."""
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [1 << 30],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    with pytest.raises(BadInput, match="need at least 4294967296 bytes"):
        parse_http_request(body + b"\x00" * 4, str(len(body)))
    with pytest.raises(ValueError, match="need at least"):
        decode_bytes(b"", 1 << 30)


def test_header_length_and_binary_sizes_are_checked() -> None:
    body, hl = _binary_body([("x", "FP64", [1, 2], np.zeros(2).tobytes())])
    for header in ("-1", str(len(body) + 1), "abc"):
        with pytest.raises(BadInput, match="Inference-Header-Content-Length"):
            parse_http_request(body, header)
    with pytest.raises(BadInput, match="belong to no input"):
        parse_http_request(body + b"\x00" * 8, hl)


def test_response_encoding_json_and_binary() -> None:
    from clipper_core.oip.tensors import OutputTensor

    outs = [
        OutputTensor("a", "FP32", np.array([[1.5, 2.0]], dtype=np.float32), binary=False),
        OutputTensor("b", "BYTES", np.array([b"xy"], dtype=object), binary=True),
        OutputTensor("c", "INT8", np.array([-1, 2], dtype=np.int8), binary=True),
    ]
    body, hl = encode_http_response("m", "1", "id-1", {"k": 1}, outs)
    assert hl is not None
    head = json.loads(body[:hl])
    assert head["id"] == "id-1" and head["parameters"] == {"k": 1}
    first = {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}
    assert head["outputs"][0] == first
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 6}
    assert body[hl:] == b"\x02\x00\x00\x00xy" + np.array([-1, 2], dtype=np.int8).tobytes()
    body, hl = encode_http_response("m", "1", None, {}, outs[:1])
    assert hl is None and "id" not in json.loads(body)


@pytest.mark.parametrize("size", [8, 300])
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_json_output_names_non_finite_values_small_or_large(datatype: str, size: int) -> None:
    from clipper_core.oip.tensors import OutputTensor
    from clipper_core.output_json import all_finite

    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
    arr = np.linspace(-2.0, 2.0, size).astype(dtype).reshape(2, size // 2)
    assert all_finite(arr)
    body, _ = encode_http_response("m", "1", None, {}, [OutputTensor("o", datatype, arr, False)])
    # Finite: the numbers as written read back as the same values of the datatype.
    data = json.loads(body)["outputs"][0]["data"]
    assert np.array_equal(np.array(data, dtype=dtype), arr.ravel())
    for special, name in ((np.nan, "NaN"), (np.inf, "Infinity"), (-np.inf, "-Infinity")):
        bad = arr.copy()
        bad[1, -1] = special
        assert not all_finite(bad)
        body, _ = encode_http_response(
            "m", "1", None, {}, [OutputTensor("o", datatype, bad, False)]
        )
        assert json.loads(body)["outputs"][0]["data"][-1] == name


def _request(*tensors: tuple[str, str, tuple[int, ...]]) -> InferRequest:
    return InferRequest(
        [InputTensor(n, d, s, np.zeros(s, dtype=np.float32)) for n, d, s in tensors]
    )


def test_build_query_validates_against_specs() -> None:
    specs = [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "y", "datatype": "FP32", "shape": [-1]},
    ]
    q = build_query("m:1", specs, _request(("y", "FP32", (2,)), ("x", "FP32", (2, 3))))
    assert q.names == ("x", "y") and q.rows == 2  # the model's order
    for tensors, match in (
        ((("x", "FP32", (2, 3)),), "missing input 'y'"),
        ((("x", "FP32", (2, 3)), ("y", "FP32", (2,)), ("z", "FP32", (2,))), "unknown input"),
        ((("x", "FP64", (2, 3)), ("y", "FP32", (2,))), "takes FP32"),
        ((("x", "FP32", (2, 4)), ("y", "FP32", (2,))), "shape"),
        ((("x", "FP32", (2, 3)), ("y", "FP32", (3,))), "batch dimension"),
        ((("x", "FP32", (0, 3)), ("y", "FP32", (0,))), "at least 1"),
        ((("x", "FP32", (2, 3)), ("x", "FP32", (2, 3))), "twice"),
    ):
        with pytest.raises(BadInput, match=match):
            build_query("m:1", specs, _request(*tensors))


def test_cache_key_covers_names_datatypes_shapes_and_bytes() -> None:
    data = np.arange(4, dtype=np.float32)
    base = TensorQuery(["x"], ["FP32"], [data.reshape(2, 2)])
    others = [
        TensorQuery(["x"], ["FP32"], [data.reshape(4, 1)]),
        TensorQuery(["z"], ["FP32"], [data.reshape(2, 2)]),
        TensorQuery(["x"], ["INT32"], [data.view(np.int32).reshape(2, 2)]),
        TensorQuery(["x"], ["FP32"], [(data + 1).reshape(2, 2)]),
    ]
    keys = {base.cache_key(), *(o.cache_key() for o in others)}
    assert len(keys) == 5
    assert base.cache_key() == TensorQuery(["x"], ["FP32"], [data.copy().reshape(2, 2)]).cache_key()


def test_select_outputs() -> None:
    result = TensorResult({"a": ("FP32", np.zeros(1)), "b": ("INT8", np.zeros(1))})
    req = _request(("x", "FP32", (1,)))
    assert [o.name for o in select_outputs("m", result, req)] == ["a", "b"]
    req.outputs = [RequestedOutput("b", True)]
    (out,) = select_outputs("m", result, req)
    assert out.name == "b" and out.binary
    req.outputs = [RequestedOutput("c")]
    with pytest.raises(BadInput, match="no output 'c'"):
        select_outputs("m", result, req)


# -- the container side -------------------------------------------------------------


class Lengths(Model):
    input_type = "strings"

    def predict(self, inputs: list[Any]) -> list[Any]:
        return [len(s) for s in inputs]


class Described(Model):
    input_type = "doubles"
    outputs = (TensorSpec("score", "FP32", (-1,)),)

    def predict(self, inputs: list[Any]) -> list[Any]:
        assert all(x.dtype == np.float64 and x.ndim == 1 for x in inputs)
        return [x.sum() for x in inputs]


def test_default_predict_tensors_maps_rows_onto_predict() -> None:
    text = np.array([[b"ab"], ["héllo".encode()]], dtype=object)
    out = Lengths().predict_tensors({"input": text})
    assert out["output"].tolist() == [2, 5] and out["output"].dtype == np.int64
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    out = Described().predict_tensors({"input": x})
    assert list(out) == ["score"] and out["score"].dtype == np.float32
    np.testing.assert_array_equal(out["score"], [3.0, 12.0])
    with pytest.raises(ValueError, match="one input tensor"):
        Lengths().predict_tensors({"a": text, "b": text})
    with pytest.raises(ValueError, match="one element per row"):
        Lengths().predict_tensors({"input": np.array([[b"a", b"b"]], dtype=object)})


def test_outputs_to_tensor_infers_datatypes() -> None:
    assert outputs_to_tensor([1, 2], 2).dtype == np.int64
    assert outputs_to_tensor([1, 2.5], 2).dtype == np.float64
    assert outputs_to_tensor([True, False], 2).dtype == np.bool_
    assert outputs_to_tensor([np.float16(1)] * 2, 2).dtype == np.float16
    mixed = outputs_to_tensor([{"a": 1}, "x"], 2)
    assert mixed.dtype == object and mixed.tolist() == [b'{"a":1}', "x"]
    with pytest.raises(ValueError):
        outputs_to_tensor([1], 2)


def test_container_tensor_codec_round_trip() -> None:
    for arr in (
        np.array([[1, 2]], dtype=np.uint16),
        np.array([[True]]),
        np.array([[b"a", b""]], dtype=object),
        np.array([0.5], dtype=np.float16),
    ):
        datatype, shape, data = encode_tensor(arr)
        back = decode_tensor(datatype, shape, data)
        assert back.tolist() == arr.tolist() and back.shape == arr.shape
        assert back.flags.writeable
    assert encode_tensor(["é"])[2] == b"\x02\x00\x00\x00\xc3\xa9"


# -- batching: concatenate along dim 0, split back, one call per signature --------------


class FakeClient:
    """Answers ``y = x + 1`` and ``rows`` = rows in the call; fails on x < 0."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def predict_tensors(
        self,
        tensors: list[Any],
        input_type: str,
        parameters: bytes,
        timeout: Any,  # noqa: ASYNC109 (ReplicaClient's signature)
    ) -> list[Any]:
        (t,) = tensors
        shape = list(t.shape)
        self.calls.append(shape)
        x = np.frombuffer(t.data, dtype="<f8").reshape(shape)
        if (x < 0).any():
            raise ModelError("ValueError: negative")
        n = shape[0]
        return [
            pb.Tensor(name="y", datatype="FP64", shape=shape, data=(x + 1).tobytes()),
            pb.Tensor(
                name="rows", datatype="INT64", shape=[n], data=np.full(n, n, "<i8").tobytes()
            ),
        ]


def _entry(loop: asyncio.AbstractEventLoop, arr: np.ndarray) -> Any:
    query = TensorQuery(["x"], ["FP64"], [arr])
    return QueueEntry(PendingQuery(query), loop.create_future(), time.monotonic() + 10, 0, 0.0)


def test_tensor_batch_merges_splits_and_isolates_failures(loop: asyncio.AbstractEventLoop) -> None:
    errors: list[tuple[str, int]] = []
    mv = SimpleNamespace(
        key="m:1",
        input_type="doubles",
        batch_timeout=5.0,
        metrics=SimpleNamespace(error=lambda kind, n: errors.append((kind, n))),
    )
    client = FakeClient()
    a = _entry(loop, np.array([[1.0, 2.0], [3.0, 4.0]]))
    b = _entry(loop, np.array([[10.0, 20.0]]))
    c = _entry(loop, np.array([[-1.0, 0.0, 0.0]]))  # another signature; fails
    d = _entry(loop, np.array([[5.0, 6.0]]))
    d.future.cancel()  # withdrawn: not sent
    out = loop.run_until_complete(predict_tensor_batch(mv, client, [a, b, c, d]))  # type: ignore[arg-type]
    assert out == [None] * 4
    assert client.calls == [[3, 2], [1, 3]]
    ra, rb = a.future.result(), b.future.result()
    np.testing.assert_array_equal(ra.outputs["y"][1], [[2.0, 3.0], [4.0, 5.0]])
    np.testing.assert_array_equal(rb.outputs["y"][1], [[11.0, 21.0]])
    assert ra.outputs["rows"][1].tolist() == [3, 3] and rb.outputs["rows"][1].tolist() == [3]
    assert isinstance(c.future.exception(), ModelError)
    assert errors == [("model_error", 1)]


class RefusingClient(FakeClient):
    """Refuses (INVALID_ARGUMENT) any call holding a NaN: a bad input of one request
    (or, with ``error = ModelError``, the model raises for it)."""

    error: type[Exception] = BadInput

    async def predict_tensors(
        self,
        tensors: list[Any],
        input_type: str,
        parameters: bytes,
        timeout: Any,  # noqa: ASYNC109 (ReplicaClient's signature)
    ) -> list[Any]:
        (t,) = tensors
        if np.isnan(np.frombuffer(t.data, dtype="<f8")).any():
            self.calls.append(list(t.shape))
            raise self.error("ValueError: NaN in the input")
        return await super().predict_tensors(tensors, input_type, parameters, timeout)


@pytest.mark.parametrize("error", [BadInput, ModelError])
def test_a_bad_input_fails_only_its_own_request_in_a_merged_call(
    loop: asyncio.AbstractEventLoop, error: type[Exception]
) -> None:
    errors: list[tuple[str, int]] = []
    mv = SimpleNamespace(
        key="m:1",
        input_type="doubles",
        batch_timeout=5.0,
        metrics=SimpleNamespace(error=lambda kind, n: errors.append((kind, n))),
    )
    client = RefusingClient()
    client.error = error  # a model error for one request failed the whole group before
    a = _entry(loop, np.array([[1.0, 2.0]]))
    bad = _entry(loop, np.array([[np.nan, 0.0]]))
    b = _entry(loop, np.array([[3.0, 4.0]]))
    loop.run_until_complete(predict_tensor_batch(mv, client, [a, bad, b]))  # type: ignore[arg-type]
    # One merged call refused, then each request alone.
    assert client.calls == [[3, 2], [1, 2], [1, 2], [1, 2]]
    np.testing.assert_array_equal(a.future.result().outputs["y"][1], [[2.0, 3.0]])
    np.testing.assert_array_equal(b.future.result().outputs["y"][1], [[4.0, 5.0]])
    assert isinstance(bad.future.exception(), error)
    assert errors == [("bad_input" if error is BadInput else "model_error", 1)]


def test_an_empty_tensor_cannot_claim_billions_of_rows() -> None:
    from clipper_core.errors import BadInput
    from clipper_core.oip.tensors import check_shape

    assert check_shape("x", [4, 0]) == (4, 0)
    with pytest.raises(BadInput, match="too large for no data"):
        check_shape("x", [3_000_000_000, 0])
