"""Stub of ``clipper_core._ext.slo_controller``; the docstrings are in the pure twin,
``clipper_core._pure.slo_controller``, which behaves identically."""

from typing import Any, Final, SupportsFloat, SupportsIndex

__all__ = ["SloController"]

MAX_WINDOW: Final[int]

class SloController:
    def __init__(
        self,
        slo: SupportsFloat,
        *,
        mode: str = "aimd",
        max_batch_size: SupportsIndex = 256,
        initial_batch_size: SupportsIndex = 1,
        additive_increase: SupportsIndex = 2,
        multiplicative_decrease: SupportsFloat = 0.9,
        tolerance: SupportsFloat = 0.1,
        quantile: SupportsFloat = 0.99,
        window: SupportsIndex = 512,
        refit_every: SupportsIndex = 16,
        fixed_batch_size: SupportsIndex | None = None,
    ) -> None: ...
    @property
    def slo(self) -> float: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def observations(self) -> int: ...
    def observe(self, batch_size: SupportsIndex, latency: SupportsFloat) -> None: ...
    def record(self, batch_size: SupportsIndex, latency: SupportsFloat) -> None: ...
    def set_slo(self, slo: SupportsFloat) -> None: ...
    def reset(self) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
