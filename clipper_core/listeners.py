"""The server's listeners: the query port (Clipper REST and OIP over HTTP), the
management port, and the OIP gRPC port.

Like aiohttp's sites under an ``AppRunner``: the routers say what is served,
:class:`Listeners` binds them with the configuration's limits and TLS, and stops
them together, letting in-flight requests finish for the shutdown grace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from clipper_core.config import ServerConfig
from clipper_core.errors import BadInput, ClipperError
from clipper_core.http import HttpServer, Request, Response, Router
from clipper_core.oip import InferenceService
from clipper_core.oip.grpc_service import GrpcInferenceServer, read_tls_files

log = logging.getLogger("clipper_core.server")

Guard = Callable[[Request], Response | None]


class CannotListen(ClipperError):
    """A port could not be bound (in use, or not an address of this machine);
    the message names the address and which of the server's ports it is."""

    kind = "cannot_listen"


def server_ssl(cfg: ServerConfig) -> Any:
    """The TLS context of both HTTP ports, or None.

    Raises:
        BadInput: Only one of ``tls_cert`` and ``tls_key`` is given.
    """
    if not (cfg.tls_cert or cfg.tls_key):
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise BadInput("TLS needs both tls_cert and tls_key")
    from clipper_core.tls import server_ssl_context

    return server_ssl_context(cfg.tls_cert, cfg.tls_key)


class Listeners:
    """The three listeners of one server, started and stopped together.

    Args:
        cfg: Ports, limits and TLS.
        query: The query port's routes.
        admin: The management port's routes; None: no management port (a query
            worker's listeners).
        admin_guard: Runs before every management request (token, same origin).
        header_guard: Runs on each query's headers, before its body is read.
        oip: Served on the gRPC port (when ``cfg`` asks for one).

    With ``cfg.workers > 1`` the query and gRPC ports are bound with
    ``SO_REUSEPORT``: the server and its query workers each bind them, and the
    kernel spreads the connections over them.  Each process then also serves
    the query routes on a port of its own (:attr:`direct`, a free one), where
    its ``/metrics`` can be scraped without the kernel choosing the process.
    """

    def __init__(
        self,
        cfg: ServerConfig,
        *,
        query: Router,
        admin: Router | None,
        admin_guard: Guard,
        header_guard: Guard,
        oip: InferenceService,
    ) -> None:
        ssl = server_ssl(cfg)
        shared = cfg.workers > 1

        def query_server(port: int, reuse_port: bool) -> HttpServer:
            return HttpServer(
                query,
                host=cfg.host,
                port=port,
                max_body_size=cfg.max_body_size,
                max_header_size=cfg.max_header_size,
                access_log=cfg.access_log,
                ssl=ssl,
                header_guard=header_guard,
                max_inflight_body_bytes=cfg.max_inflight_body_bytes,
                max_connections=cfg.max_connections,
                min_body_rate=cfg.min_body_rate,
                reads_per_turn=cfg.reads_per_turn,
                reuse_port=reuse_port,
            )

        self.query = query_server(cfg.query_port, shared)
        #: This process's own query port when several share :attr:`query`.
        self.direct = query_server(0, False) if shared else None
        self.admin = (
            None
            if admin is None
            else HttpServer(
                admin,
                host=cfg.host,
                port=cfg.management_port,
                max_body_size=1 << 30,
                access_log=cfg.access_log,
                ssl=ssl,
                guard=admin_guard,
            )
        )
        grpc_port = cfg.resolved_grpc_port()
        self._ports = (cfg.host, cfg.query_port, cfg.management_port, grpc_port)
        self.grpc = (
            None
            if grpc_port is None
            else GrpcInferenceServer(
                oip,
                host=cfg.host,
                port=grpc_port,
                tls=read_tls_files(cfg.tls_cert, cfg.tls_key),
                max_message_bytes=cfg.max_body_size,
                transport=cfg.grpc_transport,
                reuse_port=shared,
                max_connections=cfg.max_connections,
                body_budget=self.query.body_budget,  # one budget for both query ports
            )
        )

    async def start(self) -> None:
        """Bind the ports (the ones asked as 0 get free ones).

        Raises:
            CannotListen: A port could not be bound; those bound before are closed.
        """
        host, query_port, management_port, grpc_port = self._ports
        for server, what, port in (
            (self.query, "query", query_port),
            (self.direct, "query", 0),
            (self.admin, "management", management_port),
            (self.grpc, "grpc", grpc_port),
        ):
            if server is None:
                continue
            try:
                await server.start()
            except OSError as exc:
                # The bare OSError names neither the option to change nor, for
                # gRPC, even the port: say which one, in one line.
                if isinstance(exc, socket.gaierror):  # errno -2 is no errno of os.strerror
                    reason = f"cannot resolve the host ({exc.strerror})"
                else:
                    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                await self.stop(0)
                raise CannotListen(
                    f"cannot listen on {host}:{port} ({what} port): {reason}"
                ) from exc

    async def stop(self, grace: float) -> None:
        """Stop accepting; in-flight requests get ``grace`` seconds to finish."""
        servers: list[Any] = [
            s for s in (self.query, self.direct, self.admin, self.grpc) if s is not None
        ]
        for result in await asyncio.gather(
            *(s.stop(grace) for s in servers), return_exceptions=True
        ):
            if isinstance(result, Exception):
                log.warning("stopping a frontend failed: %r", result)
