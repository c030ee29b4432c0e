"""Refusing a query on its headers, before its body is read or parsed.

Under a storm of requests, what a refusal costs decides how much of the event
loop is left for the queries that are admitted.  ``ModelVersion.submit``
refuses an input whose expected wait exceeds its deadline (admission control),
but only after the body has been read, parsed and validated.
:func:`header_refusal` makes the same decision from the request line and
headers alone -- the app in ``POST /<app>/predict``, its SLO, the client's
``Clipper-Deadline-Ms`` -- and the HTTP server answers 503 (with
``Retry-After``) inline, without a handler task, and drops the body unread.

It decides only where the answer is certain from the headers: an app answered
by its one linked model (not one whose selection policy routes queries), asked
for the model's current version, by a client that passes the app's API keys
(the route itself answers 401/403, 429 and malformed deadlines).  A query
pinning another ``version`` in its body is judged by the current version's
queue; a query the prediction cache would have answered is refused like any
other while the model is saturated.

Requests let through on their headers reach the queue only when their handlers
run, after the rest of the event loop's round: many can pass on one round while
the queue still looks short, and would then be refused one by one at ``submit``
at the full cost.  So the guard counts the requests it let through for each
model version until the next round and judges the next one as if they were
queued already.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from clipper_core.admission import QueryGate, deadline_from_headers
from clipper_core.dataplane.accounting import record_failure
from clipper_core.errors import ClipperError
from clipper_core.http import Request, Response, error_response
from clipper_core.http.messages import error_headers

if TYPE_CHECKING:
    from clipper_core.dataplane import ModelVersion, QueryView

__all__ = ["header_refusal"]

_PREDICT = "/predict"


def header_refusal(dataplane: QueryView, gate: QueryGate) -> Callable[[Request], Response | None]:
    """The query port's header guard (``HttpServer(header_guard=...)``).

    Args:
        dataplane: The apps and model versions (their queues and estimators).
        gate: The checks the query routes pass first (API keys).

    Returns:
        A function of a request (headers only) to its 503 answer, or None to
        read the body and route it as usual.
    """

    # Model version -> requests let through in this round of the event loop.
    passed: dict[ModelVersion, int] = {}
    # The serving loop, looked up once: on Python 3.11 get_running_loop() costs
    # a getpid() system call, once per request here.
    loops: list[asyncio.AbstractEventLoop] = []

    def _passed(mv: ModelVersion, incoming: int) -> None:
        if not passed:
            if not loops or loops[0].is_closed():
                loops[:] = [asyncio.get_running_loop()]
            loops[0].call_soon(passed.clear)
        passed[mv] = incoming + 1

    def refuse(request: Request) -> Response | None:
        path = request.path
        if request.method != "POST" or not path.endswith(_PREDICT):
            return None
        name = path[1 : -len(_PREDICT)]
        app = dataplane.apps.get(name)
        if app is None or app.routes_queries or not app.linked_models:
            return None
        model = dataplane.models.get(app.linked_models[0])
        mv = None if model is None else model.version_for(None)
        if mv is None or mv.input_type != app.input_type:
            return None
        incoming = passed.get(mv, 0)
        if len(mv.queue) + incoming < mv.controller.batch_size:
            # Less than a batch waiting: no storm, nothing to decide before the
            # body (admission at submission still judges the input's deadline).
            _passed(mv, incoming)
            return None
        try:
            gate.check(app.name, request.headers)
            deadline = deadline_from_headers(request.headers)
        except ClipperError:
            return None  # the route answers it, with its own accounting
        end = time.monotonic() + app.slo
        if deadline is not None and deadline < end:
            end = deadline
        refusal = mv.overload(end, incoming)
        if refusal is None:
            _passed(mv, incoming)
            return None
        mv.rejected_overload += 1
        record_failure(app, mv, refusal, 1, rejected=True)
        return error_response(503, refusal.kind, str(refusal), error_headers(refusal))

    return refuse
