"""Without compiled extensions (a source checkout that was never built), the
package imports and serves on the pure-Python twins, with one warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import warnings
warnings.simplefilter("default")
import clipper_core.structures as s
import clipper_core.structures as again  # imported once: one warning
q = s.BatchQueue(4)
print(s.EXTENSIONS_ACTIVE, type(q).__module__)
"""


def _unbuilt_copy(tmp_path: Path) -> Path:
    """The package as a source checkout has it: the .pyx sources, no .so files."""
    root = tmp_path / "src"
    shutil.copytree(
        REPO / "clipper_core",
        root / "clipper_core",
        symlinks=False,
        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
    )
    return root


def test_unbuilt_extensions_fall_back_to_the_twins_with_one_warning(tmp_path: Path) -> None:
    root = _unbuilt_copy(tmp_path)
    assert not list((root / "clipper_core" / "_ext").glob("*.so"))
    env = {k: v for k, v in os.environ.items() if k != "CLIPPER_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(root)
    res = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "clipper_core._pure.batch_queue"]
    assert res.stderr.count("compiled extensions are not built") == 1, res.stderr
    assert "pip install -e ." in res.stderr


def test_choosing_the_twins_is_silent(tmp_path: Path) -> None:
    env = {**os.environ, "CLIPPER_NO_EXTENSIONS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "clipper_core._pure.batch_queue"]
    assert "not built" not in res.stderr
