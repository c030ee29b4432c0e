"""``ucb1``: the model with the lowest optimistic loss ``mean - sqrt(c · ln t / n)``.

``n`` is the model's number of labels and ``t`` the total over all models (the
total pull count, not the number of models); a model without labels is chosen
first.  Deterministic: ties go to the first linked model.  Options:
``exploration`` (c, 2.0 as in UCB1), ``discount`` (1.0; below 1 the counts and
sums shrink by that factor per label: discounted UCB, which follows a model that
degrades), ``loss_scale``.
"""

from __future__ import annotations

import math
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

#: Counts below this are "no label yet" (discounting never reaches 0 exactly).
_UNTRIED = 1e-9


@register_policy
class Ucb1(SelectionPolicy):
    """Upper confidence bound on the reward (here: lower bound on the loss)."""

    name = "ucb1"
    defaults: ClassVar[Mapping[str, Any]] = {"exploration": 2.0, "discount": 1.0, "loss_scale": 1.0}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        check_number(config, "exploration", low=0.0)
        check_number(config, "discount", low=0.0, high=1.0, low_open=True)
        check_number(config, "loss_scale", low=0.0, low_open=True)

    def initial_state(self) -> State:
        return {
            "loss": dict.fromkeys(self.models, 0.0),
            "count": dict.fromkeys(self.models, 0.0),
            "updates": 0,
        }

    def scores(self, state: State) -> dict[str, float]:
        """Each model's optimistic loss (-inf for a model without labels)."""
        counts = state.get("count", {})
        losses = state.get("loss", {})
        n = {m: float(counts.get(m, 0.0)) for m in self.models}
        total = sum(n.values())
        c = self.config["exploration"]
        out: dict[str, float] = {}
        for m in self.models:
            if n[m] < _UNTRIED:
                out[m] = -math.inf
                continue
            mean = float(losses.get(m, 0.0)) / n[m]
            out[m] = mean - math.sqrt(c * math.log(max(total, 1.0)) / n[m])
        return out

    def select(self, state: State, x: Any) -> list[str]:
        if not self.models:
            return []
        scores = self.scores(state)
        return [min(self.models, key=lambda m: scores[m])]

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        model = next((m for m in self.models if m in outputs), next(iter(outputs)))
        y = outputs[model]
        return y, confidence_of(y)

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        return loss_stats(
            self.models,
            state,
            y_true,
            outputs,
            scale=self.config["loss_scale"],
            discount=self.config["discount"],
        )

    def describe(self, state: State) -> dict[str, Any]:
        scores = self.scores(state)
        return {
            "mean_loss": mean_losses(self.models, state),
            "score": {m: (None if math.isinf(s) else s) for m, s in scores.items()},
        }
