"""CPU per query of the REST codec for the matmul payload: what ``query_api`` runs
around the data plane (``parse_predict`` of 256 floats, ``format_reply`` of a
256-float float32 output row and ``json_response``), in-process, best of 5 x
20,000.  Prints one JSON line.  A/B two trees alternately (the clipper_core of
the tree on PYTHONPATH is measured), under the bench lock::

    for t in /work/main $PWD /work/main $PWD /work/main $PWD; do
      PYTHONPATH=$t .venv/bin/python bench/rest_codec.py; done
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

import numpy as np
import orjson

from clipper_core.clipper_api import format_reply, parse_predict
from clipper_core.http.messages import json_response


def main() -> None:
    rng = np.random.default_rng(0)
    body = orjson.dumps({"input": np.round(rng.standard_normal(256), 4).tolist()})
    rows = list(
        (rng.standard_normal((32, 256)) @ rng.standard_normal((256, 256))).astype(np.float32)
    )
    # Trees before native_arrays existed are measured as they were.
    kw: dict[str, Any] = (
        {"native_arrays": True}
        if "native_arrays" in inspect.signature(format_reply).parameters
        else {}
    )
    n = 20000
    best = []
    for _ in range(5):
        t = time.process_time()
        for i in range(n):
            parse_predict(body, "floats")
            reply = format_reply(i, rows[i & 31], False, None, {"model": "matmul-m:1"}, **kw)
            json_response(reply)
        best.append((time.process_time() - t) / n * 1e6)
    print(json.dumps({"us_per_query": round(min(best), 2), "native_arrays": bool(kw)}))


if __name__ == "__main__":
    main()
