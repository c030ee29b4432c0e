"""Closing a connection whose client may have stopped reading."""

from __future__ import annotations

import asyncio

__all__ = ["UNREAD_GRACE_MAX", "close_or_abort"]

#: The longest a closed HTTP/1.1 connection may take to hand the client what is
#: still buffered for it (its keep-alive timeout, if shorter).
UNREAD_GRACE_MAX = 10.0


def close_or_abort(transport: asyncio.Transport, grace: float) -> None:
    """``transport.close()``, then ``abort()`` if what is buffered for the client
    is still unsent ``grace`` seconds later.

    ``close()`` ends the connection only once its write buffer has drained; a
    client that stops reading (its receive window at zero) never lets it, and the
    connection, the answers buffered for it and its place under the server's
    connection limit stayed for ever.  A second ``abort()`` is harmless.
    """
    transport.close()
    if transport.get_write_buffer_size():  # (uvloop's are no asyncio.WriteTransport)
        asyncio.get_running_loop().call_later(grace, transport.abort)
