"""clipper_core: a low-latency model-serving system."""

from __future__ import annotations

__version__ = "0.1.0"
