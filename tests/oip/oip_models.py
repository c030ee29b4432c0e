"""Models served in the OIP tests (pickled by value into their containers)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from model_containers import Model, TensorSpec

#: Every OIP datatype but BYTES.
NUMERIC = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
)
ALL_DATATYPES = (*NUMERIC, "BYTES")


def input_name(datatype: str) -> str:
    return f"in_{datatype.lower()}"


class Echo(Model):
    """One input of each datatype, each answered unchanged as ``out_<type>``."""

    input_type = "bytes"
    inputs = tuple(TensorSpec(input_name(d), d, (-1, -1)) for d in ALL_DATATYPES)
    outputs = tuple(TensorSpec(f"out_{d.lower()}", d, (-1, -1)) for d in ALL_DATATYPES)

    def predict_tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {f"out_{name[3:]}": arr for name, arr in inputs.items()}


class Mixer(Model):
    """Several inputs and outputs, and the rows of each model call.

    ``total = a + b`` (FP32), ``upper`` = the text upper-cased, ``rows`` = how many
    rows the model call held (all the requests the batcher merged), ``half`` =
    ``b / 2`` in FP16.
    """

    input_type = "floats"
    inputs = (
        TensorSpec("a", "INT32", (-1, 2)),
        TensorSpec("b", "FP16", (-1, 2)),
        TensorSpec("text", "BYTES", (-1, 1)),
    )
    outputs = (
        TensorSpec("total", "FP32", (-1, 2)),
        TensorSpec("upper", "BYTES", (-1, 1)),
        TensorSpec("rows", "INT64", (-1,)),
        TensorSpec("half", "FP16", (-1, 2)),
    )
    delay = 0.0

    def predict_tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if self.delay:
            time.sleep(self.delay)
        a, b, text = inputs["a"], inputs["b"], inputs["text"]
        n = a.shape[0]
        upper = np.array([[v.upper()] for v in text.reshape(n)], dtype=object)
        return {
            "total": a.astype(np.float32) + b.astype(np.float32),
            "upper": upper,
            "rows": np.full(n, n, dtype=np.int64),
            "half": (b / 2).astype(np.float16),
        }


class Scaler(Model):
    """Takes the request parameters: ``y = x * scale`` (parameter ``scale``,
    default 1), ``keys`` = the parameter names the model received (JSON, one row
    each), ``rows`` = the rows of the model call (all the requests merged)."""

    input_type = "doubles"
    inputs = (TensorSpec("x", "FP64", (-1, -1)),)
    outputs = (
        TensorSpec("y", "FP64", (-1, -1)),
        TensorSpec("keys", "BYTES", (-1,)),
        TensorSpec("rows", "INT64", (-1,)),
    )

    def predict_tensors(
        self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        params = dict(parameters or {})
        x = inputs["x"]
        n = x.shape[0]
        time.sleep(0.02)  # long enough for concurrent requests to queue up together
        keys = json.dumps(sorted(params))
        return {
            "y": x * float(params.get("scale", 1.0)),
            "keys": np.array([keys] * n, dtype=object),
            "rows": np.full(n, n, dtype=np.int64),
        }


class SlowMixer(Mixer):
    delay = 0.15


def make_sum() -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        return [float(sum(x)) for x in inputs]

    return predict


def make_shout() -> Any:
    def predict(inputs: list[Any]) -> list[str]:
        return [s.upper() + "!" for s in inputs]

    return predict


def make_sleepy(seconds: float) -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        time.sleep(seconds)
        return [1.0 for _ in inputs]

    return predict


class LateDescription(Model):
    """Row sums, whose description (the container's metadata) takes ``delay``
    seconds once the file ``flag`` exists: a version the frontend connected to
    (its first description was quick) but whose description for OIP is late."""

    input_type = "doubles"

    def __init__(self, flag: str, delay: float) -> None:
        self.flag = flag
        self.delay = delay

    @property  # type: ignore[override]
    def platform(self) -> str:  # read by every metadata call
        if os.path.exists(self.flag):
            time.sleep(self.delay)
        return "late_description"

    def predict(self, inputs: list[Any]) -> list[float]:
        return [float(np.sum(x)) for x in inputs]
