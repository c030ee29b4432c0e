"""Model outputs as JSON values, for the replies of the REST APIs.

numpy arrays and scalars become lists and numbers, ``bytes`` base64 text.  JSON has
no NaN or infinity, and orjson writes them as ``null``, which a client cannot tell
from a real null; so a non-finite number is written as the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"`` where the number would be (what Python's
``float()`` and numpy's float dtypes read back; MLServer writes ``null``, Triton
the bare tokens, which are not JSON).
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson

from clipper_core.structures import all_finite

__all__ = ["all_finite", "jsonable", "jsonable_native", "non_finite_name"]


def non_finite_name(x: float) -> str:
    """``"NaN"``, ``"Infinity"`` or ``"-Infinity"``: how a reply writes ``x``."""
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def jsonable(output: Any) -> Any:
    """``output`` as values that orjson writes faithfully (see the module)."""
    if isinstance(output, np.ndarray):
        values = output.tolist()
        if output.dtype.kind == "f" and not all_finite(output):
            return _named(values)
        return values
    if isinstance(output, np.generic):
        return _named(output.item())
    t = type(output)
    if t is bytes:
        return base64.b64encode(output).decode("ascii")
    if t is float or ((t is list or t is dict or t is tuple) and _may_hold_non_finite(output)):
        return _named(output)
    return output


#: Below this many numbers the list path is cheaper: the float64 copy and orjson's
#: array path have a fixed cost of about a microsecond, which a few Python floats
#: do not repay.  Re-measured with the finiteness check in C (a whole reply,
#: best of 7 x 20,000, AMD EPYC): float32[8] list 1.7-2.4 / array 1.9 us,
#: [32] 2.6 / 2.8, [64] 4.3 / 4.1, [128] 9.5 / 8.5; the crossover is still near 64.
_NATIVE_MIN_SIZE = 64


def jsonable_native(output: Any) -> Any:
    """``jsonable(output)``, except that a numeric array stays an array when orjson's
    ``OPT_SERIALIZE_NUMPY`` writes it as the same JSON as its list.

    For a reply encoded with that option: no Python object is made per number (a
    256-float reply costs ~7 us less).  Floats go out as float64, whose digits are
    those of the Python floats ``tolist`` would give (float32 would print shorter
    digits); an array holding a non-finite number takes :func:`jsonable`'s path.
    """
    if type(output) is np.ndarray and output.ndim and output.size >= _NATIVE_MIN_SIZE:
        kind = output.dtype.kind
        if kind == "f":
            if all_finite(output):
                return output.astype(np.float64, order="C")
        elif kind in "iub" and output.dtype.isnative:
            return np.ascontiguousarray(output)
    return jsonable(output)


def _may_hold_non_finite(value: Any) -> bool:
    # One native serialisation: only a value that holds a null, or something orjson
    # does not write (bytes inside a pipeline's {stage: output}), is walked.
    try:
        return b"null" in orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return True


def _named(value: Any) -> Any:
    """``value`` (lists, dicts, numbers) with each non-finite float named."""
    t = type(value)
    if t is float:
        return value if math.isfinite(value) else non_finite_name(value)
    if t is list or t is tuple:
        return [_named(v) for v in value]
    if t is dict:
        return {k: _named(v) for k, v in value.items()}
    if t is bytes or isinstance(value, (np.ndarray, np.generic)):
        return jsonable(value)
    return value  # anything else: the reply's own serialisation reports it
