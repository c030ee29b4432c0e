"""The container's options for serving a frontend on another host.

``--bundle-url`` and ``--bundle-token-file`` (with ``--frontend-ca`` and
``--bundle-timeout``) fetch the model from the frontend (see
:mod:`model_containers.bundle_fetch`); ``--tls-cert``, ``--tls-key``,
``--tls-client-ca`` and ``--token-file`` secure the gRPC port (see
:mod:`model_containers.grpc_auth`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from model_containers import grpc_auth
from model_containers.bundle_fetch import BundleError, fetch_bundle

__all__ = [
    "add_remote_options",
    "check_remote_options",
    "fetch_bundle_for",
    "transport_security",
]


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """Add the options (one argument group)."""
    remote = parser.add_argument_group("remote replicas (a frontend on another host)")
    remote.add_argument(
        "--bundle-url",
        metavar="URL",
        help="fetch the model from the frontend's management API (.../admin/bundle/<model>/"
        "<version>[?sha256=...]) into a private temporary folder",
    )
    remote.add_argument(
        "--bundle-token-file",
        metavar="FILE",
        help="the model version's bundle token (get_replica_token's bundle_token)",
    )
    remote.add_argument(
        "--frontend-ca",
        metavar="CA.pem",
        help="CA of the frontend's HTTPS certificate, for the bundle fetch and"
        " --register-url (default: the system's CAs)",
    )
    remote.add_argument(
        "--bundle-timeout", type=float, default=60.0, help="seconds to keep retrying the fetch"
    )
    remote.add_argument("--tls-cert", metavar="CERT.pem", help="serve gRPC over TLS only")
    remote.add_argument("--tls-key", metavar="KEY.pem", help="private key of --tls-cert")
    remote.add_argument(
        "--tls-client-ca",
        metavar="CA.pem",
        help="require a client certificate that chains to this CA (mutual TLS)",
    )
    remote.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="also answer the gRPC health service alone, in plaintext, on this port (for"
        " probes that cannot do TLS or send a token, as Kubernetes' gRPC probes)",
    )
    remote.add_argument(
        "--token-file",
        metavar="FILE",
        help="refuse calls without 'authorization: Bearer <this token>', the model version's"
        " call token (get_replica_token's token; needs --tls-cert)",
    )


def check_remote_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``) what does not go together."""
    if not (args.closure or args.model_class or args.adapter or args.bundle_url):
        parser.error("one of --closure, --model-class, --adapter or --bundle-url is required")
    if args.bundle_url:
        if not args.bundle_token_file:
            parser.error("--bundle-url needs --bundle-token-file")
        if args.closure or args.model_path:
            parser.error("--bundle-url replaces --closure and --model-path")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert")
    if args.tls_cert and not args.token_file:
        parser.error("--tls-cert needs --token-file: a remote replica refuses unknown frontends")
    if args.token_file and not args.tls_cert:
        parser.error("--token-file needs --tls-cert: a token sent in plaintext can be read")


def fetch_bundle_for(
    args: argparse.Namespace, on_exit: Callable[[Callable[[], None]], None]
) -> str:
    """Fetch ``--bundle-url`` and point ``--closure`` or ``--model-path`` at it;
    '' when done, else the message to exit with.  ``on_exit`` is handed what
    removes the bundle's folder."""
    try:
        token = grpc_auth.read_secret(args.bundle_token_file, "bundle token file")
        bundle = fetch_bundle(
            args.bundle_url,
            token.decode("utf-8", "replace"),
            timeout=args.bundle_timeout,
            ca_file=args.frontend_ca,
        )
    except (grpc_auth.ConfigError, BundleError) as exc:
        return str(exc)
    on_exit(bundle.remove)
    if bundle.kind == "closure":
        if args.model_class or args.adapter:
            return "the bundle is a pickled model: --model-class and --adapter do not apply"
        args.closure = bundle.path
    elif not (args.model_class or args.adapter):
        return "the bundle is a model folder: give --adapter or --model-class to load it"
    else:
        args.model_path = bundle.path
    return ""


def transport_security(args: argparse.Namespace) -> dict[str, Any]:
    """The ContainerServer arguments of --tls-* and --token-file.

    Raises:
        grpc_auth.ConfigError: A file cannot be read.
    """
    if not args.tls_cert:
        return {}
    token = grpc_auth.read_secret(args.token_file, "token file").decode("utf-8", "replace")
    return {
        "credentials": grpc_auth.server_credentials(
            args.tls_cert, args.tls_key, args.tls_client_ca
        ),
        "interceptors": [grpc_auth.BearerTokenInterceptor(token)],
        # Frontends on this host use plaintext and the local socket; a TLS
        # replica serves only through its TLS port.
        "local_socket": None,
    }
