"""Model functions of the pipeline tests (pickled into their containers)."""

from __future__ import annotations

import json
import time
from typing import Any


def make_scale(factor: float, delay: float = 0.0) -> Any:
    """doubles -> doubles: each element times ``factor`` (after ``delay`` s)."""

    def predict(inputs: list[Any]) -> list[list[float]]:
        if delay:
            time.sleep(delay)
        return [[float(v) * factor for v in x] for x in inputs]

    return predict


def make_add(amount: float) -> Any:
    """doubles -> doubles: each element plus ``amount``."""

    def predict(inputs: list[Any]) -> list[list[float]]:
        return [[float(v) + amount for v in x] for x in inputs]

    return predict


def make_total() -> Any:
    """doubles -> a number: the sum."""

    def predict(inputs: list[Any]) -> list[float]:
        return [float(sum(x)) for x in inputs]

    return predict


def make_fuse() -> Any:
    """strings (a JSON object of vectors by stage) -> "stage=sum;..." by name."""

    def predict(inputs: list[str]) -> list[str]:
        out = []
        for text in inputs:
            parts = json.loads(text)
            out.append(";".join(f"{k}={sum(v):g}" for k, v in sorted(parts.items())))
        return out

    return predict
