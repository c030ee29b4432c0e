"""What a prediction-cache entry keeps, and what it is charged.

The cache's byte budget bounds memory only if each entry is charged for all it
keeps alive.  ``sys.getsizeof`` (the cache's own default) counts a container's
slots, not what they point to, and a row of a batch's output is a NumPy view that
keeps the whole batch's reply buffer alive.  So before a result is cached its
array views are copied out (the entry holds its own rows only) and it is sized
deeply: arrays by their bytes, lists, tuples and dicts with their items.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from clipper_core.dataplane.tensor_batch import TensorResult

__all__ = ["compact"]

#: Below this depth an object is charged ``sys.getsizeof`` alone (outputs are
#: shallow; a deeper one is rare and still charged for its outer levels).
MAX_DEPTH = 8


def compact(value: Any) -> tuple[Any, int]:
    """``value`` as the cache should keep it, and its size in bytes.

    An array that is a view of a larger buffer is copied (so is each array of a
    ``TensorResult``); anything else is kept as it is.
    """
    if isinstance(value, np.ndarray):
        if value.base is not None:
            value = value.copy()
        return value, _array_size(value)
    if isinstance(value, TensorResult):
        if any(arr.base is not None for _, arr in value.outputs.values()):
            value = TensorResult(
                {
                    name: (dt, arr.copy() if arr.base is not None else arr)
                    for name, (dt, arr) in value.outputs.items()
                }
            )
        return value, sys.getsizeof(value)  # its __sizeof__ counts the arrays' bytes
    if isinstance(value, list) and any(
        isinstance(item, np.ndarray) and item.base is not None for item in value
    ):
        value = [compact(item)[0] if isinstance(item, np.ndarray) else item for item in value]
    return value, _size(value, 0)


def _array_size(arr: np.ndarray[Any, Any]) -> int:
    size = sys.getsizeof(arr)  # the header, and the data when the array owns it
    if arr.base is not None:
        size += arr.nbytes
    if arr.dtype.kind == "O":
        size += sum(_size(item, 1) for item in arr.flat)
    return size


def _size(value: Any, depth: int) -> int:
    size = sys.getsizeof(value)
    if depth >= MAX_DEPTH:
        return size
    if isinstance(value, (list, tuple)):
        return size + sum(_size(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return size + sum(_size(k, depth + 1) + _size(v, depth + 1) for k, v in value.items())
    if isinstance(value, np.ndarray):
        return _array_size(value)
    return size
