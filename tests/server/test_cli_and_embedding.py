"""The server run three ways: the ``clipper`` CLI (a background process), an async
context manager in the caller's loop, and a background thread."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from bench.ports import free_port
from clipper_core.connection import ClipperConnection
from clipper_core.deployers import create_endpoint
from clipper_core.server import ClipperServer
from tests.server import models

REPO = Path(__file__).resolve().parents[2]


def _clipper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipper_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_cli_start_deploy_status_stop(tmp_path: Path) -> None:
    qp, mp = free_port(), free_port()
    env = {**os.environ, "CLIPPER_STATE_DIR": str(tmp_path / "state")}
    ports = ["--query-port", str(qp), "--management-port", str(mp)]

    # Not running yet: a clear error, not a traceback.
    res = _clipper(*ports, "status", env=env)
    assert res.returncode == 1
    assert "not running" in res.stderr and "clipper start" in res.stderr

    res = _clipper(*ports, "start", env=env)
    assert res.returncode == 0, res.stderr
    try:
        model_file = tmp_path / "mymodel.py"
        model_file.write_text("def predict(inputs):\n    return [len(x) for x in inputs]\n")
        res = _clipper(
            *ports,
            "deploy",
            "lens",
            f"{model_file}:predict",
            "--input-type",
            "strings",
            "--app",
            "lenapp",
            "--slo-micros",
            "2000000",
            env=env,
        )
        assert res.returncode == 0, res.stderr
        req = urllib.request.Request(
            f"http://127.0.0.1:{qp}/lenapp/predict", json.dumps({"input": "abcd"}).encode()
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["output"] == 4
        res = _clipper(*ports, "status", env=env)
        assert res.returncode == 0, res.stderr
        assert "lenapp" in res.stdout and "lens:1" in res.stdout
        res = _clipper(*ports, "apps", env=env)
        assert "lenapp" in res.stdout
        res = _clipper(*ports, "models", env=env)
        assert "lens" in res.stdout
        # The version's code is what the file said at deploy (pickled by value, not
        # a reference to the file): the same version with edited code is refused.
        model_file.write_text("def predict(inputs):\n    return [len(x) + 100 for x in inputs]\n")
        again = ["deploy", "lens", f"{model_file}:predict", "--input-type", "strings"]
        res = _clipper(*ports, *again, env=env)
        assert res.returncode == 1 and "code differs" in res.stderr, (res.stdout, res.stderr)
    finally:
        res = _clipper(*ports, "stop", env=env)
    assert res.returncode == 0, res.stderr
    res = _clipper(*ports, "stop", env=env)
    assert res.returncode == 1 and "not running" in res.stderr


def test_cli_help_lists_commands() -> None:
    res = _clipper("--help", env=dict(os.environ))
    assert res.returncode == 0
    for cmd in ("start", "stop", "status", "apps", "models", "deploy"):
        assert cmd in res.stdout


def test_async_context_manager_in_callers_loop(tmp_path: Path) -> None:
    async def main() -> dict:
        async with ClipperServer(
            query_port=0, management_port=0, state_dir=str(tmp_path / "s")
        ) as server:
            conn = ClipperConnection.for_server(server)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None,
                lambda: create_endpoint(
                    conn, "emb", "doubles", models.make_sum(), slo_micros=2_000_000
                ),
            )

            def query() -> dict:
                req = urllib.request.Request(
                    f"{server.query_url}/emb/predict", json.dumps({"input": [4.0, 5.0]}).encode()
                )
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return dict(json.loads(resp.read()))

            return await loop.run_in_executor(None, query)

    reply = asyncio.run(main())
    assert reply["output"] == 9.0 and reply["default"] is False


def test_status_counts_a_failed_replica_against_the_healthy_ones() -> None:
    # REPLICAS read healthy/connected: a version whose second replica had failed
    # (given up after its restarts) showed "1/1", as if whole.
    from clipper_core.cli import replicas_cell

    def replica(rid: str, connected: bool, state: str) -> dict[str, object]:
        return {"replica_id": rid, "connected": connected, "healthy": connected, "state": state}

    whole = {"replicas": 2, "replicas_healthy": 2}
    whole["replica_list"] = [replica("0", True, "running"), replica("1", True, "running")]
    assert replicas_cell(whole) == "2/2"
    broken = {"replicas": 1, "replicas_healthy": 1}
    broken["replica_list"] = [replica("0", True, "running"), replica("1", False, "failed")]
    assert replicas_cell(broken) == "1/2 (1 failed)"
    starting = {
        "replicas": 0,
        "replicas_healthy": 0,
        "replica_list": [replica("0", False, "starting")],
    }
    assert replicas_cell(starting) == "0/1"
    assert replicas_cell({"replicas": 1, "replicas_healthy": 0}) == "0/1"  # an older server
