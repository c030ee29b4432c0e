"""TLS and a bearer token on the container's gRPC port, for replicas that serve
frontends on other hosts.

With ``--tls-cert``/``--tls-key`` the port speaks TLS only; with
``--tls-client-ca`` it also requires a client certificate that chains to that CA.
With ``--token-file`` every call (Predict, Metadata, health) must carry
``authorization: Bearer <token>``, the model version's call token; others
fail with UNAUTHENTICATED before reaching the model.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

__all__ = ["BearerTokenInterceptor", "read_secret", "server_credentials"]


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
