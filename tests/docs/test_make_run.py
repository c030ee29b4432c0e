"""`make run`, the README's first command, serves as it says: it deploys the
example model, prints its answers and keeps serving on port 1337 until Ctrl-C.

Runs only where `make run` would start at once (the .venv's install is up to date,
as after `make test` in CI) and its ports are free; it never installs anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.docs.snippets import ROOT

pytestmark = [pytest.mark.docs, pytest.mark.slow, pytest.mark.timeout(300)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_make_run_serves_until_interrupted(tmp_path: object) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    up_to_date = subprocess.run(["make", "-q", ".venv/.run-stamp"], cwd=ROOT).returncode == 0
    if not up_to_date:
        pytest.skip("the .venv's install is not up to date: `make run` would install first")
    busy = [p for p in (1337, 1338, 8001) if not _port_free(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use: `make run` serves on 1337, 1338 and 8001")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C to stop"):
                break
        assert any(ln.startswith("  -> ") for ln in lines), "".join(lines)
        body = json.dumps({"input": [1.0, 1.0, 1.0, 1.0]}).encode()
        req = urllib.request.Request("http://127.0.0.1:1337/demo/predict", body)
        with urllib.request.urlopen(req, timeout=30) as reply:
            assert json.load(reply)["model"] == "logreg:1"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode is not None


def test_the_example_on_a_busy_port_says_so_in_one_line() -> None:
    # `clipper start` then `make run`, say: one line naming the port, not a
    # 39-line traceback (the demo module is what `make run` runs).
    import sys

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "clipper_core.demo", "--once", "--query-port", str(port),
             "--management-port", "0", "--grpc-port", "-1"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], res.stderr
    assert "clipper stop" in lines[0]
