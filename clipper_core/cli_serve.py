"""``clipper serve``: its options, and the server it runs in the foreground."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from clipper_core.managers.standby import STANDBY_POLICIES


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _workers(text: str) -> int:
    """An argparse type: a number of frontend processes; ``auto`` or 0: one per CPU."""
    if text.strip().lower() == "auto":
        return 0
    return _non_negative_int(text)


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The options of a server process (``clipper serve``)."""
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="json",
        choices=["json", "text"],
        help="json: one JSON object per line (default); text: for people",
    )
    p.add_argument(
        "--access-log", action="store_true", help="log every HTTP request (off by default)"
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        help="Open Inference Protocol gRPC port (default $CLIPPER_GRPC_PORT, else 8001,"
        " or a free one when --query-port is 0; 0 picks one, -1 serves none)",
    )
    p.add_argument(
        "--grpc-transport",
        choices=["auto", "h2", "aio"],
        default="auto",
        help="what serves the gRPC port: auto (built-in HTTP/2 without TLS, grpc.aio with"
        " it; default), h2 (built-in, cleartext only) or aio (grpc.aio)",
    )
    p.add_argument("--tls-cert", help="PEM certificate: serve both ports over HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--replica-tls-ca", help="PEM CA of remote replicas' certificates (default: the system's)"
    )
    p.add_argument(
        "--replica-tls-cert", help="PEM certificate to present to remote replicas that ask"
    )
    p.add_argument("--replica-tls-key", help="PEM private key of --replica-tls-cert")
    p.add_argument(
        "--replica-secret-file",
        help="secret of the per-model replica tokens (default <state-dir>/replica_secret;"
        " frontends sharing a store share it)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds SIGTERM lets in-flight requests finish (default 30)",
    )
    p.add_argument(
        "--queue-capacity", type=_positive_int, help="default queue bound per model version (10000)"
    )
    p.add_argument("--batch-timeout", type=float, help="default seconds per batch (30)")
    p.add_argument(
        "--max-body-size", type=_positive_int, help="largest query body in bytes (10 MiB)"
    )
    p.add_argument(
        "--max-header-size",
        type=_positive_int,
        help="largest request line + headers in bytes (64 KiB; 431 above)",
    )
    p.add_argument(
        "--max-json-depth",
        type=_positive_int,
        help="deepest JSON nesting of a query body (64; 400 above)",
    )
    p.add_argument(
        "--max-inflight-body-bytes",
        type=_non_negative_int,
        help="memory budget for query bodies in flight, all connections of the query"
        " and gRPC ports together (128 MiB; 503 / UNAVAILABLE beyond; 0: none)",
    )
    p.add_argument(
        "--max-connections",
        type=_non_negative_int,
        help="client connections open at once on the query port, and on the gRPC port"
        " (4096 each; 503 / GOAWAY beyond; 0: none)",
    )
    p.add_argument(
        "--min-body-rate",
        type=_non_negative_int,
        help="bytes/s an incomplete request must keep arriving at (1024; 408 below; 0: off)",
    )
    p.add_argument(
        "--reads-per-turn",
        type=_non_negative_int,
        help="socket reads the query port handles per event-loop turn (64; 0: no bound)",
    )
    p.add_argument(
        "--reply-spin-us",
        type=_non_negative_int,
        help="microseconds the event loop polls for a local replica's fast answer"
        " instead of sleeping (250; 0: never)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave Python's garbage collector as it is (by default, once started, the"
        " server exempts what it holds from it, so full collections stay short)",
    )
    p.add_argument(
        "--standby",
        choices=STANDBY_POLICIES,
        default="after-crash",
        help="when to keep a warm standby process per model version (local manager):"
        " from its first crash on (after-crash, the default), always, or off",
    )
    p.add_argument(
        "--no-standby",
        action="store_const",
        dest="standby",
        const="off",
        help="the same as --standby off",
    )
    p.add_argument(
        "--no-admission",
        action="store_true",
        help="queue inputs even when their expected wait exceeds their deadline",
    )
    p.add_argument(
        "--client-max-concurrency",
        type=int,
        default=0,
        help="requests in flight per client (API key or address); 0: no limit",
    )
    p.add_argument(
        "--client-rate-limit",
        type=float,
        default=0.0,
        help="requests per second per client; 0: no limit",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the management port accepts in Host besides its address (repeatable)",
    )
    p.add_argument(
        "--insecure-no-admin-token",
        action="store_true",
        help="serve the management API without a token (any local process can deploy code);"
        " by default the first start generates one into the state folder",
    )
    p.add_argument(
        "--state-url",
        metavar="URL",
        help="share the desired state with other frontends through Redis"
        " (redis://host:port/db; needs clipper_core[redis]); default: SQLite in the state folder",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        metavar="SECONDS",
        help="with --state-url: seconds before another frontend takes over the replicas"
        " of one that died (5)",
    )
    p.add_argument(
        "--container-manager",
        choices=["local", "kubernetes"],
        default="local",
        help="what runs the model replicas: child processes (default) or pods of a"
        " StatefulSet per model version (needs clipper_core[kubernetes]; in-cluster"
        " credentials, else $KUBECONFIG)",
    )
    p.add_argument(
        "--kubernetes-namespace", default="default", help="the model pods' namespace (default)"
    )
    p.add_argument("--kubernetes-image", help="the model-container image")
    p.add_argument(
        "--kubernetes-bundle-url",
        metavar="URL",
        help="where model pods fetch their bundles, with {model} and {version}"
        " (default: this frontend's management API through the clipper-frontend Service)",
    )
    p.add_argument(
        "--kubernetes-bundle-secret",
        metavar="NAME",
        help="the Secret (key 'token') model pods fetch bundles with (clipper-bundle-token)",
    )
    p.add_argument(
        "--kubernetes-part-of",
        default="clipper",
        metavar="NAME",
        help="the installation the model pods belong to; two in one namespace need two (clipper)",
    )
    p.add_argument(
        "--kubernetes-container-port", type=int, default=7000, help="model pods' gRPC port (7000)"
    )
    p.add_argument(
        "--kubernetes-startup-seconds",
        type=int,
        default=300,
        help="how long a model pod may take to load its model (300)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="frontend processes sharing the query ports (SO_REUSEPORT): this one and N-1"
        " query workers it supervises; 0 or auto: one per CPU (default 1)",
    )
    p.add_argument("--ready-file", help="write the bound ports here (JSON) once serving")


def serve_argv(args: argparse.Namespace) -> list[str]:
    """The ``clipper serve`` options of ``args`` that differ from their defaults,
    as a command line (``clipper start`` passes them to the server it starts;
    ``--ready-file`` is its own)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_serve_options(parser)
    argv: list[str] = []
    seen: set[str] = set()  # an alias (--no-standby) shares its option's dest
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in seen or action.dest == "ready_file" or value is None:
            continue
        seen.add(action.dest)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def cmd_serve(args: argparse.Namespace) -> int:
    # Before gRPC is imported: the server forks only to exec (query workers and
    # runtime-environment builds through the loop's subprocess support, which
    # runs fork handlers in the child), and no forked child speaks gRPC, so
    # gRPC's fork handlers could only get in the way (as they did in a
    # container: model_containers/__main__.py).  A user's setting wins.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import asyncio

    import uvloop

    from clipper_core.config import ServerConfig
    from clipper_core.logs import configure_logging
    from clipper_core.server import ClipperServer

    configure_logging(args.log_level, args.log_format)
    cfg = ServerConfig(
        host=args.host, query_port=args.query_port, management_port=args.management_port
    )
    cfg.access_log = args.access_log
    if args.grpc_port is not None:
        cfg.grpc_port = None if args.grpc_port < 0 else args.grpc_port
    cfg.grpc_transport = args.grpc_transport
    if args.state_dir:
        cfg.state_dir = args.state_dir
    cfg.state_url = args.state_url
    if args.lease_ttl is not None:
        cfg.lease_ttl = args.lease_ttl
    if args.admin_token is not None:
        cfg.admin_token = args.admin_token
    if args.insecure_no_admin_token:
        cfg.insecure_no_admin_token = True
    cfg.allowed_hosts = list(args.allowed_host)
    cfg.tls_cert, cfg.tls_key = args.tls_cert, args.tls_key
    cfg.replica_tls_ca, cfg.replica_secret_file = args.replica_tls_ca, args.replica_secret_file
    cfg.replica_tls_cert, cfg.replica_tls_key = args.replica_tls_cert, args.replica_tls_key
    cfg.shutdown_grace = args.shutdown_grace
    cfg.admission_control = not args.no_admission
    cfg.replica_standby = args.standby
    cfg.client_max_concurrency = args.client_max_concurrency
    cfg.client_rate_limit = args.client_rate_limit
    cfg.container_manager = args.container_manager
    cfg.workers = args.workers
    cfg.gc_freeze = not args.no_gc_freeze
    cfg.kubernetes_namespace = args.kubernetes_namespace
    cfg.kubernetes_image = args.kubernetes_image
    cfg.kubernetes_bundle_url = args.kubernetes_bundle_url
    cfg.kubernetes_bundle_secret = args.kubernetes_bundle_secret
    cfg.kubernetes_part_of = args.kubernetes_part_of
    cfg.kubernetes_container_port = args.kubernetes_container_port
    cfg.kubernetes_startup_seconds = args.kubernetes_startup_seconds
    for name in (
        "queue_capacity",
        "batch_timeout",
        "max_body_size",
        "max_header_size",
        "max_json_depth",
        "max_inflight_body_bytes",
        "max_connections",
        "min_body_rate",
        "reads_per_turn",
        "reply_spin_us",
    ):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    server = ClipperServer(cfg)
    ready_file = args.ready_file

    def on_started(srv: ClipperServer) -> None:
        if ready_file:  # for supervisors and tests: the ports actually bound
            tmp = Path(f"{ready_file}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "query_port": srv.query_port,
                        "management_port": srv.management_port,
                        "grpc_port": srv.grpc_port,
                        "query_url": srv.query_url,
                        "management_url": srv.management_url,
                        "workers": srv.config.workers,
                    }
                )
            )
            tmp.replace(ready_file)

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(server.run_forever(on_started))
    return 0
