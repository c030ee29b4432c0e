"""One accounting of answered and failed inputs, for every query path.

The direct path (:func:`~clipper_core.dataplane.application.predict_with_slo`)
and the OIP service count a request here, so that an app's figures and its model
versions' shares of them mean the same whichever frontend served it.  The
counters themselves live in :mod:`clipper_core.metrics`, which knows nothing of
applications or model versions.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from clipper_core.errors import ModelError
from clipper_core.logs import RateLimiter, log_event
from clipper_core.metrics import error_kind

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion
    from clipper_core.dataplane.routing import Application

__all__ = ["OVERLOAD_KINDS", "count_answered", "record_failure"]

log = logging.getLogger("clipper_core.metrics")

#: Error kinds that mean "too much load": logged as an ``overload`` event.
OVERLOAD_KINDS = frozenset({"queue_full", "overloaded"})

_overload_limiter = RateLimiter(5.0)


def record_failure(
    app: Application, mv: ModelVersion, exc: BaseException, n: int, *, rejected: bool = False
) -> None:
    """A predict call of ``n`` inputs to ``app`` (model ``mv``) raised ``exc``.

    ``rejected``: ``mv`` refused the inputs when they were submitted (errors of a
    batch that ran are counted for ``mv`` by its dispatcher).  An overloaded model
    is also logged, at most every 5 s per app.
    """
    kind = error_kind(exc)
    app.metrics.error(kind, n, received=True)
    if rejected:
        mv.metrics.error(kind, n)
    elif isinstance(exc, ModelError):
        # The model ran them and failed: misses of the app's objective for the
        # model too, as an error inside an input_batch is (count_answered).
        mv.metrics.judged(n, 0)
    if kind in OVERLOAD_KINDS and _overload_limiter.allow(app.name):
        q = mv.queue.stats()
        log_event(
            log,
            "overload",
            f"{mv.key} is overloaded ({kind}): queries to {app.name} are refused",
            level=logging.WARNING,
            app=app.name,
            model=mv.name,
            version=mv.version,
            queue_length=q.get("len"),
            queue_capacity=q.get("capacity"),
            rejected_total=q.get("rejected"),
            kind=kind,
        )


def count_answered(
    app: Application,
    model: ModelVersion,
    n: int,
    started: float,
    *,
    late: int = 0,
    expired: int = 0,
    errored: int = 0,
    unavailable: int = 0,
) -> None:
    """``n`` inputs of one request to ``app``, sent to ``model`` at ``started``,
    each answered (``late``, ``expired``, ``errored`` and ``unavailable`` of them
    with the default output): the app's figures and the model version's share."""
    elapsed = time.monotonic() - started
    app.metrics.answered(n, late, expired, errored, elapsed, app.slo, unavailable)
    defaults = late + expired + errored + unavailable
    model.metrics.judged(n, n - defaults if elapsed <= app.slo else 0)
    model.metrics.defaults += defaults
