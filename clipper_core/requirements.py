"""Pip requirement lines, as the deploy side records them and the server's
environment builder reads them; and the states of an environment build.

A leaf module: the client (``clipper_core.deployers``, ``runtime_env``) and the
server (``clipper_core.managers.envs``) both use it.
"""

from __future__ import annotations

import re
from typing import Any

from clipper_core.errors import BadInput

# Build states reported by get_runtime_env.
READY, BUILDING, FAILED = "ready", "building", "failed"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name: ``Scikit_Learn`` -> ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The distribution a requirement line names, or None (options, URLs, paths)."""
    text = line.strip()
    if not text or text.startswith(("-", "#", ".", "/")) or "://" in text:
        return None
    match = _NAME.match(text)
    return canonical_name(match.group(1)) if match else None


def check_requirements(value: Any) -> list[str]:
    """The requirement lines of a request, stripped.

    Raises:
        BadInput: Not a non-empty list of one-line strings.
    """
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise BadInput("requirements must be a list of strings")
    out = [r.strip() for r in value if r.strip()]
    for r in out:
        if "\n" in r or "\r" in r:
            raise BadInput(f"a requirement must be one line: {r!r}")
    if not out:
        raise BadInput("an environment needs at least one requirement")
    return out
