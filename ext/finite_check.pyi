"""Stub of ``clipper_core._ext.finite_check``; the docstrings are in the pure twin,
``clipper_core._pure.finite_check``, which answers identically."""

from typing import Any

__all__ = ["all_finite"]

def all_finite(array: Any) -> bool: ...
