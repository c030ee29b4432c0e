"""Check, at start, that the container runs what the model was deployed with.

A deployer records the Python version and the versions of the packages a model
depends on (``deploy_env`` in the container spec, passed as ``--deploy-env
JSON``).  Before anything is unpickled or loaded, the container compares them with
its own interpreter and packages, so that a mismatch stops it with one clear
message (which reaches the deploy error through the process manager's stderr
tail) instead of an unpickling error or a wrong answer at the first request.

The record::

    {
      "python": "3.11.7",              # the deployer's interpreter
      "python_match": "minor",         # "minor": same major.minor needed (pickled
                                       # code); "any": only reported
      "packages": [
        {"module": "sklearn", "dist": "scikit-learn", "version": "1.6.1",
         "match": "exact"}             # "exact": same release needed;
                                       # "present": installed, any version;
                                       # "any": only reported
      ]
    }
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

MATCH_LEVELS = ("exact", "present", "any")


@dataclass
class EnvironmentReport:
    """What the check found: ``errors`` stop the container, ``warnings`` are logged."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    python_needed: str = ""

    def message(self) -> str:
        """The text printed on stderr when the container refuses to start."""
        lines = ["the model was deployed with other versions than this container runs:"]
        lines += [f"  - {e}" for e in self.errors]
        if self.python_needed:
            lines.append(
                f"Run the model containers with Python {self.python_needed} (the server's"
                " interpreter, or its `python` setting), or deploy the model again from"
                f" Python {'.'.join(platform.python_version_tuple()[:2])}."
            )
        if self.pins or not self.python_needed:
            hint = (
                "Deploy it with pkgs_to_install=[...] (a virtual environment of its own,"
                f" built by the server), or install the same versions for {sys.executable}"
            )
            if self.pins:
                hint += f" (pip install {' '.join(self.pins)})"
            lines.append(hint + ".")
        return "\n".join(lines)


def public_version(version: str) -> str:
    """``"2.13.0+cpu"`` -> ``"2.13.0"``: builds of one release are compatible."""
    return version.split("+", 1)[0].strip()


def installed_version(module: str, dist: str | None = None) -> str | None:
    """The installed version of the distribution providing ``module``; None if absent.

    ``dist`` is tried first; another distribution providing the same module (for
    instance ``xgboost`` instead of ``xgboost-cpu``) counts too.
    """
    if dist:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    for name in importlib.metadata.packages_distributions().get(module, []):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec(module) is not None:
        return "unknown"
    return None


def _minor(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check(recorded: dict[str, Any]) -> EnvironmentReport:
    """Compare a deploy-time record with this process's interpreter and packages."""
    report = EnvironmentReport()
    deployed_py = str(recorded.get("python") or "")
    here_py = platform.python_version()
    if deployed_py and _minor(deployed_py) != _minor(here_py):
        text = f"Python {here_py} here, {deployed_py} at deploy time"
        if recorded.get("python_match", "minor") == "minor":
            report.python_needed = ".".join(map(str, _minor(deployed_py)))
            report.errors.append(
                f"{text} (the model holds pickled Python code, which needs the same"
                " Python minor version)"
            )
        else:
            report.warnings.append(text)
    for pkg in recorded.get("packages") or []:
        module = str(pkg.get("module") or pkg.get("dist") or "")
        dist = str(pkg.get("dist") or module)
        wanted = str(pkg.get("version") or "")
        match = str(pkg.get("match") or "any")
        if not module:
            continue
        here = installed_version(module, dist)
        if here is None:
            if match in ("exact", "present"):
                report.errors.append(
                    f"{dist} is not installed here ({wanted or 'some version'} at deploy time)"
                )
                report.pins.append(f"{dist}=={public_version(wanted)}" if wanted else dist)
            continue
        if not wanted or here == "unknown" or public_version(here) == public_version(wanted):
            continue
        text = f"{dist} {here} here, {wanted} at deploy time"
        if match == "exact":
            report.errors.append(f"{text} (the saved model needs the same release)")
            report.pins.append(f"{dist}=={public_version(wanted)}")
        else:
            report.warnings.append(text)
    return report
