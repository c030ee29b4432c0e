"""bench.foreign_cpu: the CPU of programs outside the bench's process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.foreign_cpu import ForeignCpu, machine_ticks, own_ticks

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc only")

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Burns `seconds` of its own CPU time, then exits.
BURN = "import sys, time\nend = float(sys.argv[1])\nwhile time.process_time() < end: pass\n"


def test_a_childs_cpu_is_the_benchs_own_live_and_reaped() -> None:
    before = own_ticks()
    child = subprocess.Popen([sys.executable, "-c", BURN, "0.5"])
    child.wait()  # reaped: its time is now in this process's cutime
    assert own_ticks() - before >= 0.5 * CLK_TCK * 0.9


def test_a_detached_process_is_foreign() -> None:
    # Started through a shell that exits at once: its child is re-parented and
    # is no longer in this process's tree.
    done = f"/tmp/foreign-cpu-test-{os.getpid()}"
    script = BURN + f"open({done!r}, 'w').close()\n"
    others = ForeignCpu()
    own_before, machine_before = own_ticks(), machine_ticks()
    assert machine_before is not None
    subprocess.run(
        ["sh", "-c", f'{sys.executable} -c "$0" 0.5 >/dev/null 2>&1 &', script], check=True
    )
    while not os.path.exists(done):
        time.sleep(0.05)
    os.unlink(done)
    own = own_ticks() - own_before
    machine = machine_ticks()
    assert machine is not None
    assert own < 0.25 * CLK_TCK  # this process slept; the shell is brief
    assert machine - machine_before - own >= 0.5 * CLK_TCK * 0.9
    cores = others.cores()
    assert cores is not None and cores > 0


def test_only_a_failed_step_under_foreign_load_is_disturbed() -> None:
    from bench.sweep import disturbed

    assert disturbed({"passed": False, "foreign_cpu": 0.6}, 0.5)
    assert not disturbed({"passed": True, "foreign_cpu": 0.6}, 0.5)
    assert not disturbed({"passed": False, "foreign_cpu": 0.4}, 0.5)
    assert not disturbed({"passed": False, "foreign_cpu": 0.6}, None)
    assert not disturbed({"passed": False, "foreign_cpu": None}, 0.5)
