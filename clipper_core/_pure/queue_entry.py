"""Pure-Python twin of ``clipper_core._ext.batch_queue.QueueEntry``: one pending
prediction as :class:`~clipper_core._pure.batch_queue.BatchQueue` holds it and a
dispatcher receives it (the extension declares it in ``batch_queue.pxd``).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["QueueEntry"]


class QueueEntry:
    """One pending prediction, as a dispatcher receives it.

    Attributes:
        item: The caller's input; the queue never looks at it.
        future: The future :meth:`BatchQueue.put` returned; the dispatcher
            resolves it with the prediction or fails it with the error.
        deadline: Absolute ``time.monotonic()`` seconds after which the answer is
            useless; ``math.inf`` for none.
        priority: Higher is served first.
        enqueued_at: ``time.monotonic()`` when the entry was queued.
    """

    __slots__ = ("deadline", "enqueued_at", "future", "item", "priority")

    def __init__(
        self,
        item: object,
        future: asyncio.Future[Any],
        deadline: float,
        priority: int,
        enqueued_at: float,
    ) -> None:
        self.item = item
        self.future = future
        self.deadline = deadline
        self.priority = priority
        self.enqueued_at = enqueued_at

    def __repr__(self) -> str:
        return (
            f"QueueEntry(item={self.item!r}, priority={self.priority}, "
            f"deadline={self.deadline!r}, enqueued_at={self.enqueued_at!r})"
        )
