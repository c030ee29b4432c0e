"""The server-wide settings of model versions (``ServerConfig``'s), which a
version's record overrides where it sets them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelDefaults"]


@dataclass(frozen=True)
class ModelDefaults:
    """Server-wide settings a model version takes unless its record sets them."""

    queue_capacity: int
    max_batch_size: int
    batch_timeout: float
    admission: bool
    replica_start_timeout: float
