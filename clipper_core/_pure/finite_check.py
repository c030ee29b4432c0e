"""Pure-Python twin of ``clipper_core._ext.finite_check``: the same answers, slower.

``all_finite(array)`` is whether a float array holds no NaN and no infinity: numpy's
``np.isfinite(array).all()``.  The extension scans a contiguous (or one-dimensional)
float32 or float64 array of native byte order in C, without numpy's temporary
array and reduction; any other array it hands to numpy, as this twin does for all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["all_finite"]


def all_finite(array: Any) -> bool:
    """Whether ``array`` (a float array) holds no NaN and no infinity."""
    return bool(np.isfinite(array).all())
