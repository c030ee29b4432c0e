"""clipper_core: a low-latency model-serving system."""

from __future__ import annotations

from clipper_core._version import __version__
from clipper_core.connection import ClipperConnection, ClipperException, LocalContainerManager
from clipper_core.errors import ClipperError

__all__ = [
    "ClipperConnection",
    "ClipperError",
    "ClipperException",
    "LocalContainerManager",
    "__version__",
]
