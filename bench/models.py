"""The models the scenarios deploy.  Each is a callable: a list of N inputs in, N
outputs out.  ``bench.serverproc`` cloudpickles them *by value*, so a container
does not need ``bench`` on its path.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class Echo:
    """noop: answer each input with itself."""

    def __call__(self, inputs: list[Any]) -> list[Any]:
        return inputs


class MatMul:
    """y = x @ W for the whole batch in one product; W is dim x dim float32, seeded.

    W is made in the container on the first batch (not shipped in the pickle).
    ``output="argmax"`` answers one int per query instead of the dim-float row,
    which takes the reply's JSON encoding out of the measurement.
    """

    def __init__(self, dim: int, seed: int, output: str = "full") -> None:
        self.dim = dim
        self.seed = seed
        self.output = output
        self._w: np.ndarray[Any, Any] | None = None

    def _weights(self) -> np.ndarray[Any, Any]:
        if self._w is None:
            rng = np.random.default_rng(self.seed)
            self._w = (rng.standard_normal((self.dim, self.dim)) / np.sqrt(self.dim)).astype(
                np.float32
            )
        return self._w

    def __call__(self, inputs: list[Any]) -> Any:
        x = np.stack(inputs).astype(np.float32, copy=False)
        y = x @ self._weights()
        if self.output == "argmax":
            return y.argmax(axis=1).astype(np.int64)
        return y


class SleepModel:
    """A batch of n takes a*n + b seconds (time.sleep: it frees the CPU)."""

    def __init__(self, a_s: float, b_s: float) -> None:
        self.a_s = a_s
        self.b_s = b_s

    def __call__(self, inputs: list[Any]) -> Any:
        n = len(inputs)
        time.sleep(self.a_s * n + self.b_s)
        # Each answer carries the size of its batch (handy when reading replies).
        return np.full(n, float(n), dtype=np.float32)


class Standardize:
    """pipeline preprocess: each input scaled to mean 0 and standard deviation 1."""

    def __call__(self, inputs: list[Any]) -> Any:
        x = np.stack(inputs).astype(np.float32, copy=False)
        x = x - x.mean(axis=1, keepdims=True)
        return x / (x.std(axis=1, keepdims=True) + np.float32(1e-6))


class Argmax:
    """pipeline: the index of each input's largest value (one int per query)."""

    def __call__(self, inputs: list[Any]) -> Any:
        return np.stack(inputs).argmax(axis=1).astype(np.int64)


class Lookup:
    """pipeline's conditional second model: a seeded table of ``dim`` labels
    looked up by each input's first value (a class index)."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.seed = seed

    def __call__(self, inputs: list[Any]) -> Any:
        table = np.random.default_rng(self.seed).integers(0, 1000, self.dim)
        index = np.array([int(x[0]) % self.dim for x in inputs])
        return table[index].astype(np.int64)


def build(kind: str, *, dim: int, seed: int, output: str, a_ms: float, b_ms: float) -> Any:
    """The model object for a scenario's ``[model]`` table (or a pipeline stage)."""
    if kind == "noop":
        return Echo()
    if kind == "preprocess":
        return Standardize()
    if kind == "argmax":
        return Argmax()
    if kind == "lookup":
        return Lookup(dim, seed)
    if kind == "matmul":
        return MatMul(dim, seed, output)
    if kind == "sleep":
        return SleepModel(a_ms / 1000.0, b_ms / 1000.0)
    raise ValueError(f"unknown model kind {kind!r}")
