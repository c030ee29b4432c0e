"""Model functions for the reliability tests (pickled by value into containers)."""

from __future__ import annotations

import os
import time
from typing import Any


def make_logging_sleeper(log_path: str, seconds: float) -> Any:
    """Appends each input's first value to ``log_path`` (one line per input) before
    sleeping ``seconds`` per batch: the file is the model's call record."""

    def predict(inputs: list[Any]) -> list[float]:
        with open(log_path, "a") as f:
            for x in inputs:
                f.write(f"{float(x[0])!r}\n")
        time.sleep(seconds)
        return [float(x[0]) for x in inputs]

    return predict


def make_hanger() -> Any:
    """Hangs (for an hour) on a negative input; answers others at once."""

    def predict(inputs: list[Any]) -> list[int]:
        if any(float(x[0]) < 0 for x in inputs):
            time.sleep(3600)
        return [os.getpid() for _ in inputs]

    return predict


def make_sleeper(seconds: float) -> Any:
    def predict(inputs: list[Any]) -> list[float]:
        time.sleep(seconds)
        return [float(sum(x)) for x in inputs]

    return predict


def read_calls(log_path: str) -> list[float]:
    """The inputs the logging model has seen, in order."""
    try:
        with open(log_path) as f:
            return [float(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
