"""The code blocks of README.md and docs/**/*.md, as the snippet suite runs them.

A page's blocks run in order, in one fresh process per page (tests/docs/
snippet_driver.py): ```python blocks share one namespace, so a later block uses
what an earlier one defined; ```bash blocks whose commands are this project's
(``clipper ...``, ``curl`` to the server, ``python examples/...``) run in a
shell.  Every other ```bash block must carry a marker saying why it does not run.

Markers are HTML comments on the line before a block (invisible on the site):

- ``<!-- snippet: skip reason="needs a Kubernetes cluster" -->``: not run; the
  suite prints it with its reason.
- ``<!-- snippet: requires="torch" -->``: run only when these modules (comma
  separated) import; otherwise skipped like the above, naming them.

and one on a line of its own anywhere in a page, for pages whose commands need a
server that no block of theirs starts:

- ``<!-- snippets: server -->``: the suite starts ``clipper start`` on the page's
  ports before its first block.

Expected output: in a python block, the ``# -> ...`` comments (continued by
``#    ...`` lines) together are what the block prints; in a bash block, the
``# -> ...`` lines after a command are what that command prints.  Both compare
without whitespace, and ``...`` stands for anything.

Ports: the server's defaults 1337 (query), 1338 (management) and 8001 (OIP gRPC)
are replaced, as whole numbers, by free ports chosen for the page; ``clipper`` runs
with the page's ports (a wrapper on ``PATH`` passes them before the command);
each page gets its own temporary ``$HOME`` (so ``~/.clipper_core`` is fresh) and
runs in a temporary folder where ``examples/`` is the repository's.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Commands of this project that a ```bash block may run.
PROJECT_COMMANDS = ("clipper", "curl", "python", ".venv/bin/python")

_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*snippet:\s*(.*?)\s*-->\s*$")
_PAGE_SERVER = re.compile(r"^<!--\s*snippets:\s*server\s*-->\s*$", re.M)
_ATTR = re.compile(r'(\w+)(?:="([^"]*)")?')
#: ``page:line: reason`` of each snippet the session's tests did not run
#: (tests/docs/conftest.py prints them after the run).
SKIPPED_SNIPPETS: list[str] = []
#: The default ports, as they appear in the pages.
DEFAULT_PORTS = (1337, 1338, 8001)


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    line: int  # the page's line of the block's first code line
    lang: str
    code: str
    marker: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def skip_reason(self, importable: set[str]) -> str | None:
        """Why the block does not run here, or None."""
        if "skip" in self.marker:
            return self.marker.get("reason") or "marked skip"
        needs = [m for m in self.marker.get("requires", "").split(",") if m.strip()]
        missing = [m.strip() for m in needs if m.strip() not in importable]
        if missing:
            return f"needs {', '.join(missing)} (not importable here)"
        return None


def pages() -> list[Path]:
    """README.md and every page of the docs site."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)
    return [ROOT / "README.md", *docs]


def wants_server(text: str) -> bool:
    return bool(_PAGE_SERVER.search(text))


def parse_marker(text: str) -> dict[str, str]:
    return {k: v for k, v in _ATTR.findall(text)}


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker before each."""
    page = str(path.relative_to(ROOT))
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : j]]
        marker: dict[str, str] = {}
        if i > 0:
            mm = _MARKER.match(lines[i - 1].strip())
            if mm:
                marker = parse_marker(mm.group(1))
        out.append(Block(page, i + 2, lang, "\n".join(body) + "\n", marker))
        i = j + 1
    return out


def substitute_ports(code: str, ports: dict[int, int]) -> str:
    for old, new in ports.items():
        code = re.sub(rf"(?<![\w.]){old}(?![\w.])", str(new), code)
    return code


@dataclass
class Command:
    """One shell command of a bash block and the output its comments promise."""

    line: int
    text: str
    expect: str | None


def shell_commands(block: Block) -> list[Command]:
    """The commands of a bash block (continuation lines joined) with their
    expected output (the ``# -> `` lines after each)."""
    out: list[Command] = []
    lines = block.code.splitlines()
    k = 0
    while k < len(lines):
        raw = lines[k]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            if stripped.startswith("# ->") and out:
                expect = [stripped[4:]]
                while k + 1 < len(lines) and lines[k + 1].strip().startswith("#  "):
                    k += 1
                    expect.append(lines[k].strip()[1:])
                last = out[-1]
                last.expect = (last.expect or "") + "".join(expect)
            k += 1
            continue
        start = k
        text = raw
        while text.rstrip().endswith("\\") and k + 1 < len(lines):
            k += 1
            text = text.rstrip()[:-1] + " " + lines[k].strip()
        out.append(Command(block.line + start, text, None))
        k += 1
    return out


def is_project_command(text: str) -> bool:
    words = shlex.split(text, comments=True)
    if not words:
        return True
    if words[0] in ("python", ".venv/bin/python"):
        return len(words) > 1 and words[1].startswith("examples/")
    if words[0] == "curl":
        return any(re.search(r"(localhost|127\.0\.0\.1):\d+", w) for w in words)
    return words[0] == "clipper"


def python_expectation(code: str) -> str | None:
    """What a python block's ``# -> `` comments say it prints, or None."""
    parts: list[str] = []
    lines = code.splitlines()
    for k, ln in enumerate(lines):
        pos = ln.find("# ->")
        if pos < 0:
            continue
        parts.append(ln[pos + 4 :])
        for nxt in lines[k + 1 :]:
            if not nxt.strip().startswith("#  "):
                break
            parts.append(nxt.strip()[1:])
    return "".join(parts) if parts else None


def output_matches(expect: str, actual: str) -> bool:
    """``expect`` against ``actual``, ignoring whitespace; ``...`` is anything."""
    squeeze = re.compile(r"\s+")
    pattern = ".*".join(re.escape(p) for p in squeeze.sub("", expect).split("..."))
    return re.fullmatch(pattern, squeeze.sub("", actual), re.S) is not None
