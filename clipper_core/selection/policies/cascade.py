"""``cascade``: ask a cheap model first; escalate while the answer is not confident.

Options: ``order`` (model names, cheapest first; by default the linked models
sorted by name), ``threshold`` (0.8): a stage whose output's confidence is below
it hands the input to the next stage.  The confidence comes from the output
(``{"label", "confidence"}`` or ``[label, confidence]``, see
:mod:`clipper_core.selection.base`); an output without one counts as confident.
A stage that fails is skipped.  The answer is the output of the last stage that
answered; when the objective passes before an escalated stage answers, the
earlier stage's output is returned with a lowered confidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from clipper_core.errors import BadInput
from clipper_core.selection import register_policy
from clipper_core.selection.base import (
    SelectionPolicy,
    State,
    check_number,
    confidence_of,
)
from clipper_core.selection.losses import loss_stats, mean_losses


@register_policy
class Cascade(SelectionPolicy):
    """Stages from cheap to expensive, each consulted only when needed."""

    name = "cascade"
    multi_model = True
    defaults: ClassVar[Mapping[str, Any]] = {"order": None, "threshold": 0.8, "loss_scale": 1.0}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        order = config["order"]
        if order is not None:
            if not isinstance(order, list) or not all(isinstance(m, str) for m in order):
                raise BadInput(
                    f"policy option 'order' must be a list of model names, got {order!r}"
                )
            if len(set(order)) != len(order):
                raise BadInput(f"policy option 'order' names a model twice: {order!r}")
            config["order"] = list(order)
        check_number(config, "threshold", low=0.0, high=1.0)
        check_number(config, "loss_scale", low=0.0, low_open=True)

    @property
    def stages(self) -> list[str]:
        """The linked models in cascade order."""
        order = self.config["order"]
        if order is None:
            return sorted(self.models)
        linked = set(self.models)
        return [m for m in order if m in linked]

    def select(self, state: State, x: Any) -> list[str]:
        return self.stages[:1]

    def escalate(
        self, state: State, x: Any, outputs: Mapping[str, Any], queried: Sequence[str]
    ) -> list[str]:
        asked = set(queried)
        for m in self.stages:
            if m not in asked:
                return [m]
            if m in outputs and confidence_of(outputs[m]) >= self.config["threshold"]:
                return []
        return []

    def primary(self, state: State, outputs: Mapping[str, Any]) -> str | None:
        answered = [m for m in self.stages if m in outputs]
        if answered:
            return answered[-1]
        return super().primary(state, outputs)

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        model = self.primary(state, outputs) or next(iter(outputs))
        y = outputs[model]
        return y, confidence_of(y)

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        return loss_stats(self.models, state, y_true, outputs, scale=self.config["loss_scale"])

    def describe(self, state: State) -> dict[str, Any]:
        return {"stages": self.stages, "mean_loss": mean_losses(self.models, state)}
