"""Per-replica placement of local replicas: each replica's CPU set, memory limit and
GPU id (``container["placement"]``), applied in the child by the launcher; the
memory limit held by a cgroup v2 child where the system allows one, else
``RLIMIT_AS`` with a warning that says why."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from control_helpers import Recorder, Runner, spec

from clipper_core.errors import BadInput
from clipper_core.managers.envs import RuntimeEnvManager
from clipper_core.managers.local_spec import replica_placement, replica_spec
from clipper_core.managers.memory_cgroup import MemoryCgroups, child_name
from clipper_core.managers.supervisor import ProcessSupervisor
from clipper_core.store.records import ModelRecord

CPUS = sorted(os.sched_getaffinity(0))

#: Reports what the launcher set up, as its "address".
REPORT_CHILD = """
    import json, os, resource, time
    print("CLIPPER_CONTAINER_READY " + json.dumps({
        "cpus": sorted(os.sched_getaffinity(0)),
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    }, separators=(",", ":")), flush=True)
    time.sleep(120)
"""


def record(**container: Any) -> ModelRecord:
    container = {"kind": "closure", "path": "/x/model.pkl", **container}
    return ModelRecord(
        name="m",
        version="1",
        input_type="doubles",
        labels=[],
        container=container,
        cpus=[CPUS[0]],
        memory_limit_mb=2048,
    )


def specs(rec: ModelRecord, n: int, tmp_path: Path) -> list[Any]:
    envs = RuntimeEnvManager(tmp_path / "envs", python=sys.executable)
    return [replica_spec(rec, i, sys.executable, envs) for i in range(n)]


def test_each_replica_gets_its_entry_round_robin(tmp_path: Path) -> None:
    rec = record(
        placement=[
            {"cpus": [CPUS[0]], "gpu": 0, "memory_limit_mb": 512},
            {"cpus": [CPUS[-1]], "gpu": "GPU-5f1c"},
        ]
    )
    got = [(s.cpus, s.gpu, s.memory_limit_mb) for s in specs(rec, 3, tmp_path)]
    assert got == [
        ([CPUS[0]], "0", 512),
        ([CPUS[-1]], "GPU-5f1c", 2048),  # memory from the record
        ([CPUS[0]], "0", 512),  # replica 2 shares replica 0's entry
    ]


def test_without_placement_every_replica_takes_the_record_settings(tmp_path: Path) -> None:
    got = [(s.cpus, s.gpu, s.memory_limit_mb) for s in specs(record(), 2, tmp_path)]
    assert got == [([CPUS[0]], None, 2048)] * 2


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ([], "non-empty list"),
        ("0-3", "non-empty list"),
        ([{"cpu": [0]}], "must be an object with keys"),
        ([{"cpus": []}], "cpus must be a non-empty list"),
        ([{"cpus": [-1]}], "cpus must be a non-empty list"),
        ([{"gpu": -1}], "gpu must be a device index"),
        ([{"gpu": " "}], "gpu must be a device index"),
        ([{"memory_limit_mb": 0}], "memory_limit_mb must be an integer >= 1"),
    ],
)
def test_a_bad_placement_is_bad_input(placement: Any, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        replica_placement(record(placement=placement), 0)


def test_the_launcher_applies_cpus_gpu_and_the_fallback_limit(run: Runner) -> None:
    async def scenario() -> None:
        async with ProcessSupervisor(on_event=Recorder()) as supervisor:
            handle = await supervisor.start(
                spec(REPORT_CHILD, cpus=[CPUS[-1]], gpu="1", memory_limit_mb=4096)
            )
            seen = json.loads(await supervisor.wait_ready(handle, timeout=30))
            other = await supervisor.start(spec(REPORT_CHILD, replica_id=1))
            unset = json.loads(await supervisor.wait_ready(other, timeout=30))
        assert seen == {"cpus": [CPUS[-1]], "gpu": "1", "rlimit_as": 4096 * 1024 * 1024}
        assert unset["gpu"] == os.environ.get("CUDA_VISIBLE_DEVICES")
        assert unset["rlimit_as"] == resource.getrlimit(resource.RLIMIT_AS)[0]

    run(scenario(), timeout=90)


def fake_cgroupfs(tmp_path: Path, controllers: str, subtree: str) -> MemoryCgroups:
    """A cgroup tree laid out as the kernel shows one: this process in /svc."""
    own = tmp_path / "cgroup" / "svc"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.subtree_control").write_text(subtree)
    (tmp_path / "self-cgroup").write_text("0::/svc\n")
    return MemoryCgroups(mounts=(tmp_path / "cgroup",), proc_cgroup=tmp_path / "self-cgroup")


def test_a_delegated_memory_controller_gets_a_child_cgroup_per_replica(
    tmp_path: Path, run: Runner
) -> None:
    cgroups = fake_cgroupfs(tmp_path, "cpu memory pids", "memory")
    path = cgroups.prepare("m:1:0", 300)
    assert path == tmp_path / "cgroup" / "svc" / f"clipper-{os.getpid()}-{child_name('m:1:0')}"
    assert child_name("m:1:0").startswith("m-1-0-")  # readable in systemd-cgls
    assert (path / "memory.max").read_text() == str(300 * 1024 * 1024)
    # The launcher moves the replica into it and sets no RLIMIT_AS then.
    (path / "cgroup.procs").write_text("")

    async def scenario() -> None:
        async with ProcessSupervisor(on_event=Recorder()) as supervisor:
            handle = await supervisor.start(
                spec(REPORT_CHILD, memory_limit_mb=300, cgroup=str(path))
            )
            seen = json.loads(await supervisor.wait_ready(handle, timeout=30))
            assert (path / "cgroup.procs").read_text() == str(handle.pid)
        assert seen["rlimit_as"] == resource.getrlimit(resource.RLIMIT_AS)[0]

    run(scenario(), timeout=60)
    (path / "cgroup.procs").unlink()
    (path / "memory.max").unlink()
    cgroups.remove(path)
    assert not path.exists()


def test_children_are_per_server_and_a_dead_servers_empty_ones_are_swept(tmp_path: Path) -> None:
    """Two servers under one cgroup never share a replica's child; the first child
    made removes the empty children of servers that are gone, and nothing else."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    own = tmp_path / "cgroup" / "svc"
    cgroups = fake_cgroupfs(tmp_path, "cpu memory pids", "memory")
    dead_empty = own / f"clipper-{gone.pid}-{child_name('m:1:0')}"
    dead_busy = own / f"clipper-{gone.pid}-{child_name('m:1:1')}"  # adopted: holds a process
    other_server = own / f"clipper-{os.getppid()}-{child_name('m:1:0')}"  # a live process's
    unrelated = own / "clipper-not-ours"
    for folder in (dead_empty, dead_busy, other_server, unrelated):
        folder.mkdir()
    (dead_busy / "cgroup.procs").write_text("123\n")  # a real cgroup refuses rmdir then too

    path = cgroups.prepare("m:1:0", 300)

    assert path == own / f"clipper-{os.getpid()}-{child_name('m:1:0')}" != other_server
    assert not dead_empty.exists()
    assert dead_busy.exists() and other_server.exists() and unrelated.exists()
    assert not (other_server / "memory.max").exists()  # the other server's is untouched


def test_replicas_whose_keys_read_alike_get_their_own_cgroups(tmp_path: Path) -> None:
    """Names and versions may hold "-": model a-1 v2 and model a v1-2 must not
    share a cgroup, nor rewrite each other's memory.max."""
    cgroups = fake_cgroupfs(tmp_path, "cpu memory pids", "memory")
    small = cgroups.prepare("a-1:2:0", 300)
    big = cgroups.prepare("a:1-2:0", 4000)
    assert small is not None and big is not None and small != big
    assert (small / "memory.max").read_text() == str(300 * 1024 * 1024)
    assert (big / "memory.max").read_text() == str(4000 * 1024 * 1024)
    assert len(child_name("m" * 1000 + ":1:0")) < 200  # a file name, however long the model's


def test_no_memory_controller_falls_back_to_rlimit_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cgroups = fake_cgroupfs(tmp_path, "cpu pids", "")
    with caplog.at_level(logging.WARNING, "clipper_core.process_manager"):
        assert cgroups.prepare("m:1:0", 64) is None
        assert cgroups.prepare("m:1:0", 64) is None  # said once per replica
    (warning,) = caplog.messages
    assert "memory limit 64 MiB enforced with RLIMIT_AS" in warning
    assert "the memory controller is not available" in warning


def test_this_machine_either_gives_a_cgroup_or_says_why_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On the real /sys/fs/cgroup: here (a v1/v2 hybrid whose unified hierarchy has
    no memory controller) the limit falls back, and the log says so."""
    cgroups = MemoryCgroups()
    with caplog.at_level(logging.WARNING, "clipper_core.process_manager"):
        path = cgroups.prepare(f"placement-test:{os.getpid()}:0", 64)
    if path is not None:
        assert (path / "memory.max").read_text().strip() == str(64 * 1024 * 1024)
        cgroups.remove(path)
    else:
        assert "enforced with RLIMIT_AS" in caplog.text and "because" in caplog.text
