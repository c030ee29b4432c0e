"""A replica's stdout and stderr pipes are closed once each, on uvloop too.

uvloop's ``connect_read_pipe`` gives a pipe's descriptor to libuv and keeps the
file object, and both close it (MagicStack/uvloop#763): when another thread of the
frontend opened something between the two closes, it got the freed number and
lost its file (a poison-input test's client socket did, with EBADF).  The process
manager now reads the pipes with ``add_reader``; ``strace`` counts the closes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

PROGRAM = """
import asyncio, os, sys
import uvloop
from clipper_core.managers._child import _Child

async def main():
    child = await _Child.spawn([sys.executable, "-c", "print('hi')"], dict(os.environ), None)
    os.write(1, b"PIPES %d %d\\n" % (child.popen.stdout.fileno(), child.popen.stderr.fileno()))
    await child.output.pipes_closed
    await child.exited
    child.close()
    for _ in range(3):
        await asyncio.sleep(0)  # a close left to a later loop turn
    os.write(1, b"DONE\\n")

uvloop.run(main())
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_a_replicas_pipes_are_closed_once_each_on_uvloop(tmp_path: Path) -> None:
    trace = tmp_path / "closes.strace"
    strace = ["strace", "-f", "-qq", "-e", "trace=close,write", "-o", str(trace)]
    done = subprocess.run(
        [*strace, sys.executable, "-c", PROGRAM],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    pipes = re.search(r"PIPES (\d+) (\d+)", done.stdout)
    assert pipes is not None and "DONE" in done.stdout, done.stdout

    lines = trace.read_text().splitlines()
    (start,) = [i for i, line in enumerate(lines) if 'write(1, "PIPES ' in line]
    (end,) = [i for i, line in enumerate(lines) if 'write(1, "DONE' in line]
    pid = lines[start].split()[0]  # the frontend's side (the child has its own pid)
    for fd in pipes.groups():
        closes = [
            line for line in lines[start:end] if line.split()[0] == pid and f" close({fd})" in line
        ]
        assert len(closes) == 1, f"descriptor {fd} closed {len(closes)} times: {closes}"
