"""How a frontend reaches replicas on other hosts: TLS and a per-model token.

A replica's address says how to reach it.  ``host:port`` is a replica of this
host (started by the local container manager, or by hand next to the frontend):
plaintext gRPC, with Predict over its local socket.  ``grpcs://host:port`` is a
remote one: a TLS channel that verifies the replica's certificate (against
``ServerConfig.replica_tls_ca``, or the system's CAs), presents the frontend's
own certificate when configured (for replicas started with ``--tls-client-ca``),
and sends ``authorization: Bearer <token>`` on every call, the model version's
token (:class:`~clipper_core.replica_tokens.ReplicaTokens`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clipper_core.config import ServerConfig
from clipper_core.local_channel import reply_spin_for_host
from clipper_core.replica_client import ReplicaClient, ReplicaConnector, insecure_connector
from clipper_core.replica_tokens import ReplicaTokens
from clipper_core.tls import grpc_channel_credentials

__all__ = [
    "REMOTE_SCHEME",
    "by_address",
    "is_remote",
    "local_connector",
    "remote_address",
    "server_connector",
    "tls_connector",
]

#: The prefix of a remote replica's address.
REMOTE_SCHEME = "grpcs://"


def remote_address(host_port: str) -> str:
    """The address of a replica reached over TLS at ``host_port``."""
    return host_port if is_remote(host_port) else REMOTE_SCHEME + host_port


def is_remote(address: str) -> bool:
    """Whether ``address`` names a replica reached over TLS."""
    return address.startswith(REMOTE_SCHEME)


def tls_connector(
    ca_file: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    *,
    token_for: Callable[[str, str], str],
) -> ReplicaConnector:
    """A :class:`~clipper_core.replica_client.ReplicaConnector` for remote replicas.

    Args:
        ca_file: The CA (PEM) replicas' certificates chain to; None: the system's.
        client_cert: The frontend's certificate (PEM), for replicas that require one.
        client_key: Its private key.
        token_for: ``(model, version) -> token`` sent as a bearer token.

    Raises:
        BadInput: A file cannot be read, or only one of the client pair is given.
    """
    credentials = grpc_channel_credentials(ca_file, client_cert=client_cert, client_key=client_key)

    def connect(address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
        return ReplicaClient(
            address.removeprefix(REMOTE_SCHEME),
            model_name=model,
            model_version=version,
            replica_id=replica_id,
            local=False,  # another host: its Unix socket is not ours to reach
            credentials=credentials,
            call_metadata=[("authorization", f"Bearer {token_for(model, version)}")],
        )

    return connect


def local_connector(token_for: Callable[[str, str], str] | None) -> ReplicaConnector:
    """A :class:`~clipper_core.replica_client.ReplicaConnector` for replicas of this
    host: plaintext gRPC and the local socket, sending ``authorization: Bearer``
    ``token_for(model, version)`` when given: the token the local manager's
    replicas require (a container that requires none ignores it)."""
    if token_for is None:
        return insecure_connector

    def connect(address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
        return ReplicaClient(
            address,
            model_name=model,
            model_version=version,
            replica_id=replica_id,
            call_metadata=[("authorization", f"Bearer {token_for(model, version)}")],
        )

    return connect


def by_address(local: ReplicaConnector, remote: ReplicaConnector) -> ReplicaConnector:
    """The connector that picks ``remote`` for ``grpcs://`` addresses, else ``local``."""

    def connect(address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
        chosen = remote if is_remote(address) else local
        return chosen(address, model, version, replica_id)

    return connect


def server_connector(cfg: ServerConfig, tokens: ReplicaTokens) -> ReplicaConnector:
    """A server's connector: remote replicas (``grpcs://``) over TLS with their
    call token; plaintext ones without a token, except the local manager's own
    (numbered ids), which get their version's local token where the
    configuration gives them one.  A plaintext address registered by hand is
    not sent that token: whoever answers there could call the manager's replicas
    with it."""
    remote = tls_connector(
        cfg.replica_tls_ca, cfg.replica_tls_cert, cfg.replica_tls_key, token_for=tokens.token
    )
    spin = reply_spin_for_host(cfg.reply_spin_us)
    managed = local_connector(tokens.local_token) if cfg.local_replica_tokens() else None

    def plain(address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
        chosen = insecure_connector
        if managed is not None and replica_id.isdigit():
            chosen = managed
        client = chosen(address, model, version, replica_id)
        client.reply_spin = spin
        return client

    return by_address(plain, remote)
