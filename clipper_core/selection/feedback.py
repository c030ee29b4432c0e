"""The outputs a feedback label scores: :func:`gather_outputs`.

``AppSelector.update`` reads each chosen model's output for the input from the
prediction cache, and asks the model for it only when it is not cached.  A model
that cannot answer (no live replica, overloaded, past the feedback timeout) is
left out of the scoring, and :class:`Gathered` says why, so that a label that
scores no model at all can be refused naming them
(:class:`~clipper_core.errors.NoOutputToScore`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipper_core.dataplane.application import unanswerable
from clipper_core.dataplane.futures import consume_exception, wait_until
from clipper_core.errors import ClipperError

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion

log = logging.getLogger("clipper_core.selection")

__all__ = ["Gathered", "gather_outputs"]


class Gathered:
    """What :func:`gather_outputs` found.

    Attributes:
        outputs: Model name -> its output for the input.
        unanswered: Model version (``name:version``) -> why it gave no output.
        cache_hits: Outputs read from the prediction cache.
        computed: Outputs asked of the models (answered or not).
    """

    __slots__ = ("cache_hits", "computed", "outputs", "unanswered")

    def __init__(self) -> None:
        self.outputs: dict[str, Any] = {}
        self.unanswered: dict[str, str] = {}
        self.cache_hits = 0
        self.computed = 0


async def gather_outputs(
    targets: Sequence[tuple[str, ModelVersion]], x: Any, key: bytes, deadline: float
) -> Gathered:
    """The outputs of ``targets`` (model name, version) for input ``x``: cached,
    else computed by ``deadline`` (``time.monotonic()``)."""
    found = Gathered()
    pending: dict[str, tuple[ModelVersion, asyncio.Future[Any]]] = {}
    for name, mv in targets:
        cache = mv.cache
        if cache is not None:
            hit = cache.get(mv.name, mv.version, key, _MISS)
            if hit is not _MISS:
                found.cache_hits += 1
                found.outputs[name] = hit
                continue
        try:
            fut = mv.submit(x, key, deadline)
        except ClipperError as exc:  # refused at once: overloaded, queue full or closed
            log.info("feedback: %s cannot answer: %s", mv.key, exc)
            found.unanswered[mv.key] = str(exc) or exc.kind
            continue
        if unanswerable(mv, fut):  # do not wait until the deadline for nothing
            fut.cancel()
            found.unanswered[mv.key] = "no live replica"
            continue
        pending[name] = (mv, fut)
        found.computed += 1
    if pending:
        await wait_until([fut for _, fut in pending.values()], deadline)
        for name, (mv, fut) in pending.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                found.outputs[name] = fut.result()
                continue
            found.unanswered[mv.key] = _why_unanswered(fut)
            fut.add_done_callback(consume_exception)
    return found


def _why_unanswered(fut: asyncio.Future[Any]) -> str:
    if not fut.done():
        return "no output within the feedback timeout"
    if fut.cancelled():
        return "its computation was cancelled"
    exc = fut.exception()
    if isinstance(exc, ClipperError):
        return str(exc) or exc.kind
    return f"{type(exc).__name__}: {exc}"


class _Missing:
    __slots__ = ()


_MISS = _Missing()
