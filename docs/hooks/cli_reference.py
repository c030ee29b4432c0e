"""MkDocs hook: writes reference/cli.md from ``clipper_core.cli``'s argparse parser
at build time, so the page lists every command and option the code has."""

from __future__ import annotations

import argparse
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "off" if isinstance(action, argparse._StoreTrueAction) else "on"
    if action.default in (None, [], argparse.SUPPRESS):
        return ""
    return f"`{action.default}`"


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    return f"{names} `{metavar}`"


def _options_table(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings and action.option_strings[-1] in skip:
            continue
        help_text = action.help or ""
        if action.choices and not action.option_strings:
            help_text += f" (one of {', '.join(map(str, action.choices))})"
        elif action.choices:
            help_text += f" (choices: {', '.join(map(str, action.choices))})"
        rows.append(f"| {_name(action)} | {_cell(help_text)} | {_default(action)} |")
    if not rows:
        return ["No options of its own."]
    return ["| argument | what | default |", "|---|---|---|", *rows]


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, sub, helps.get(name, "")))
    return out


def _commands(parser: argparse.ArgumentParser, prefix: str, global_opts: set[str]) -> list[str]:
    lines: list[str] = []
    for name, sub, help_text in _subparsers(parser):
        title = f"{prefix} {name}"
        lines += [f"## `{title}`", "", _cell(help_text) + ".", ""]
        if sub.description and sub.description != help_text:
            lines += [sub.description, ""]
        usage = sub.format_usage().removeprefix("usage: ").strip()
        lines += ["```text", usage, "```", ""]
        lines += _options_table(sub, global_opts)
        lines.append("")
        nested = _subparsers(sub)
        if nested:
            lines += _commands(sub, title, global_opts)
    return lines


def render() -> str:
    from clipper_core.cli import build_parser

    parser = build_parser()
    parser.prog = "clipper"
    global_opts = {a.option_strings[-1] for a in parser._actions if a.option_strings}
    global_opts.discard("--help")
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated at build time by docs/hooks/cli_reference.py from"
        " clipper_core.cli.build_parser(); edit the parser's help, not this page. -->",
        "",
        "`clipper` is installed with the package (`[project.scripts]`); "
        "`python -m clipper_core.cli` is the same program.",
        "",
        "```text",
        (parser.description or "").strip(),
        "```",
        "",
        "When no server answers, commands say so and exit 1. `clipper start` takes"
        " every option of `clipper serve` and passes it to the server it starts (a"
        " server already answering there is left as it is); it prints the ports bound"
        " (`--query-port 0` picks free ones). Every command sends the management token"
        " (`--admin-token`, default `$CLIPPER_ADMIN_TOKEN`, else the token file of"
        " `--state-dir`) and trusts `--tls-ca` (default `$CLIPPER_TLS_CA`) for an"
        " HTTPS server. `clipper serve` logs one JSON object per line"
        " ([Observability](../guides/observability.md)); its settings are those of"
        " the [configuration reference](configuration.md).",
        "",
        "## Global options",
        "",
        "Accepted before the command, and by every command after its name (given "
        "after it, they override).",
        "",
        *_options_table(parser, set()),
        "",
        *_commands(parser, "clipper", global_opts),
    ]
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files
