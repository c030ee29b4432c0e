"""Admission control: refuse early what would be served late.

Three pieces, all cheap enough for the hot path:

* :class:`~clipper_core.service_time.ServiceTimeEstimator` (in its own module,
  exported here) follows a model version's recent batch latency and
  per-item service time; :meth:`~ServiceTimeEstimator.expected_wait` turns a queue
  length into the time a newly queued input would wait.  ``ModelVersion.submit``
  refuses an input (:class:`~clipper_core.errors.Overloaded`, HTTP 503 with
  ``Retry-After``) when that wait exceeds the input's remaining deadline, instead of
  queueing work that would miss it anyway and delay everything behind it.
* :class:`ClientLimiter` enforces an optional per-client concurrency limit and
  token-bucket rate limit (HTTP 429 with ``Retry-After``).  A client is its API key
  when it sends one, else its remote address (:func:`client_key`).
* Deadline helpers (:func:`deadline_after`, :func:`deadline_from_headers`) turn a
  client's tighter deadline (the ``Clipper-Deadline-Ms`` header, or OIP's
  ``timeout`` parameter) into the absolute ``time.monotonic()`` deadline that
  ``DataPlane.predict(deadline=...)`` takes.
* :class:`QueryGate` is what every query route (Clipper's ``/predict`` and
  ``/update``, OIP over HTTP and gRPC) checks before any work, in one order: the
  client's limits (429), then the application's API keys (401/403), then the
  body's JSON nesting (:func:`check_json_depth`, 400).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from clipper_core.auth import ApiKeys
from clipper_core.errors import BadInput, RateLimited
from clipper_core.service_time import SPIKE_LIMIT, ServiceTimeEstimator

__all__ = [
    "ADMISSION_HEADROOM",
    "DEADLINE_HEADER",
    "MAX_DEADLINE_SECONDS",
    "SPIKE_LIMIT",
    "ClientLimiter",
    "QueryGate",
    "ServiceTimeEstimator",
    "check_json_depth",
    "client_key",
    "deadline_after",
    "deadline_from_headers",
    "retry_after_header",
]

#: The request header that carries a client's deadline, in milliseconds from now
#: (lower-cased, as ``Request.headers`` holds names).
DEADLINE_HEADER = "clipper-deadline-ms"

#: The longest deadline a client may ask for; longer ones are a client bug.
MAX_DEADLINE_SECONDS = 86_400.0

#: Share of a request's remaining deadline that its expected queueing wait may
#: fill; the rest absorbs the estimate's error, the reply's encoding and event-loop
#: lag, so that what is admitted is answered in time.
ADMISSION_HEADROOM = 0.8

_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def deadline_after(
    value: object, unit: Literal["s", "ms", "us"] = "ms", *, now: float | None = None
) -> float:
    """The absolute ``time.monotonic()`` deadline ``value`` units from now.

    For front ends that take a client's deadline: the Clipper REST header
    (milliseconds), OIP's ``timeout`` request parameter (Triton documents it in
    microseconds: ``deadline_after(timeout, "us")``), a gRPC deadline (seconds).
    Pass the result as ``DataPlane.predict(..., deadline=...)``; the app's SLO still
    applies when it is tighter.

    Args:
        value: A positive number, or a string holding one.
        unit: ``"s"``, ``"ms"`` or ``"us"``.
        now: The current ``time.monotonic()`` (read when omitted).

    Raises:
        BadInput: ``value`` is not a finite number > 0 (booleans are refused), or it
            is longer than :data:`MAX_DEADLINE_SECONDS`.
    """
    scale = _UNITS.get(unit)
    if scale is None:
        raise ValueError(f"unknown deadline unit {unit!r}")
    number: float
    if isinstance(value, bool):
        raise BadInput(f"deadline must be a number of {unit}, got a boolean")
    if isinstance(value, int | float):
        # An int past the float range is as infinite as the string "1e400".
        number = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
    elif isinstance(value, str | bytes):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        try:
            number = float(text.strip())
        except ValueError:
            raise BadInput(f"deadline must be a number of {unit}, got {text[:40]!r}") from None
    else:
        raise BadInput(f"deadline must be a number of {unit}, got {type(value).__name__}")
    seconds = number * scale
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadInput(f"deadline must be a positive, finite number of {unit}, got {number!r}")
    if seconds > MAX_DEADLINE_SECONDS:
        raise BadInput(
            f"deadline of {number:g} {unit} exceeds the limit of {MAX_DEADLINE_SECONDS:g} s"
        )
    return (time.monotonic() if now is None else now) + seconds


def deadline_from_headers(headers: Mapping[str, str]) -> float | None:
    """The deadline a Clipper REST request asks for with ``Clipper-Deadline-Ms``,
    or None.  ``headers`` has lower-cased names (as ``Request.headers``).

    Raises:
        BadInput: The header is present but not a positive number of milliseconds.
    """
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    return deadline_after(raw, "ms")


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1 (RFC 9110 delta-seconds)."""
    if not math.isfinite(seconds):
        return "1"
    return str(max(1, math.ceil(seconds)))


def client_key(
    headers: Mapping[str, str], remote: str, known_key: Callable[[str], bool] | None = None
) -> str:
    """Who a request counts against for per-client limits.

    A valid API key when one is sent (``X-Api-Key`` or ``Authorization: Bearer``),
    so that clients behind one proxy are told apart; hashed, so the limiter holds
    no secrets.  Otherwise the remote address without its port.  Only keys that
    ``known_key`` accepts count: a client sending a fresh made-up key with each
    request must not get a fresh allowance each time.
    """
    key = headers.get("x-api-key")
    if not key:
        auth = headers.get("authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            key = rest.strip()
    key = (key or "").strip()
    if key and known_key is not None and known_key(key):
        return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return "addr:" + remote


class _ClientState:
    __slots__ = ("in_flight", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.in_flight = 0
        self.tokens = tokens
        self.stamp = stamp


class ClientLimiter:
    """Per-client concurrency and rate limits; answers 429 at once beyond them.

    Args:
        max_concurrency: Requests one client may have in flight (0: no limit).
        rate: Requests per second one client may start, on average (0: no limit).
        burst: Requests a client may start at once after being idle (the token
            bucket's size); 0 means ``max(1, ceil(rate))``.
        max_clients: How many clients are remembered; beyond it the least recently
            seen idle ones are forgotten (a forgotten client starts with a full
            bucket), so that memory stays bounded whatever the number of addresses.

    Every successful :meth:`acquire` must be paired with one :meth:`release` (in a
    ``finally``).
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 0,
        rate: float = 0.0,
        burst: int = 0,
        max_clients: int = 65_536,
    ) -> None:
        if max_concurrency < 0 or rate < 0 or burst < 0 or max_clients < 1:
            raise ValueError("limits must be >= 0 and max_clients >= 1")
        self.max_concurrency = max_concurrency
        self.rate = float(rate)
        self.burst = float(burst or max(1, math.ceil(rate)))
        self.max_clients = max_clients
        self.rejected = 0
        self._clients: OrderedDict[str, _ClientState] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return self.max_concurrency > 0 or self.rate > 0

    def __len__(self) -> int:
        return len(self._clients)

    def acquire(self, client: str) -> None:
        """Count a request of ``client`` in, or refuse it.

        Raises:
            RateLimited: The client has ``max_concurrency`` requests in flight, or
                its token bucket is empty.  ``retry_after`` says when to come back.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        clients = self._clients
        state = clients.get(client)
        if state is None:
            state = _ClientState(self.burst, now)
            clients[client] = state
            if len(clients) > self.max_clients:
                self._evict()
        else:
            clients.move_to_end(client)
        if self.max_concurrency and state.in_flight >= self.max_concurrency:
            self.rejected += 1
            raise RateLimited(
                f"too many concurrent requests from this client (limit {self.max_concurrency})",
                retry_after=1.0,
            )
        if self.rate > 0:
            state.tokens = min(self.burst, state.tokens + (now - state.stamp) * self.rate)
            state.stamp = now
            if state.tokens < 1.0:
                self.rejected += 1
                raise RateLimited(
                    f"request rate of this client exceeds {self.rate:g}/s",
                    retry_after=(1.0 - state.tokens) / self.rate,
                )
            state.tokens -= 1.0
        state.in_flight += 1

    def release(self, client: str) -> None:
        """Count a request of ``client`` out (it finished, failed or was cancelled)."""
        if not self.enabled:
            return
        state = self._clients.get(client)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def _evict(self) -> None:
        # Oldest first; a client with requests in flight is kept (its release must
        # find it), and there are at most as many of those as open requests.
        clients = self._clients
        excess = len(clients) - self.max_clients
        victims: list[str] = []
        for key, state in clients.items():
            if state.in_flight == 0:
                victims.append(key)
                if len(victims) >= excess:
                    break
        for key in victims:
            del clients[key]


class QueryGate:
    """The checks of every query route, before any work, in one order.

    1. :meth:`admit`: the client's concurrency and rate limits (429), first
       because they are the cheapest refusal and must hold whatever the request
       carries -- a client over its limit gets 429 with or without a valid key;
    2. :meth:`check`: the application's API keys (401, 403);
    3. :meth:`check_body`: the JSON nesting of the body (400).

    Args:
        limiter: The per-client limits.
        api_keys: The applications' API keys.
        max_json_depth: Deepest JSON nesting a query body may have (0: no limit).
    """

    __slots__ = ("api_keys", "limiter", "max_json_depth")

    def __init__(self, limiter: ClientLimiter, api_keys: ApiKeys, max_json_depth: int) -> None:
        self.limiter = limiter
        self.api_keys = api_keys
        self.max_json_depth = max_json_depth

    def client_of(self, headers: Mapping[str, str], peer: str) -> str:
        """Who the request counts against (:func:`client_key`); "" without limits."""
        if not self.limiter.enabled:
            return ""
        return client_key(headers, peer, self.api_keys.known)

    def admit(self, headers: Mapping[str, str], peer: str) -> str:
        """Count the request in against its client's limits; the client, which
        must be passed to :meth:`release` once (in a ``finally``).

        Raises:
            RateLimited: The client is over a limit.
        """
        client = self.client_of(headers, peer)
        self.limiter.acquire(client)
        return client

    def release(self, client: str) -> None:
        """Count a request admitted by :meth:`admit` out."""
        self.limiter.release(client)

    def check(self, app_name: str, headers: Mapping[str, str]) -> None:
        """Let a query of ``app_name`` through its API keys, or raise.

        Raises:
            Unauthorized: The app requires a key and none, or an unknown one, came.
            Forbidden: The key belongs to another application.
        """
        self.api_keys.check(app_name, headers)

    def required(self, app_name: str) -> bool:
        """Whether ``app_name`` requires an API key."""
        return self.api_keys.required(app_name)

    def any_required(self) -> bool:
        """Whether some application requires an API key."""
        return self.api_keys.any_required()

    def check_body(self, body: bytes) -> None:
        """Refuse a JSON body nested deeper than ``max_json_depth`` (BadInput)."""
        check_json_depth(body, self.max_json_depth)


# Possessive, and an unterminated string runs to the end: one linear pass (the
# plain form retried at every quote of an unterminated string: quadratic).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Brackets to int8 steps (+1 opening, -1 closing): the depth is their running sum.
_STEPS = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Refuse a JSON document nested deeper than ``max_depth`` before parsing it.

    Runs at C speed, in time linear in the body (it runs on the event loop):
    a body with at most ``max_depth`` brackets passes at once; otherwise strings
    are blanked out (one regex pass) and the depth is the running sum of the
    brackets left (numpy).  A malformed body is left for the JSON parser to
    report.

    Raises:
        BadInput: The body nests arrays/objects more than ``max_depth`` deep.
    """
    if max_depth <= 0 or body.count(b"[") + body.count(b"{") <= max_depth:
        return
    if b'"' in body:
        body = _JSON_STRING.sub(b"", body)
    brackets = body.translate(None, _NOT_BRACKETS)
    if len(brackets) <= max_depth:
        return
    depth = np.cumsum(np.frombuffer(brackets.translate(_STEPS), dtype=np.int8), dtype=np.int32)
    if depth[-1] == 0 and int(depth.max()) > max_depth:  # unbalanced: the parser says so
        raise BadInput(f"request body nests JSON deeper than the limit of {max_depth} levels")
