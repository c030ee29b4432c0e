"""CPU of a JSON reply's encoding, in-process, best of 5 x 20,000 calls: the OIP
reply of a ``[1, 256]`` and a ``[1, 8]`` FP32 output (``encode_http_response``,
peerbench's matmul and noop) and the REST reply's array path for 256 float32
numbers (``jsonable_native``), each including the check that no number is NaN or
infinite.  Prints one JSON line.  A/B two trees alternately (the clipper_core of
the tree on PYTHONPATH is measured)::

    for t in BASE . BASE . BASE .; do PYTHONPATH=$t .venv/bin/python bench/reply_encode.py; done
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

from clipper_core.oip.specs import OutputTensor
from clipper_core.oip.tensors import encode_http_response
from clipper_core.output_json import jsonable_native


def _us(fn: Callable[[], Any], n: int = 20000) -> float:
    return round(min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6, 2)


def main() -> None:
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((1, 256)).astype(np.float32)
    narrow = rng.standard_normal((1, 8)).astype(np.float32)
    oip_wide = [OutputTensor("y", "FP32", wide, False)]
    oip_narrow = [OutputTensor("y", "FP32", narrow, False)]
    row = wide[0]
    print(
        json.dumps(
            {
                "oip_256_us": _us(lambda: encode_http_response("matmul", "1", None, {}, oip_wide)),
                "oip_8_us": _us(lambda: encode_http_response("noop", "1", None, {}, oip_narrow)),
                "rest_native_256_us": _us(lambda: jsonable_native(row)),
            }
        )
    )


if __name__ == "__main__":
    main()
