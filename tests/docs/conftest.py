"""Prints every snippet the suite did not run, with its reason, after the run."""

from __future__ import annotations

import pytest

from tests.docs.snippets import SKIPPED_SNIPPETS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SKIPPED_SNIPPETS:
        terminalreporter.section("snippets not run")
        for line in SKIPPED_SNIPPETS:
            terminalreporter.write_line(line)
