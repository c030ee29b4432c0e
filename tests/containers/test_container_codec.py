"""The wire format in-process: client encoding <-> container decoding, and back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clipper_core.errors import BadInput
from clipper_core.replica_codec import decode_outputs, encode_batch
from model_containers import codec
from model_containers._proto import container_pb2 as pb
from model_containers.server import exception_line


def _response(encoded: codec.EncodedOutputs) -> pb.PredictResponse:
    wire = pb.PredictResponse(
        encoding=encoded.encoding,  # type: ignore[arg-type]
        data=encoded.data,
        offsets=encoded.offsets,
        dtype=encoded.dtype,
        shape=encoded.shape,
    ).SerializeToString()
    return pb.PredictResponse.FromString(wire)


def test_encode_batch_layout() -> None:
    data, offsets = encode_batch([np.array([1, 2]), [3], np.array([], dtype=np.int64)], "ints")
    assert offsets == [0, 8, 12, 12]
    assert np.array_equal(np.frombuffer(data, "<i4"), [1, 2, 3])
    data, offsets = encode_batch(["é", "", "ab"], "strings")
    assert (data, offsets) == ("éab".encode(), [0, 2, 2, 4])
    assert encode_batch([], "bytes") == (b"", [0])


@pytest.mark.parametrize(
    ("inputs", "input_type"),
    [
        ([np.array([1.5])], "ints"),
        ([[2**31]], "ints"),
        ([[[1.0], [2.0, 3.0]]], "doubles"),
        ([1.0], "strings"),
        (["text"], "bytes"),
        ([b"x"], "tensors"),
    ],
)
def test_encode_batch_refuses_what_does_not_fit(inputs: list[Any], input_type: str) -> None:
    with pytest.raises(BadInput):
        encode_batch(inputs, input_type)


@pytest.mark.parametrize(
    ("input_type", "inputs"),
    [
        ("ints", [np.arange(3, dtype=np.int32), np.array([-1], dtype=np.int32)]),
        ("floats", [np.array([0.25, 8.0], dtype=np.float32)]),
        ("doubles", [np.array([]), np.array([np.pi, -0.0, np.inf])]),
        ("strings", ["a", "\u2603", ""]),
        ("bytes", [b"", b"\x00" * 5]),
    ],
)
def test_client_encoding_decodes_in_the_container(input_type: str, inputs: list[Any]) -> None:
    data, offsets = encode_batch(inputs, input_type)
    decoded = codec.decode_inputs(input_type, data, offsets)
    assert len(decoded) == len(inputs)
    for got, want in zip(decoded, inputs, strict=True):
        if isinstance(want, np.ndarray):
            assert got.dtype == codec.NUMERIC_DTYPES[input_type]
            assert got.flags.writeable
            assert np.array_equal(got, want)
        else:
            assert got == want


@pytest.mark.parametrize(
    ("input_type", "data", "offsets", "message"),
    [
        ("doubles", b"\x00" * 8, [], "no offsets"),
        ("doubles", b"\x00" * 8, [0, 16], "from 0 to len"),
        ("doubles", b"\x00" * 16, [0, 12, 8, 16], "non-decreasing"),
        ("ints", b"\x00" * 8, [0, 6, 8], "not a multiple of 4"),
        ("strings", b"\xff", [0, 1], "input 0 is not valid UTF-8"),
        # Large batches are checked with numpy: the same answers.
        ("doubles", b"\x00" * 800, [*range(0, 400, 8), 320, *range(400, 808, 8)], "non-dec"),
        (
            "ints",
            b"\x00" * 400,
            [*range(0, 200, 4), 202, *range(204, 404, 4)],
            r"offset 50 \(202\)",
        ),
    ],
)
def test_container_refuses_inconsistent_payloads(
    input_type: str, data: bytes, offsets: list[int], message: str
) -> None:
    with pytest.raises(codec.DecodeError, match=message):
        codec.decode_inputs(input_type, data, offsets)


def test_large_batches_decode_like_small_ones() -> None:
    inputs = [np.arange(i % 5, dtype=np.float32) for i in range(300)]
    data, offsets = encode_batch(inputs, "floats")
    decoded = codec.decode_inputs("floats", data, offsets)
    assert [x.tolist() for x in decoded] == [x.tolist() for x in inputs]


def test_output_encodings_round_trip() -> None:
    tensor = _response(codec.encode_outputs([np.ones((2, 3), np.float32)] * 4, 4))
    assert tensor.encoding == pb.TENSOR and tensor.dtype == "<f4" and list(tensor.shape) == [2, 3]
    assert [o.shape for o in decode_outputs(tensor)] == [(2, 3)] * 4

    bools = decode_outputs(_response(codec.encode_outputs(np.array([True, False]), 2)))
    assert [bool(b) for b in bools] == [True, False]

    # Mixed shapes or dtypes fall back to JSON.
    mixed = _response(codec.encode_outputs([np.zeros(2), np.zeros(3, np.int8)], 2))
    assert mixed.encoding == pb.JSON
    assert decode_outputs(mixed) == [[0.0, 0.0], [0, 0, 0]]

    raw = _response(codec.encode_outputs([b"a", bytearray(b""), memoryview(b"xyz")], 3))
    assert raw.encoding == pb.RAW_BYTES
    assert decode_outputs(raw) == [b"a", b"", b"xyz"]

    values = [{"p": np.float32(0.5), "k": np.int64(3)}, "label", None, [1, [2]], float("nan")]
    decoded = decode_outputs(_response(codec.encode_outputs(values, 5)))
    assert decoded[:4] == [{"p": 0.5, "k": 3}, "label", None, [1, [2]]]
    assert np.isnan(decoded[4])

    empty = _response(codec.encode_outputs([], 0))
    assert decode_outputs(empty) == []


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([1, 2], "returned 2 outputs for a batch of 3 inputs"),
        (np.zeros((2, 4)), "returned 2 outputs for a batch of 3 inputs"),
        (np.float64(1.0), "returned float64; expected a list of 3"),
        (np.array(1.0), "0-d array"),
        ((x for x in range(3)), "returned generator"),
        ([1, 2, {3}], "output 2: an output of type set is not JSON serialisable"),
    ],
)
def test_bad_outputs_are_named(outputs: Any, message: str) -> None:
    with pytest.raises(codec.OutputError, match=message):
        codec.encode_outputs(outputs, 3)


def test_exception_line() -> None:
    assert exception_line(ValueError("bad feature count")) == "ValueError: bad feature count"
    err = KeyError("x")
    err.add_note("ignored")
    assert exception_line(err) == "KeyError: 'x'"
    assert len(exception_line(RuntimeError("x" * 10_000))) <= 2000


def test_one_row_fast_paths_match_the_batch_paths() -> None:
    """A batch of one input or one output row (every query at low load) takes short
    cuts; what they produce is what the general paths produce."""
    row = np.arange(6, dtype=np.float32).reshape(2, 3)[:, 1]  # not contiguous
    for output in (row, np.float32(2.5), np.array(7, np.int64), np.ones((2, 2), np.int8)):
        one = codec.encode_outputs([output], 1)
        general = codec.encode_outputs([output, output], 2)
        assert (one.encoding, one.dtype, tuple(one.shape)) == (
            general.encoding,
            general.dtype,
            tuple(general.shape),
        )
        assert one.data * 2 == general.data and one.offsets == general.offsets[:2]
        decoded = decode_outputs(_response(one))
        assert len(decoded) == 1 and np.array_equal(decoded[0], output)
        assert np.shape(decoded[0]) == np.shape(output)
    scalar = decode_outputs(_response(codec.encode_outputs([np.float64(1.5)], 1)))
    assert isinstance(scalar[0], np.generic) and scalar[0] == 1.5

    data, offsets = encode_batch([np.array([1.0, 2.0], np.float32)], "floats")
    (x,) = codec.decode_inputs("floats", data, offsets)
    assert x.tolist() == [1.0, 2.0] and x.flags.writeable
    with pytest.raises(codec.DecodeError, match="is not a multiple of 4"):
        codec.decode_inputs("floats", data[:7], [0, 7])
