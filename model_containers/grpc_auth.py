"""TLS and a bearer token on the container's gRPC port, for replicas that serve
frontends on other hosts.

With ``--tls-cert``/``--tls-key`` the port speaks TLS only; with
``--tls-client-ca`` it also requires a client certificate that chains to that CA.
With ``--token-file`` every call (Predict, Metadata, health) must carry
``authorization: Bearer <token>``, the model version's call token; others
fail with UNAUTHENTICATED before reaching the model.

A container started by a frontend's local process manager gets a token in
``$CLIPPER_REPLICA_TOKEN`` instead (:func:`local_token_security`): its plaintext
port on this host then refuses calls without it just the same, so that another
local user cannot call the model or learn the local socket's token from
``Metadata``; the local socket's first frame repeats it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "LOCAL_TOKEN_ENV",
    "BearerTokenInterceptor",
    "local_token_security",
    "read_secret",
    "server_credentials",
]

#: Set by the frontend's local process manager (``clipper_core.managers.replica``).
LOCAL_TOKEN_ENV = "CLIPPER_REPLICA_TOKEN"


class ConfigError(Exception):
    """A TLS or token file is missing, unreadable or empty."""


def read_secret(path: str, what: str) -> bytes:
    """The contents of ``path`` (surrounding whitespace dropped).

    Raises:
        ConfigError: It cannot be read, or is empty.
    """
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from None
    if not data:
        raise ConfigError(f"the {what} {path} is empty")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials of the port: the certificate pair, and the CA that client
    certificates must chain to when one is required.

    Raises:
        ConfigError: A file cannot be read.
    """
    pair = (read_secret(key, "TLS key"), read_secret(cert, "TLS certificate"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=read_secret(client_ca, "client CA"),
        require_client_auth=True,
    )


class BearerTokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses, with UNAUTHENTICATED, every call without the bearer token.

    Args:
        token: The token the callers must present.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this replica needs its model version's token (authorization: Bearer ...)",
            )

        # A unary handler refuses streaming calls (health Watch) just as well:
        # it aborts before any message is sent.
        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and hmac.compare_digest(str(value).encode(), self._expected):
                return continuation(handler_call_details)
        return self._deny


def local_token_security() -> dict[str, Any]:
    """The ContainerServer arguments of ``$CLIPPER_REPLICA_TOKEN``: a bearer token
    on every call, and the same token as the local socket's; nothing when unset.
    The variable is removed, so that processes the model starts do not inherit it."""
    token = os.environ.pop(LOCAL_TOKEN_ENV, "").strip()
    if not token:
        return {}
    return {"interceptors": [BearerTokenInterceptor(token)], "instance_token": token}
