"""Schema-based fuzzing of both REST APIs with Schemathesis, driven by the
OpenAPI document (``pip install -e '.[fuzz]'``; run by .ci/run after ``make
test``: ``pytest -m fuzz tests/api``).

A real server with a management token and the closure model ``sum`` behind the
application ``hello``; Schemathesis's CLI runs each port's operations (its
examples, coverage and fuzzing phases, valid and invalid data; the query port
a second time with its path parameters pinned to ``hello``, ``sum`` and ``1``,
so that generated bodies reach the model) and checks that
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

# A numpy RuntimeWarning in the server (in this process) is an error: one hid a
# bug that the fuzz run found (an overflowing finiteness check).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.fuzz,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("error::RuntimeWarning"),
]

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)
#: Examples per operation and phase.  "pinned": the query port again, its path
#: parameters pinned to the deployed app and model, so that the bodies reach them.
MAX_EXAMPLES = {"query": 100, "pinned": 150, "management": 60}
LEFT_OUT = ("/admin/shutdown", "/admin/build_runtime_env")
#: Schemathesis's configuration of the pinned run.
PINNED = """[parameters]
"path.app" = "hello"
"path.model" = "sum"
"path.version" = "1"
"""


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


def run_schemathesis(served: Running, run: str, workdir: Path) -> str:
    """Run Schemathesis (``run``: ``query``, ``pinned`` or ``management``) and
    assert that it found nothing."""
    pytest.importorskip("schemathesis", reason="the fuzz extra: pip install -e '.[fuzz]'")
    port = "management" if run == "management" else "query"
    spec = workdir / f"{port}.json"
    spec.write_text(json.dumps(port_document(port)))
    config = workdir / "schemathesis.toml"
    config.write_text(PINNED if run == "pinned" else "")
    number = served.server.query_port if port == "query" else served.server.management_port
    token = served.server.config.admin_token
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
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
        str(MAX_EXAMPLES[run]),
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
        f"schemathesis, {run}: {generated.group(0) if generated else '?'}"
        f" test cases in {took:.0f} s"
    )
    assert done.returncode == 0, out[-20000:]
    return out


def test_fuzz_query_port(served: Running, tmp_path: Path) -> None:
    run_schemathesis(served, "query", tmp_path)


def test_fuzz_query_port_on_the_deployed_model(served: Running, tmp_path: Path) -> None:
    run_schemathesis(served, "pinned", tmp_path)


def test_fuzz_management_port(served: Running, tmp_path: Path) -> None:
    run_schemathesis(served, "management", tmp_path)
