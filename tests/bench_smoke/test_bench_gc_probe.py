"""``bench.gc_probe``: a script run under it reports its collections per mark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_collections_are_reported_at_each_mark(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    script = tmp_path / "server.py"
    script.write_text(
        "import gc, pathlib, sys, time\n"
        "gc.collect()\n"
        "gc.collect(0)\n"
        f"pathlib.Path({str(mark)!r}).write_text(sys.argv[1])\n"
        f"while pathlib.Path({str(mark)!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.gc_probe", str(mark), str(script), "phase-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("== phase-1 tracked=")
    assert [line.split(" n=")[0] for line in lines[1:4]] == ["GC gen0", "GC gen1", "GC gen2"]
    assert int(lines[3].split(" n=")[1].split()[0]) >= 1  # the script's gc.collect()
