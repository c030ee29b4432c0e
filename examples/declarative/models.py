"""The model functions of ``app.toml`` (``source = "models.py:NAME"``).

Each takes a list of inputs (a batch) and returns one output per input.  They are
pickled by value: the code deployed is the code in this file when it is applied.
"""

from __future__ import annotations

from typing import Any


def scale(inputs: list[Any]) -> list[list[float]]:
    """Doubles every value of each input."""
    return [[2.0 * float(v) for v in x] for x in inputs]


def total(inputs: list[Any]) -> list[float]:
    """The sum of each input."""
    return [float(sum(x)) for x in inputs]
