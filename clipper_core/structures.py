"""The serving core's data structures, from the Cython extensions or their twins.

``BatchQueue``, ``PredictionCache`` and ``SloController`` come from the compiled
extensions in ``clipper_core._ext`` unless ``CLIPPER_NO_EXTENSIONS=1`` is set, in
which case the pure-Python twins in ``clipper_core._pure`` are used.  The twins are
the executable specification of the extensions: tests run against both.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

_NAMES = {
    "BatchQueue": "batch_queue",
    "QueueEntry": "batch_queue",
    "PredictionCache": "pred_cache",
    "SloController": "slo_controller",
}


def load(use_extensions: bool) -> SimpleNamespace:
    """Return a namespace with the three structures from one implementation."""
    package = "clipper_core._ext" if use_extensions else "clipper_core._pure"
    ns = SimpleNamespace(name="cython" if use_extensions else "python")
    for attr, module in _NAMES.items():
        setattr(ns, attr, getattr(importlib.import_module(f"{package}.{module}"), attr))
    return ns


EXTENSIONS_ACTIVE: bool = os.environ.get("CLIPPER_NO_EXTENSIONS", "") in ("", "0")

_impl = load(EXTENSIONS_ACTIVE)
BatchQueue = _impl.BatchQueue
QueueEntry = _impl.QueueEntry
PredictionCache = _impl.PredictionCache
SloController = _impl.SloController

__all__ = [
    "EXTENSIONS_ACTIVE",
    "BatchQueue",
    "PredictionCache",
    "QueueEntry",
    "SloController",
    "load",
]
