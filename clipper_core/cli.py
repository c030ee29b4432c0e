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
import sys
from collections.abc import Sequence
from typing import Any

from clipper_core.cli_pipelines import add_pipeline_commands
from clipper_core.cli_serve import add_serve_options, cmd_serve
from clipper_core.connection import ClipperConnection, LocalContainerManager, ServerNotRunning
from clipper_core.connection_apply import load_object
from clipper_core.errors import ClipperError


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
    add_serve_options(p)
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
