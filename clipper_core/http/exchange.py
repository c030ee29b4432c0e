"""One response owed on a connection, and the task that runs its handler.

A connection answers its requests in order from a queue of :class:`Exchange`.  An
``async`` handler runs inside :func:`respond`, which hands its answer back in the
same turn of the event loop as the handler's last step; waiting for the task's
done callback instead would cost one more loop turn (a wake-up and an
``epoll_wait``) per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from clipper_core.http.messages import Request, Response, error_response

__all__ = ["Exchange", "respond"]


class Exchange:
    """One response owed on a connection, in request order.

    Exactly one of ``task`` (the handler still running), ``response`` (the
    answer) and ``data`` (pre-encoded bytes: ``100 Continue`` or a protocol
    error) is set.
    """

    __slots__ = ("close", "data", "request", "reserved", "response", "task")

    def __init__(
        self,
        request: Request | None,
        task: asyncio.Future[Any] | None = None,
        response: Response | None = None,
        data: bytes | None = None,
        close: bool = False,
        reserved: int = 0,
    ) -> None:
        self.request = request
        self.task = task
        self.response = response
        self.data = data
        self.close = close
        #: Bytes of the server's body budget the request holds until answered.
        self.reserved = reserved


async def respond(
    handler: Coroutine[Any, Any, Any],
    ex: Exchange,
    done: Callable[[Exchange, Response | BaseException], None],
) -> None:
    """Run ``handler`` (as a task's coroutine) and call ``done(ex, outcome)`` with
    its Response, or the exception it raised, as soon as it finishes.

    A cancelled handler is answered 503 and the cancellation goes on.
    """
    try:
        result = await handler
    except asyncio.CancelledError:
        done(ex, error_response(503, "cancelled", "the request's handling was cancelled"))
        raise
    except Exception as exc:
        done(ex, exc)
        return
    if not isinstance(result, Response):
        result = error_response(
            500, "internal", f"TypeError: handler returned {type(result).__name__}, not a Response"
        )
    done(ex, result)
