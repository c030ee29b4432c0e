"""Applications: what a client queries, with a latency objective and a default output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipper_core.dataplane.model_version import ModelVersion, _consume
from clipper_core.errors import ClipperError, DeadlineExceeded
from clipper_core.metrics import AppMetrics, error_kind, record_failure

if TYPE_CHECKING:
    from clipper_core.selection.runtime import AppSelector


@dataclass(slots=True)
class Outcome:
    """The answer to one input: an output, or the app's default output and why."""

    output: Any
    default: bool = False
    explanation: str | None = None
    model: str | None = None
    # Set by selection policies that may query several models (clipper_core.selection):
    # the model versions that answered, the answer's confidence, those that did not.
    models: list[str] | None = None
    confidence: float | None = None
    missing: list[str] | None = None


@dataclass
class Application:
    """A registered application (Clipper's ``register_application``)."""

    name: str
    input_type: str
    default_output: Any
    slo: float  # seconds
    linked_models: list[str] = field(default_factory=list)
    policy: str = "single"
    metrics: AppMetrics = field(default_factory=AppMetrics, repr=False, compare=False)
    # The app's selection policy at work (set by the server; None: the direct path).
    selector: AppSelector | None = field(default=None, repr=False, compare=False)

    @property
    def routes_queries(self) -> bool:
        """Whether queries go through the app's selection policy (not ``single``)."""
        return self.selector is not None and self.selector.routes_queries

    def default(self, explanation: str) -> Outcome:
        return Outcome(self.default_output, True, explanation)


async def wait_until(futures: Sequence[asyncio.Future[Any]], deadline: float) -> None:
    """Wait until every future is done or the monotonic ``deadline`` passes.

    One waiter and one timer for the whole batch: no task per future.
    """
    pending = [f for f in futures if not f.done()]
    if not pending:
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(pending)

    def on_done(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not waiter.done():
            waiter.set_result(None)

    def on_timeout() -> None:
        if not waiter.done():
            waiter.set_result(None)

    for f in pending:
        f.add_done_callback(on_done)
    timer = loop.call_later(remaining, on_timeout)
    try:
        await waiter
    finally:
        timer.cancel()
        for f in pending:
            f.remove_done_callback(on_done)


def _withdraw(futures: Sequence[asyncio.Future[Any]]) -> int:
    """Cancel the futures still pending; a queued input whose every requester
    cancelled is skipped by the dispatchers (``ModelVersion.submit``).  Returns how
    many were cancelled."""
    n = 0
    for f in futures:
        if f.cancel():
            n += 1
        else:
            f.add_done_callback(_consume)
    return n


async def predict_with_slo(
    app: Application,
    model: ModelVersion,
    inputs: Sequence[Any],
    keys: Sequence[bytes],
    deadline: float,
    *,
    raise_errors: bool,
) -> list[Outcome]:
    """Send each input to ``model`` and collect answers until ``deadline``.

    Inputs not answered in time get the app's default output, flagged.  A model
    error raises when ``raise_errors`` (a single query) and otherwise becomes a
    flagged default for that input only (one reply per input in a batch).
    """
    started = time.monotonic()
    futures: list[asyncio.Future[Any]] = []
    try:
        if model.cache is None:  # no key is read: do not make them
            for value in inputs:
                futures.append(model.submit(value, b"", deadline))
        else:
            for value, key in zip(inputs, keys, strict=True):
                futures.append(model.submit(value, key, deadline))
    except ClipperError as err:
        _withdraw(futures)  # the request fails as a whole: its queued inputs go
        record_failure(app, model, err, len(inputs), rejected=True)
        raise
    try:
        await wait_until(futures, deadline)
    except asyncio.CancelledError:
        # The client went away (the HTTP server cancels its handler): withdraw its
        # queued inputs so that they never reach the model.
        model.withdrawn += _withdraw(futures)
        raise
    slo_ms = app.slo * 1000.0
    if deadline < started + app.slo - 1e-3:
        # The client's own deadline (Clipper-Deadline-Ms) was the tighter one.
        slo_ms = float(round(max(deadline - started, 0.0) * 1000.0))
    outcomes: list[Outcome] = []
    late = expired = errored = 0
    for fut in futures:
        if not fut.done():
            fut.add_done_callback(_consume)
            outcomes.append(app.default(f"no answer within the latency objective ({slo_ms:g} ms)"))
            late += 1
            continue
        exc = fut.exception()
        if exc is None:
            outcomes.append(Outcome(fut.result(), model=model.key))
        elif isinstance(exc, DeadlineExceeded):
            outcomes.append(app.default(f"the deadline passed before the model ran ({exc})"))
            expired += 1
        elif raise_errors:
            record_failure(app, model, exc, len(inputs))
            raise exc
        else:
            outcomes.append(app.default(f"{type(exc).__name__}: {exc}"))
            app.metrics.error(error_kind(exc))
            errored += 1
    count_answered(app, model, len(inputs), started, late=late, expired=expired, errored=errored)
    return outcomes


def count_answered(
    app: Application,
    model: ModelVersion,
    n: int,
    started: float,
    *,
    late: int = 0,
    expired: int = 0,
    errored: int = 0,
) -> None:
    """``n`` inputs of one request to ``app``, sent to ``model`` at ``started``,
    each answered (``late``, ``expired`` and ``errored`` of them with the default
    output): the app's figures and the model version's share of them."""
    elapsed = time.monotonic() - started
    app.metrics.answered(n, late, expired, errored, elapsed, app.slo)
    defaults = late + expired + errored
    model.metrics.judged(n, n - defaults if elapsed <= app.slo else 0)
    model.metrics.defaults += defaults
