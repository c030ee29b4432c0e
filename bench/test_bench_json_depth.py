"""The JSON depth check that runs on the event loop before a body is parsed
(``clipper_core.admission.check_json_depth``), on the bodies that used to stall
the loop: an unterminated string of escaped quotes (quadratic: 22 KB took 2.4 s)
and a 1 MB batch of depth-62 arrays (a regex pass per level: 1.75 s).  Prints
milliseconds per check; both are linear now (about 1 and 13 ms here)."""

from __future__ import annotations

from typing import Any

import pytest

from clipper_core.admission import check_json_depth
from clipper_core.errors import BadInput

_DEEP = b"[" * 61 + b"1" + b"]" * 61
BODIES = {
    "escaped-quotes-64KB": b'{"input":' + b"[" * 65 + b'"' + b'\\"' * 32_000,
    "depth-62-batch-1MB": b'{"input_batch": [' + b",".join([_DEEP] * 8_000) + b"]}",
}


def _check(body: bytes) -> None:
    try:
        check_json_depth(body, 64)
    except BadInput:
        pass


@pytest.mark.parametrize("name", sorted(BODIES))
def test_depth_check(benchmark: Any, name: str) -> None:
    benchmark(_check, BODIES[name])
    print(f"\n{name}: {benchmark.stats.stats.median * 1e3:.2f} ms")
