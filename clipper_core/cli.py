"""``clipper``: start, stop and inspect a clipper_core server; deploy models.

clipper start            start a server in the background
clipper serve            run a server in the foreground (what start runs)
clipper stop             stop it and every model container
clipper status           apps, models and replicas at a glance
clipper apps | models    list them
clipper deploy NAME ...  deploy a Python function or Model class
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipper_core.connection import ClipperConnection, LocalContainerManager, ServerNotRunning
from clipper_core.errors import ClipperError


def _connection(args: argparse.Namespace) -> ClipperConnection:
    return ClipperConnection(
        LocalContainerManager(args.host, args.query_port, args.management_port, args.state_dir)
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
    from clipper_core.server import ClipperServer

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = ServerConfig(
        host=args.host, query_port=args.query_port, management_port=args.management_port
    )
    if args.state_dir:
        cfg.state_dir = args.state_dir
    server = ClipperServer(cfg)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(server.run_forever())
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


def cmd_status(args: argparse.Namespace) -> int:
    conn = _connection(args)
    state = conn.get_state()
    apps = conn.get_all_apps(verbose=True)
    print(f"server: query {conn.get_query_addr()}, management {conn.management_url}")
    print()
    rows = [
        [
            a["name"],
            a["input_type"],
            f"{a['latency_slo_micros'] / 1000:g} ms",
            ",".join(a["linked_models"]) or "-",
        ]
        for a in apps
    ]
    print(_table(rows, ["APP", "INPUT", "SLO", "MODELS"]) if rows else "no applications")
    print()
    mrows = []
    for m in state["models"]:
        q = m["queue"]
        mrows.append(
            [
                f"{m['model']}:{m['version']}",
                str(m["replicas"]),
                str(m["queries"]),
                str(m["cache_hits"]),
                str(q.get("length", "")),
                str(m["batch_size"]),
            ]
        )
    header = ["MODEL", "REPLICAS", "QUERIES", "CACHE_HITS", "QUEUED", "BATCH"]
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


def _load_object(spec: str) -> Any:
    path, sep, attr = spec.rpartition(":")
    if not sep:
        raise ClipperError(f"expected FILE.py:NAME or module:NAME, got {spec!r}")
    if path.endswith(".py"):
        file = Path(path).resolve()
        if not file.exists():
            raise ClipperError(f"no such file: {file}")
        sys.path.insert(0, str(file.parent))
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[file.stem] = module
        module_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(path)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ClipperError(f"{path} has no attribute {attr!r}") from None


def cmd_deploy(args: argparse.Namespace) -> int:
    conn = _connection(args)
    obj = _load_object(args.source)
    if isinstance(obj, type):
        obj = obj()
    conn.deploy_pickled(
        args.name,
        args.version,
        args.input_type,
        obj,
        num_replicas=args.replicas,
        batch_size=args.batch_size,
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
    p.add_argument("--batch-size", type=int, default=-1, help="fixed batch size (-1: adaptive)")
    p.add_argument("--app", help="also register (if needed) and link this application")
    p.add_argument("--slo-micros", type=int, default=100_000, help="app latency objective")
    p.add_argument("--default-output", default="None", help="app default output")
    p.set_defaults(fn=cmd_deploy)
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
