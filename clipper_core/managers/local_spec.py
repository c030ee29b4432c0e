"""The command line of a local replica, built from its model record."""

from __future__ import annotations

import json
import os
from typing import Any

from clipper_core.errors import BadInput
from clipper_core.managers.envs import RuntimeEnvManager
from clipper_core.managers.replica import LOCAL_TOKEN_ENV, ReplicaSpec
from clipper_core.store.records import ModelRecord, check_int

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
    token: str | None = None,
) -> ReplicaSpec:
    """How to run replica ``replica_id`` of ``record`` as ``python -m model_containers``.

    The container listens on ``host`` at a port it picks; it runs on the
    interpreter of the record's ``runtime_env`` when there is one (built by
    ``envs.ensure`` beforehand), with the container's ``python_path`` ahead of
    ``PYTHONPATH``, pinned to the record's cpus and under its memory limit, or to
    the replica's own entry of ``container["placement"]`` (:func:`replica_placement`).
    With ``token`` it refuses gRPC calls without it (``LOCAL_TOKEN_ENV``).

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
    env: dict[str, str] = {}  # on top of ours (spawn_env), not a copy of it
    extra_path = [str(p) for p in container.get("python_path", []) if p]
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(
            extra_path + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
    if token is not None:  # in the environment: other users cannot read it there
        env[LOCAL_TOKEN_ENV] = token
    place = replica_placement(record, replica_id)
    return ReplicaSpec(
        model_name=name,
        model_version=version,
        replica_id=replica_id,
        argv=argv,
        env=env or None,
        cwd=None,
        cpus=place.get("cpus", record.cpus),
        memory_limit_mb=place.get("memory_limit_mb", record.memory_limit_mb),
        gpu=None if place.get("gpu") is None else str(place["gpu"]),
    )


_PLACEMENT_KEYS = {"cpus", "memory_limit_mb", "gpu"}


def replica_placement(record: ModelRecord, replica_id: int) -> dict[str, Any]:
    """Where replica ``replica_id`` of ``record`` runs: entry ``replica_id mod n`` of
    ``container["placement"]`` (n entries; replicas beyond n share them round
    robin), each ``{"cpus": [...], "memory_limit_mb": N, "gpu": "0"}`` with any
    key left out taken from the record (``cpus``, ``memory_limit_mb``; no GPU
    setting).  No placement: the record's own, for every replica.

    Raises:
        BadInput: The placement is not a list of such entries.
    """
    placement = record.container.get("placement")
    if placement is None:
        return {}
    if not isinstance(placement, list) or not placement:
        raise BadInput(f"model {record.key}: placement must be a non-empty list of objects")
    for i, entry in enumerate(placement):
        where = f"model {record.key}: placement[{i}]"
        if not isinstance(entry, dict) or set(entry) - _PLACEMENT_KEYS:
            raise BadInput(f"{where} must be an object with keys {sorted(_PLACEMENT_KEYS)}")
        cpus = entry.get("cpus")
        if cpus is not None and (
            not isinstance(cpus, list)
            or not cpus
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus)
        ):
            raise BadInput(f"{where}: cpus must be a non-empty list of cpu indexes")
        limit = entry.get("memory_limit_mb")
        if limit is not None:
            check_int(f"{where}: memory_limit_mb", limit, 1)
        gpu = entry.get("gpu")
        if gpu is not None and not (
            (isinstance(gpu, int) and not isinstance(gpu, bool) and gpu >= 0)
            or (isinstance(gpu, str) and gpu.strip())
        ):
            raise BadInput(f"{where}: gpu must be a device index or id")
    entry = placement[replica_id % len(placement)]
    return dict(entry)
