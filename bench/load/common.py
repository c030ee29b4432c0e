"""What every load generator shares: result codes, schedules, the per-request
recorder and the state of one worker's run."""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from typing import Any

import numpy as np

ERR_CONNECT = -1
ERR_RESET = -2
ERR_TIMEOUT = -3
ERR_PARSE = -4
ERR_UNFINISHED = -5
ERROR_KINDS = {
    ERR_CONNECT: "connect",
    ERR_RESET: "connection_closed",
    ERR_TIMEOUT: "timeout",
    ERR_PARSE: "bad_response",
    ERR_UNFINISHED: "unfinished",
}
GRPC_BASE = -100


_now = time.monotonic


def error_kind(code: int) -> str:
    """A readable name for a result code that is not 200."""
    if code > 0:
        return f"http_{code}"
    if code <= GRPC_BASE:
        import grpc

        value = GRPC_BASE - code
        for sc in grpc.StatusCode:
            if sc.value[0] == value:
                return f"grpc_{sc.name}"
        return f"grpc_{value}"
    return ERROR_KINDS.get(code, f"error_{code}")


# -- schedules ---------------------------------------------------------------------


def arrival_times(
    mode: str, rate: float, horizon: float, *, burst_size: int = 1, seed: int = 0
) -> np.ndarray[Any, Any]:
    """Send times (seconds from the start) over ``[0, horizon)``.

    ``open``: a Poisson process of the given rate.  ``burst``: Poisson arrivals of
    bursts at ``rate / burst_size``, each ``burst_size`` requests at one instant
    (the same mean rate, far burstier).
    """
    rng = np.random.default_rng(seed)
    if mode == "burst":
        times = arrival_times("open", rate / burst_size, horizon, seed=seed)
        return np.repeat(times, burst_size)
    if mode != "open":
        raise ValueError(f"no schedule for mode {mode!r}")
    expected = rate * horizon
    n = int(expected + 6 * math.sqrt(expected) + 16)
    gaps = rng.exponential(1.0 / rate, n)
    times = np.cumsum(gaps) - gaps[0]
    while times[-1] < horizon:  # pragma: no cover - 6 sigma
        more = np.cumsum(rng.exponential(1.0 / rate, n)) + times[-1]
        times = np.concatenate([times, more])
    return times[times < horizon]


def payload_order(
    distribution: str, distinct: int, count: int, *, zipf_s: float = 1.1, seed: int = 0
) -> np.ndarray[Any, Any]:
    """Which payload each request sends: round robin, or Zipf(s) over the payloads
    (the most popular payload is a random one, not always the first)."""
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        return (np.arange(count) + int(rng.integers(distinct))) % distinct
    if distribution == "zipf":
        ranks = np.arange(1, distinct + 1, dtype=np.float64)
        p = ranks**-zipf_s
        p /= p.sum()
        perm = rng.permutation(distinct)
        return perm[rng.choice(distinct, size=count, p=p)]
    raise ValueError(f"unknown distribution {distribution!r}")


# -- recording ---------------------------------------------------------------------


class Recorder:
    """Per-request figures, appended as they complete (array appends: cheap)."""

    __slots__ = ("code", "default", "lag", "t0", "t1")

    def __init__(self) -> None:
        self.t0 = array("d")  # latency origin: the send (closed) or the schedule (open)
        self.t1 = array("d")  # completion
        self.code = array("i")
        self.default = array("b")
        self.lag = array("d")  # open loop: actual send - scheduled send

    def add(self, t0: float, t1: float, code: int, default: bool) -> None:
        self.t0.append(t0)
        self.t1.append(t1)
        self.code.append(code)
        self.default.append(default)

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        return {
            "t0": np.frombuffer(self.t0, dtype=np.float64).copy(),
            "t1": np.frombuffer(self.t1, dtype=np.float64).copy(),
            "code": np.frombuffer(self.code, dtype=np.int32).copy(),
            "default": np.frombuffer(self.default, dtype=np.int8).astype(bool),
            "lag": np.frombuffer(self.lag, dtype=np.float64).copy(),
        }


class LoadRun:
    """State shared by the clients of one worker's run."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rec = Recorder()
        self.payloads: list[bytes] = spec["payloads"]
        self.order: np.ndarray[Any, Any] = spec["order"]
        self.order_list: list[int] = self.order.tolist()
        self.next_index = 0
        self.max_requests: int = spec.get("max_requests", 0) or 1 << 62
        self.sent = 0
        self.timeout: float = spec["timeout_s"]
        self.stop_at = math.inf
        self.in_flight = 0
        self.idle_event: asyncio.Event | None = None

    def next_payload(self) -> bytes:
        i = self.next_index
        self.next_index = i + 1
        order = self.order_list
        return self.payloads[order[i % len(order)]]

    def note_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.idle_event is not None:
            self.idle_event.set()
