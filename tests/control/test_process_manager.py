"""The process supervisor of the local manager with real child processes (small
Python programs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from control_helpers import (
    READY_CHILD,
    Recorder,
    Runner,
    assert_dead,
    assert_reaped,
    poll_until,
    spec,
    wait_dead,
)

from clipper_core.errors import BadInput, Conflict, ReplicaUnavailable
from clipper_core.managers import replica
from clipper_core.managers._child import _Child
from clipper_core.managers.replica import ProcessEvent, ReplicaHandle
from clipper_core.managers.supervisor import ProcessSupervisor

MakeManager = Callable[..., tuple[ProcessSupervisor, Recorder]]

CRASH_CHILD = """
    import sys
    print("bad config: no such weights file", file=sys.stderr, flush=True)
    sys.exit(3)
"""


def is_ready(handle: ReplicaHandle, not_pid: int | None = None) -> Callable[[ProcessEvent], bool]:
    return lambda e: e.kind == "ready" and e.handle is handle and e.handle.pid != not_pid


def test_ready_line_sets_the_address(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager()

    async def scenario() -> None:
        handle = await manager.start(spec(READY_CHILD))
        assert handle.pid is not None and handle.state in ("starting", "running")
        address = await manager.wait_ready(handle, timeout=20)
        assert address == f"127.0.0.1:{handle.pid}" == handle.address
        assert handle.ready.is_set() and handle.state == "running"
        assert handle.restarts == 0 and handle.exit_code is None
        assert handle.started_at is not None and handle.started_at <= time.time()
        assert manager.list() == [handle] == manager.list("m", "1") == manager.list("m")
        assert manager.list("other") == [] and manager.list("m", "2") == []
        pid = handle.pid
        await manager.stop(handle)
        assert str(handle.state) == "stopped" and not handle.ready.is_set()
        assert handle.exit_code == -signal.SIGTERM
        assert manager.list() == []
        assert_reaped(pid)
        assert events.kinds() == ["started", "ready", "stopped"]

    run(scenario())


def test_output_read_before_spawn_returns_is_not_lost(
    run: Runner, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy loop can read a fast child's READY line before the spawn returns to
    the manager; the line must still count."""
    manager, _ = make_manager()
    real_spawn = _Child.spawn

    async def slow_spawn(*args: Any, **kwargs: Any) -> Any:
        child = await real_spawn(*args, **kwargs)
        await asyncio.sleep(0.5)  # the child prints READY meanwhile
        return child

    monkeypatch.setattr(_Child, "spawn", slow_spawn)
    code = """
        import sys, time
        print("CLIPPER_CONTAINER_READY early", flush=True)
        print("early words", file=sys.stderr, flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        assert await manager.wait_ready(handle, timeout=20) == "early"
        assert handle.stderr_tail() == "early words"

    run(scenario())


def test_exit_before_ready_fails_fast_with_exit_code_and_stderr(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, _ = make_manager()

    async def scenario() -> None:
        handle = await manager.start(spec(CRASH_CHILD))
        began = time.monotonic()
        with pytest.raises(ReplicaUnavailable) as info:
            await manager.wait_ready(handle, timeout=60)
        assert time.monotonic() - began < 10
        message = str(info.value)
        assert "exit code 3" in message
        assert "bad config: no such weights file" in message
        assert "m:1:0" in message
        assert "bad config" in handle.stderr_tail()
        await manager.stop(handle)

    run(scenario())


def test_timeout_when_no_ready_line(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()
    code = """
        import sys, time
        print("loading weights...", file=sys.stderr, flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        # A loaded machine starts interpreters slowly: let the child speak first.
        await poll_until(lambda: "loading weights" in handle.stderr_tail())
        began = time.monotonic()
        with pytest.raises(ReplicaUnavailable) as info:
            await manager.wait_ready(handle, timeout=0.5)
        assert 0.4 < time.monotonic() - began < 5
        message = str(info.value)
        assert "did not become ready within 0.5 s" in message
        assert "CLIPPER_CONTAINER_READY" in message
        assert "loading weights..." in message
        assert handle.state == "starting"  # left to the caller to stop
        await manager.stop(handle, grace=1)

    run(scenario())


def test_kill_9_restarts_with_a_new_pid_and_a_ready_event(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, events = make_manager()  # default backoff: first restart after 0.2 s

    async def scenario() -> None:
        handle = await manager.start(spec(READY_CHILD))
        first_address = await manager.wait_ready(handle, timeout=20)
        old_pid = handle.pid
        assert old_pid is not None
        mark = len(events.events)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        event = await events.wait_for(is_ready(handle, not_pid=old_pid), within=10, start=mark)
        took = time.monotonic() - killed_at
        assert took < 5, took  # ~0.2 s backoff + interpreter start
        assert event.detail == handle.address == f"127.0.0.1:{handle.pid}" != first_address
        assert handle.pid != old_pid and handle.state == "running" and handle.restarts == 1
        assert handle.exit_code == -signal.SIGKILL
        assert events.kinds()[mark:] == ["exited", "restarting", "started", "ready"]
        exited = events.events[mark]
        assert "SIGKILL" in exited.detail
        assert_reaped(old_pid)

    run(scenario())


def test_wait_ready_during_a_restart_follows_the_next_process(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, events = make_manager(restart_backoff=(0.3, 0.3))

    async def scenario() -> None:
        handle = await manager.start(spec(READY_CHILD))
        await manager.wait_ready(handle, timeout=20)
        old_pid = handle.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await events.wait_for(lambda e: e.kind == "restarting")
        assert handle.state == "restarting"
        assert not handle.ready.is_set() and handle.address is None
        address = await manager.wait_ready(handle, timeout=20)
        assert address == f"127.0.0.1:{handle.pid}" and handle.pid != old_pid

    run(scenario())


def test_repeated_crashes_before_ready_mark_the_replica_failed(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, events = make_manager(restart_backoff=(0.01, 0.04))

    async def scenario() -> None:
        handle = await manager.start(spec(CRASH_CHILD))
        failed = await events.wait_for(lambda e: e.kind == "failed", within=30)
        assert failed.handle is handle and handle.state == "failed"
        assert "5 consecutive starts" in failed.detail
        assert "exit code 3" in failed.detail and "bad config" in failed.detail
        assert events.kinds().count("started") == 5
        assert handle.restarts == 4
        await asyncio.sleep(0.2)  # no further attempt
        assert events.kinds().count("started") == 5
        with pytest.raises(ReplicaUnavailable, match=r"failed.*exit code 3"):
            await manager.wait_ready(handle, timeout=5)
        assert manager.list() == [handle]  # kept, for inspection, until stopped
        await manager.stop(handle)
        assert manager.list() == [] and handle.state == "failed"

    run(scenario())


def test_a_replica_that_was_ready_keeps_being_restarted(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, events = make_manager(restart_backoff=(0.01, 0.02), max_start_failures=2)
    code = """
        import os, sys
        print("CLIPPER_CONTAINER_READY x:" + str(os.getpid()), flush=True)
        sys.exit(1)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        # Each process became ready, so the failure count starts over every time.
        await events.wait_for(lambda e: e.kind == "started" and handle.restarts >= 4, within=30)
        assert "failed" not in events.kinds()
        assert events.kinds().count("ready") >= 3

    run(scenario())


def test_stop_during_backoff_is_immediate(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager(restart_backoff=(30.0, 30.0))

    async def scenario() -> None:
        handle = await manager.start(spec(CRASH_CHILD))
        await events.wait_for(lambda e: e.kind == "restarting", within=10)
        began = time.monotonic()
        await manager.stop(handle)
        assert time.monotonic() - began < 1
        assert handle.state == "stopped" and events.kinds()[-1] == "stopped"

    run(scenario())


def test_stop_escalates_to_sigkill_after_the_grace(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("CLIPPER_CONTAINER_READY stubborn", flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        await manager.wait_ready(handle, timeout=20)
        pid = handle.pid
        assert pid is not None
        began = time.monotonic()
        await manager.stop(handle, grace=0.3)
        assert 0.25 < time.monotonic() - began < 5
        assert handle.exit_code == -signal.SIGKILL
        assert_reaped(pid)

    run(scenario())


def test_stop_takes_the_process_group_along(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()
    code = """
        import subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("CLIPPER_CONTAINER_READY " + str(helper.pid), flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        helper_pid = int(await manager.wait_ready(handle, timeout=20))
        os.kill(helper_pid, 0)  # it runs
        await manager.stop(handle)
        await wait_dead(helper_pid)

    run(scenario())


def test_a_helper_holding_the_pipes_does_not_stall_a_crash_report_and_dies_with_it(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, _ = make_manager(restart_backoff=(30.0, 30.0))
    code = """
        import subprocess, sys
        # The helper inherits stdout and stderr and outlives its parent.
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"helper {helper.pid}", file=sys.stderr, flush=True)
        sys.exit(4)
    """
    helper_pid: int | None = None

    async def scenario() -> None:
        nonlocal helper_pid
        handle = await manager.start(spec(code))
        began = time.monotonic()
        with pytest.raises(ReplicaUnavailable, match="exit code 4") as info:
            await manager.wait_ready(handle, timeout=30)
        assert time.monotonic() - began < 10  # not the helper's 60 s
        helper_pid = int(str(info.value).split("helper ")[1].split()[0])
        # The crash took the replica's process group along: no orphan outlives it.
        await wait_dead(helper_pid)
        await manager.stop(handle)

    try:
        run(scenario())
    finally:
        if helper_pid is not None:  # the test started it: kill it by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper_pid, signal.SIGKILL)


def test_the_replica_starts_with_no_signal_blocked(run: Runner, make_manager: MakeManager) -> None:
    """A signal mask survives fork and exec: a program that embeds the server and
    blocks SIGTERM in the thread that starts replicas must not pass that on (the
    replica would never get its stop signal)."""
    manager, _ = make_manager()
    code = """
        import time
        status = open("/proc/self/status").read()
        blocked = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk")]
        print("CLIPPER_CONTAINER_READY " + blocked[0], flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            handle = await manager.start(spec(code))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        assert int(await manager.wait_ready(handle, timeout=20), 16) == 0
        await manager.stop(handle)

    run(scenario())


def test_a_replica_may_signal_its_own_group(run: Runner, make_manager: MakeManager) -> None:
    """The group's guard ends the group when the replica dies, not on a signal
    the replica sends its group ("reload your workers", "reopen your logs"): it
    took any SIGUSR2 for its parent's death and SIGKILLed the replica, and a
    SIGUSR1 or SIGALRM ended the guard, leaving the group unguarded."""
    manager, _ = make_manager()
    code = """
        import os, signal, time
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
            os.killpg(0, sig)
        time.sleep(0.5)
        print("CLIPPER_CONTAINER_READY after the signals", flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        assert await manager.wait_ready(handle, timeout=20) == "after the signals"
        assert handle.state == "running"
        assert handle.pid is not None
        guards = [p for p in _group_members(handle.pid) if p != handle.pid]
        assert len(guards) == 1, guards
        assert _process_state(guards[0]) != "Z"  # still guarding
        await manager.stop(handle)

    run(scenario())


def test_cpu_pinning_is_applied_in_the_child(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()
    code = """
        import os, time
        cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        print("CLIPPER_CONTAINER_READY cpus=" + cpus, flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code, cpus=[0]))
        assert await manager.wait_ready(handle, timeout=20) == "cpus=0"
        assert os.sched_getaffinity(handle.pid) == {0}  # type: ignore[arg-type]
        assert len(os.sched_getaffinity(0)) >= 1  # ours is untouched

    run(scenario())


def test_unavailable_cpus_are_bad_input(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()

    async def scenario() -> None:
        with pytest.raises(BadInput, match="not available"):
            await manager.start(spec(READY_CHILD, cpus=[4095]))
        assert manager.list() == []

    run(scenario())


def test_memory_limit_is_enforced_in_the_child(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()
    code = """
        import resource, time
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        try:
            block = bytearray(1024 * 1024 * 1024)
            outcome = "allocated"
        except MemoryError:
            outcome = "MemoryError"
        print(f"CLIPPER_CONTAINER_READY {outcome}:{soft >> 20}:{hard >> 20}", flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code, memory_limit_mb=256))
        assert await manager.wait_ready(handle, timeout=20) == "MemoryError:256:256"

    run(scenario())


def test_env_and_cwd(run: Runner, make_manager: MakeManager, tmp_path: Path) -> None:
    manager, _ = make_manager()
    code = """
        import os, time
        print("CLIPPER_CONTAINER_READY " + os.environ["CLIPPER_TEST_VAR"] + "|" + os.getcwd()
              + "|" + os.environ["PYTHONUNBUFFERED"] + "|" + str("PATH" in os.environ)
              + "|" + os.environ["CLIPPER_PARENT_PID"], flush=True)
        time.sleep(120)
    """

    where = os.path.realpath(tmp_path)

    async def scenario() -> None:
        handle = await manager.start(spec(code, env={"CLIPPER_TEST_VAR": "hello"}, cwd=where))
        address = await manager.wait_ready(handle, timeout=20)
        assert address == f"hello|{where}|1|True|{os.getpid()}"

    run(scenario())


THREADS_CHILD = """
    import os, time
    import numpy  # loads OpenBLAS, which reads its variable now
    from threadpoolctl import threadpool_info
    blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    pools = [os.environ.get(v, "-") for v in VARS]
    print("CLIPPER_CONTAINER_READY " + ",".join(pools) + "|" + str(blas), flush=True)
    time.sleep(120)
""".replace("VARS", repr(replica.THREAD_POOL_VARS))


@pytest.mark.parametrize(("cpus", "threads"), [(None, 1), ([0], 1), ([0, 1], 2)])
def test_math_thread_pools_follow_the_replicas_cpus(
    run: Runner,
    make_manager: MakeManager,
    monkeypatch: pytest.MonkeyPatch,
    cpus: list[int] | None,
    threads: int,
) -> None:
    if cpus and not set(cpus) <= os.sched_getaffinity(0):
        pytest.skip(f"needs CPUs {cpus}")
    for var in replica.THREAD_POOL_VARS:
        monkeypatch.delenv(var, raising=False)
    manager, _ = make_manager()

    async def scenario() -> None:
        handle = await manager.start(spec(THREADS_CHILD, cpus=cpus))
        pools, blas = (await manager.wait_ready(handle, timeout=30)).split("|")
        assert pools.split(",") == [str(threads)] * len(replica.THREAD_POOL_VARS)
        assert blas == f"[{threads}]"  # numpy's OpenBLAS really runs that many

    run(scenario())


def test_thread_pool_variables_already_set_win(
    run: Runner, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in replica.THREAD_POOL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the frontend's environment
    manager, _ = make_manager()

    async def scenario() -> None:
        handle = await manager.start(spec(THREADS_CHILD, env={"OPENBLAS_NUM_THREADS": "2"}))
        pools, blas = (await manager.wait_ready(handle, timeout=30)).split("|")
        assert pools.split(",") == ["3", "2", "1", "1", "1"]
        assert blas == "[2]"

    run(scenario())


def test_thread_pool_env() -> None:
    names = replica.THREAD_POOL_VARS
    assert replica.thread_pool_env(None, {}) == dict.fromkeys(names, "1")
    assert replica.thread_pool_env([3, 1, 3], {}) == dict.fromkeys(names, "2")
    kept = replica.thread_pool_env([0], {"MKL_NUM_THREADS": "8"})
    assert "MKL_NUM_THREADS" not in kept
    assert kept["OMP_NUM_THREADS"] == "1"


def test_noise_on_stdout_and_a_bare_ready_word_are_ignored(
    run: Runner, make_manager: MakeManager
) -> None:
    manager, _ = make_manager()
    code = """
        import time
        print("x" * 200000, flush=True)  # longer than the reader's line limit
        print("CLIPPER_CONTAINER_READY", flush=True)
        print("CLIPPER_CONTAINER_READYX nope", flush=True)
        print("CLIPPER_CONTAINER_READY   10.0.0.1:7000  ", flush=True)
        print("CLIPPER_CONTAINER_READY 10.0.0.2:7000", flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        assert await manager.wait_ready(handle, timeout=20) == "10.0.0.1:7000"

    run(scenario())


def test_stderr_tail_keeps_the_last_lines(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager(stderr_tail_lines=3)
    code = """
        import sys
        for i in range(10):
            print(f"line {i}", file=sys.stderr)
        sys.exit(2)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(code))
        with pytest.raises(ReplicaUnavailable, match="exit code 2"):
            await manager.wait_ready(handle, timeout=20)
        assert handle.stderr_tail() == "line 7\nline 8\nline 9"
        await manager.stop(handle)

    run(scenario())


def test_spawn_errors_raise_at_once(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager()

    async def scenario() -> None:
        bad = spec(READY_CHILD)
        bad.argv = ["/nonexistent/clipper-model-binary"]
        with pytest.raises(ReplicaUnavailable, match="cannot start replica m:1:0"):
            await manager.start(bad)
        assert manager.list() == [] and events.events == []
        bad.argv = []
        with pytest.raises(BadInput):
            await manager.start(bad)

    run(scenario())


def test_a_duplicate_replica_is_a_conflict(run: Runner, make_manager: MakeManager) -> None:
    manager, _ = make_manager()

    async def scenario() -> None:
        await manager.start(spec(READY_CHILD))
        with pytest.raises(Conflict):
            await manager.start(spec(READY_CHILD))
        assert len(manager.list()) == 1

    run(scenario())


def test_a_failing_event_callback_does_not_stop_supervision(
    run: Runner, make_manager: MakeManager
) -> None:
    seen: list[str] = []

    def explode(event: ProcessEvent) -> None:
        seen.append(event.kind)
        raise RuntimeError("listener bug")

    manager, _ = make_manager()
    manager._on_event = explode

    async def scenario() -> None:
        handle = await manager.start(spec(READY_CHILD))
        await manager.wait_ready(handle, timeout=20)
        await manager.stop(handle)
        assert seen == ["started", "ready", "stopped"]

    run(scenario())


def test_scale_up_and_down(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager()

    def make_spec(replica_id: int) -> object:
        return spec(READY_CHILD, name="m", version="2", replica_id=replica_id)

    async def scenario() -> None:
        handles = await manager.scale("m", "2", 3, make_spec)  # type: ignore[arg-type]
        assert [h.spec.replica_id for h in handles] == [0, 1, 2]
        addresses = await asyncio.gather(*(manager.wait_ready(h, 20) for h in handles))
        assert len(set(addresses)) == 3
        pids = {h.spec.replica_id: h.pid for h in handles}

        handles = await manager.scale("m", "2", 1, make_spec)  # type: ignore[arg-type]
        assert [h.spec.replica_id for h in handles] == [0]
        assert handles[0].pid == pids[0]  # untouched
        for rid in (1, 2):
            assert_reaped(pids[rid])  # type: ignore[arg-type]
        stopped = [e.handle.spec.replica_id for e in events.events if e.kind == "stopped"]
        assert sorted(stopped) == [1, 2]

        handles = await manager.scale("m", "2", 2, make_spec)  # type: ignore[arg-type]
        assert [h.spec.replica_id for h in handles] == [0, 1]
        await manager.wait_ready(handles[1], 20)
        assert await manager.scale("m", "2", 2, make_spec) == handles  # type: ignore[arg-type]

        with pytest.raises(BadInput):
            await manager.scale("m", "2", -1, make_spec)  # type: ignore[arg-type]
        with pytest.raises(BadInput, match="make_spec"):
            await manager.scale("m", "2", 3, lambda rid: spec(READY_CHILD, replica_id=rid))
        assert await manager.scale("m", "2", 0, make_spec) == []  # type: ignore[arg-type]
        assert manager.list() == []

    run(scenario())


def test_scale_replaces_failed_replicas(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager(restart_backoff=(0.01, 0.01), max_start_failures=1)
    codes = {0: CRASH_CHILD}

    def make_spec(replica_id: int) -> object:
        return spec(codes.get(replica_id, READY_CHILD), replica_id=replica_id)

    async def scenario() -> None:
        (broken,) = await manager.scale("m", "1", 1, make_spec)  # type: ignore[arg-type]
        await events.wait_for(lambda e: e.kind == "failed", within=20)
        codes[0] = READY_CHILD  # the fix is deployed
        (fresh,) = await manager.scale("m", "1", 1, make_spec)  # type: ignore[arg-type]
        assert fresh is not broken and fresh.spec.replica_id == 0
        await manager.wait_ready(fresh, 20)

    run(scenario())


def test_stop_all_leaves_no_children(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager(restart_backoff=(0.05, 0.05))
    silent = """
        import time
        time.sleep(120)
    """

    async def scenario() -> None:
        ready = await manager.start(spec(READY_CHILD, replica_id=0))
        await manager.start(spec(silent, replica_id=1))
        await manager.start(spec(CRASH_CHILD, replica_id=2))
        await manager.start(spec(READY_CHILD, name="other", replica_id=0))
        await manager.wait_ready(ready, 20)
        await manager.stop_all(grace=2)
        assert manager.list() == []
        for pid in events.pids:
            assert_reaped(pid)
        assert all(e.handle.state in ("stopped", "failed") for e in events.events)
        await manager.stop_all()  # twice is fine

    run(scenario())


def test_async_context_manager_stops_everything(run: Runner) -> None:
    async def scenario() -> int:
        async with ProcessSupervisor() as manager:
            handle = await manager.start(spec(READY_CHILD))
            await manager.wait_ready(handle, 20)
            assert handle.pid is not None
            return handle.pid

    assert_reaped(run(scenario()))


def test_invalid_manager_settings() -> None:
    with pytest.raises(BadInput):
        ProcessSupervisor(restart_backoff=(2.0, 1.0))
    with pytest.raises(BadInput):
        ProcessSupervisor(max_start_failures=0)


_AT_FORK_MARKER: list[Path | None] = [None]


def _at_fork_in_child() -> None:
    marker = _AT_FORK_MARKER[0]
    if marker is not None:
        marker.touch()


os.register_at_fork(after_in_child=_at_fork_in_child)


def test_no_python_code_runs_between_fork_and_exec(
    run: Runner, make_manager: MakeManager, tmp_path: Path
) -> None:
    """CPython runs at-fork hooks (grpc registers some) in a child forked with a
    preexec_fn, which can deadlock a threaded server before exec: pinning and the
    memory limit must be applied without one."""
    manager, _ = make_manager()
    marker = tmp_path / "at-fork-hook-ran"
    code = """
        import os, time
        print("CLIPPER_CONTAINER_READY " + str(sorted(os.sched_getaffinity(0))), flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        _AT_FORK_MARKER[0] = marker
        try:
            handle = await manager.start(spec(code, cpus=[0], memory_limit_mb=512))
            assert await manager.wait_ready(handle, timeout=20) == "[0]"
        finally:
            _AT_FORK_MARKER[0] = None
        assert not marker.exists()

    run(scenario())


MANAGER_PROCESS = """
import asyncio, sys
from clipper_core.managers.replica import ReplicaSpec
from clipper_core.managers.supervisor import ProcessSupervisor

async def main():
    manager = ProcessSupervisor()
    handle = await manager.start(ReplicaSpec("m", "1", 0, sys.argv[1:]))
    await manager.wait_ready(handle, 20)
    print(handle.pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


HELPER_CHILD = """
    import os, subprocess, sys, time
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("helper", helper.pid, file=sys.stderr, flush=True)
    print("CLIPPER_CONTAINER_READY 127.0.0.1:" + str(os.getpid()), flush=True)
    time.sleep(120)
"""


def test_replicas_die_with_a_killed_manager(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed server leaves no container behind, nor the
    helpers its replicas started (they lived on under init)."""
    replica_child = ["-c", "import textwrap; exec(textwrap.dedent(" + repr(HELPER_CHILD) + "))"]
    manager_proc = subprocess.Popen(
        [sys.executable, "-c", MANAGER_PROCESS, sys.executable, *replica_child],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
        start_new_session=True,
    )
    replica_pid: int | None = None
    group: list[int] = []
    try:
        assert manager_proc.stdout is not None
        ready, _, _ = select.select([manager_proc.stdout], [], [], 30)
        assert ready, "the manager process did not report its replica"
        replica_pid = int(manager_proc.stdout.readline())
        os.kill(replica_pid, 0)  # it runs
        group = _group_members(replica_pid)
        assert len(group) >= 2, group  # the replica and its helper (and its guard)
        manager_proc.kill()
        manager_proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                for pid in group:
                    assert_dead(pid)
                break
            except AssertionError:
                time.sleep(0.05)
        for pid in group:
            assert_dead(pid)
    finally:
        # This test started both: end them by pid whatever happened.
        if manager_proc.poll() is None:
            manager_proc.kill()
            manager_proc.wait(timeout=10)
        if manager_proc.stdout is not None:
            manager_proc.stdout.close()
        if replica_pid is not None:
            for pid in [replica_pid, *group]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (the replica's session)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(int(entry)) == pgid:
                    members.append(int(entry))
    return members


def test_restart_on_request(run: Runner, make_manager: MakeManager) -> None:
    manager, events = make_manager()
    stubborn = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("CLIPPER_CONTAINER_READY x:" + str(os.getpid()), flush=True)
        time.sleep(120)
    """

    async def scenario() -> None:
        handle = await manager.start(spec(stubborn))
        await manager.wait_ready(handle, 20)
        old_pid = handle.pid
        mark = len(events.events)
        await manager.restart(handle, grace=0.2)  # ignores SIGTERM: SIGKILL after 0.2 s
        event = await events.wait_for(is_ready(handle, not_pid=old_pid), within=10, start=mark)
        assert event.detail == f"x:{handle.pid}" and handle.restarts == 1
        assert events.kinds()[mark:] == ["exited", "restarting", "started", "ready"]
        assert handle.exit_code == -signal.SIGKILL
        assert_reaped(old_pid)  # type: ignore[arg-type]
        await manager.stop(handle, grace=0.2)
        await manager.restart(handle)  # a stopped replica is left alone
        assert handle.state == "stopped" and events.kinds()[-1] == "stopped"

    run(scenario())
