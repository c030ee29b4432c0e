"""``exp4``: every model answers; the answer is their weighted combination.

After a label every model that answered has its weight multiplied by
``exp(-η · loss)`` (all models are observed, so no importance weighting); weights
are scaled so the largest is 1 (on logarithms, so that a large η, which would
turn every product into 0, keeps their order) and floored at ``min_weight``.
Numbers are averaged with the weights and labels get a weighted vote
(``combine``, as for ``ensemble``); the confidence is the weight share that
agrees with the answer.

With ``discount`` g < 1 every weight first becomes ``w ** g`` (as for ``exp3``):
old losses fade, so the weights follow a model that degrades.

Options: ``eta``, ``min_weight``, ``discount`` (1.0), ``loss_scale``, ``combine``,
``tolerance``.
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
    forget,
    normalised_weights,
    probabilities,
    reweighted,
)
from clipper_core.selection.losses import loss


@register_policy
class Exp4(SelectionPolicy):
    """Exponential weights over experts: query all, combine by weight, update all."""

    name = "exp4"
    multi_model = True
    defaults: ClassVar[Mapping[str, Any]] = {
        "eta": 0.01,
        "min_weight": 0.01,
        "discount": 1.0,
        "loss_scale": 1.0,
        "combine": "auto",
        "tolerance": 0.1,
    }

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        check_number(config, "eta", low=0.0, low_open=True)
        check_number(config, "min_weight", low=0.0, high=1.0, low_open=True)
        check_number(config, "discount", low=0.0, high=1.0, low_open=True)
        check_number(config, "loss_scale", low=0.0, low_open=True)
        check_number(config, "tolerance", low=0.0)
        check_combine_mode(config)

    def initial_state(self) -> State:
        return {"weights": dict.fromkeys(self.models, 1.0), "updates": 0}

    def weights(self, state: State) -> dict[str, float]:
        return normalised_weights(self.models, state.get("weights", {}), self.config["min_weight"])

    def select(self, state: State, x: Any) -> list[str]:
        return list(self.models)

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        weights = self.weights(state)
        models = [m for m in self.models if m in outputs]
        if not models:  # outputs of models no longer linked
            models = list(outputs)
        return combine_outputs(
            [outputs[m] for m in models],
            [weights.get(m, self.config["min_weight"]) for m in models],
            mode=self.config["combine"],
            tolerance=self.config["tolerance"],
        )

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        eta = self.config["eta"]
        weights = forget(self.weights(state), self.config["discount"])
        penalties = {
            m: eta * loss(y, y_true, self.config["loss_scale"])
            for m, y in outputs.items()
            if m in weights
        }
        return {
            **state,
            "weights": reweighted(
                self.models, state.get("weights"), weights, penalties, self.config["min_weight"]
            ),
            "updates": int(state.get("updates", 0)) + 1,
        }

    def describe(self, state: State) -> dict[str, Any]:
        return {"weight_share": probabilities(self.weights(state))}
