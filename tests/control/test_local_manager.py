"""What only the local manager does: command lines from model records, per-model
environments, the management calls over them, and its neutral events."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from control_helpers import Runner

from clipper_core.admin_api import env_operations
from clipper_core.errors import BadInput
from clipper_core.logs import JsonFormatter
from clipper_core.managers import ReplicaEvent, log_replica_event
from clipper_core.managers.envs import MARKER, READY, RuntimeEnvManager
from clipper_core.managers.local import LocalProcessManager
from clipper_core.managers.local_spec import replica_spec
from clipper_core.managers.replica import (
    ProcessEvent,
    ReplicaHandle,
    ReplicaSpec,
    to_replica_event,
    to_replica_status,
)
from clipper_core.store.records import ModelRecord

REPO = Path(__file__).resolve().parents[2]


def record(container: dict[str, Any], **kw: Any) -> ModelRecord:
    return ModelRecord(
        name="m", version="3", input_type="doubles", labels=[], container=container, **kw
    )


def ready_env(envs: RuntimeEnvManager, requirements: list[str], marker_file: Path) -> str:
    """Make ``envs`` find a finished environment whose python notes each run in
    ``marker_file``, then runs this interpreter; its env id."""
    env_id = envs.env_id(requirements)
    bin_dir = envs.env_dir(env_id) / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {marker_file}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (envs.env_dir(env_id) / MARKER).write_text("{}")
    return env_id


def test_replica_spec_of_each_container_kind(tmp_path: Path) -> None:
    envs = RuntimeEnvManager(tmp_path, python=sys.executable)
    closure = replica_spec(
        record({"kind": "closure", "path": "/m/f.pkl"}, cpus=[0], memory_limit_mb=512),
        2,
        "/usr/bin/python3",
        envs,
        host="0.0.0.0",
    )
    assert isinstance(closure, ReplicaSpec)
    assert (closure.model_name, closure.model_version, closure.replica_id) == ("m", "3", 2)
    assert closure.argv == [
        "/usr/bin/python3", "-m", "model_containers", "--model-name", "m",
        "--model-version", "3", "--input-type", "doubles", "--replica-id", "2",
        "--host", "0.0.0.0", "--port", "0", "--closure", "/m/f.pkl",
    ]  # fmt: skip
    assert (closure.cpus, closure.memory_limit_mb, closure.cwd) == ([0], 512, None)

    cls = replica_spec(
        record({"kind": "class", "class": "pkg.mod:M", "model_path": "/d", "deploy_env": {"a": 1}}),
        0,
        "py",
        envs,
    )
    assert cls.argv[-6:] == [
        "--model-class", "pkg.mod:M", "--model-path", "/d", "--deploy-env", '{"a":1}',
    ]  # fmt: skip
    assert cls.argv[cls.argv.index("--host") + 1] == "127.0.0.1"
    adapter = replica_spec(
        record({"kind": "framework", "adapter": "sklearn", "path": "/d", "python_path": ["/x"]}),
        0,
        "py",
        envs,
    )
    assert adapter.argv[-4:] == ["--adapter", "sklearn", "--model-path", "/d"]
    assert adapter.env is not None and adapter.env["PYTHONPATH"].split(os.pathsep)[0] == "/x"
    with_env = replica_spec(
        record({"kind": "closure", "path": "/f", "runtime_env": {"requirements": ["six"]}}),
        0,
        "py",
        envs,
    )
    assert with_env.argv[0] == envs.interpreter(envs.env_id(["six"]))
    with pytest.raises(BadInput, match="no container to start"):
        replica_spec(record({"kind": "mystery"}), 0, "py", envs)


def test_scale_starts_replicas_on_the_models_environment(run: Runner, tmp_path: Path) -> None:
    manager = LocalProcessManager(python=sys.executable, envs_dir=tmp_path / "envs")
    ran = tmp_path / "env-python-ran"
    env_id = ready_env(manager.envs, ["six==1.16.0"], ran)
    path = tmp_path / "f.pkl"
    path.write_bytes(cloudpickle.dumps(len))
    rec = record(
        {
            "kind": "closure",
            "path": str(path),
            "python_path": [str(REPO)],
            "runtime_env": {"requirements": ["six==1.16.0"], "env_id": env_id},
        }
    )

    async def scenario() -> None:
        try:
            await manager.scale(rec, 1)
            await manager.wait_ready("m", "3", "0")  # start_timeout by default
            assert "-m model_containers --model-name m" in ran.read_text()
            assert manager.envs.status(env_id)["status"] == READY
            with pytest.raises(BadInput):
                await manager.scale(rec, -1)
        finally:
            await manager.close()
        assert manager.list() == []

    run(scenario(), timeout=120)


def test_env_operations_take_the_environments(run: Runner, tmp_path: Path) -> None:
    envs = RuntimeEnvManager(tmp_path, python=sys.executable)
    env_id = ready_env(envs, ["six==1.16.0"], tmp_path / "unused")

    async def scenario() -> None:
        ops = env_operations(envs)
        built = await ops["build_runtime_env"]({"requirements": ["six==1.16.0"]})
        assert (built["env_id"], built["status"]) == (env_id, READY)
        got = await ops["get_runtime_env"]({"env_id": env_id, "offset": 0})
        assert got["python"] == envs.interpreter(env_id)
        assert await ops["get_runtime_env"]({"env_id": "0" * 20}) == {}
        with pytest.raises(BadInput):
            await ops["get_runtime_env"]({"env_id": "../x"})
        with pytest.raises(BadInput):
            await ops["build_runtime_env"]({"requirements": []})
        # A container manager without environments (not the local one) says so.
        with pytest.raises(BadInput, match="no runtime environments"):
            await env_operations(None)["build_runtime_env"]({"requirements": ["six"]})

    run(scenario())


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("clipper_core")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_process_events_become_neutral_events_and_log_records(captured: io.StringIO) -> None:
    handle = ReplicaHandle(ReplicaSpec("m", "2", 1, ["x"]), stderr_tail_lines=5)
    handle.pid, handle.exit_code, handle.restarts = 4242, 3, 2
    handle._stderr.extend(["Traceback (most recent call last):", "RuntimeError: out of cheese"])
    crash = to_replica_event(ProcessEvent("exited", handle, "exit code 3; stderr tail:\n..."))
    assert crash == ReplicaEvent(
        kind="exited",
        model="m",
        version="2",
        replica_id="1",
        address=None,
        pid=4242,
        detail="exit code 3; stderr tail:\n...",
        exit_code=3,
        restarts=2,
        stderr_tail="Traceback (most recent call last):\nRuntimeError: out of cheese",
    )
    handle.address = "127.0.0.1:5000"
    ready = to_replica_event(ProcessEvent("ready", handle, "127.0.0.1:5000"))
    assert (ready.address, ready.stderr_tail) == ("127.0.0.1:5000", "")
    status = to_replica_status(handle)
    assert (status.replica_id, status.state, status.pid, status.restarts) == (
        "1",
        "starting",
        4242,
        2,
    )

    log_replica_event(crash)
    log_replica_event(ready)
    logged = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [d["event"] for d in logged] == ["replica_exited", "replica_ready"]
    assert logged[0]["msg"] == "replica 1 of m:2 exited: exit code 3"
    assert (logged[0]["level"], logged[0]["exit_code"], logged[0]["pid"]) == ("warning", 3, 4242)
    assert logged[0]["stderr_tail"].endswith("RuntimeError: out of cheese")
    assert (logged[0]["model"], logged[0]["version"], logged[0]["replica"]) == ("m", "2", "1")
    assert logged[1]["address"] == "127.0.0.1:5000"
