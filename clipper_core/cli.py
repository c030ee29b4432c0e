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
import ipaddress
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from clipper_core.cli_pipelines import add_pipeline_commands
from clipper_core.cli_serve import add_serve_options, cmd_serve, serve_argv
from clipper_core.connection import ClipperConnection, LocalContainerManager
from clipper_core.connection_apply import (
    file_module,
    load_object,
    pickled_by_value,
    source_digest,
)
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
    if args.tls_cert and not conn.cm.tls:  # the server's own certificate verifies it
        conn.cm.tls, conn.cm.tls_ca = True, args.tls_cert
    said = conn.start_clipper(timeout=args.timeout, serve_args=serve_argv(args))
    if said.startswith("unchanged"):
        print(f"clipper_core already running: management {conn.management_url}")
        return 0
    if args.ready_file:  # the child wrote the ports to the manager's own file
        Path(args.ready_file).write_text(conn.cm.ready_file.read_text())
    cm = conn.cm
    print(
        f"clipper_core started: query {cm.scheme}://{conn.get_query_addr()},"
        f" management {conn.management_url}, OIP gRPC port {cm.grpc_port or 'none'}"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    conn = _connection(args)
    if not conn.ping():
        raise conn.cm.unreachable(conn.management_url)
    conn.stop_all()
    print("clipper_core stopped")
    return 0


def _fmt(value: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value * scale:{spec}}{unit}"


def replicas_cell(m: dict[str, Any]) -> str:
    """A version's REPLICAS: healthy of all it has (connected, or started by this
    frontend and not connected: starting, restarting, failed), naming the failed;
    healthy/connected read "1/1" for a version with a second replica failed."""
    listed = m.get("replica_list") or []
    total = max(len(listed), m["replicas"])
    failed = sum(1 for r in listed if r.get("state") == "failed")
    return f"{m['replicas_healthy']}/{total}" + (f" ({failed} failed)" if failed else "")


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
                replicas_cell(m),
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
                    a.get("answering_model") or ("-" if a["policy"] == "single" else a["policy"]),
                ]
                for a in apps
            ],
            ["APP", "INPUT", "SLO_MICROS", "DEFAULT", "MODELS", "ANSWERS"],
        )
        if apps
        else "no applications"
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
        if models
        else "no models"
    )
    return 0


def _refuse_app_options(args: argparse.Namespace, app: dict[str, Any]) -> None:
    """Options of ``deploy --app`` that cannot apply to the existing app are errors."""
    name = app["name"]
    wrong = []
    if args.input_type != app["input_type"]:
        wrong.append(f"it takes {app['input_type']}, not --input-type {args.input_type}")
    if args.default_output is not None and args.default_output != app["default_output"]:
        wrong.append(
            f"its default output is {app['default_output']!r}, not --default-output"
            f" {args.default_output!r}"
        )
    if args.slo_micros is not None and args.slo_micros != app["latency_slo_micros"]:
        wrong.append(
            f"its objective is {app['latency_slo_micros']} µs, not --slo-micros {args.slo_micros}"
        )
    others = [m for m in app["linked_models"] if m != args.name]
    if app.get("policy", "single") == "single" and others and not args.replace:
        wrong.append(
            f"it is answered by {app.get('answering_model') or others[0]} (policy single:"
            f" its first linked model answers), so {args.name} would not; pass --replace"
            f" to unlink {', '.join(others)}"
        )
    if wrong:
        raise ClipperError(
            f"application {name} exists and {'; '.join(wrong)}: nothing was deployed"
            " (drop those options, or change the app first)"
        )


def cmd_deploy(args: argparse.Namespace) -> int:
    from clipper_core.deployers.python import deploy_and_link

    conn = _connection(args)
    obj, module = load_object(args.source)
    by_value = file_module(args.source, module)
    identity = obj
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:  # the user's class: say which, in one line
            raise ClipperError(
                f"{args.source}: making an instance of {obj.__name__} failed:"
                f" {type(exc).__name__}: {exc} (a class deployed by name takes no arguments)"
            ) from None
    with pickled_by_value(by_value):
        digest = source_digest(identity, cloudpickle.dumps(obj))
    app = conn.get_app_info(args.app) if args.app else None
    if app is not None:
        _refuse_app_options(args, app)

    said = ""  # the server's reply to the deploy: "unchanged: ..." is said as it is

    def deploy() -> str:
        nonlocal said
        with pickled_by_value(by_value):
            said = conn.deploy_pickled(
                args.name,
                args.version,
                args.input_type,
                obj,
                container_extra={"source_sha256": digest},
                num_replicas=args.replicas,
                batch_size=args.batch_size,
                queue_capacity=args.queue_capacity,
                batch_timeout=args.batch_timeout,
                controller=args.controller,
                make_current=args.make_current,
            )
        return said

    def register() -> str:
        return conn.register_application(
            args.app,
            args.input_type,
            "None" if args.default_output is None else args.default_output,
            100_000 if args.slo_micros is None else args.slo_micros,
        )

    if not args.app:
        deploy()
    else:
        deploy_and_link(
            conn,
            args.app,
            args.name,
            args.version,
            deploy,
            register=None if app is not None else register,
            replace=args.replace,
        )
    print(
        said
        if said.startswith(("unchanged", "updated"))
        else f"deployed {args.name}:{args.version}"
    )
    if args.app:
        url = f"{conn.cm.scheme}://{conn.get_query_addr()}/{args.app}/predict"
        print(f"linked to app {args.app}: POST {url}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    changes = _connection(args).apply(args.file, args.prune, dry_run=args.dry_run)
    for change in changes:
        print(change["text"])
    if args.dry_run:
        print("dry run: nothing changed")
    return 0


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _host(text: str) -> str:
    """``--host``: a host name or an IP address (an IPv6 one with or without brackets)."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if len(text) <= 253 and _HOST_NAME.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a host name or an IP address")


def _server_options(suppress: bool) -> argparse.ArgumentParser:
    # Accepted before and after the command; after it they override (SUPPRESS
    # keeps a subcommand from resetting what was given before it).
    common = argparse.ArgumentParser(add_help=False)

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    common.add_argument(
        "--host", type=_host, default=d("127.0.0.1"), help="server address (127.0.0.1)"
    )
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

    p = sub_parser(
        "start",
        help="start a server in the background and wait until it answers",
        description="Start `clipper serve` in the background with the same options, and"
        " wait until it answers (a server already answering there is left as it is).",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    add_serve_options(p)
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
    p.add_argument(
        "--no-make-current",
        dest="make_current",
        action="store_false",
        help="leave the model's current version answering (a canary; switch later);"
        " by default the new version answers once its replicas serve",
    )
    p.add_argument("--app", help="also register (if needed) and link this application")
    p.add_argument(
        "--slo-micros",
        type=int,
        help="latency objective of a new --app (100000); an existing app's must match",
    )
    p.add_argument(
        "--default-output",
        help="default output of a new --app (None); an existing app's must match",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="unlink the --app's other models, so that this one answers (policy single)",
    )
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
    except BrokenPipeError:  # `clipper apps --json | head -1`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
