"""``clipper pipelines`` and ``clipper pipeline show|delete NAME``.

Pipelines are registered from a declarative file (``clipper apply -f``) or the
Python API (``ClipperConnection.register_pipeline``); these commands list, show
and delete them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.errors import NotFound

__all__ = ["add_pipeline_commands"]

Connect = Callable[[argparse.Namespace], ClipperConnection]
Table = Callable[[list[list[str]], list[str]], str]


def _stage_text(stage: dict[str, Any]) -> str:
    if stage.get("model"):
        version = stage.get("version")
        text = str(stage["model"]) + (f":{version}" if version else "")
    else:
        text = "join"
    return text + (f" ({stage['combine']})" if stage.get("combine") else "")


def _edge_text(edge: dict[str, Any]) -> str:
    when = edge.get("when")
    if not when:
        return f"{edge['from']}->{edge['to']}"
    target = "output" if when.get("field") is None else f"output[{when['field']!r}]"
    return f"{edge['from']}->{edge['to']} if {target} {when['op']} {json.dumps(when['value'])}"


def add_pipeline_commands(
    sub_parser: Callable[..., argparse.ArgumentParser],
    options: argparse.ArgumentParser,
    connect: Connect,
    table: Table,
) -> None:
    """Add ``pipelines`` and ``pipeline show|delete`` to the CLI.

    Args:
        sub_parser: Makes a subcommand's parser (``name, **kw``).
        options: The server options a subcommand accepts after its name.
        connect: The connection the parsed arguments describe.
        table: Formats rows under a header.
    """

    def cmd_pipelines(args: argparse.Namespace) -> int:
        pipes = connect(args).get_all_pipelines(verbose=True)
        if args.json:
            print(json.dumps(pipes, indent=2))
            return 0
        rows = [
            [
                p["name"],
                p["input_type"],
                str(p["slo_micros"]),
                p["default_output"],
                " ".join(s["name"] for s in p["stages"]),
            ]
            for p in pipes
        ]
        header = ["PIPELINE", "INPUT", "SLO_MICROS", "DEFAULT", "STAGES"]
        print(table(rows, header) if rows else "no pipelines")
        return 0

    def cmd_show(args: argparse.Namespace) -> int:
        info = connect(args).get_pipeline_info(args.name)
        if info is None:
            raise NotFound(f"pipeline {args.name!r} is not registered")
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(
            f"pipeline {info['name']}: input {info['input_type']}, latency objective"
            f" {info['slo_micros']} us, default output {info['default_output']}"
        )
        rows = [[s["name"], _stage_text(s), s.get("output_type") or "-"] for s in info["stages"]]
        print(table(rows, ["STAGE", "MODEL", "OUTPUT"]))
        for edge in info["edges"]:
            print(f"  {_edge_text(edge)}")
        return 0

    def cmd_delete(args: argparse.Namespace) -> int:
        connect(args).delete_pipeline(args.name)
        print(f"pipeline {args.name} deleted")
        return 0

    p = sub_parser("pipelines", help="list pipelines")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_pipelines)

    p = sub_parser("pipeline", help="show or delete a pipeline")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[options], help="a pipeline's stages and edges")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(fn=cmd_show)
    delete = actions.add_parser("delete", parents=[options], help="stop serving a pipeline")
    delete.add_argument("name")
    delete.set_defaults(fn=cmd_delete)
