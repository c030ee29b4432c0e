"""Query body parsing: the one-pass fast paths (``ext/json_numbers.pyx``) against
the general path (orjson and numpy), on ``../shared/peerbench``'s bodies.

Clipper REST ``{"input": [...]}`` and an OIP JSON request, each with 8 numbers
(the noop model) and 256 (matmul).  Prints microseconds per parse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from clipper_core import clipper_api
from clipper_core.oip import tensors

_RNG = np.random.default_rng(0)


def _numbers(count: int) -> list[float]:
    return [round(float(x), 4) for x in _RNG.standard_normal(count)]


BODIES = {
    size: {
        "rest": orjson.dumps({"input": values}),
        "oip": orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, size], "datatype": "FP32", "data": values}]}
        ),
    }
    for size, values in ((8, _numbers(8)), (256, _numbers(256)))
}

PARSERS = {
    ("rest", "fast"): lambda body: clipper_api.parse_predict(body, "floats"),
    ("rest", "general"): lambda body: clipper_api.parse_predict_general(body, "floats"),
    ("oip", "fast"): lambda body: tensors.parse_http_request(body, None),
    ("oip", "general"): lambda body: tensors.parse_http_request_general(body, None),
}


@pytest.mark.parametrize("size", [8, 256])
@pytest.mark.parametrize("api", ["rest", "oip"])
@pytest.mark.parametrize("path", ["fast", "general"])
def test_parse(benchmark: Any, api: str, path: str, size: int) -> None:
    body = BODIES[size][api]
    parse = PARSERS[(api, path)]
    if api == "rest":
        assert parse(body).inputs[0].shape == (size,)
    else:
        assert parse(body).inputs[0].shape == (1, size)
    benchmark(parse, body)
    print(f"\n{api} {size} numbers, {path} path: {benchmark.stats.stats.median * 1e6:.2f} µs")
