"""What a deployer records about its own environment, and the requirements of a
model's environment.

:func:`deploy_environment` records the Python version and the versions of the
packages a model depends on; the container compares them with its own at start
(``model_containers.environment``).  :func:`requirements_for` turns a deployer's
``pkgs_to_install`` (or requirements file) into the requirement lines of the
model's virtual environment, which the server builds
(:mod:`clipper_core.managers.envs`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Requirement-line syntax is shared with the server's environment builder.
from clipper_core.errors import BadInput
from clipper_core.requirements import canonical_name, requirement_name

__all__ = [
    "canonical_name",
    "deploy_environment",
    "distribution_of",
    "read_requirements_file",
    "requirement_name",
    "requirements_for",
]


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    # Scans every installed distribution (most of a second in a big environment).
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> tuple[str, str] | None:
    """``(distribution, version)`` installed here that provides ``module``."""
    try:
        return module, importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in _packages_distributions().get(module, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def deploy_environment(
    packages: Iterable[tuple[str, str]], *, pickled_code: bool
) -> dict[str, Any]:
    """Record this interpreter and the packages a model depends on.

    Args:
        packages: ``(import name, match)`` pairs; match is ``"exact"`` (the saved
            model needs the same release), ``"present"`` (any version, but
            installed) or ``"any"`` (only reported).  Modules not installed here
            are left out.
        pickled_code: The payload holds pickled Python code (a closure, a
            ``func``), which needs the same Python minor version to load.

    Returns:
        The ``deploy_env`` of a container spec (see ``model_containers.environment``).
    """
    recorded: list[dict[str, str]] = []
    seen: set[str] = set()
    for module, match in packages:
        found = distribution_of(module)
        if found is None or module in seen:
            continue
        seen.add(module)
        dist, version = found
        recorded.append({"module": module, "dist": dist, "version": version, "match": match})
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python_full": sys.version,
        "python_match": "minor" if pickled_code else "any",
        "packages": recorded,
    }


def read_requirements_file(
    path: str | os.PathLike[str], _seen: frozenset[Path] = frozenset()
) -> list[str]:
    """The requirement lines of a file (comments and blank lines dropped), as the
    server's pip must read them: ``-r`` files inlined and local paths made
    absolute, both relative to the file (pip runs in the environment's folder
    on the server, where neither would be found).

    Raises:
        BadInput: A file cannot be read, or includes itself.
    """
    here = Path(path).expanduser().resolve()
    if here in _seen:
        raise BadInput(f"{here} includes itself (through -r)")
    try:
        text = here.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read the requirements file {here}: {exc}") from None
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        option, target = _option(line)
        if option in ("-r", "--requirement"):
            lines += read_requirements_file(here.parent / target, _seen | {here})
        elif option in ("-c", "--constraint"):
            lines.append(f"-c {(here.parent / target).expanduser().resolve()}")
        else:
            lines.append(absolute_local(line, here.parent))
    return lines


def _option(line: str) -> tuple[str, str]:
    """``("-r", "base.txt")`` for ``-r base.txt``, ``-rbase.txt`` or
    ``--requirement=base.txt``; ``("", line)`` for anything else."""
    for option in ("--requirement", "--constraint", "-r", "-c"):
        if line.startswith(option):
            rest = line[len(option) :]
            if option.startswith("--") and rest[:1] not in ("=", " ", "\t"):
                continue
            return option, rest.lstrip("= \t")
    return "", line


def absolute_local(line: str, base: Path) -> str:
    """``line`` with a local path (``./pkg``, ``../w.whl``, ``dist/x.tar.gz``)
    made absolute against ``base``, when it names a file or folder there; any
    other requirement unchanged."""
    if line.startswith("-") or "://" in line or "@" in line:
        return line
    local = line.startswith((".", "/", "~")) or line.endswith((".whl", ".tar.gz", ".zip"))
    if local:
        candidate = (base / line).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
    return line


def requirements_for(
    pkgs_to_install: Sequence[str] | None,
    requirements_file: str | os.PathLike[str] | None,
    deploy_env: dict[str, Any],
) -> list[str]:
    """The requirements of a model's environment, or ``[]`` for none.

    The user's packages, plus a pin (``dist==version``) of every package the
    deploy record needs (``exact`` or ``present``) that the user did not name, so
    that the environment loads what was saved.
    """
    # A local path among them is the caller's, relative to its working folder.
    user = [
        absolute_local(str(p).strip(), Path.cwd()) for p in pkgs_to_install or [] if str(p).strip()
    ]
    if requirements_file is not None:
        user += read_requirements_file(requirements_file)
    if not user:
        return []
    named = {n for n in map(requirement_name, user) if n}
    pins: list[str] = []
    for pkg in deploy_env.get("packages", []):
        if pkg.get("match") not in ("exact", "present"):
            continue
        dist = canonical_name(str(pkg["dist"]))
        if dist not in named:
            named.add(dist)
            pins.append(f"{dist}=={str(pkg['version']).split('+', 1)[0]}")
    return user + pins
