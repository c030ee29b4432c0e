"""The HTTP/2 gRPC server for unary calls on a cleartext port of the running loop
(its connections are :class:`~clipper_core.oip.h2_grpc.H2GrpcProtocol`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping

from clipper_core.http.body_budget import BodyBudget
from clipper_core.oip.h2_connection import H2Connection
from clipper_core.oip.h2_frames import UnaryHandler
from clipper_core.oip.h2_grpc import H2GrpcProtocol
from clipper_core.oip.h2_limits import H2Limits

__all__ = ["H2GrpcServer"]


class H2GrpcServer:
    """Serves unary gRPC methods on a cleartext port of the running loop.

    Args:
        handlers: ``"/package.Service/Method"`` -> handler.
        host: Address to bind.
        port: Port to bind; 0 picks a free one (see :attr:`port` after ``start``).
        max_message_bytes: Largest request message accepted (overrides
            ``limits.max_message``).
        limits: What one connection may hold or cost (defaults: :class:`H2Limits`).
        reuse_port: Bind with ``SO_REUSEPORT`` (query workers share the port).
        max_connections: Client connections open at once; one beyond it gets a
            GOAWAY (ENHANCE_YOUR_CALM) and is closed before anything is read.
            0: no limit.
        body_budget: The server's budget for request bytes held at once, over
            all connections (the HTTP query port's: ``HttpServer.body_budget``),
            from their first DATA to their answer; a request that does not fit
            is answered UNAVAILABLE.  None: none.
    """

    def __init__(
        self,
        handlers: Mapping[str, UnaryHandler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = 4 << 20,
        limits: H2Limits | None = None,
        reuse_port: bool = False,
        max_connections: int = 0,
        body_budget: BodyBudget | None = None,
    ) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must be >= 0 (0: none)")
        self.handlers = dict(handlers)
        self.host = host
        self.requested_port = port
        self.reuse_port = reuse_port
        base = limits or H2Limits()
        self.limits = dataclasses.replace(
            base,
            max_message=max_message_bytes,
            max_buffered=max(base.max_buffered, 2 * max_message_bytes),
        )
        self.max_connections = max_connections
        self.body_budget = body_budget
        self.connections: set[H2Connection] = set()
        self.refused: set[H2Connection] = set()  # over max_connections, until closed
        self.all_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    def connection_opened(self, conn: H2Connection) -> bool:
        if self.max_connections and len(self.connections) >= self.max_connections:
            self.refused.add(conn)
            return False
        self.connections.add(conn)
        return True

    def connection_closed(self, conn: H2Connection) -> None:
        self.refused.discard(conn)
        self.connections.discard(conn)
        if not self.connections:
            self.all_closed.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2GrpcProtocol(self),
            self.host,
            self.requested_port,
            backlog=1024,
            reuse_port=self.reuse_port,
        )
        sockets = self._server.sockets or ()
        self.port = sockets[0].getsockname()[1]

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, tell every client (GOAWAY), give calls ``grace`` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.refused):
            if conn.transport is not None:
                conn.transport.abort()
        for conn in list(self.connections):
            conn.goaway()
        if self.connections:
            self.all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), grace)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()
