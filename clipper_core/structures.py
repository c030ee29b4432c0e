"""The serving core's data structures, from the Cython extensions or their twins.

``BatchQueue``, ``PredictionCache`` and ``SloController`` (and
``parse_single_input`` and ``parse_oip_request``, the fast paths of the commonest
JSON query bodies, and ``all_finite``, the NaN/infinity check of a float reply)
come from the compiled extensions in ``clipper_core._ext`` unless
``CLIPPER_NO_EXTENSIONS=1`` is set, in which case the pure-Python twins in
``clipper_core._pure`` are used.  When the extensions are not built (a source
checkout without ``pip install -e .``), the twins are used too, with one warning.
The twins are the executable specification of the extensions: tests run against
both.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import SimpleNamespace

_NAMES = {
    "BatchQueue": "batch_queue",
    "QueueEntry": "batch_queue",
    "PredictionCache": "pred_cache",
    "ENTRY_OVERHEAD": "pred_cache",
    "SloController": "slo_controller",
    "parse_single_input": "json_numbers",
    "parse_oip_request": "json_numbers",
    "all_finite": "finite_check",
}


def load(use_extensions: bool) -> SimpleNamespace:
    """Return a namespace with the structures (and the body fast path) from one
    implementation."""
    package = "clipper_core._ext" if use_extensions else "clipper_core._pure"
    ns = SimpleNamespace(name="cython" if use_extensions else "python")
    for attr, module in _NAMES.items():
        setattr(ns, attr, getattr(importlib.import_module(f"{package}.{module}"), attr))
    return ns


def _choose() -> SimpleNamespace:
    if os.environ.get("CLIPPER_NO_EXTENSIONS", "") not in ("", "0"):
        return load(False)
    try:
        return load(True)
    except ImportError as exc:
        warnings.warn(
            f"clipper_core's compiled extensions are not built ({exc}); running on the"
            " pure-Python twins, which are several times slower.  Build them with"
            " `pip install -e .` (or `make build`); set CLIPPER_NO_EXTENSIONS=1 to choose"
            " the twins without this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        return load(False)


_impl = _choose()
#: Whether the compiled extensions serve (False: the pure-Python twins).
EXTENSIONS_ACTIVE: bool = _impl.name == "cython"
BatchQueue = _impl.BatchQueue
QueueEntry = _impl.QueueEntry
PredictionCache = _impl.PredictionCache
#: Bytes a cache entry is charged besides its key and value.
ENTRY_OVERHEAD: int = _impl.ENTRY_OVERHEAD
SloController = _impl.SloController
parse_single_input = _impl.parse_single_input
parse_oip_request = _impl.parse_oip_request
all_finite = _impl.all_finite

__all__ = [
    "ENTRY_OVERHEAD",
    "EXTENSIONS_ACTIVE",
    "BatchQueue",
    "PredictionCache",
    "QueueEntry",
    "SloController",
    "all_finite",
    "load",
    "parse_oip_request",
    "parse_single_input",
]
