"""``bench.gc_waits``: the query path's waits leave nothing for full collections."""

from __future__ import annotations

import re

import pytest

from bench import gc_waits


def test_waits_that_end_early_cause_no_full_collection(capsys: pytest.CaptureFixture[str]) -> None:
    # A count, not a timing: with the waits' objects freed as they end, nothing
    # per query reaches the oldest generation (before the fix: ~3 per 100,000).
    assert gc_waits.main(["--queries", "50000"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"gen1_per_100k=(\d+) full_per_100k=([\d.]+)", out)
    assert found is not None, out
    assert int(found[1]) > 0  # young collections did run: the cycles drive them
    assert float(found[2]) == 0.0
