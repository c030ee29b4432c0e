"""Warm standby processes of the local manager (real model containers): a killed
replica is replaced by its standby at once, not by a cold start; a new standby
follows; scale-down and close leave no process behind."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from control_helpers import Runner, assert_reaped, poll_until

from clipper_core.managers import ReplicaEvent
from clipper_core.managers.local import LocalProcessManager
from clipper_core.managers.replica import ReplicaSpec
from clipper_core.managers.standby import interchangeable
from clipper_core.store.records import ModelRecord

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("tests.standby")


def _record(tmp_path: Path) -> ModelRecord:
    path = tmp_path / "f.pkl"
    path.write_bytes(cloudpickle.dumps(len))
    container = {"kind": "closure", "path": str(path), "python_path": [str(REPO)]}
    return ModelRecord(name="m", version="3", input_type="doubles", labels=[], container=container)


def _standby_pid(manager: LocalProcessManager) -> int | None:
    assert manager.standbys is not None
    ready = [s for s in manager.standbys.list() if s.address is not None]
    return ready[0].pid if ready else None


def _answers_tcp(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5):
        return True


def test_a_killed_replica_is_replaced_by_its_standby(run: Runner, tmp_path: Path) -> None:
    manager = LocalProcessManager(
        python=sys.executable, envs_dir=tmp_path / "envs", standby="always"
    )
    events: list[tuple[float, ReplicaEvent]] = []
    manager.subscribe(lambda e: events.append((time.monotonic(), e)))
    rec = _record(tmp_path)
    spawned: set[int] = set()

    async def scenario() -> None:
        try:
            await manager.scale(rec, 1)
            await manager.wait_ready("m", "3", "0")
            await poll_until(lambda: _standby_pid(manager) is not None, within=60)
            standby = _standby_pid(manager)
            assert standby is not None
            [replica] = manager.list()
            assert replica.pid is not None and replica.pid != standby
            spawned.update((replica.pid, standby))

            killed_at = time.monotonic()
            os.kill(replica.pid, signal.SIGKILL)
            await poll_until(
                lambda: any(e.kind == "ready" and e.pid == standby for _, e in events), within=30
            )
            ready_at, ready = next(
                (t, e) for t, e in events if e.kind == "ready" and e.pid == standby
            )
            started = [e for _, e in events if e.kind == "started" and e.pid == standby]
            # The replica's next process is the standby: no process was started for it.
            assert [e.detail for e in started] == [f"pid {standby} (its standby)"]
            assert ready.replica_id == "0" and ready.address is not None
            assert _answers_tcp(ready.address)  # listening already: a connect away
            log.warning(
                "standby took over replica 0 %.1f ms after the kill (a cold start takes"
                " the container's start-up time)",
                (ready_at - killed_at) * 1000,
            )
            [now] = manager.list()
            assert (now.pid, now.state, now.restarts) == (standby, "running", 1)
            # The promoted standby crashes at once (another poison input): it was
            # ready long before, so this is no start-up crash loop, and its restart
            # (by the next standby if one is ready yet) waits the shortest delay.
            seen = len(events)
            os.kill(standby, signal.SIGKILL)
            await poll_until(lambda: any(e.kind == "ready" for _, e in events[seen:]), within=30)
            [again] = [e for _, e in events[seen:] if e.kind == "restarting"]
            assert again.detail.startswith("restart 2 "), again.detail
            if "standby" not in again.detail:
                assert again.detail == "restart 2 in 0.2 s", again.detail
            spawned.update(e.pid or 0 for _, e in events if e.kind == "started")
            # A new standby is started in the background.
            await poll_until(lambda: _standby_pid(manager) not in (None, standby), within=60)
            spawned.add(_standby_pid(manager) or 0)
            spawned.update(e.pid or 0 for _, e in events if e.kind == "started")
            # Scale-down stops the replica and its standby.
            await manager.scale(rec, 0)
            assert manager.list() == [] and manager.standbys is not None
            assert manager.standbys.list() == []
            for pid in spawned:
                assert_reaped(pid)
        finally:
            await manager.close()

    run(scenario(), timeout=180)


def test_close_stops_a_standby_that_is_still_starting(run: Runner, tmp_path: Path) -> None:
    manager = LocalProcessManager(
        python=sys.executable, envs_dir=tmp_path / "envs", standby="always"
    )
    rec = _record(tmp_path)

    async def scenario() -> None:
        await manager.scale(rec, 1)
        assert manager.standbys is not None
        await poll_until(lambda: bool(manager.standbys and manager.standbys.list()), within=30)
        pids = [s.pid for s in manager.standbys.list()]
        [replica] = manager.list()
        await manager.close()
        assert manager.standbys.list() == []
        for pid in [*pids, replica.pid]:
            assert pid is not None
            assert_reaped(pid)

    run(scenario(), timeout=120)


def test_after_crash_keeps_no_standby_until_the_first_crash(run: Runner, tmp_path: Path) -> None:
    """The default: a version that never crashed costs no extra process; its first
    crash restarts cold and starts a standby, which takes the next crash, even
    after a re-scale in between."""
    manager = LocalProcessManager(python=sys.executable, envs_dir=tmp_path / "envs")
    assert manager.standby_policy == "after-crash"
    events: list[ReplicaEvent] = []
    manager.subscribe(events.append)
    rec = _record(tmp_path)

    async def scenario() -> None:
        try:
            await manager.scale(rec, 1)
            await manager.wait_ready("m", "3", "0")
            assert manager.standbys is not None and manager.standbys.list() == []
            [first] = manager.list()
            assert first.pid is not None
            killed = len(events)
            os.kill(first.pid, signal.SIGKILL)
            await poll_until(lambda: _standby_pid(manager) is not None, within=60)
            await poll_until(
                lambda: any(e.kind == "ready" and e.pid != first.pid for e in events[killed:]),
                within=60,
            )
            restarts = [e.detail for e in events if e.kind == "restarting"]
            assert restarts and "standby" not in restarts[0], restarts  # the first: cold
            standby = _standby_pid(manager)
            [second] = manager.list()
            assert second.pid not in (None, first.pid, standby)
            # The reconciler scales every version again (same count): the standby
            # kept since the first crash must still take the next one.
            await manager.scale(rec, 1)
            seen = len(events)
            os.kill(second.pid or 0, signal.SIGKILL)
            await poll_until(
                lambda: any(e.kind == "ready" and e.pid == standby for e in events[seen:]),
                within=30,
            )
            await manager.scale(rec, 0)
            assert manager.standbys.list() == []
            for pid in (first.pid, second.pid, standby):
                assert_reaped(pid or 0)
        finally:
            await manager.close()

    run(scenario(), timeout=180)


def test_an_unknown_standby_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="standby must be one of after-crash, always, off"):
        LocalProcessManager(python=sys.executable, envs_dir=tmp_path / "envs", standby="sometimes")


def test_without_standby_a_killed_replica_restarts_cold(run: Runner, tmp_path: Path) -> None:
    manager = LocalProcessManager(python=sys.executable, envs_dir=tmp_path / "envs", standby=False)
    events: list[ReplicaEvent] = []
    times: list[float] = []
    manager.subscribe(lambda e: (events.append(e), times.append(time.monotonic())))

    async def scenario() -> None:
        try:
            await manager.scale(_record(tmp_path), 1)
            await manager.wait_ready("m", "3", "0")
            assert manager.standbys is None
            [replica] = manager.list()
            assert replica.pid is not None
            killed_at = time.monotonic()
            os.kill(replica.pid, signal.SIGKILL)
            await poll_until(lambda: sum(e.kind == "ready" for e in events) == 2, within=60)
            started = [e.detail for e in events if e.kind == "started"]
            assert len(started) == 2 and "standby" not in started[1]
            ready_at = times[max(i for i, e in enumerate(events) if e.kind == "ready")]
            log.warning(
                "without a standby, replica 0 was back %.1f ms after the kill (a cold start)",
                (ready_at - killed_at) * 1000,
            )
        finally:
            await manager.close()

    run(scenario(), timeout=120)


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"replica_id": 1, "argv": ["py", "--replica-id", "1"]}, True),
        ({"cgroup": "/sys/fs/cgroup/x"}, True),
        ({"cpus": [1]}, False),
        ({"memory_limit_mb": 64}, False),
        ({"gpu": "1"}, False),
        ({"argv": ["py", "--replica-id", "0", "--x"]}, False),
        ({"model_version": "2"}, False),
    ],
)
def test_a_standby_stands_in_only_for_a_replica_with_its_spec(
    change: dict[str, object], same: bool
) -> None:
    base = ReplicaSpec("m", "1", 0, ["py", "--replica-id", "0"], cpus=[0], memory_limit_mb=32)
    other = ReplicaSpec(**{**base.__dict__, **change})  # type: ignore[arg-type]
    assert interchangeable(base, other) is same
