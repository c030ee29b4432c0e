"""``clipper``: start, stop and inspect a clipper_core server; deploy models.

clipper start            start a server in the background
clipper serve            run a server in the foreground (what start runs)
clipper stop             stop it and every model container
clipper status           apps, models and replicas at a glance
clipper apps | models    list them
clipper pipelines        list pipelines (clipper pipeline show|delete NAME)
clipper deploy NAME ...  deploy a Python function or Model class
clipper apply -f FILE    make the server match a declarative file (TOML)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clipper_core.cli_pipelines import add_pipeline_commands
from clipper_core.connection import ClipperConnection, LocalContainerManager, ServerNotRunning
from clipper_core.connection_apply import load_object
from clipper_core.errors import ClipperError


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


def _connection(args: argparse.Namespace) -> ClipperConnection:
    return ClipperConnection(
        LocalContainerManager(
            args.host,
            args.query_port,
            args.management_port,
            args.state_dir,
            admin_token=args.admin_token,
            tls_ca=args.tls_ca,
        )
    )


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=False))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
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
    cfg.shutdown_grace = args.shutdown_grace
    cfg.admission_control = not args.no_admission
    cfg.client_max_concurrency = args.client_max_concurrency
    cfg.client_rate_limit = args.client_rate_limit
    for name in (
        "queue_capacity",
        "batch_timeout",
        "max_body_size",
        "max_header_size",
        "max_json_depth",
        "max_inflight_body_bytes",
        "max_connections",
        "min_body_rate",
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
                    }
                )
            )
            tmp.replace(ready_file)

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(server.run_forever(on_started))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    conn = _connection(args)
    conn.start_clipper(timeout=args.timeout)
    print(
        f"clipper_core started: query http://{args.host}:{args.query_port},"
        f" management http://{args.host}:{args.management_port}"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    conn = _connection(args)
    if not conn.ping():
        raise ServerNotRunning(f"clipper_core is not running at {conn.management_url}")
    conn.stop_all()
    print("clipper_core stopped")
    return 0


def _fmt(value: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value * scale:{spec}}{unit}"


def cmd_status(args: argparse.Namespace) -> int:
    conn = _connection(args)
    state = conn.get_state()
    metrics = state.get("metrics") or {}
    apps = conn.get_all_apps(verbose=True)
    print(f"server: query {conn.get_query_addr()}, management {conn.management_url}")
    window = metrics.get("window_seconds")
    if window:
        print(f"rates over the last {window:.0f} s")
    print()
    rows = []
    for a in apps:
        am = metrics.get("apps", {}).get(a["name"], {})
        w = am.get("window", {})
        rows.append(
            [
                a["name"],
                a["input_type"],
                f"{a['latency_slo_micros'] / 1000:g} ms",
                ",".join(a["linked_models"]) or "-",
                str(am.get("requests", "-")),
                _fmt(w.get("throughput"), ".1f"),
                _fmt(w.get("p50_seconds"), ".1f", 1000, " ms"),
                _fmt(w.get("p99_seconds"), ".1f", 1000, " ms"),
                _fmt(w.get("slo_attainment"), ".1f", 100, "%"),
                str(sum(am.get("default_outputs", {}).values())),
                str(sum(am.get("errors", {}).values())),
            ]
        )
    header = ["APP", "INPUT", "SLO", "MODELS", "REQUESTS", "REQ/S", "P50", "P99", "IN_SLO"]
    header += ["DEFAULTS", "ERRORS"]
    print(_table(rows, header) if rows else "no applications")
    print()
    mrows = []
    for key, m in metrics.get("models", {}).items():
        w = m.get("window", {})
        lat = m.get("container_latency_seconds", {})
        mrows.append(
            [
                key + ("" if m.get("current") else " (inactive)"),
                f"{m['replicas_healthy']}/{m['replicas']}",
                str(m["requests"]),
                str(m["cache_hits"]) if m.get("cache_enabled") else "off",
                _fmt(w.get("cache_hit_ratio"), ".0f", 100, "%"),
                str(m["queue_length"]),
                f"{m['batch_size_limit']}/{m['max_batch_size']}",
                _fmt(w.get("mean_batch_size"), ".1f"),
                _fmt(lat["sum"] / lat["count"] if lat.get("count") else None, ".2f", 1000),
                str(sum(m.get("errors", {}).values())),
            ]
        )
    header = ["MODEL", "REPLICAS", "QUERIES", "CACHE_HITS", "HIT%", "QUEUED", "BATCH"]
    header += ["AVG_BATCH", "MODEL_MS", "ERRORS"]
    print(_table(mrows, header) if mrows else "no models")
    return 0


def cmd_apps(args: argparse.Namespace) -> int:
    apps = _connection(args).get_all_apps(verbose=True)
    print(
        json.dumps(apps, indent=2)
        if args.json
        else _table(
            [
                [
                    a["name"],
                    a["input_type"],
                    str(a["latency_slo_micros"]),
                    a["default_output"],
                    ",".join(a["linked_models"]) or "-",
                ]
                for a in apps
            ],
            ["APP", "INPUT", "SLO_MICROS", "DEFAULT", "MODELS"],
        )
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    models = _connection(args).get_all_models(verbose=True)
    print(
        json.dumps(models, indent=2)
        if args.json
        else _table(
            [
                [
                    m["model_name"],
                    m["model_version"],
                    m["input_type"],
                    "yes" if m["is_current_version"] else "",
                    str(m["num_replicas"]),
                ]
                for m in models
            ],
            ["MODEL", "VERSION", "INPUT", "CURRENT", "REPLICAS"],
        )
    )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    conn = _connection(args)
    obj, _ = load_object(args.source)
    if isinstance(obj, type):
        obj = obj()
    conn.deploy_pickled(
        args.name,
        args.version,
        args.input_type,
        obj,
        num_replicas=args.replicas,
        batch_size=args.batch_size,
        queue_capacity=args.queue_capacity,
        batch_timeout=args.batch_timeout,
        controller=args.controller,
    )
    print(f"deployed {args.name}:{args.version}")
    if args.app:
        if conn.get_app_info(args.app) is None:
            conn.register_application(
                args.app, args.input_type, args.default_output, args.slo_micros
            )
        conn.link_model_to_app(args.app, args.name)
        print(f"linked to app {args.app}: POST http://{conn.get_query_addr()}/{args.app}/predict")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    changes = _connection(args).apply(args.file, args.prune, dry_run=args.dry_run)
    for change in changes:
        print(change["text"])
    if args.dry_run:
        print("dry run: nothing changed")
    return 0


def _server_options(suppress: bool) -> argparse.ArgumentParser:
    # Accepted before and after the command; after it they override (SUPPRESS
    # keeps a subcommand from resetting what was given before it).
    common = argparse.ArgumentParser(add_help=False)

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    common.add_argument("--host", default=d("127.0.0.1"), help="server address (127.0.0.1)")
    common.add_argument("--query-port", type=int, default=d(1337), help="query port (1337)")
    common.add_argument(
        "--management-port", type=int, default=d(1338), help="management port (1338)"
    )
    common.add_argument(
        "--state-dir",
        default=d(None),
        help="state folder (default $CLIPPER_STATE_DIR or ~/.clipper_core)",
    )
    common.add_argument(
        "--admin-token",
        default=d(None),
        help="management API token (default $CLIPPER_ADMIN_TOKEN; prefer the variable:"
        " arguments are visible to other users in the process list)",
    )
    common.add_argument(
        "--tls-ca",
        default=d(None),
        help="CA (or self-signed certificate) to verify an HTTPS server with"
        " (default $CLIPPER_TLS_CA)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_server_options(False)],
    )
    sub_options = _server_options(True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def sub_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[sub_options], **kw)

    p = sub_parser("serve", help="run a server in the foreground until SIGTERM/SIGINT")
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
        help="Open Inference Protocol gRPC port (default $CLIPPER_GRPC_PORT or 8001;"
        " 0 picks one, -1 serves none)",
    )
    p.add_argument("--tls-cert", help="PEM certificate: serve both ports over HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
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
        help="memory budget for query bodies in flight, all connections together"
        " (128 MiB; 503 beyond; 0: none)",
    )
    p.add_argument(
        "--max-connections",
        type=_non_negative_int,
        help="client connections open at once on the query port (4096; 503 beyond; 0: none)",
    )
    p.add_argument(
        "--min-body-rate",
        type=_non_negative_int,
        help="bytes/s an incomplete request must keep arriving at (1024; 408 below; 0: off)",
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
    p.add_argument("--ready-file", help="write the bound ports here (JSON) once serving")
    p.set_defaults(fn=cmd_serve)

    p = sub_parser("start", help="start a server in the background and wait until it answers")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p.set_defaults(fn=cmd_start)

    sub_parser("stop", help="stop the server and its model containers").set_defaults(fn=cmd_stop)
    sub_parser("status", help="apps, models, replicas, queues").set_defaults(fn=cmd_status)

    for name, fn, what in (("apps", cmd_apps, "applications"), ("models", cmd_models, "models")):
        p = sub_parser(name, help=f"list {what}")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(fn=fn)

    add_pipeline_commands(sub_parser, sub_options, _connection, _table)

    p = sub_parser(
        "deploy",
        help="deploy a Python function or Model class",
        description="Deploy FILE.py:func (a function taking a list of inputs and returning a"
        " list of outputs) or module:ModelClass (a model_containers.Model subclass).",
    )
    p.add_argument("name", help="model name")
    p.add_argument("source", help="FILE.py:NAME or module:NAME")
    p.add_argument("--version", default="1", help="model version (default 1)")
    p.add_argument(
        "--input-type", required=True, choices=["ints", "floats", "doubles", "strings", "bytes"]
    )
    p.add_argument("--replicas", type=int, default=1, help="number of replicas (default 1)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=-1,
        help="fixed batch size, or the cap of an adaptive --controller (-1: none)",
    )
    p.add_argument(
        "--controller",
        choices=["aimd", "quantile", "fixed"],
        help="batch-size controller (default: fixed with --batch-size > 0, else aimd)",
    )
    p.add_argument("--queue-capacity", type=int, help="queue bound (default: the server's)")
    p.add_argument(
        "--batch-timeout", type=float, help="seconds per batch before the replica is recycled"
    )
    p.add_argument("--app", help="also register (if needed) and link this application")
    p.add_argument("--slo-micros", type=int, default=100_000, help="app latency objective")
    p.add_argument("--default-output", default="None", help="app default output")
    p.set_defaults(fn=cmd_deploy)

    p = sub_parser(
        "apply",
        help="make the server match a declarative file",
        description="Create or update the models, apps and pipelines FILE (TOML) describes;"
        " applying it again changes nothing.  One line per change.",
    )
    p.add_argument("-f", "--file", required=True, help="the file (TOML)")
    p.add_argument(
        "--prune", action="store_true", help="also delete what the file does not describe"
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would change")
    p.set_defaults(fn=cmd_apply)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ClipperError as exc:
        print(f"clipper: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
