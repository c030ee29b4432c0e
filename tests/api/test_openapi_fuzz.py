"""Schema-based fuzzing of both REST APIs with Schemathesis, driven by the
OpenAPI document (``pip install -e '.[fuzz]'``; run by .ci/run after ``make
test``: ``pytest -m fuzz tests/api``).

A real server with a management token and the closure model ``sum`` behind the
application ``hello``; Schemathesis's CLI runs each port's operations (its
examples, coverage and fuzzing phases, valid and invalid data) and checks that
no answer is a 5xx, that every status, media type, body and documented header
is what the document says.  The query port goes first: the management run
deletes and changes what the query port serves.  ``shutdown`` (it stops the
server) and ``build_runtime_env`` (it runs pip) are left out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clipper_core.openapi import document, port_paths
from tests.server.conftest import Running

pytestmark = [pytest.mark.slow, pytest.mark.fuzz, pytest.mark.timeout(600)]

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)
#: Examples per operation and phase: about 30 s for the query port's 14
#: operations and 90 s for the management port's 35 on a busy 2-core machine.
MAX_EXAMPLES = {"query": 100, "management": 40}
LEFT_OUT = ("/admin/shutdown", "/admin/build_runtime_env")


def port_document(port: str) -> dict[str, Any]:
    """The document of one port's operations, without the default-port servers
    (the run names the real base URL)."""
    doc = document()
    keep = set(port_paths()[port]) - set(LEFT_OUT)
    doc["paths"] = {
        path: {k: v for k, v in item.items() if k != "servers"}
        for path, item in doc["paths"].items()
        if path in keep
    }
    del doc["servers"]
    return doc


def run_schemathesis(served: Running, port: str, workdir: Path) -> str:
    pytest.importorskip("schemathesis", reason="the fuzz extra: pip install -e '.[fuzz]'")
    spec = workdir / f"{port}.json"
    spec.write_text(json.dumps(port_document(port)))
    number = served.server.query_port if port == "query" else served.server.management_port
    token = served.server.config.admin_token
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(spec),
        "--url",
        f"http://127.0.0.1:{number}",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES[port]),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--continue-on-failure",
        "--generation-database",
        "none",
        "--no-color",
    ]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=540)
    took = time.monotonic() - started
    out = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", out)
    print(
        f"schemathesis on the {port} port: {generated.group(0) if generated else '?'}"
        f" test cases in {took:.0f} s"
    )
    assert done.returncode == 0, out[-20000:]
    return out


def test_fuzz_query_port(served: Running, tmp_path: Path) -> None:
    out = run_schemathesis(served, "query", tmp_path)
    assert "Tested: 14" in out or "14 selected" in out, out[-4000:]


def test_fuzz_management_port(served: Running, tmp_path: Path) -> None:
    run_schemathesis(served, "management", tmp_path)
