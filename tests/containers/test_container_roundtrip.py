"""Every input type through a real container and ReplicaClient, both model kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from container_harness import Launcher, closure_args, model_class_args, pickle_closure, run_async

from clipper_core.replica_client import ReplicaClient

# input type -> (a batch of inputs, what the model must see for each)
BATCHES: dict[str, tuple[list[Any], list[dict[str, Any]]]] = {
    "ints": (
        [np.array([1, -2, 2**31 - 1], dtype=np.int32), np.array([], dtype=np.int32), [7]],
        [
            {"kind": "ndarray", "dtype": "<i4", "ndim": 1, "values": [1, -2, 2**31 - 1]},
            {"kind": "ndarray", "dtype": "<i4", "ndim": 1, "values": []},
            {"kind": "ndarray", "dtype": "<i4", "ndim": 1, "values": [7]},
        ],
    ),
    "floats": (
        [np.array([0.5, -1.25], dtype=np.float32), np.array([3.0], dtype=np.float64)],
        [
            {"kind": "ndarray", "dtype": "<f4", "ndim": 1, "values": [0.5, -1.25]},
            {"kind": "ndarray", "dtype": "<f4", "ndim": 1, "values": [3.0]},
        ],
    ),
    "doubles": (
        [np.array([1 / 3, 1e300]), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([])],
        [
            {"kind": "ndarray", "dtype": "<f8", "ndim": 1, "values": [1 / 3, 1e300]},
            {"kind": "ndarray", "dtype": "<f8", "ndim": 1, "values": [1.0, 2.0, 3.0, 4.0]},
            {"kind": "ndarray", "dtype": "<f8", "ndim": 1, "values": []},
        ],
    ),
    "strings": (
        ["hello", "", "héllo ☃ \U0001f600", '{"not": "parsed"}'],
        [
            {"kind": "str", "value": "hello"},
            {"kind": "str", "value": ""},
            {"kind": "str", "value": "héllo ☃ \U0001f600"},
            {"kind": "str", "value": '{"not": "parsed"}'},
        ],
    ),
    "bytes": (
        [b"\x00\xff\x10", b"", bytearray(b"abc"), memoryview(b"\x01\x02")],
        [
            {"kind": "bytes", "hex": "00ff10"},
            {"kind": "bytes", "hex": ""},
            {"kind": "bytes", "hex": "616263"},
            {"kind": "bytes", "hex": "0102"},
        ],
    ),
}


def _closure() -> Any:
    """A Clipper-style python closure, pickled by value (it is a nested function)."""
    calls = [0]

    def predict(inputs: list[Any]) -> list[Any]:
        calls[0] += 1
        out = []
        for x in inputs:
            if isinstance(x, np.ndarray):
                seen = {
                    "kind": "ndarray",
                    "dtype": x.dtype.str,
                    "ndim": x.ndim,
                    "values": x.tolist(),
                    "writable": bool(x.flags.writeable),
                }
            elif isinstance(x, str):
                seen = {"kind": "str", "value": x}
            else:
                seen = {"kind": "bytes", "hex": x.hex()}
            out.append({"call": calls[0], "batch": len(inputs), "input": seen})
        return out

    return predict


def _check_outputs(outputs: list[Any], expected: list[dict[str, Any]], call: int) -> None:
    assert len(outputs) == len(expected)
    for out, want in zip(outputs, expected, strict=True):
        assert out["call"] == call, "the model must be called once per batch"
        assert out["batch"] == len(expected)
        seen = dict(out["input"])
        if seen["kind"] == "ndarray":
            # Inputs arrive as writable arrays (one copy of the payload).
            assert seen.pop("writable") is True
        assert seen == want


@pytest.mark.parametrize("input_type", list(BATCHES))
@pytest.mark.parametrize("kind", ["model_class", "closure"])
def test_input_type_round_trip(
    containers: Launcher, tmp_path: Path, input_type: str, kind: str
) -> None:
    if kind == "model_class":
        args = model_class_args("EchoModel", input_type=input_type)
    else:
        args = closure_args(pickle_closure(tmp_path / "f.pkl", _closure()), input_type, name="m")
    container = containers.start(*args)
    inputs, expected = BATCHES[input_type]

    async def scenario() -> None:
        async with ReplicaClient(container.address, model_name="m", model_version="1") as client:
            await client.wait_ready(30)
            first = await client.predict(inputs, input_type, timeout=30)
            _check_outputs(first, expected, call=1)
            second = await client.predict(inputs[:1], input_type, timeout=30)
            _check_outputs(second, expected[:1], call=2)
            assert await client.predict([], input_type, timeout=30) == []

    run_async(scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tensor_outputs_one_call_per_batch(containers: Launcher, loop: str) -> None:
    """A model returning one (N, 2) array: TENSOR encoding, numpy arrays back."""
    container = containers.start(*model_class_args("MatrixModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            batch = [np.zeros(n, dtype=np.float32) for n in (1, 5, 0, 3)]
            outputs = await client.predict(batch, "floats", timeout=30)
            assert all(isinstance(o, np.ndarray) and o.dtype == np.int64 for o in outputs)
            assert np.array_equal(np.stack(outputs), [[1, 1], [1, 5], [1, 0], [1, 3]])
            outputs = await client.predict(batch[:2], "floats", timeout=30)
            assert np.array_equal(np.stack(outputs), [[2, 1], [2, 5]])

    run_async(scenario, loop=loop)


def test_numpy_scalars_travel_as_tensor(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            outputs = await client.predict(
                [np.array([1.0, 2.5]), np.array([]), np.array([1e-3])], "doubles", timeout=30
            )
            assert [type(o) for o in outputs] == [np.float64] * 3
            assert [float(o) for o in outputs] == [3.5, 0.0, 1e-3]

    run_async(scenario)


def test_mixed_closure_outputs(containers: Launcher, tmp_path: Path) -> None:
    """JSON with numpy values inside; bytes outputs travel raw."""

    def as_json(inputs: list[Any]) -> list[Any]:
        return [
            {"mean": np.float32(x.mean()) if x.size else None, "ids": np.arange(2)}
            if x.size % 2
            else str(x.size)
            for x in inputs
        ]

    def as_bytes(inputs: list[Any]) -> list[Any]:
        return [s.encode("utf-8")[::-1] for s in inputs]

    json_model = containers.start(
        *closure_args(pickle_closure(tmp_path / "j.pkl", as_json), "doubles")
    )
    bytes_model = containers.start(
        *closure_args(pickle_closure(tmp_path / "b.pkl", as_bytes), "strings")
    )

    async def scenario() -> None:
        async with ReplicaClient(json_model.address) as a, ReplicaClient(bytes_model.address) as b:
            await a.wait_ready(30)
            await b.wait_ready(30)
            got = await a.predict([np.array([1.0, 2.0, 4.5]), np.array([1.0, 2.0])], "doubles")
            assert got == [{"mean": 2.5, "ids": [0, 1]}, "2"]
            assert await b.predict(["abc", "", "é"], "strings") == [
                b"cba",
                b"",
                "é".encode()[::-1],
            ]

    run_async(scenario)
