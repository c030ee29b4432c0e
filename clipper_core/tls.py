"""Optional TLS from a certificate and key pair (PEM files).

``server_ssl_context`` is what the HTTP ports take (``ServerConfig.tls_cert`` and
``tls_key``); ``grpc_server_credentials`` is the same pair for a ``grpc.aio``
server port (``server.add_secure_port(address, credentials)``);
``client_ssl_context`` and ``grpc_channel_credentials`` are the clients' side,
trusting a given CA (or the certificate itself when it is self-signed).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from clipper_core.errors import BadInput

__all__ = [
    "client_ssl_context",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "server_ssl_context",
]


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the TLS {what} {path}: {exc}") from None


def server_ssl_context(
    cert_file: str | Path, key_file: str | Path, *, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """An ``SSLContext`` for a server socket: TLS 1.2 or newer, the given pair.

    Args:
        cert_file: PEM certificate (chain) of the server.
        key_file: PEM private key of that certificate.
        client_ca: When given, clients must present a certificate signed by this CA
            (mutual TLS).

    Raises:
        BadInput: A file cannot be read, or the key does not match the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise BadInput(
            f"cannot load the TLS certificate {cert_file} / key {key_file}: {exc}"
        ) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise BadInput(f"cannot load the client CA {client_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """An ``SSLContext`` for a client that verifies the server against ``ca_file``
    (a self-signed server certificate is its own CA), or the system's CAs.

    Raises:
        BadInput: ``ca_file`` cannot be read or holds no PEM certificate.
    """
    try:
        ctx = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise BadInput(f"cannot load the CA file {ca_file}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def grpc_server_credentials(
    cert_file: str | Path, key_file: str | Path, *, client_ca: str | Path | None = None
) -> Any:
    """``grpc.ssl_server_credentials`` for the pair (and, optionally, a client CA
    that clients' certificates must chain to)."""
    import grpc

    pair = (_read(key_file, "key"), _read(cert_file, "certificate"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=_read(client_ca, "client CA"), require_client_auth=True
    )


def grpc_channel_credentials(
    ca_file: str | Path | None = None,
    *,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> Any:
    """``grpc.ssl_channel_credentials`` trusting ``ca_file`` (or the system's CAs),
    presenting ``client_cert`` (with ``client_key``) to servers that ask for one.

    Raises:
        BadInput: A file cannot be read, or only one of the client pair is given.
    """
    import grpc

    if (client_cert is None) != (client_key is None):
        raise BadInput("a client certificate needs its key, and the key its certificate")
    root = None if ca_file is None else _read(ca_file, "CA")
    if client_cert is None or client_key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read(client_key, "client key"),
        certificate_chain=_read(client_cert, "client certificate"),
    )
