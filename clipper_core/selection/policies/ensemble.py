"""``ensemble``: every linked model answers; numbers are averaged, labels voted on.

Options: ``combine`` (``"auto"``: floats and numeric arrays are averaged, anything
else voted on; or ``"mean"`` / ``"vote"``), ``tolerance`` (how close to the mean an
output must be to count as agreeing), ``loss_scale`` (for the reported losses).
The confidence is the share of models that agree with the answer; when the
latency objective passes first, the data plane combines the outputs that arrived
and scales the confidence by the share of models that answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from clipper_core.selection import register_policy
from clipper_core.selection.base import (
    SelectionPolicy,
    State,
    check_combine_mode,
    check_number,
    combine_outputs,
)
from clipper_core.selection.losses import loss_stats, mean_losses


@register_policy
class Ensemble(SelectionPolicy):
    """Query every model and combine their outputs with equal weights."""

    name = "ensemble"
    multi_model = True
    defaults: ClassVar[Mapping[str, Any]] = {"combine": "auto", "tolerance": 0.1, "loss_scale": 1.0}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        check_combine_mode(config)
        check_number(config, "tolerance", low=0.0)
        check_number(config, "loss_scale", low=0.0, low_open=True)

    def select(self, state: State, x: Any) -> list[str]:
        return list(self.models)

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        ordered = [outputs[m] for m in self.models if m in outputs]
        ordered += [y for m, y in outputs.items() if m not in self.models]
        return combine_outputs(
            ordered, mode=self.config["combine"], tolerance=self.config["tolerance"]
        )

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        return loss_stats(self.models, state, y_true, outputs, scale=self.config["loss_scale"])

    def describe(self, state: State) -> dict[str, Any]:
        return {"mean_loss": mean_losses(self.models, state)}
