#!/usr/bin/env python3
"""Test the declared ranges of grpcio and protobuf at both ends.

pyproject.toml declares a range for each of the two; this installs the project
(``pip install -e .``) into two throwaway virtual environments under a temporary
directory and runs the end-to-end suites (``TESTS``) in each:

``lowest``
    the two pinned, through a constraints file, to the lower bounds that
    pyproject.toml declares; the test tools are whatever versions fit them, plus
    the generator of the committed code (``protos/requirements.txt``), so that the
    byte-for-byte generated-code check runs here too.
``newest``
    nothing pinned: pip picks the newest releases the declared ranges allow, and
    the run fails if either of the two is older than that (a test tool held it
    back).  tritonclient's ``grpc`` extra declares ``protobuf<7``, so this
    environment installs that extra's members by hand: tritonclient is only the
    test client here, and what is tested is the project on the newest protobuf.

Usage::

    python3 .ci/deps_matrix.py                 # both
    python3 .ci/deps_matrix.py newest -- -x    # one; arguments after -- go to pytest

Standard library only (Python 3.11+, for tomllib).  Wheels come from pip's cache
after the first run; each environment also compiles the extensions once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The packages whose declared ranges are tested at both ends.
RANGED = ("grpcio", "protobuf")
#: The end-to-end suites, and the container tests (health checking, codec, the
#: generated-code checks).  About a minute on two cores.
TESTS = ("tests/server/test_end_to_end.py", "tests/oip", "tests/containers")
#: Entries of the ``test`` extra that these tests import (specifiers from pyproject.toml).
TEST_TOOLS = ("pytest", "pytest-timeout", "tritonclient", "grpcio-tools", "cryptography")
ENDS = ("lowest", "newest")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].strip().lower()


def _project() -> dict[str, object]:
    with open(REPO / "pyproject.toml", "rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def _declared() -> dict[str, str]:
    """The ranged requirements as pyproject.toml writes them."""
    deps = _project()["dependencies"]
    assert isinstance(deps, list)
    found = {_name(d): d for d in deps if _name(d) in RANGED}
    missing = set(RANGED) - set(found)
    if missing:
        raise SystemExit(f"pyproject.toml declares no {sorted(missing)}")
    return found


def lowest_pins() -> dict[str, str]:
    """``{package: version}``: each ranged package's declared lower bound."""
    pins = {}
    for name, requirement in _declared().items():
        match = re.search(r">=\s*([\w.]+)", requirement)
        if match is None:
            raise SystemExit(f"{requirement!r} has no lower bound (>=) to test")
        pins[name] = match.group(1)
    return pins


def test_tools(end: str) -> list[str]:
    """The requirements, besides the project, that the tests need at ``end``."""
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    tools = [r for r in extras["test"] if _name(r) in TEST_TOOLS]
    if end == "lowest":
        return [r for r in tools if _name(r) != "grpcio-tools"] + [
            "-r",
            str(REPO / "protos" / "requirements.txt"),
        ]
    # tritonclient[grpc] declares protobuf<7: its grpc extra's members, without it.
    return [
        re.sub(r"\[[^\]]*\]", "[http]", r) if _name(r) == "tritonclient" else r for r in tools
    ] + ["packaging", "python-rapidjson"]


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
    shown = ("<inline script>" if "\n" in arg else arg for arg in cmd)
    print("+", " ".join(shown), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env)


def _installed(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out)}


_NOT_NEWEST = """
import json, subprocess, sys
from packaging.requirements import Requirement
declared = json.loads(sys.argv[1])
out = subprocess.run([sys.executable, "-m", "pip", "list", "--outdated", "--format=json"],
                     check=True, capture_output=True, text=True).stdout
for p in json.loads(out):
    name = p["name"].lower()
    if name in declared:
        allowed = Requirement(declared[name]).specifier.contains(p["latest_version"])
        print(f"{name} {p['version']} installed, {p['latest_version']} released"
              + (": the newest release the range allows is not installed" if allowed
                 else " (outside the declared range)"))
        if allowed:
            sys.exit(1)
"""


def run_end(end: str, work: Path, pytest_args: Sequence[str]) -> dict[str, float]:
    """Build the environment for ``end``, run the tests; return phase timings (s)."""
    venv = work / end
    python = venv / "bin" / "python"
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if end == "lowest":
        constraints = work / "lowest-constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in lowest_pins().items()))
        pip += ["-c", str(constraints)]
    _run([*pip, "-e", ".", *test_tools(end)])
    installed = _installed(python)
    print(f"[{end}] " + ", ".join(f"{n}=={installed[n]}" for n in RANGED), flush=True)
    if end == "lowest":
        wrong = {n: v for n, v in lowest_pins().items() if installed[n] != v}
        if wrong:
            raise SystemExit(f"[lowest] not the declared lower bounds: {wrong}")
    else:
        _run([str(python), "-c", _NOT_NEWEST, json.dumps(_declared())])
    installed_at = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *pytest_args],
        env=env,
    )
    return {"install": installed_at - started, "tests": time.monotonic() - installed_at}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        pytest_args = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    if any(a.startswith("-") for a in argv) or set(argv) - set(ENDS):
        print(__doc__, file=sys.stderr)
        return 2
    ends = argv or list(ENDS)
    failed: list[str] = []
    timings: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="clipper-deps-matrix-") as tmp:
        for end in ends:
            try:
                timings[end] = run_end(end, Path(tmp), pytest_args)
            except (subprocess.CalledProcessError, SystemExit) as exc:
                print(f"[{end}] FAILED: {exc}", file=sys.stderr, flush=True)
                failed.append(end)
    for end, phases in timings.items():
        print(f"[{end}] passed: install {phases['install']:.0f} s, tests {phases['tests']:.0f} s")
    if failed:
        print(f"dependency matrix failed at: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
