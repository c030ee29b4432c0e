"""Files a test run keeps (screenshots), listed in pytest's terminal summary.

A module of its own, not the conftest: pytest may import a conftest under a
different module name than the tests do, which would make two lists.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Where artifacts of a test run go (ignored by git).
ARTIFACTS = REPO / "var" / "artifacts"

recorded: list[tuple[str, Path]] = []


def record_artifact(label: str, path: Path) -> None:
    """List ``path`` in the terminal summary of the run."""
    recorded.append((label, path))
