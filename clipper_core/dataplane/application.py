"""The direct query path: an application answered by its one linked model, within
its latency objective (an app whose router routes its queries goes through
:class:`~clipper_core.dataplane.routing.QueryRouter` instead)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipper_core.dataplane.accounting import count_answered, record_failure
from clipper_core.dataplane.futures import consume_exception, wait_until, withdraw
from clipper_core.dataplane.routing import Application, Outcome
from clipper_core.errors import ClipperError, DeadlineExceeded, NoLiveReplica
from clipper_core.metrics import error_kind

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion

__all__ = [
    "no_connected_model",
    "nothing_can_answer",
    "predict_with_slo",
    "unanswerable",
]


def nothing_can_answer(model: ModelVersion) -> bool:
    """Whether ``model`` has no live replica and none is coming: no replica is
    connected or being connected (a frontend that follows the store switches to
    a new version as its replica's connect starts), and none went away with work
    in the last seconds (that one is being restarted, and its inputs retried:
    waiting for it is worth it)."""
    return not model.replicas and not model.connecting and model.isolation.recent_loss() is None


def unanswerable(model: ModelVersion, fut: asyncio.Future[Any]) -> bool:
    """Whether ``fut``, just submitted to ``model``, can only be answered at its
    deadline: the cache or a refusal did not answer it at submit, and
    :func:`nothing_can_answer`.  Every query path asks this after submitting, and
    answers at once -- the app's default output, or :class:`NoLiveReplica` --
    instead of waiting."""
    return not fut.done() and nothing_can_answer(model)


def no_connected_model(refusal: NoLiveReplica) -> str:
    """The explanation of a default output given because of ``refusal``, in
    Clipper's words (its REST API answers the default output, flagged)."""
    verb = "has" if len(refusal.models) == 1 else "have"
    return f"no connected model found for query: {', '.join(refusal.models)} {verb} no live replica"


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

    Inputs not answered in time get the app's default output, flagged (at once
    when ``model`` has no live replica).  A model error raises when
    ``raise_errors`` (a single query) and otherwise becomes a flagged default for
    that input only (one reply per input in a batch).
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
        withdraw(futures)  # the request fails as a whole: its queued inputs go
        record_failure(app, model, err, len(inputs), rejected=True)
        raise
    # Without a live replica only the cache or a refusal can answer, and they did
    # at submit: the rest get the default output now, not at the deadline.
    dead = nothing_can_answer(model)
    try:
        if not dead:
            await wait_until(futures, deadline)
    except asyncio.CancelledError:
        # The client went away (the HTTP server cancels its handler): withdraw its
        # queued inputs so that they never reach the model.
        model.withdrawn += withdraw(futures)
        raise
    outcomes: list[Outcome] = []
    late = expired = errored = 0
    late_why = ""
    for fut in futures:
        if not fut.done():
            if not late:  # worded once, and only when some input is late
                late_why = _late_reason(app, model, deadline, started)
            fut.add_done_callback(consume_exception)
            outcome = app.default(late_why)
            if dead:
                outcome.unavailable = [model.key]
            outcomes.append(outcome)
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
    # Answered at once for want of a live replica: an outage, not an SLO miss.
    unavailable, late = (late, 0) if dead else (0, late)
    count_answered(
        app,
        model,
        len(inputs),
        started,
        late=late,
        expired=expired,
        errored=errored,
        unavailable=unavailable,
    )
    return outcomes


def _late_reason(app: Application, model: ModelVersion, deadline: float, started: float) -> str:
    """The explanation of the default output given to an input not answered by
    ``deadline``: no replica connected (Clipper's words), or the latency
    objective (the client's own deadline when it was the tighter one), and what
    the model lost lately."""
    if not model.replicas:
        why = no_connected_model(NoLiveReplica([model.key]))
    elif deadline < started + app.slo - 1e-3:
        # The client's own deadline (Clipper-Deadline-Ms) was the tighter one.
        left = max(deadline - started, 0.0) * 1000.0
        left = round(left) if left >= 1.0 else round(left, 3)
        why = f"no answer within the client's deadline (Clipper-Deadline-Ms: {left:g} ms)"
    else:
        why = f"no answer within the latency objective ({app.slo * 1000.0:g} ms)"
    if loss := model.isolation.recent_loss():
        why = f"{why}: {loss}"
    return why
