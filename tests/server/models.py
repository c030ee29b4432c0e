"""Model functions used by the end-to-end tests (pickled by value into containers)."""

from __future__ import annotations

import os
import time
from typing import Any


def make_sum() -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        return [float(sum(x)) for x in inputs]

    return predict


def make_sleepy(seconds: float) -> Any:
    def predict(inputs: list[Any]) -> list[Any]:
        time.sleep(seconds)
        return [os.getpid() for _ in inputs]

    return predict


def make_timed(seconds: float) -> Any:
    """Sleeps, then reports (pid, start, end) so tests can see overlapping calls."""

    def predict(inputs: list[Any]) -> list[Any]:
        start = time.time()
        time.sleep(seconds)
        return [[os.getpid(), start, time.time()] for _ in inputs]

    return predict


def make_constant(value: Any, delay: float = 0.0) -> Any:
    def predict(inputs: list[Any]) -> list[Any]:
        if delay:
            time.sleep(delay)
        return [value for _ in inputs]

    return predict


def make_counter() -> Any:
    calls = {"n": 0}

    def predict(inputs: list[Any]) -> list[int]:
        out = []
        for _ in inputs:
            calls["n"] += 1
            out.append(calls["n"])
        return out

    return predict


def make_failing() -> Any:
    def predict(inputs: list[Any]) -> list[Any]:
        if any(float(x[0]) < 0 for x in inputs):
            raise ValueError("negative inputs are not supported")
        return [1 for _ in inputs]

    return predict
