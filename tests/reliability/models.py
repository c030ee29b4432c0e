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


def make_gated_logger(log_path: str, gate_path: str, limit: float = 60.0) -> Any:
    """Appends ``<pid> <input>`` to ``log_path`` for each input of a batch, then
    holds the batch until ``gate_path`` exists (at most ``limit`` seconds) and
    answers ``[pid, 2 * input]``: a batch it logged is in the model until the test
    opens the gate, however slow the test is."""

    def predict(inputs: list[Any]) -> list[list[float]]:
        pid = os.getpid()
        with open(log_path, "a") as f:
            for x in inputs:
                f.write(f"{pid} {float(x[0])!r}\n")
        end = time.monotonic() + limit
        while not os.path.exists(gate_path) and time.monotonic() < end:
            time.sleep(0.01)
        return [[pid, 2.0 * float(x[0])] for x in inputs]

    return predict


def read_pid_calls(log_path: str) -> list[tuple[int, float]]:
    """The (pid, input) pairs the gated logger has seen, in order."""
    try:
        with open(log_path) as f:
            lines = [line.split() for line in f if line.endswith("\n")]
        return [(int(pid), float(x)) for pid, x in lines]
    except FileNotFoundError:
        return []


def make_crasher(log_path: str, poison: float, seconds: float = 0.0) -> Any:
    """Appends ``<pid> <input>`` to ``log_path`` for each input of a batch, sleeps
    ``seconds``, then exits the process (``os._exit(1)``) if the batch holds an
    input whose first value is ``poison``; otherwise answers ``2 * input``."""

    def predict(inputs: list[Any]) -> list[float]:
        pid = os.getpid()
        with open(log_path, "a") as f:
            for x in inputs:
                f.write(f"{pid} {float(x[0])!r}\n")
        time.sleep(seconds)
        if any(float(x[0]) == poison for x in inputs):
            os._exit(1)
        return [2.0 * float(x[0]) for x in inputs]

    return predict


def make_negative_crasher(log_path: str) -> Any:
    """Like :func:`make_crasher`, but every negative input is poison: a client can
    send a new one each time."""

    def predict(inputs: list[Any]) -> list[float]:
        pid = os.getpid()
        with open(log_path, "a") as f:
            for x in inputs:
                f.write(f"{pid} {float(x[0])!r}\n")
        if any(float(x[0]) < 0 for x in inputs):
            os._exit(1)
        return [2.0 * float(x[0]) for x in inputs]

    return predict


def make_non_finite(as_array: bool) -> Any:
    """Answers each input with ``[x[0], inf, -inf, nan]``: a list (sent as JSON by
    the container) or a float64 array (sent as a tensor)."""

    def predict(inputs: list[Any]) -> list[Any]:
        rows = [[float(x[0]), float("inf"), float("-inf"), float("nan")] for x in inputs]
        if as_array:
            import numpy as np

            return [np.array(r, dtype=np.float64) for r in rows]
        return rows

    return predict


def make_stuck() -> Any:
    """Never returns: a hung model (its container still answers health checks)."""

    def predict(inputs: list[Any]) -> list[float]:
        import threading

        threading.Event().wait()
        return []

    return predict
