"""The command line of a local replica, built from its model record."""

from __future__ import annotations

import json
import os

from clipper_core.errors import BadInput
from clipper_core.managers.envs import RuntimeEnvManager
from clipper_core.managers.replica import ReplicaSpec
from clipper_core.store.records import ModelRecord

#: Container kinds that are started by hand and join with ``register_replica``.


def startable(record: ModelRecord) -> bool:
    """Whether the local manager starts replicas of ``record`` (container kind
    ``"external"``, or no container at all, means they are registered by hand)."""
    return not record.registered_by_hand


def replica_spec(
    record: ModelRecord,
    replica_id: int,
    python: str,
    envs: RuntimeEnvManager,
    *,
    host: str = "127.0.0.1",
) -> ReplicaSpec:
    """How to run replica ``replica_id`` of ``record`` as ``python -m model_containers``.

    The container listens on ``host`` at a port it picks; it runs on the
    interpreter of the record's ``runtime_env`` when there is one (built by
    ``envs.ensure`` beforehand), with the container's ``python_path`` ahead of
    ``PYTHONPATH``, pinned to the record's cpus and under its memory limit.

    Raises:
        BadInput: The record describes no container kind this manager can start.
    """
    name, version, container = record.name, record.version, record.container
    argv = [
        python,
        "-m",
        "model_containers",
        "--model-name",
        name,
        "--model-version",
        version,
        "--input-type",
        record.input_type,
        "--replica-id",
        str(replica_id),
        "--host",
        host,
        "--port",
        "0",
    ]
    kind = container.get("kind")
    if kind == "closure":
        argv += ["--closure", str(container["path"])]
    elif kind == "class":
        argv += ["--model-class", str(container["class"])]
        if container.get("model_path"):
            argv += ["--model-path", str(container["model_path"])]
    elif container.get("adapter"):
        argv += ["--adapter", str(container["adapter"]), "--model-path", str(container["path"])]
    else:
        raise BadInput(f"model {name}:{version} has no container to start (kind {kind!r})")
    if container.get("deploy_env"):
        argv += ["--deploy-env", json.dumps(container["deploy_env"], separators=(",", ":"))]
    argv[0] = envs.python_for(container) or argv[0]
    env = dict(os.environ)
    extra_path = [str(p) for p in container.get("python_path", []) if p]
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(
            extra_path + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
    return ReplicaSpec(
        model_name=name,
        model_version=version,
        replica_id=replica_id,
        argv=argv,
        env=env,
        cwd=None,
        cpus=record.cpus,
        memory_limit_mb=record.memory_limit_mb,
    )
