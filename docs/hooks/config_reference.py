"""MkDocs hook: writes reference/configuration.md at build time from
``ServerConfig`` (every field, its default and its description), the
``clipper serve`` options that set each, and every ``CLIPPER_*`` environment
variable the code reads (the build fails on one this hook does not describe)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/configuration.md"
ROOT = Path(__file__).resolve().parents[2]

#: ServerConfig fields set by a ``clipper serve`` option of another name.
CLI_ALIASES = {"admission_control": "no_admission", "allowed_hosts": "allowed_host"}

#: What each environment variable the code mentions does.
ENV_VARS = {
    "CLIPPER_TRACE_HOPS": "A folder: the frontend and its containers stamp each query's hops"
    " and append them there as JSON lines (`python -m bench.hops`; off when unset, and"
    " costs nothing then).",
    "CLIPPER_STATE_DIR": "The state folder of a server, connection or CLI that names none"
    " (else `~/.clipper_core`, or a temporary folder for a server on query port 0).",
    "CLIPPER_GRPC_PORT": "The OIP gRPC port where none is named: a port, `0` (a free one)"
    " or `off` (also `none`, `-1`: none).",
    "CLIPPER_ADMIN_TOKEN": "The management token a server requires and the Python API,"
    " the CLI and `python -m model_containers --register-token` send.",
    "CLIPPER_INSECURE_NO_ADMIN_TOKEN": "`1` (or `true`, `yes`): serve the management API"
    " without a token (logged as a warning at every start).",
    "CLIPPER_TLS_CA": "The CA the Python API and the CLI verify an HTTPS server with.",
    "CLIPPER_NO_EXTENSIONS": "`1`: run on the pure-Python twins of the Cython extensions.",
    "CLIPPER_CYTHON_DEBUG": "`1` at build time (`setup.py`): bounds checks, wraparound,"
    " line tracing and annotated HTML.",
    "CLIPPER_EXT_ONLY": "At build time: compile only the named extensions (comma separated).",
    "CLIPPER_PARENT_PID": "Set by the server for the model containers it starts: a"
    " container stops when that process exits.",
    "CLIPPER_CONTAINER_READY": "Not a variable: the line a model container prints"
    " (`CLIPPER_CONTAINER_READY <address>`) once it serves.",
    "CLIPPER_REPLICA_TOKEN": "Set by the server for the model containers its local"
    " manager starts: the token every gRPC call on the container's plaintext port must"
    " carry (`authorization: Bearer`), and its local socket's; removed from the"
    " environment before the model's code runs.",
    "CLIPPER_REPLICA_ID": "Set in Kubernetes model pods: the replica id (the pod's ordinal).",
    "CLIPPER_POD_IP": "Set in Kubernetes model pods: the address the replica advertises.",
}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _attributes(doc: str) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring."""
    out: dict[str, str] = {}
    section = doc.split("Attributes:", 1)[1]
    current = None
    for line in section.splitlines():
        m = re.match(r"^ {8}(\w+): (.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith(" " * 12):
            out[current] += " " + line.strip()
    return out


def _env_vars() -> list[str]:
    found: set[str] = set()
    for folder in ("clipper_core", "model_containers"):
        for path in (ROOT / folder).rglob("*.py"):
            if "_proto" not in path.parts:
                found |= set(re.findall(r"\bCLIPPER_[A-Z_]+[A-Z]\b", path.read_text()))
    found |= set(re.findall(r"\bCLIPPER_[A-Z_]+[A-Z]\b", (ROOT / "setup.py").read_text()))
    missing = found - ENV_VARS.keys()
    if missing:
        raise RuntimeError(f"docs/hooks/config_reference.py does not describe {sorted(missing)}")
    return sorted(found)


def render() -> str:
    from clipper_core.cli import build_parser
    from clipper_core.config import ServerConfig

    serve = next(
        a.choices["serve"] for a in build_parser()._actions if hasattr(a, "choices")
        and isinstance(a.choices, dict) and "serve" in a.choices
    )
    flags = {a.dest: a.option_strings[-1] for a in serve._actions if a.option_strings}
    docs = _attributes(ServerConfig.__doc__ or "")
    rows = []
    for f in dataclasses.fields(ServerConfig):
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default!r}`"
        else:
            default = "from the environment" if f.name in ("admin_token",
                                                            "insecure_no_admin_token") else "`[]`"
        flag = flags.get(CLI_ALIASES.get(f.name, f.name))
        what = _cell(docs.get(f.name, "").replace("``", "`"))
        rows.append(f"| `{f.name}` | {default} | {f'`{flag}`' if flag else ''} | {what} |")
    env_rows = [f"| `{name}` | {ENV_VARS[name]} |" for name in _env_vars()]
    return "\n".join([
        "# Configuration reference",
        "",
        "<!-- Generated at build time by docs/hooks/config_reference.py from"
        " clipper_core.config.ServerConfig and the CLI's parser. -->",
        "",
        "## Server settings",
        "",
        "`ClipperServer(**settings)`, `BackgroundServer(**settings)` and"
        " `ServerConfig(...)` take these keyword arguments; `clipper serve` (and"
        " `clipper start`, which passes them on) sets them with the option shown."
        " Settings without an option are for the Python API only.  The per-request"
        " figures these imply are on [Limits](limits.md).",
        "",
        "| setting | default | `clipper serve` | what |",
        "|---|---|---|---|",
        *rows,
        "",
        "## Environment variables",
        "",
        "Every `CLIPPER_*` name the code reads or sets:",
        "",
        "| variable | what |",
        "|---|---|",
        *env_rows,
        "",
    ])


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files
