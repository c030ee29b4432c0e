"""``epsilon_greedy``: the model with the lowest mean loss, or a random one with
probability ε.

A model without labels yet counts as loss 0, so each is tried early.  Options:
``epsilon`` (0.1), ``discount`` (1.0: a plain mean; below 1, each label first
shrinks every model's sums by that factor, so the mean follows recent labels),
``loss_scale``, ``seed``.
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
class EpsilonGreedy(SelectionPolicy):
    """Exploit the best mean loss; explore uniformly with probability ε."""

    name = "epsilon_greedy"
    defaults: ClassVar[Mapping[str, Any]] = {
        "epsilon": 0.1,
        "discount": 1.0,
        "loss_scale": 1.0,
        "seed": None,
    }

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        check_number(config, "epsilon", low=0.0, high=1.0)
        check_number(config, "discount", low=0.0, high=1.0, low_open=True)
        check_number(config, "loss_scale", low=0.0, low_open=True)

    def initial_state(self) -> State:
        return {
            "loss": dict.fromkeys(self.models, 0.0),
            "count": dict.fromkeys(self.models, 0.0),
            "updates": 0,
        }

    def best(self, state: State) -> str:
        """The model with the lowest mean loss (untried models count as 0)."""
        means = mean_losses(self.models, state)
        return min(self.models, key=lambda m: means[m] or 0.0)

    def select(self, state: State, x: Any) -> list[str]:
        if not self.models:
            return []
        # Draw first, always: the random stream does not depend on the state.
        explore = self.rng.random() < self.config["epsilon"]
        pick = self.rng.randrange(len(self.models))
        return [self.models[pick]] if explore else [self.best(state)]

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
        return {"mean_loss": mean_losses(self.models, state), "best": self.best(state)}
