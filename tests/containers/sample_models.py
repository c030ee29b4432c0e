"""Models served by the containers of these tests (imported inside the containers).

Each model reports what it saw and how many times it was called, so that the
tests can read back, through a real Predict, that one batch is one model call.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from model_containers import Model, TensorSpec


def describe(value: Any) -> dict[str, Any]:
    """A JSON-able picture of one decoded input."""
    if isinstance(value, np.ndarray):
        return {
            "kind": "ndarray",
            "dtype": value.dtype.str,
            "ndim": value.ndim,
            "values": value.tolist(),
            "writable": bool(value.flags.writeable),
        }
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    if isinstance(value, bytes):
        return {"kind": "bytes", "hex": value.hex()}
    return {"kind": type(value).__name__}


class EchoModel(Model):
    """One JSON output per input: the call number, the batch size, the input."""

    output_type = "json"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs: list[Any]) -> list[Any]:
        self.calls += 1
        return [{"call": self.calls, "batch": len(inputs), "input": describe(x)} for x in inputs]


class SumModel(Model):
    """Doubles in, one float64 scalar out per input (TENSOR encoding)."""

    input_type = "doubles"

    def predict(self, inputs: list[Any]) -> list[Any]:
        if any(x.size and x[0] < 0 for x in inputs):
            raise ValueError("bad feature count")
        return [np.float64(x.sum()) for x in inputs]


class MatrixModel(Model):
    """Returns one (N, 2) int64 array: [call number, input length] per row."""

    input_type = "floats"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs: list[Any]) -> Any:
        self.calls += 1
        return np.array([[self.calls, len(x)] for x in inputs], dtype=np.int64)


class WrongCountModel(Model):
    """Forgets the last output of every batch."""

    input_type = "doubles"

    def predict(self, inputs: list[Any]) -> list[Any]:
        return [0.0] * (len(inputs) - 1)


class SlowModel(Model):
    """Sleeps as many seconds as the first value of the first input."""

    input_type = "doubles"

    def predict(self, inputs: list[Any]) -> list[Any]:
        time.sleep(float(inputs[0][0]))
        return ["done"] * len(inputs)


class DescribedModel(Model):
    """Declares its metadata and records what load() saw."""

    input_type = "strings"
    output_type = "label"
    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    outputs = (TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1, 3)))

    def __init__(self) -> None:
        self.loads = 0
        self.seen_path: str | None = None

    def load(self) -> None:
        self.loads += 1
        self.seen_path = self.model_path

    def predict(self, inputs: list[Any]) -> list[Any]:
        return [{"loads": self.loads, "model_path": self.seen_path, "text": s} for s in inputs]


class BrokenLoadModel(Model):
    input_type = "doubles"

    def load(self) -> None:
        raise RuntimeError("weights file is corrupt")

    def predict(self, inputs: list[Any]) -> list[Any]:
        return inputs


class FolderModel(Model):
    """Loads ``weight.txt`` from its model folder; answers ``"<sum * weight> <folder>"``,
    so that a test sees which folder the container loaded."""

    input_type = "doubles"

    def load(self) -> None:
        with open(f"{self.model_path}/weight.txt") as f:
            self.weight = float(f.read())

    def predict(self, inputs: list[Any]) -> list[Any]:
        return [f"{float(x.sum()) * self.weight:g} {self.model_path}" for x in inputs]
