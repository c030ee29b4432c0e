"""``single``: every query goes to the first linked model (Clipper's default).

The data plane serves it on its direct path; feedback only keeps per-model loss
figures for reporting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from clipper_core.selection import register_policy
from clipper_core.selection.base import (
    SelectionPolicy,
    State,
    check_number,
    confidence_of,
)
from clipper_core.selection.losses import loss_stats, mean_losses


@register_policy
class Single(SelectionPolicy):
    """The first linked model answers; its output is the answer."""

    name = "single"
    defaults: ClassVar[Mapping[str, Any]] = {"loss_scale": 1.0}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        check_number(config, "loss_scale", low=0.0, low_open=True)

    def select(self, state: State, x: Any) -> list[str]:
        return list(self.models[:1])

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        model = next(iter(outputs))
        y = outputs[model]
        return y, confidence_of(y)

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        return loss_stats(self.models, state, y_true, outputs, scale=self.config["loss_scale"])

    def describe(self, state: State) -> dict[str, Any]:
        return {"mean_loss": mean_losses(self.models, state)}
