"""Every snippet of README.md and docs/**/*.md runs (tests/docs/snippets.py says how).

Marked ``docs`` and ``slow``: deselected by default (pyproject's addopts), run by
.ci/run as ``pytest -m docs tests/docs``.  One test per page, each in a fresh
process with its own ports and ``$HOME``; a failure names the page and line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.snippets import (
    DEFAULT_PORTS,
    ROOT,
    SKIPPED_SNIPPETS,
    blocks,
    is_project_command,
    pages,
    python_expectation,
    shell_commands,
    substitute_ports,
    wants_server,
)

pytestmark = [pytest.mark.docs, pytest.mark.slow, pytest.mark.timeout(600)]

DRIVER = Path(__file__).with_name("snippet_driver.py")
OPTIONAL_MODULES = ("torch", "tensorflow", "pyspark", "sklearn", "xgboost", "onnx", "tritonclient")
IMPORTABLE = {m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is not None}
PAGES = [p for p in pages() if any(b.lang in ("python", "bash") for b in blocks(p))]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def plan_for(page: Path, ports: dict[int, int]) -> tuple[list[dict[str, object]], list[str]]:
    """The blocks to run, and the skipped ones (``page:line: reason``)."""
    runs: list[dict[str, object]] = []
    skipped: list[str] = []
    for b in blocks(page):
        if b.lang not in ("python", "bash"):
            continue
        reason = b.skip_reason(IMPORTABLE)
        if reason is not None:
            skipped.append(f"{b.where}: {reason}")
            continue
        code = substitute_ports(b.code, ports)
        if b.lang == "python":
            runs.append(
                {
                    "kind": "python",
                    "page": b.page,
                    "line": b.line,
                    "code": code,
                    "expect": python_expectation(code),
                }
            )
            continue
        cmds = shell_commands(b)
        foreign = [c.text for c in cmds if not is_project_command(c.text)]
        assert not foreign, (
            f"{b.where}: a bash block with commands that are not this project's ({foreign[0]!r}):"
            ' run them, or mark the block <!-- snippet: skip reason="..." -->'
        )
        runs.append(
            {
                "kind": "bash",
                "page": b.page,
                "line": b.line,
                "commands": [
                    {
                        "line": c.line,
                        "text": substitute_ports(c.text, ports),
                        "expect": None if c.expect is None else substitute_ports(c.expect, ports),
                    }
                    for c in cmds
                ],
            }
        )
    return runs, skipped


def clipper(env: dict[str, str], ports: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clipper_core.cli",
            "--query-port",
            str(ports[0]),
            "--management-port",
            str(ports[1]),
            *args,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_snippets_run(page: Path, tmp_path: Path) -> None:
    chosen = free_ports(3)
    ports = dict(zip(DEFAULT_PORTS, chosen, strict=True))
    runs, skipped = plan_for(page, ports)
    SKIPPED_SNIPPETS.extend(skipped)
    if not runs:
        pytest.skip(f"every snippet of {page.name} is marked skip: {'; '.join(skipped)}")
    home = tmp_path / "home"
    home.mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"blocks": runs}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # `clipper` in a page talks to the page's server: the page's ports come first
    # (a snippet's own --query-port after its command still wins).
    wrapper = bindir / "clipper"
    wrapper.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m clipper_core.cli --query-port {chosen[0]}"
        f' --management-port {chosen[1]} "$@"\n'
    )
    wrapper.chmod(0o755)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CLIPPER_") and k not in ("PYTEST_CURRENT_TEST",)
    }
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join((str(bindir), str(Path(sys.executable).parent), env.get("PATH", ""))),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        # One token for every server of the page, so that the cleanup below can
        # stop whatever a snippet started, wherever its state folder is.
        CLIPPER_ADMIN_TOKEN=secrets.token_hex(16),
        CLIPPER_GRPC_PORT=str(ports[8001]),
    )
    try:
        if wants_server(page.read_text()):
            started = clipper(env, chosen, "start", "--state-dir", str(tmp_path / "state"))
            assert started.returncode == 0, started.stderr
        done = subprocess.run(
            [sys.executable, str(DRIVER), str(plan)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=540,
            start_new_session=True,
        )
    finally:
        clipper(env, chosen, "stop")
    print(done.stdout[-20000:])
    assert done.returncode == 0, done.stderr[-20000:]
