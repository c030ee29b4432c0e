"""Runs one page's snippets in order (see tests/docs/snippets.py); a fresh process
per page.  Usage: python snippet_driver.py PLAN.json

Prints ``SNIPPET FAILED page:line`` and the reason, and exits 1, at the first
block that raises, exits non-zero or prints other than its ``# ->`` comments say.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from snippets import output_matches


class Tee(io.TextIOBase):
    """Writes through to the real stdout and keeps a copy."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.buf = io.StringIO()

    def write(self, s: str) -> int:
        self.real.write(s)
        self.buf.write(s)
        return len(s)

    def flush(self) -> None:
        self.real.flush()


def fail(where: str, why: str) -> None:
    sys.__stdout__.flush()
    print(f"\nSNIPPET FAILED {where}\n{why}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run_python(block: dict[str, Any], namespace: dict[str, Any]) -> None:
    where = f"{block['page']}:{block['line']}"
    print(f"--- {where} (python)", flush=True)
    # Padded so that tracebacks name the page's own line numbers.
    source = "\n" * (block["line"] - 1) + block["code"]
    tee = Tee(sys.stdout)
    sys.stdout = tee
    try:
        exec(compile(source, block["page"], "exec"), namespace)
    except BaseException:
        sys.stdout = tee.real
        fail(where, traceback.format_exc())
    finally:
        sys.stdout = tee.real
    expect = block.get("expect")
    if expect is not None and not output_matches(expect, tee.buf.getvalue()):
        fail(where, f"printed:\n{tee.buf.getvalue()}\nbut its '# ->' comments say:\n{expect}")


def run_shell(block: dict[str, Any]) -> None:
    for cmd in block["commands"]:
        where = f"{block['page']}:{cmd['line']}"
        print(f"--- {where} $ {cmd['text']}", flush=True)
        try:
            done = subprocess.run(
                cmd["text"],
                shell=True,
                executable="/bin/bash",
                capture_output=True,
                text=True,
                timeout=block.get("timeout", 180),
            )
        except subprocess.TimeoutExpired as exc:
            fail(where, f"timed out after {exc.timeout} s")
        print(done.stdout, flush=True)
        if done.returncode != 0:
            fail(where, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}")
        if cmd["expect"] is not None and not output_matches(cmd["expect"], done.stdout):
            fail(where, f"printed:\n{done.stdout}\nbut its '# ->' comments say:\n{cmd['expect']}")


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for block in plan["blocks"]:
        if block["kind"] == "python":
            run_python(block, namespace)
        else:
            run_shell(block)
    print("--- all snippets ran", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
